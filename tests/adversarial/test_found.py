"""Defects the adversarial suite found, each pinned by a test of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from adversarial.harness import app_url
from ccvault import (
    NO_SUBJECT,
    CcvaultError,
    ConfigurationError,
    DecryptionError,
    KeyStoreError,
    SubjectShreddedError,
    Vault,
)
from ccvault.keystore._schema import build_metadata
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted
from ccvault.sqlalchemy._codec import JSON, CodecError

KEYS = build_metadata().tables["ccvault_keys"]


class _Base(DeclarativeBase):
    pass


class _Card(_Base):
    __tablename__ = "adv_found_cards"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[uuid.UUID] = mapped_column()
    note: Mapped[str | None] = mapped_column(Encrypted(sa.String(40), subject="owner"))
    doc: Mapped[Any] = mapped_column(Encrypted(sa.JSON, subject="owner"), nullable=True)


@pytest.fixture
def cards(vault: Vault, db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(app_url(db_url))
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


def _update_keys(url: str, where: Any, **values: object) -> None:
    """Change key rows behind ccvault's back (an insider, a bad disk)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(KEYS).where(where).values(**values))
    finally:
        engine.dispose()


def test_a_key_row_whose_kind_is_not_ascii_is_quarantined_not_a_unicode_error(
    kms: LocalKms, sqlite_url: str
) -> None:
    """A bit flipped in a key row's ``kind`` can make it non-ASCII; the rotation raised
    UnicodeEncodeError building the row's associated data (an untyped error, and every
    rotation after it failed the same way). The row does not authenticate: it is quarantined."""
    owner, other = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, sqlite_url) as vault:
        blob = vault.encrypt(owner, b"kept apart", context="c.x")
        kept = vault.encrypt(other, b"kept", context="c.x")
        _update_keys(sqlite_url, KEYS.c.ref == vault.subject_ref(owner), kind="subjeçt")
        report = vault.rotate_epoch()
        assert len(report.quarantined) == 1
    with Vault(kms, sqlite_url) as fresh:
        assert fresh.decrypt(kept, context="c.x", subject=other) == b"kept"
        with pytest.raises(DecryptionError):
            fresh.decrypt(blob, context="c.x", subject=owner)
        assert fresh.rotate_epoch().quarantined == ()


@pytest.mark.parametrize("version", [0, 2**32])
def test_a_key_row_with_a_version_no_header_can_name_fails_typed(
    kms: LocalKms, sqlite_url: str, version: int
) -> None:
    """A key row whose version no value header can hold (0, or past 2^32 - 1) made encrypt()
    raise ValueError ("bad key reference"), and shred() raise it too, after its commit, in the
    middle of evicting the subject's keys. Such a row is unreadable: DecryptionError; and the
    shred goes through."""
    owner = uuid.uuid4()
    with Vault(kms, sqlite_url) as vault:
        vault.encrypt(owner, b"x", context="c.x")
        vw = vault.encrypt(NO_SUBJECT, b"y", context="c.vw")
        ref = vault.subject_ref(owner)
        _update_keys(sqlite_url, KEYS.c.ref == ref, version=version)
        _update_keys(sqlite_url, KEYS.c.kind == "vaultwide", version=version)
    with Vault(kms, sqlite_url) as fresh:
        with pytest.raises(CcvaultError):  # the head names a key version that is not there
            fresh.encrypt(owner, b"x", context="c.x")
        with pytest.raises(DecryptionError):
            fresh.encrypt(NO_SUBJECT, b"y", context="c.vw")
        with pytest.raises(DecryptionError):
            fresh.decrypt(vw, context="c.vw")
        receipt = fresh.shred(owner)
        assert [k.version for k in receipt.destroyed_keys] == [version]
        with pytest.raises(SubjectShreddedError):
            fresh.encrypt(owner, b"x", context="c.x")


@pytest.mark.parametrize(
    ("name", "value"), [("installation_id", "0f" * 15 + "zz"), ("subject_type", "uuie")]
)
def test_an_installation_record_that_does_not_parse_is_a_key_store_error(
    kms: LocalKms, sqlite_url: str, name: str, value: str
) -> None:
    """A bit flipped in the installation id (a non-hex character) or the subject type made
    opening the vault raise ValueError."""
    Vault(kms, sqlite_url).close()
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            update = sa.text("UPDATE ccvault_meta SET value = :v WHERE name = :n")
            conn.execute(update, {"v": value, "n": name})
    finally:
        engine.dispose()
    for readonly in (False, True):
        with pytest.raises(KeyStoreError, match="installation record"):
            Vault(kms, sqlite_url, readonly=readonly)


def test_a_json_value_nested_deeper_than_the_parser_is_a_located_decryption_error(
    vault: Vault, cards: sa.Engine
) -> None:
    """The JSON codec let json.loads's RecursionError through (an untyped error from a column
    read); a value ccvault wrote at a shallow stack could fail so when read from a deeper one."""
    deep = b"\x0c" + b"[" * 5000 + b"]" * 5000
    with pytest.raises(CodecError):
        JSON.loads(deep)
    owner = uuid.uuid4()
    card = _Card(owner=owner, note="n", doc=[1])
    with Session(cards, expire_on_commit=False) as session, session.begin():
        session.add(card)
    blob = vault.encrypt(owner, deep, context="adv_found_cards.doc")
    update = sa.text("UPDATE adv_found_cards SET doc = :b WHERE note IS NOT NULL AND owner = :o")
    with cards.begin() as conn:
        conn.execute(
            update.bindparams(
                sa.bindparam("b", type_=sa.LargeBinary()), sa.bindparam("o", type_=sa.Uuid())
            ),
            {"b": blob, "o": owner},
        )
    with Session(cards) as session, pytest.raises(DecryptionError) as caught:
        session.scalars(sa.select(_Card).where(_Card.owner == owner)).all()
    assert (caught.value.table, caught.value.column) == ("adv_found_cards", "doc")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{folder}/keys.db?timeout=abc",
        "postgresql+psycopg://u@127.0.0.1:abc/x",
        "sqlite://host/{folder}/keys.db",
    ],
)
def test_a_key_store_url_the_driver_cannot_take_is_a_configuration_error(
    kms: LocalKms, tmp_path: Path, url: str
) -> None:
    """A query parameter SQLAlchemy converts for the driver (SQLite's ``timeout``), or a port
    that is no number, raised ValueError from the key store's constructor; a URL its dialect
    refuses (a host in a SQLite URL) raised SQLAlchemy's ArgumentError."""
    with pytest.raises(ConfigurationError, match="key store URL"):
        Vault(kms, url.format(folder=tmp_path))


def test_a_vault_with_subjects_never_makes_a_new_subject_ref_key(
    kms: object, sqlite_url: str
) -> None:
    """Found by the key-store tamperings: a subject-ref key row whose kind, label or version was
    changed is no longer found; a new ref key would give every subject a new ref, outside every
    shred fence. A vault refuses to make one once the installation has subjects."""
    from ccvault import KeyStoreError, SubjectShreddedError, Vault

    first = Vault(kms, sqlite_url)  # type: ignore[arg-type]
    gone = uuid.uuid4()
    first.encrypt(gone, b"x", context="t.c")
    first.shred(gone)
    first.close()
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE ccvault_keys SET label = 'subject-ref-x' WHERE label = 'subject-ref'"
        )
    engine.dispose()
    with pytest.raises(KeyStoreError, match="subject-ref key is missing"):
        Vault(kms, sqlite_url)  # type: ignore[arg-type]
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # put it back: the shredded customer stays shredded
        conn.exec_driver_sql(
            "UPDATE ccvault_keys SET label = 'subject-ref' WHERE label = 'subject-ref-x'"
        )
    engine.dispose()
    with Vault(kms, sqlite_url) as again, pytest.raises(SubjectShreddedError):  # type: ignore[arg-type]
        again.encrypt(gone, b"x", context="t.c")
