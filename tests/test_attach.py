"""vault.attach / vault.detach, and engines that are not attached: no ciphertext returned as data,
no plaintext in any exception text (issue 10 item 12, issue 11 item 3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ccvault import ConfigurationError, Vault
from ccvault.kms import LocalKms
from leaks import chain_text
from sqla_models import Base, Customer

PHONE = "+1 555 010 0199"  # what must never appear in an error
NAME = "Ada Plaintext-Lovelace"


@pytest.fixture
def plain_engine(db_url: str) -> Iterator[sa.Engine]:
    """The test models' database, never attached to a vault."""
    url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _add(engine: sa.Engine) -> uuid.UUID:
    with Session(engine) as s:
        c = Customer(name=NAME, phone=PHONE)
        s.add(c)
        s.commit()
        return c.id


def test_unattached_engine_refuses_writes_and_searches_without_plaintext(
    plain_engine: sa.Engine,
) -> None:
    with Session(plain_engine) as s:
        s.add(Customer(name=NAME, phone=PHONE))
        with pytest.raises(ConfigurationError, match="attach") as orm:
            s.commit()
    with plain_engine.begin() as conn, pytest.raises(ConfigurationError) as core:
        conn.execute(insert(Customer), [{"id": uuid.uuid4(), "name": NAME, "phone": PHONE}])
    with Session(plain_engine) as s, pytest.raises(ConfigurationError) as search:
        s.scalars(select(Customer).where(Customer.phone == PHONE)).all()
    for caught in (orm, core, search):
        assert not isinstance(caught.value, sa.exc.StatementError)
        text = chain_text(caught.value)
        assert PHONE not in text
        assert NAME not in text


def test_detach_then_reads_and_writes_are_refused(app: sa.Engine, vault: Vault) -> None:
    a = _add(app)
    stmt = select(Customer).where(Customer.id == a)
    with Session(app) as s:
        assert s.scalars(stmt).one().phone == PHONE  # compiled and cached while attached
    vault.detach(app)
    with Session(app) as s, pytest.raises(ConfigurationError, match="detached"):
        s.scalars(stmt).one()  # the same cached statement: refused, not ciphertext
    with app.connect() as conn, pytest.raises(ConfigurationError, match="detached"):
        conn.execute(select(Customer.__table__.c.phone)).all()
    with Session(app) as s:
        s.add(Customer(name=NAME, phone=PHONE))
        with pytest.raises(ConfigurationError) as refused:
            s.commit()
    assert PHONE not in chain_text(refused.value)
    vault.detach(app)  # again: nothing to do


def test_reattach_to_another_vault(
    app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str
) -> None:
    a = _add(app)
    other = Vault(kms, db_url)  # another Vault object on the same key store (a new app factory)
    try:
        with pytest.raises(ConfigurationError, match="another vault"):
            other.attach(app)
        with pytest.raises(ConfigurationError, match="another vault"):
            other.detach(app)
        vault.detach(app)
        other.attach(app)
        with Session(app) as s:
            assert s.get(Customer, a).phone == PHONE  # type: ignore[union-attr]
            b = Customer(name="B", phone="+1 555 010 0100")
            s.add(b)
            s.commit()
            found = s.scalars(select(Customer).where(Customer.phone == "+1 555 010 0100")).one()
            assert found.id == b.id
        # the first vault's shreds no longer sweep this engine; the attached one's do
        other.shred(b.id)
        t = Customer.__table__
        with app.connect() as conn:
            assert conn.execute(select(t.c.phone_bidx).where(t.c.id == b.id)).scalar() is None
    finally:
        other.detach(app)
        other.close()
    assert len(vault._ring.after_shred) == 0


def test_attach_with_other_options_is_refused(app: sa.Engine, vault: Vault) -> None:
    vault.attach(app)  # the same vault and options: nothing to do
    with pytest.raises(ConfigurationError, match="other options"):
        vault.attach(app, strict=True)
    vault.detach(app)
    vault.attach(app, strict=True)  # after detaching, any options


def test_detach_async_engine(tmp_path: Path, kms: LocalKms) -> None:
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    vault = Vault(kms, f"sqlite:///{tmp_path / 'keys.db'}")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    try:
        vault.attach(engine)
        vault.detach(engine)
        assert not getattr(engine.sync_engine, "_ccvault_vault", None)
        with pytest.raises(ConfigurationError, match="Engine"):
            vault.detach("sqlite://")
    finally:
        vault.close()
