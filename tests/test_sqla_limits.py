"""Issue 10, item 1: no value accepted that cannot be read back.

Each declared length, precision, scale and range is checked before a value is encrypted (the
database sees only ciphertext and can check nothing), and the MariaDB column is always wide
enough for what was accepted. Rules: docs/sqlalchemy.md, "What a column accepts".
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import CcvaultError, ValueRejectedError, Vault
from ccvault.sqlalchemy import Encrypted

D = decimal.Decimal
SECRET = "SECRET-4111-1111"


class Long(enum.Enum):
    """Member names longer than the values the database would store (values_callable)."""

    A_MEMBER_NAME_LONGER_THAN_ITS_VALUE_ÉÉÉ = "a"
    B = "b"


class Base(DeclarativeBase):
    pass


class Row(Base):
    """One encrypted column and its plain twin per rule, in the same row."""

    __tablename__ = "limits"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    s5: Mapped[str | None] = mapped_column(Encrypted(sa.String(5), subject="id"))
    plain_s5: Mapped[str | None] = mapped_column(sa.String(5), nullable=True)
    day: Mapped[dt.date | None] = mapped_column(Encrypted(sa.Date, subject="id"))
    plain_day: Mapped[dt.date | None] = mapped_column(sa.Date, nullable=True)
    money: Mapped[D | None] = mapped_column(Encrypted(sa.Numeric(10, 2), subject="id"))
    plain_money: Mapped[D | None] = mapped_column(sa.Numeric(10, 2), nullable=True)
    searchable: Mapped[str | None] = mapped_column(
        Encrypted(sa.String(5), subject="id", searchable="email")
    )


@pytest.fixture
def engine(app: sa.Engine) -> sa.Engine:
    """The application database of the ``app`` fixture (attached), with this file's table."""
    Base.metadata.create_all(app)
    return app


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(Row)).scalar_one())


def _refused(engine: sa.Engine, column: str, **values: Any) -> ValueRejectedError:
    """Writing ``values`` raises ValueRejectedError naming ``column``; nothing is written."""
    before = _count(engine)
    with Session(engine) as s:
        s.add(Row(**values))
        with pytest.raises(ValueRejectedError) as info:
            s.flush()
    assert info.value.column == f"limits.{column}"
    assert f"limits.{column}" in str(info.value)
    assert _count(engine) == before
    return info.value


def _written(engine: sa.Engine, **values: Any) -> Row:
    with Session(engine, expire_on_commit=False) as s:
        row = Row(**values)
        s.add(row)
        s.commit()
    with Session(engine) as s:
        back = s.get(Row, row.id)
        assert back is not None
        s.expunge(back)
        return back


# -- the cases the issue names ------------------------------------------------------------------


def test_a_datetime_in_a_date_column_is_stored_as_its_date(engine: sa.Engine) -> None:
    """It used to be accepted and then fail every read of the table (DecryptionError)."""
    when = dt.datetime(2020, 1, 2, 23, 30, 15, 123)
    back = _written(engine, day=when, plain_day=when)
    assert back.day == dt.date(2020, 1, 2) == back.plain_day
    assert type(back.day) is dt.date is type(back.plain_day)
    aware = dt.datetime(2020, 1, 2, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    error = _refused(engine, "day", day=aware)
    assert "aware" in str(error)


def test_numeric_precision_and_scale(engine: sa.Engine) -> None:
    _refused(engine, "money", money=D("123456789012.345"))
    _refused(engine, "money", money=D("99999999.995"))  # rounds to 100000000.00
    _refused(engine, "money", money=-(10**8))
    for given, stored in [
        (D("1.005"), "1.01"),  # half away from zero, as PostgreSQL and MariaDB round
        (D("-1.005"), "-1.01"),
        (D("99999999.994"), "99999999.99"),
        (D("1.5"), "1.50"),
        (D("-0.001"), "0.00"),
        (D("1E+3"), "1000.00"),
        (7, "7.00"),
    ]:
        back = _written(engine, money=given, plain_money=given)
        assert str(back.money) == stored, given
        if engine.dialect.name != "sqlite":  # SQLite stores floats (docs: a departure)
            assert str(back.plain_money) == stored


def test_string_length_is_checked_in_characters(engine: sa.Engine) -> None:
    """13 characters used to go into String(5) (and be cut on MariaDB without strict mode)."""
    _refused(engine, "s5", s5="abcdefghijklm")
    _refused(engine, "s5", s5="abcde ")  # PostgreSQL and MariaDB would cut the space
    _refused(engine, "searchable", searchable="x" * 6)  # the str fast path, blind index too
    back = _written(engine, s5="😀" * 5, plain_s5="😀" * 5, searchable="éèêëē")
    assert back.s5 == "😀" * 5 == back.plain_s5
    assert back.searchable == "éèêëē"


def test_core_executemany_refuses_before_sending_anything(engine: sa.Engine) -> None:
    rows = [{"id": uuid.uuid4(), "s5": "ok"}, {"id": uuid.uuid4(), "s5": "too long"}]
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with engine.begin() as conn, pytest.raises(ValueRejectedError, match=r"limits\.s5"):
        conn.execute(Row.__table__.insert(), rows)
    assert not [s for s in sent if "INSERT" in s.upper()]


def test_a_refusal_is_raised_before_sqlalchemy_and_shows_no_value(engine: sa.Engine) -> None:
    """Raised by the statement hook, not wrapped in a StatementError (which prints the
    parameters), chained to nothing, the value nowhere in its text."""
    cases: list[dict[str, Any]] = [
        {"s5": SECRET},
        {"money": D("41111111.115E+9")},
        {"day": dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc)},
        {"s5": "\ud800"},  # not UTF-8: UnicodeEncodeError would carry the text
    ]
    for values in cases:
        error = _refused(engine, next(iter(values)), **values)
        assert not isinstance(error, sa.exc.StatementError)
        assert isinstance(error, CcvaultError)
        assert isinstance(error, ValueError)
        assert error.__cause__ is None
        assert error.__context__ is None
        text = str(error) + repr(error)
        for v in values.values():
            assert str(v) not in text
            assert repr(v) not in text
        assert "4111" not in text
        assert "\\ud800" not in text


# -- every type's rule, on one backend ----------------------------------------------------------


class Tier(enum.Enum):
    BASIC = "basic"


class Stamp(dt.datetime):
    """A datetime subclass (pendulum, pandas and arrow have such): read back as a datetime."""

    def isoformat(self, *args: Any, **kw: Any) -> str:
        return "not ISO at all"


class Day(dt.date):
    def isoformat(self) -> str:
        return "not ISO either"


class Clock(dt.time):
    def isoformat(self, *args: Any, **kw: Any) -> str:
        return "nor this"


_PLUS_2 = dt.timezone(dt.timedelta(hours=2))


class Named(dt.tzinfo):
    """A zone like ``ZoneInfo("Europe/Paris")``, which gives a time without a date no offset."""

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta | None:
        return None if when is None else dt.timedelta(hours=1)

    def dst(self, when: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, when: dt.datetime | None) -> str:
        return "Named"


def _encrypted(name: str, **types: Any) -> sa.Table:
    """A table ``name`` (id, owner) with an encrypted column of each of ``types``."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Uuid),
        *[sa.Column(column, Encrypted(t, subject="owner")) for column, t in types.items()],
    )


def _table() -> sa.Table:
    return _encrypted(
        "types",
        small=sa.SmallInteger,
        i=sa.Integer,
        big=sa.BigInteger,
        f=sa.Float,
        n=sa.Numeric(10, 2),
        nf=sa.Numeric(10, 2, asdecimal=False),
        nu=sa.Numeric,
        tier=sa.Enum(Tier),
        choice=sa.Enum("a", "b", name="choice"),
        doc=sa.JSON,
        blob=sa.LargeBinary(4),
        text=sa.Text,
        day=sa.Date,
        at=sa.DateTime(timezone=True),
        clock=sa.Time,
    )


@pytest.fixture
def types(svault: Vault) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine("sqlite://")
    table = _table()
    table.metadata.create_all(engine)
    svault.attach(engine)
    yield engine, table
    engine.dispose()


REFUSED: list[tuple[str, Any]] = [
    ("small", 2**15),
    ("small", -(2**15) - 1),
    ("i", 2**31),
    ("i", -(2**31) - 1),
    ("big", 2**63),
    ("big", -(2**63) - 1),
    ("f", float("nan")),
    ("f", float("inf")),
    ("f", 10**400),
    ("n", D("NaN")),
    ("n", D("-Infinity")),
    ("n", D("1E+100000")),
    ("nf", 12345678901.0),
    ("nf", float("nan")),
    ("nu", D("sNaN")),
    ("nu", D("9" * 1001)),
    ("nu", D("1E+131072")),
    ("nu", D("1E-16384")),
    ("tier", "bogus"),
    ("tier", "basic"),  # the value, not the name
    ("choice", "c"),
    ("choice", "A"),
    ("doc", {"x": float("nan")}),
    ("doc", ["\udfff"]),
    ("blob", b"12345"),
    ("blob", bytearray(5)),
    ("blob", memoryview(b"\0\0\0\0\0\0").cast("H")),  # 3 items, 6 bytes
    ("text", "lone \ud800 surrogate"),
    ("clock", dt.time(9, 0, tzinfo=Named())),  # a ZoneInfo: no offset without a date
]


@pytest.mark.parametrize(
    ("column", "value"), REFUSED, ids=[f"{c}-{i}" for i, (c, _) in enumerate(REFUSED)]
)
def test_values_the_column_cannot_hold_are_refused(
    types: tuple[sa.Engine, sa.Table], column: str, value: Any
) -> None:
    engine, table = types
    with engine.begin() as conn, pytest.raises(ValueRejectedError) as info:
        conn.execute(table.insert(), {"owner": uuid.uuid4(), column: value})
    assert info.value.column == f"types.{column}"


ACCEPTED: list[tuple[str, Any, Any]] = [
    ("small", -(2**15), -(2**15)),
    ("i", 2**31 - 1, 2**31 - 1),
    ("big", -(2**63), -(2**63)),
    ("f", 1.7976931348623157e308, 1.7976931348623157e308),
    ("f", 2**63, float(2**63)),
    ("n", D("-99999999.99"), D("-99999999.99")),
    ("n", D("0.005"), D("0.01")),
    ("n", D("-0.004"), D("0.00")),
    ("nf", 1.005, 1.01),
    ("nf", 3, 3.0),
    ("nu", D("9" * 1000), D("9" * 1000)),
    ("nu", D("1E+131071"), D("1E+131071")),
    ("nu", D("1E-16383"), D("1E-16383")),
    ("nu", D("-0"), D("0")),
    ("nu", D("1.50"), D("1.50")),
    ("tier", "BASIC", Tier.BASIC),
    ("tier", Tier.BASIC, Tier.BASIC),
    ("choice", "b", "b"),
    ("blob", memoryview(b"\0\0\0\0").cast("H"), b"\0\0\0\0"),
    ("day", Day(2020, 5, 6), dt.date(2020, 5, 6)),
    ("day", Stamp(2020, 5, 6, 23, 59), dt.date(2020, 5, 6)),
    ("at", Stamp(2020, 5, 6, 23, 59, 1, 2), dt.datetime(2020, 5, 6, 23, 59, 1, 2)),
    ("clock", Clock(9, 30, tzinfo=_PLUS_2), dt.time(9, 30, tzinfo=_PLUS_2)),
]


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    ACCEPTED,
    ids=[f"{c}-{i}" for i, (c, *_) in enumerate(ACCEPTED)],
)
def test_values_read_back_as_the_rules_say(
    types: tuple[sa.Engine, sa.Table], column: str, value: Any, expected: Any
) -> None:
    engine, table = types
    with engine.begin() as conn:
        conn.execute(table.insert(), {"id": 1, "owner": uuid.uuid4(), column: value})
        back = conn.execute(sa.select(table.c[column])).scalar_one()
    assert back == expected
    assert type(back) is type(expected)
    if isinstance(expected, D):
        assert str(back) == str(expected)


def test_wrong_python_types_stay_type_errors(types: tuple[sa.Engine, sa.Table]) -> None:
    engine, table = types
    for column, value in [("i", 1.5), ("i", True), ("n", 1.5), ("at", dt.date(2020, 1, 1))]:
        with engine.begin() as conn, pytest.raises(TypeError) as info:
            conn.execute(table.insert(), {"owner": uuid.uuid4(), column: value})
        assert not isinstance(info.value, ValueError)
        assert f"types.{column}" in str(info.value)


# -- MariaDB columns are wide enough for every accepted value ------------------------------------


def _widest() -> sa.Table:
    return _encrypted(
        "widest",
        s5=sa.String(5),
        text=sa.Text,
        blob4=sa.LargeBinary(4),
        blob=sa.LargeBinary,
        doc=sa.JSON,
        small=sa.SmallInteger,
        i=sa.Integer,
        big=sa.BigInteger,
        n=sa.Numeric(10, 2),
        n38=sa.Numeric(38, 30),
        nu=sa.Numeric,
        f=sa.Float,
        flag=sa.Boolean,
        day=sa.Date,
        t=sa.Time(timezone=True),
        at=sa.DateTime(timezone=True),
        named=sa.Enum(Long, values_callable=lambda e: [m.value for m in e]),
        ref=sa.Uuid,
    )


_ODD = dt.timezone(-dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999))
LONGEST: dict[str, Any] = {
    "s5": "😀" * 5,
    "text": "😀" * 20_000,  # 80,000 bytes: more than a TEXT or BLOB holds
    "blob4": b"\xff" * 4,
    "blob": b"\xff" * 70_000,
    "doc": {"k": ["😀" * 5_000] * 4},
    "small": -(2**15),
    "i": -(2**31),
    "big": -(2**63),
    "n": D("-99999999.99"),
    "n38": D("-99999999.999999999999999999999999999999"),
    "nu": D((1, (9,) * 1000, 131_072 - 1000)),  # 1,000 digits, the largest exponent
    "f": -2.2250738585072014e-308,
    "flag": True,
    "day": dt.date.max,
    "t": dt.time(23, 59, 59, 999999, tzinfo=_ODD),
    "at": dt.datetime.max.replace(tzinfo=_ODD),
    "named": Long.A_MEMBER_NAME_LONGER_THAN_ITS_VALUE_ÉÉÉ,
    "ref": uuid.UUID(int=2**128 - 1),
}
ALSO_LONGEST: dict[str, Any] = {  # other worst cases of the text form of a decimal
    "n38": D("-0.000000000000000000000000000001"),
    "nu": D((1, (9,) * 1000, -16_383)),
}
TOO_LONG: dict[str, Any] = {
    "s5": "😀" * 6,
    "blob4": b"\xff" * 5,
    "small": 2**15,
    "i": 2**31,
    "big": 2**63,
    "n": D("100000000"),
    "n38": D("100000000"),
    "nu": D((0, (9,) * 1001, 0)),
}


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_mariadb_without_strict_mode_truncates_nothing(vault: Vault, db_url: str) -> None:
    """With ``sql_mode=''`` MariaDB cuts a too-long value to the column's size with only a
    warning: the ciphertext of a too-long String(5) value used to be cut, and the value lost."""
    engine = sa.create_engine(db_url)

    @sa.event.listens_for(engine, "connect")
    def _lenient(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = ''")

    table = _widest()
    table.metadata.create_all(engine)
    vault.attach(engine)
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() == ""
            conn.execute(table.insert(), {"id": 1, "owner": uuid.uuid4(), **LONGEST})
            conn.execute(table.insert(), {"id": 2, "owner": uuid.uuid4(), **ALSO_LONGEST})
        with engine.connect() as conn:
            back = conn.execute(sa.select(table).order_by(table.c.id)).all()
        for name, value in LONGEST.items():
            assert back[0]._mapping[name] == value, name
        for name, value in ALSO_LONGEST.items():
            assert back[1]._mapping[name] == value, name
        assert back[0]._mapping["at"].utcoffset() == _ODD.utcoffset(None)
        sent.clear()
        for name, value in TOO_LONG.items():
            with engine.begin() as conn, pytest.raises(ValueRejectedError) as info:
                conn.execute(table.insert(), {"id": 3, "owner": uuid.uuid4(), name: value})
            assert info.value.column == f"widest.{name}"
        assert not [s for s in sent if "INSERT" in s.upper()]  # the server saw none of them
    finally:
        engine.dispose()


def test_storage_length_bounds_every_accepted_value(svault: Vault) -> None:
    """The ciphertext of each worst case fits the declared MariaDB column (none is LONGBLOB
    but Text, JSON and LargeBinary without a length)."""
    engine = sa.create_engine("sqlite://")
    table = _widest()
    table.metadata.create_all(engine)
    svault.attach(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), {"id": 1, "owner": uuid.uuid4(), **LONGEST})
        conn.execute(table.insert(), {"id": 2, "owner": uuid.uuid4(), **ALSO_LONGEST})
        names = ", ".join(LONGEST)
        raw = conn.exec_driver_sql(f"SELECT {names} FROM widest").all()
    unbounded = {"text", "blob", "doc"}
    for row in raw:
        for name, blob in zip(LONGEST, row, strict=True):
            limit = table.c[name].type.storage_length()
            assert (limit is None) == (name in unbounded), name
            if limit is not None and blob is not None:
                assert len(blob) <= limit, (name, len(blob), limit)
    ddl = str(sa.schema.CreateTable(table).compile(dialect=mysql.dialect()))
    assert "s5 VARBINARY(71)" in ddl  # 4 bytes a character + 51: unchanged
    assert "named VARBINARY" in ddl
    assert "nu VARBINARY" in ddl


def test_json_deeper_than_the_read_path_parses_is_refused(app: sa.Engine) -> None:
    """A JSON value accepted on write reads back: nesting is bounded well below the recursion
    limit the read path (deeper in the stack) meets; beyond it, a ValueRejectedError naming the
    column, never a RecursionError."""
    from ccvault.sqlalchemy._limits import MAX_JSON_DEPTH

    def nested(depth: int) -> list[object]:
        value: list[object] = []
        for _ in range(depth - 1):
            value = [value]
        return value

    t = _encrypted("json_docs", doc=sa.JSON)
    with app.begin() as conn:
        t.create(conn)
        conn.execute(
            sa.insert(t), [{"id": 1, "owner": uuid.uuid4(), "doc": nested(MAX_JSON_DEPTH)}]
        )
        for depth in (MAX_JSON_DEPTH + 1, 5_000):
            with pytest.raises(ValueRejectedError, match=r"json_docs\.doc: JSON nested"):
                conn.execute(sa.insert(t), [{"id": 2, "owner": uuid.uuid4(), "doc": nested(depth)}])
    with app.connect() as conn:
        (doc,) = conn.execute(sa.select(t.c.doc)).scalars()
    assert doc == nested(MAX_JSON_DEPTH)
