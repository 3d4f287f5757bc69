"""The read loop generated per statement, the first read of rows just written, and the
blind-index companions an entity select leaves out (issue 15, items 3 and 4).

- Rows read right after the same process wrote them compute no subject ref (no HMAC): a key
  created or loaded for a known subject carries it, and refs are cached under every spelling a
  database returns a UUID in. The wrong-subject check is unchanged.
- The generated loop reads every row the generic loop reads, to the same values, sentinels and
  errors: each batch is read both ways and compared.
- An automatically added companion column is deferred: not selected, loaded on access.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import SHREDDED, DecryptionError, Vault
from ccvault.crypto._subject import SubjectType
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import UNREADABLE, Encrypted, _read
from raw_values import get_raw, set_raw, tampered
from sqla_models import Customer


class _Counting:
    """Counts the calls of the ring's subject-ref HMAC."""

    def __init__(self, mac: Any) -> None:
        self.mac = mac
        self.calls = 0

    def __call__(self, data: bytes) -> bytes:
        self.calls += 1
        return bytes(self.mac(data))


def _read_all(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as s:
        return [(c.id, c.name, c.phone, c.email) for c in s.scalars(sa.select(Customer))]


# -- the first read of rows just written (item 3) -----------------------------------------------


def test_rows_just_written_read_back_without_a_subject_hmac(vault: Vault, app: sa.Engine) -> None:
    written = [
        (uuid.uuid4(), f"name {i}", f"+44 20 7946 {i:04d}", f"c{i}@example.com") for i in range(40)
    ]
    with Session(app) as s:
        s.add_all([Customer(id=i, name=n, phone=p, email=e) for i, n, p, e in written])
        s.commit()
    counting = _Counting(vault._ring._ref_mac)
    vault._ring._ref_mac = counting  # type: ignore[assignment]
    assert sorted(_read_all(app)) == sorted(written)  # first read after the write
    assert sorted(_read_all(app)) == sorted(written)  # steady state
    assert counting.calls == 0


def test_a_value_moved_into_a_row_just_written_is_still_refused(
    vault: Vault, app: sa.Engine
) -> None:
    """The key of a value written for customer A carries A: in B's row (B also just written by
    this process) it is compared with B, and refused, on the first read as on every other."""
    a, b = uuid.uuid4(), uuid.uuid4()
    with Session(app) as s:
        s.add_all(
            [
                Customer(id=a, name="A", phone="+1 555 0100"),
                Customer(id=b, name="B", phone="+1 555 0101"),
            ]
        )
        s.commit()
    set_raw(app, Customer.__table__, "name", b, get_raw(app, Customer.__table__, "name", a))
    with Session(app) as s, pytest.raises(DecryptionError) as err:
        s.get(Customer, b)
    assert err.value.column == "name"
    with Session(app) as s:
        assert s.get(Customer, a).name == "A"  # A's own row still reads


def test_subject_spellings_are_the_same_subject() -> None:
    u = uuid.uuid4()
    uuid_type = SubjectType.parse("uuid")
    canonical = uuid_type.canonical(u)
    spellings = uuid_type.spellings(canonical)
    assert spellings == (u, u.hex, str(u))
    assert all(uuid_type.canonical(s) == canonical for s in spellings)
    for declared, value in (("str", "abc"), ("int", 7), ("tuple[uuid,str]", (u, "x"))):
        other = SubjectType.parse(declared)
        assert other.spellings(other.canonical(value)) == ()
        assert other.spellings_of(value, other.canonical(value)) == ()
    # spellings_of: the same forms, a UUID given reused rather than built again
    assert uuid_type.spellings_of(u, canonical) == spellings
    assert uuid_type.spellings_of(u, canonical)[0] is u
    assert uuid_type.spellings_of(u.hex, canonical) == spellings
    assert uuid_type.spellings_of(str(u), canonical) == spellings


def test_a_hex_spelling_shares_the_uuid_ref(svault: Vault) -> None:
    u = uuid.uuid4()
    ref = svault.subject_ref(u)
    counting = _Counting(svault._ring._ref_mac)
    svault._ring._ref_mac = counting  # type: ignore[assignment]
    assert svault._ring.subject_ref(u.hex) == ref
    assert svault._ring.subject_ref(str(u)) == ref
    assert counting.calls == 0
    with pytest.raises(TypeError):
        svault._ring.subject_ref(None)


def _counting_ref_lookups(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record each subject the readers look up by its ref (``Reader.check``: the row loops
    call it for a key that does not remember the row's subject)."""
    seen: list[object] = []
    real = _read.Reader.check

    def counted(self: _read.Reader, key: Any, subject: object) -> None:
        seen.append(subject)
        real(self, key, subject)

    monkeypatch.setattr(_read.Reader, "check", counted)
    return seen


def test_the_first_read_of_rows_just_written_looks_up_no_subject_ref(
    vault: Vault, app: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write remembers each customer's ``uuid.UUID`` on its key; the first read meets the
    subject as the database returns it (32 hex digits on SQLite and MariaDB, a new UUID on
    PostgreSQL) and compares it with that, as the steady state compares: no ref lookup."""
    written = [(uuid.uuid4(), f"name {i}", f"+44 20 7946 {i:04d}", None) for i in range(30)]
    with Session(app) as s:
        s.add_all([Customer(id=i, name=n, phone=p, email=e) for i, n, p, e in written])
        s.commit()
    lookups = _counting_ref_lookups(monkeypatch)
    assert sorted(_read_all(app)) == sorted(written)
    assert sorted(_read_all(app)) == sorted(written)
    assert lookups == []


def test_rows_left_to_the_generic_loop_share_their_batchs_key_lookup(
    vault: Vault, app: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a shredded customer go to the generic loop one by one (their tombstone reads as
    SHREDDED); they use the batch's lookup of warm keys, made once for the batch."""
    gone = uuid.uuid4()
    kept = [(uuid.uuid4(), f"name {i}", f"+44 20 7946 {i:04d}", None) for i in range(5)]
    with Session(app) as s:
        s.add_all([Customer(id=i, name=n, phone=p, email=e) for i, n, p, e in kept])
        s.add(Customer(id=gone, name="gone", phone="+44 20 7946 9999"))
        s.commit()
    vault.shred(gone)
    lookups: list[int] = []
    real = vault._ring.lookup

    def counted() -> Any:
        lookups.append(1)
        return real()

    monkeypatch.setattr(vault._ring, "lookup", counted)
    read = _read_all(app)
    assert sorted(r for r in read if r[0] != gone) == sorted(kept)
    assert [r[1:3] for r in read if r[0] == gone] == [(SHREDDED, SHREDDED)]
    assert len(lookups) == 1


# -- the generated loop reads as the generic loop does (item 4) ---------------------------------


class _Base(DeclarativeBase):
    pass


class Card(_Base):
    __tablename__ = "loop_cards"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    label: Mapped[str | None] = mapped_column(sa.String(20))
    text: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), subject="id"))
    data: Mapped[Any] = mapped_column(Encrypted(sa.JSON, subject="id"), nullable=True)
    blob: Mapped[bytes | None] = mapped_column(Encrypted(sa.LargeBinary, subject="id"))


CARDS = Card.__table__


@pytest.fixture
def cards(tmp_path: Any) -> Iterator[tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]]]:
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'keys.db'}", subject_type="uuid")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    _Base.metadata.create_all(engine)
    vault.attach(engine)
    ids = [uuid.uuid4() for _ in range(6)]
    with Session(engine) as s:
        s.add_all(
            [
                Card(id=i, label=str(n), text=f"text {n}", data={"n": n}, blob=bytes([n]) * 3)
                for n, i in enumerate(ids)
            ]
        )
        s.commit()
    vault.shred(ids[-1])
    names = ", ".join(c.name for c in CARDS.columns)
    with engine.connect() as conn:
        raw = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {names} FROM {CARDS.name}")]
    yield vault, raw, ids
    engine.dispose()
    vault.close()


_MUTATIONS = (
    "keep",
    "none",
    "memoryview",
    "bytearray",
    "moved",
    "tampered",
    "text",
    "unknown",
    "empty",
    "codec",
)


def _sealed(vault: Vault, reader: Any, subject: uuid.UUID, column: int, plaintext: bytes) -> bytes:
    """``plaintext`` sealed as the value of ``column`` (a row index of ``reader``'s statement)
    for ``subject``: under its key and the column's context, so that it opens."""
    col = reader.by_index[column].col
    return bytes(vault._ring.key_for_write(subject, col.label).seal(plaintext, col.ctx_lp))


def _mutate(
    rows: list[tuple[Any, ...]],
    plan: list[tuple[int, int, str]],
    seal: Any,
) -> list[tuple[Any, ...]]:
    """``seal(row, column, plaintext)``: a value of the row's own key and the column's context
    whose plaintext is no value of the column's codec (empty, or another codec's tag)."""
    out = [list(r) for r in rows]
    for row, column, how in plan:
        value = rows[row][column]
        if how in ("empty", "codec"):
            value = seal(rows[row], column, b"" if how == "empty" else b"\xee{}")
        elif how == "none":
            value = None
        elif how == "memoryview":
            value = memoryview(value)
        elif how == "bytearray":
            value = bytearray(value)
        elif how == "moved":  # another customer's value of the same column
            value = rows[(row + 1) % len(rows)][column]
        elif how == "tampered":
            value = tampered(value)
        elif how == "text":
            value = "plain text"
        elif how == "unknown":
            value = value[:2] + uuid.uuid4().bytes + value[18:]
        out[row][column] = value
    return [tuple(r) for r in out]


def _outcome(reader: Any, rows: list[tuple[Any, ...]]) -> Any:
    try:
        return reader.process(rows)
    except DecryptionError as exc:
        return (type(exc), exc.table, exc.column, exc.primary_key)
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("on_error", ["raise", "sentinel"])
@pytest.mark.parametrize("strict", [False, True])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([2, 3, 4]), st.sampled_from(_MUTATIONS)),
        max_size=4,
    ),
    respell=st.sampled_from(["keep", "none", "uuid", "hyphens", "upper", "other"]),
    fast_first=st.booleans(),
)
def test_the_generated_loop_reads_as_the_generic_loop(
    cards: tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]],
    on_error: str,
    strict: bool,
    plan: list[tuple[int, int, str]],
    respell: str,
    fast_first: bool,
) -> None:
    """Row 0's subject as another spelling of it (or None, or row 1's) too; the first read
    starts from the keys as the write left them (each remembering its customer's UUID)."""
    vault, raw, ids = cards
    compiled = sa.select(CARDS).compile(dialect=sa.dialects.sqlite.dialect())
    fast = _read._build_reader(vault._ring, compiled, strict, on_error)  # type: ignore[arg-type]
    generic = _read._build_reader(vault._ring, compiled, strict, on_error)  # type: ignore[arg-type]
    assert fast is not None
    assert generic is not None

    def seal(row: tuple[Any, ...], column: int, plaintext: bytes) -> Any:
        if row[0] == ids[-1].hex:  # shredded: no key to seal with
            return row[column]
        return _sealed(vault, fast, uuid.UUID(row[0]), column, plaintext)

    rows = _mutate(raw, plan, seal)
    spelled = {
        "keep": ids[0].hex,
        "none": None,
        "uuid": ids[0],
        "hyphens": str(ids[0]),
        "upper": ids[0].hex.upper(),
        "other": ids[1].hex,
    }[respell]
    rows = [(spelled, *r[1:]) if r[0] == ids[0].hex else r for r in rows]
    generic.width = -1  # no row is that long: every batch takes the generic loop

    def as_written() -> None:
        for i in ids[:-1]:  # (the last is shredded)
            vault._ring.key_for_write(i, "loop_cards.text")

    for cold in (True, False):  # keys and refs as the write left them, then warm
        first, second = (fast, generic) if fast_first else (generic, fast)
        if cold:
            as_written()
        expected = _outcome(first, rows)
        if cold:
            as_written()
        assert _outcome(second, rows) == expected
    if isinstance(expected, list):
        shredded = [r for r in expected if r[0] == ids[-1].hex]
        assert all(v in (SHREDDED, None, UNREADABLE) for r in shredded for v in r[2:])


@pytest.mark.parametrize("plaintext", [b"", b"\xee{}", b"\x02\x00"])
def test_a_value_of_the_rows_own_key_that_is_no_str_value_is_refused(
    cards: tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]], plaintext: bytes
) -> None:
    """Sealed under the customer's key and the column's context, so that it opens: its
    plaintext is empty, or of another codec. The generated loop refuses it as the generic one
    does, located."""
    vault, raw, ids = cards
    compiled = sa.select(CARDS).compile(dialect=sa.dialects.sqlite.dialect())
    for width in (None, -1):  # the generated loop, then the generic one
        reader = _read._build_reader(vault._ring, compiled, False)
        assert reader is not None
        if width is not None:
            reader.width = width
        value = _sealed(vault, reader, ids[0], 2, plaintext)  # text: a str column
        rows = [(r[0], r[1], value, *r[3:]) if r[0] == ids[0].hex else r for r in raw]
        with pytest.raises(DecryptionError) as err:
            reader.process(rows)
        assert (err.value.column, err.value.primary_key) == ("text", (ids[0],))


def test_a_batch_of_another_width_takes_the_generic_loop(
    cards: tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]],
) -> None:
    vault, raw, _ = cards
    compiled = sa.select(CARDS).compile(dialect=sa.dialects.sqlite.dialect())
    reader = _read._build_reader(vault._ring, compiled, False)
    assert reader is not None
    expected = reader.process(raw)
    longer = [(*r, "extra") for r in raw]
    assert reader.process(longer) == [(*r, "extra") for r in expected]


# -- a row's subject against the subject its key remembers --------------------------------------
#
# Oracle: a value reads in a row exactly when the row's subject has its key's ref (a subject
# the installation's type refuses has none) — whatever the key remembers (``key.checked``: the
# subject the write found it for, or the row a read found it for), in both loops, strict or
# not, raising or reading UNREADABLE. A key only ever remembers a subject with its ref.

A = uuid.UUID("00c0ffee-1234-4abc-8def-0123456789ab")  # leading zeros: "0x..." parses as A
B = uuid.UUID("00c0ffee-1234-4abc-8def-0123456789ac")  # A's hex digits but the last


class _LiarStr(str):
    """Text that says it equals everything."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False


class _OtherUuid(uuid.UUID):
    pass


_UUID_SPELLINGS: list[Any] = [
    A,
    uuid.UUID(str(A)),
    A.hex,
    A.hex.upper(),
    str(A),
    str(A).upper(),
    "-".join(A.hex[i : i + 8] for i in range(0, 32, 8)) + "-",  # 36: 4 hyphens elsewhere
    "--" + A.hex + "--",
    str(A)[:-1],
    f"{{{A}}}",
    A.urn,
    "0x" + A.hex[2:],
    " " + A.hex[1:],
    A.hex[:31],
    A.hex + "0",
    A.hex[:-1] + "g",
    B,
    B.hex,
    str(B),
    _LiarStr(B.hex),
    _LiarStr(A.hex),
    _OtherUuid(int=A.int),
    _OtherUuid(int=B.int),
    None,
    "",
    A.int,
    A.bytes,
    (A,),
]
# None: a key a reader loaded, which remembers no subject yet
_REMEMBERED = [A, uuid.UUID(str(A)), A.hex, str(A), A.hex.upper(), None]
_UUID_CTX = "loop_cards.text"


@pytest.fixture(scope="module")
def spelled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vault, tuple[Any, ...]]]:
    """A's card written through the column types; its stored row as SQLite returns it."""
    path = tmp_path_factory.mktemp("spelled")
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{path / 'keys.db'}", subject_type="uuid")
    engine = sa.create_engine(f"sqlite:///{path / 'app.db'}")
    _Base.metadata.create_all(engine)
    vault.attach(engine)
    with Session(engine) as s:
        s.add_all(
            [
                Card(id=A, label="a", text="text a", data={"n": 1}, blob=b"aaa"),
                Card(id=B, label="b", text="text b", data={"n": 2}, blob=b"bbb"),
            ]
        )
        s.commit()
    names = ", ".join(c.name for c in CARDS.columns)
    with engine.connect() as conn:
        raw = conn.exec_driver_sql(f"SELECT {names} FROM {CARDS.name} WHERE label = 'a'").one()
    engine.dispose()
    yield vault, tuple(raw)
    vault.close()


def _ref(vault: Vault, subject: Any) -> bytes | None:
    try:
        return vault._ring.subject_ref(subject)
    except TypeError:
        return None


def _read_as(
    vault: Vault,
    table: sa.Table,
    row: tuple[Any, ...],
    owner: Any,
    context: str,
    remembered: Any,
    subject: Any,
    generic: bool,
    on_error: str,
) -> None:
    """Read ``row`` with ``subject`` in its subject column (index 0) by a key that remembers
    ``remembered``, and hold the outcome to the oracle."""
    compiled = sa.select(table).compile(dialect=sa.dialects.sqlite.dialect())
    reader = _read._build_reader(vault._ring, compiled, False, on_error)  # type: ignore[arg-type]
    assert reader is not None
    if generic:
        reader.width = -1
    key = vault._ring.key_for_write(owner, context)
    expected = reader.process([row])
    key.checked = remembered
    ok = _ref(vault, subject) == vault._ring.subject_ref(owner)
    if remembered is not None:  # a state a key can be in
        assert _ref(vault, remembered) == vault._ring.subject_ref(owner)
    moved = (subject, *row[1:])
    try:
        out = reader.process([moved])
    except DecryptionError:
        assert not ok
        assert on_error == "raise"
        assert key.checked is remembered
        return
    if ok:
        assert out == [(subject, *expected[0][1:])]
        # the key remembers the row's subject, or one equal to it of its type
        assert key.checked is subject or key.checked is remembered is not None
        assert type(key.checked) is type(subject) or key.checked is remembered is not None
        assert _ref(vault, key.checked) == vault._ring.subject_ref(owner)
    else:
        assert on_error == "sentinel"
        encrypted = [i for i, c in enumerate(table.columns) if isinstance(c.type, Encrypted)]
        assert encrypted
        assert all(out[0][i] is UNREADABLE for i in encrypted)
        assert key.checked is remembered


@pytest.mark.parametrize("on_error", ["raise", "sentinel"])
@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("remembered", _REMEMBERED, ids=repr)
@pytest.mark.parametrize("subject", _UUID_SPELLINGS, ids=repr)
def test_a_row_reads_exactly_when_its_subject_has_the_keys_ref(
    spelled: tuple[Vault, tuple[Any, ...]],
    subject: Any,
    remembered: Any,
    generic: bool,
    on_error: str,
) -> None:
    vault, row = spelled
    _read_as(vault, CARDS, row, A, _UUID_CTX, remembered, subject, generic, on_error)


def test_a_uuids_hex_digits_read_without_a_ref_lookup(
    spelled: tuple[Vault, tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spelling SQLite and MariaDB return is compared with the remembered UUID (no ref
    lookup) and remembered in its place; other spellings are checked by their ref."""
    vault, row = spelled
    lookups = _counting_ref_lookups(monkeypatch)
    for generic in (False, True):
        _read_as(vault, CARDS, row, A, _UUID_CTX, A, A.hex, generic, "raise")
        assert lookups == []
        _read_as(vault, CARDS, row, A, _UUID_CTX, A, uuid.UUID(str(A)), generic, "raise")
        assert lookups == []
        _read_as(vault, CARDS, row, A, _UUID_CTX, A, A.hex.upper(), generic, "raise")
        assert lookups == [A.hex.upper()]
        lookups.clear()
        _read_as(vault, CARDS, row, A, _UUID_CTX, A, B.hex, generic, "raise")
        assert lookups  # checked by its ref (again, where the slow path locates it)
        assert all(looked == B.hex for looked in lookups)
        lookups.clear()


_HEX_EDITS = st.tuples(st.integers(0, 31), st.sampled_from("0123456789abcdefABCDEF-{}x_ g"))


@pytest.mark.parametrize("generic", [False, True])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    subject=st.one_of(
        _HEX_EDITS.map(lambda e: A.hex[: e[0]] + e[1] + A.hex[e[0] + 1 :]),
        _HEX_EDITS.map(lambda e: A.hex[: e[0]] + e[1] + A.hex[e[0] :]),
        _HEX_EDITS.map(lambda e: A.hex[: e[0]] + A.hex[e[0] + 1 :]),
        st.text(alphabet="0123456789abcdef-", min_size=30, max_size=40),
        st.uuids(),
    ),
    remembered=st.sampled_from(_REMEMBERED),
    on_error=st.sampled_from(["raise", "sentinel"]),
)
def test_any_spelling_reads_exactly_when_it_has_the_keys_ref(
    spelled: tuple[Vault, tuple[Any, ...]],
    generic: bool,
    subject: Any,
    remembered: Any,
    on_error: str,
) -> None:
    vault, row = spelled
    _read_as(vault, CARDS, row, A, _UUID_CTX, remembered, subject, generic, on_error)


class _IntBase(DeclarativeBase):
    pass


class Account(_IntBase):
    __tablename__ = "loop_accounts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str | None] = mapped_column(Encrypted(sa.String(100), subject="id"))


@pytest.mark.parametrize("on_error", ["raise", "sentinel"])
@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("remembered", [1, "1", None], ids=repr)
@pytest.mark.parametrize("subject", [1, True, 1.0, "1", "01", " 1", 2, -1, None], ids=repr)
def test_an_int_subject_is_not_a_bool_nor_a_float(
    tmp_path: Any, subject: Any, remembered: Any, generic: bool, on_error: str
) -> None:
    """1, True and 1.0 are equal in Python, and only 1 (or its text) is the subject 1."""
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'keys.db'}", subject_type="int")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    _IntBase.metadata.create_all(engine)
    vault.attach(engine)
    with Session(engine) as s:
        s.add(Account(id=1, text="one"))
        s.commit()
    with engine.connect() as conn:
        (row,) = conn.exec_driver_sql("SELECT id, text FROM loop_accounts").all()
    engine.dispose()
    table = Account.__table__
    context = "loop_accounts.text"
    try:
        _read_as(vault, table, tuple(row), 1, context, remembered, subject, generic, on_error)
    finally:
        vault.close()


@pytest.mark.parametrize("key", [12345, uuid.UUID(int=7), b"\x01" * 16])
def test_a_primary_key_the_dialect_cannot_process_is_named_as_it_is(
    cards: tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]], key: Any
) -> None:
    """SQLite's UUID processor parses text: a key of another type in the row (its subject here,
    read with another customer's value) is named as the driver returned it, and the error
    raised is the read's, not the processor's."""
    vault, raw, _ = cards
    compiled = sa.select(CARDS).compile(dialect=sa.dialects.sqlite.dialect())
    reader = _read._build_reader(vault._ring, compiled, False)
    assert reader is not None
    with pytest.raises(DecryptionError) as err:
        reader.process([(key, *raw[0][1:])])
    assert err.value.table == CARDS.name
    assert err.value.primary_key == (key,)


# -- companions deferred (item 4) ---------------------------------------------------------------


def test_an_entity_select_leaves_the_companions_out_and_loads_them_on_access(
    vault: Vault, app: sa.Engine
) -> None:
    sql = str(sa.select(Customer).compile(app))
    assert "phone_bidx" not in sql
    assert "email_bidx" not in sql
    cid = uuid.uuid4()
    with Session(app) as s:
        s.add(Customer(id=cid, name="N", phone="+44 20 7946 0018", email="n@example.com"))
        s.commit()
    with Session(app) as s:
        found = s.scalars(sa.select(Customer).where(Customer.phone == "+44 20 7946 0018")).one()
        assert found.id == cid
        index = Customer.__table__.c.phone_bidx.type
        expected = vault.blind_indexer(index.context, index.norm, index.length)("+44 20 7946 0018")
        assert found.phone_bidx == expected  # loaded now, by its own SELECT


def test_a_companion_the_model_maps_itself_is_loaded() -> None:
    from ccvault.sqlalchemy import BlindIndex

    class Own(DeclarativeBase):
        pass

    class Person(Own):
        __tablename__ = "loop_people"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        phone: Mapped[str] = mapped_column(
            Encrypted(sa.String(32), subject="id", searchable="phone")
        )
        phone_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("phone", context="loop_people.phone"), index=True
        )

    assert "phone_bidx" in str(sa.select(Person).compile())
