"""Defects the adversarial suite found, each pinned by a test of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import Vault
from ccvault.sqlalchemy import Encrypted


class _Base(DeclarativeBase):
    pass


class _Card(_Base):
    __tablename__ = "adv_found_cards"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[uuid.UUID] = mapped_column()
    note: Mapped[str | None] = mapped_column(Encrypted(sa.String(40), subject="owner"))


@pytest.fixture
def cards(vault: Vault, db_url: str) -> Iterator[sa.Engine]:
    url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
    engine = sa.create_engine(url)
    _Base.metadata.create_all(engine)
    vault.attach(engine)
    yield engine
    engine.dispose()


def test_a_core_select_of_an_encrypted_column_runs_again_from_the_cache(
    cards: sa.Engine,
) -> None:
    """The second run of a Core statement comes from SQLAlchemy's compiled cache, which merges
    the statement's columns into the cached result map (a dict: its lookup calls ``==`` on the
    column's copies). The comparator refused that ``==`` with a TypeError, so every Core select
    of an encrypted column failed from its second run on."""
    owner = uuid.uuid4()
    with Session(cards) as session, session.begin():
        session.add_all([_Card(owner=owner, note="first"), _Card(owner=owner, note="second")])
    t = _Card.__table__
    with cards.connect() as conn:
        for _ in range(3):
            got = conn.execute(sa.select(t.c.id, t.c.note).where(t.c.owner == owner)).all()
            assert sorted(n for _, n in got) == ["first", "second"]
            notes = conn.execute(sa.select(_Card.note).where(_Card.owner == owner)).scalars()
            assert sorted(notes) == ["first", "second"]
    # Comparing the column with itself builds an expression now, but such a statement is still
    # refused before it reaches the database, as every comparison of ciphertext is.
    with cards.connect() as conn, pytest.raises(Exception, match="compare ciphertext"):
        conn.execute(sa.select(t.c.id).where(t.c.note == t.c.note))
    with pytest.raises(TypeError, match="cannot use eq on the encrypted column"):
        _ = t.c.note == "first"
