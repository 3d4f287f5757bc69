"""Stored values the reader must turn into a located outcome, never a crash of the whole SELECT
nor data (issue 11, items 12 and 14).

- ``legacy_plaintext=True`` never returns a truncation of a ccvault ciphertext as plaintext:
  any value that begins with the version byte (and a suite byte) is sealed, whatever its length.
- A subject the installation's type refuses (``''`` for ``str``) and JSON nested deeper than
  the parser goes make that one value a located DecryptionError (or UNREADABLE), not a
  TypeError or RecursionError that takes out the batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import DecryptionError, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import UNREADABLE, Encrypted, _read
from ccvault.sqlalchemy._plan import plan_for
from raw_values import get_raw, set_raw


class Base(DeclarativeBase):
    pass


class Doc(Base):
    """A table whose columns held plaintext before they were encrypted (the migration flag)."""

    __tablename__ = "legacy_docs"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    note: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(200), subject="id", legacy_plaintext=True)
    )
    payload: Mapped[bytes | None] = mapped_column(
        Encrypted(sa.LargeBinary, subject="id", legacy_plaintext=True)
    )
    doc: Mapped[Any] = mapped_column(
        Encrypted(sa.JSON, subject="id", legacy_plaintext=True), nullable=True
    )


class Ticket(Base):
    """Encrypted text whose subject is a plain ``str`` column (a ``str`` installation)."""

    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(sa.String(2000), nullable=True)
    body: Mapped[str] = mapped_column(Encrypted(sa.Text, subject="owner"))


DOCS = Doc.__table__
COLUMNS = ("note", "payload", "doc")
PLAN = plan_for(DOCS)
assert PLAN is not None


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


# -- legacy_plaintext: the boundary between legacy and sealed (item 12) -------------------------


def _reader(vault: Vault, on_error: str = "raise") -> Any:
    compiled = sa.select(DOCS).compile(dialect=sqlite.dialect())
    reader = _read._build_reader(vault._ring, compiled, False, on_error)  # type: ignore[arg-type]
    assert reader is not None
    return reader


def _sealed(vault: Vault, subject: uuid.UUID, column: str, value: Any) -> bytes:
    """A real ciphertext of ``value`` in ``column``, as the write path makes it."""
    col = PLAN.by_key[column]
    return vault.encrypt(subject, col.codec.dumps(value), context=col.label)


def _read_one(reader: Any, subject: uuid.UUID, column: str, stored: Any) -> Any:
    row = [subject.hex, None, None, None]  # SQLite's Uuid: 32 hex characters
    row[1 + COLUMNS.index(column)] = stored
    (out,) = reader.process([tuple(row)])
    return out[1 + COLUMNS.index(column)]


VALUES = {"note": "+44 20 7946 0000", "payload": b"\x00binary note", "doc": {"visits": [1, 2]}}


@pytest.mark.parametrize("column", COLUMNS)
def test_no_prefix_of_a_ciphertext_is_legacy_plaintext(svault: Vault, column: str) -> None:
    """Every truncation, from the first byte to all but the last, as bytes and (SQLite keeps
    what a TEXT column held) as text: a located DecryptionError, or UNREADABLE."""
    subject = uuid.uuid4()
    sealed = _sealed(svault, subject, column, VALUES[column])
    raising, sentinel = _reader(svault), _reader(svault, "sentinel")
    assert _read_one(raising, subject, column, sealed) == VALUES[column]
    for n in range(1, len(sealed)):
        for stored in (sealed[:n], sealed[:n].decode("latin-1")):
            with pytest.raises(DecryptionError) as info:
                _read_one(raising, subject, column, stored)
            assert (info.value.table, info.value.column) == ("legacy_docs", column), n
            assert _read_one(sentinel, subject, column, stored) is UNREADABLE, n


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    column=st.sampled_from(COLUMNS),
    text=st.text(max_size=300),
    data=st.data(),
)
def test_truncated_ciphertexts_of_any_value_are_never_legacy(
    svault: Vault, column: str, text: str, data: st.DataObject
) -> None:
    value: Any = {"note": text, "payload": text.encode("utf-8", "surrogatepass"), "doc": [text]}[
        column
    ]
    if column == "note":
        value = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    subject = uuid.uuid4()
    sealed = _sealed(svault, subject, column, value)
    n = data.draw(st.integers(min_value=1, max_value=len(sealed) - 1), label="kept bytes")
    with pytest.raises(DecryptionError):
        _read_one(_reader(svault), subject, column, sealed[:n])


@pytest.mark.parametrize(
    ("stored", "text", "blob"),
    [
        # nothing that could begin a ccvault value: legacy plaintext
        (b"", "", b""),
        (b"plain", "plain", b"plain"),
        (b"\x01\x00", "\x01\x00", b"\x01\x00"),  # version 1, no such suite
        (b"\x01\x03rest", "\x01\x03rest", b"\x01\x03rest"),
        (b"\x02\x01rest", "\x02\x01rest", b"\x02\x01rest"),  # no such version
        (b"\x00\x01\x01", "\x00\x01\x01", b"\x00\x01\x01"),
        ("text in a BLOB column", "text in a BLOB column", None),
        # the version byte, alone or with a suite byte: sealed, whatever follows
        (b"\x01", DecryptionError, DecryptionError),
        (b"\x01\x01", DecryptionError, DecryptionError),
        (b"\x01\x02", DecryptionError, DecryptionError),
        (b"\x01\x01plain text after it", DecryptionError, DecryptionError),
        (b"\x01\x02" + bytes(200), DecryptionError, DecryptionError),
        ("\x01", DecryptionError, None),
        ("\x01\x01plain", DecryptionError, None),
        ("\x01\x02plain", DecryptionError, None),
    ],
)
def test_the_boundary_between_legacy_and_sealed(
    svault: Vault, stored: bytes | str, text: Any, blob: Any
) -> None:
    reader, subject = _reader(svault), uuid.uuid4()
    for column, expected in (("note", text), ("payload", blob)):
        if expected is None:  # text is no old value of a binary column
            expected = DecryptionError
        if expected is DecryptionError:
            with pytest.raises(DecryptionError):
                _read_one(reader, subject, column, stored)
        else:
            assert _read_one(reader, subject, column, stored) == expected


@pytest.fixture
def docs(vault: Vault, db_url: str) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """The legacy_docs table on each backend: an engine attached with on_error="raise" and
    one with on_error="sentinel"."""
    engines = [sa.create_engine(_app_url(db_url)) for _ in range(2)]
    Base.metadata.create_all(engines[0], tables=[DOCS])
    vault.attach(engines[0])
    vault.attach(engines[1], on_error="sentinel")
    yield engines[0], engines[1]
    for engine in engines:
        engine.dispose()


def test_truncated_values_in_the_database_are_never_legacy(
    docs: tuple[sa.Engine, sa.Engine],
) -> None:
    """What a too-narrow column or a cut copy leaves, on every backend."""
    app, sentinel = docs
    did = uuid.uuid4()
    with Session(app) as s:
        s.add(Doc(id=did, note=VALUES["note"], payload=VALUES["payload"], doc=VALUES["doc"]))
        s.commit()
    for column in COLUMNS:
        sealed = get_raw(app, DOCS, column, did)
        for n in (1, 2, 3, 21, 22, 33, 34, 49, len(sealed) - 1):
            set_raw(app, DOCS, column, did, sealed[:n])
            with Session(app) as s, pytest.raises(DecryptionError) as info:
                s.get(Doc, did)
            assert (info.value.column, info.value.primary_key) == (column, (did,))
            with Session(sentinel) as s:
                assert getattr(s.get(Doc, did), column) is UNREADABLE
        set_raw(app, DOCS, column, did, sealed)


# -- JSON nested deeper than the parser goes (item 14) -------------------------------------------

DEEP = 200_000


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_deep_json_is_a_located_error_not_a_recursion_error(
    docs: tuple[sa.Engine, sa.Engine], vault: Vault
) -> None:
    """Legacy JSON text and a sealed JSON value (a crafted one: the write path's encoder refuses
    such depth) 200,000 levels deep: that one value is a DecryptionError, or UNREADABLE; the
    parser stops at the interpreter's recursion limit, so the work is bounded by it."""
    app, sentinel = docs
    legacy, sealed, shallow = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with Session(app) as s:
        s.add_all(Doc(id=i, note="t", doc=None) for i in (legacy, sealed, shallow))
        s.commit()
    set_raw(app, DOCS, "doc", legacy, _deep(DEEP))
    set_raw(
        app,
        DOCS,
        "doc",
        sealed,
        vault.encrypt(sealed, b"\x0c" + _deep(DEEP), context="legacy_docs.doc"),
    )
    nested: Any = []
    for _ in range(50):
        nested = [nested]
    with Session(app) as s:
        s.get(Doc, shallow).doc = nested  # type: ignore[union-attr]
        s.commit()
    for pk in (legacy, sealed):
        with Session(app) as s, pytest.raises(DecryptionError) as info:
            s.get(Doc, pk)
        assert (info.value.column, info.value.primary_key) == ("doc", (pk,))
    with Session(sentinel) as s:
        rows = {d.id: d for d in s.scalars(sa.select(Doc))}
    assert rows[legacy].doc is UNREADABLE
    assert rows[sealed].doc is UNREADABLE
    assert rows[shallow].doc == nested
    assert {d.note for d in rows.values()} == {"t"}


def test_a_deep_legacy_json_value_in_a_batch_of_raw_rows(svault: Vault) -> None:
    subject = uuid.uuid4()
    with pytest.raises(DecryptionError):
        _read_one(_reader(svault), subject, "doc", _deep(DEEP))
    assert _read_one(_reader(svault, "sentinel"), subject, "doc", _deep(DEEP)) is UNREADABLE
    assert _read_one(_reader(svault), subject, "doc", b'{"a": [1]}') == {"a": [1]}
    assert json.loads(b'{"a": [1]}') == {"a": [1]}


# -- a subject the installation's type refuses (item 14) -----------------------------------------


@pytest.fixture
def tickets(kms: LocalKms, db_url: str) -> Iterator[tuple[Vault, sa.Engine, sa.Engine]]:
    """A ``str`` installation and its tickets table, attached with on_error="raise" and with
    on_error="sentinel"."""
    vault = Vault(kms, db_url, subject_type="str")
    engines = [sa.create_engine(_app_url(db_url)) for _ in range(2)]
    Base.metadata.create_all(engines[0], tables=[Ticket.__table__])
    vault.attach(engines[0])
    vault.attach(engines[1], on_error="sentinel")
    yield vault, engines[0], engines[1]
    for engine in engines:
        engine.dispose()
    vault.close()


@pytest.mark.parametrize("owner", ["", "x" * 1100, None], ids=["empty", "too-long", "null"])
def test_a_refused_subject_is_a_located_error_not_a_type_error(
    tickets: tuple[Vault, sa.Engine, sa.Engine], owner: str | None
) -> None:
    """``''`` is no subject of a ``str`` installation (``subject_ref('')`` is a TypeError; no
    key was ever made for it) and neither is one longer than 1,024 bytes: a value whose row
    holds one belongs to no one the row names."""
    vault, app, sentinel = tickets
    with pytest.raises(TypeError):
        vault.subject_ref(owner)
    with Session(app) as s:
        s.add_all(Ticket(id=i, owner=o, body=f"ticket of {o}") for i, o in enumerate("abc"))
        s.commit()
    with app.begin() as conn:  # the row's subject is changed behind the model's back
        conn.execute(sa.text("UPDATE tickets SET owner = :o WHERE id = 1"), {"o": owner})
    for read in (
        lambda s: s.scalars(sa.select(Ticket)).all(),
        lambda s: s.execute(sa.select(Ticket.body, Ticket.owner, Ticket.id)).all(),
    ):
        with Session(app) as s, pytest.raises(DecryptionError) as info:
            read(s)
        assert (info.value.table, info.value.column, info.value.primary_key) == (
            "tickets",
            "body",
            (1,),
        )
    with Session(sentinel) as s:
        bodies = {t.id: t.body for t in s.scalars(sa.select(Ticket))}
    assert bodies == {0: "ticket of a", 1: UNREADABLE, 2: "ticket of c"}
