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


def test_a_hex_spelling_shares_the_uuid_ref(svault: Vault) -> None:
    u = uuid.uuid4()
    ref = svault.subject_ref(u)
    counting = _Counting(svault._ring._ref_mac)
    svault._ring._ref_mac = counting  # type: ignore[assignment]
    assert svault._ring.subject_ref(u.hex) == ref
    assert svault._ring.subject_ref(str(u)) == ref
    assert svault._ring.ref_getter()(u.hex) == ref
    assert counting.calls == 0
    with pytest.raises(TypeError):
        svault._ring.ref_getter()(None)


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


_MUTATIONS = ("keep", "none", "memoryview", "bytearray", "moved", "tampered", "text", "unknown")


def _mutate(rows: list[tuple[Any, ...]], plan: list[tuple[int, int, str]]) -> list[tuple[Any, ...]]:
    out = [list(r) for r in rows]
    for row, column, how in plan:
        value = rows[row][column]
        if how == "none":
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
    drop_subject=st.booleans(),
)
def test_the_generated_loop_reads_as_the_generic_loop(
    cards: tuple[Vault, list[tuple[Any, ...]], list[uuid.UUID]],
    on_error: str,
    strict: bool,
    plan: list[tuple[int, int, str]],
    drop_subject: bool,
) -> None:
    vault, raw, ids = cards
    rows = _mutate(raw, plan)
    if drop_subject:
        rows = [(None, *r[1:]) if r[0] == ids[0].hex else r for r in rows]
    compiled = sa.select(CARDS).compile(dialect=sa.dialects.sqlite.dialect())
    fast = _read._build_reader(vault._ring, compiled, strict, on_error)  # type: ignore[arg-type]
    generic = _read._build_reader(vault._ring, compiled, strict, on_error)  # type: ignore[arg-type]
    assert fast is not None
    assert generic is not None
    generic.width = -1  # no row is that long: every batch takes the generic loop
    for _ in range(2):  # cold (keys and refs as the write left them), then warm
        expected = _outcome(generic, rows)
        assert _outcome(fast, rows) == expected
    if isinstance(expected, list):
        shredded = [r for r in expected if r[0] == ids[-1].hex]
        assert all(v in (SHREDDED, None, UNREADABLE) for r in shredded for v in r[2:])


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
