"""Property (issue 10): no value accepted that cannot be read back.

For every supported wrapped type ``T``, on SQLite, PostgreSQL and MariaDB, each generated value
(right types, wrong types, boundaries) is written to a plain ``T`` column and to an
``Encrypted(T)`` column of the same database, then:

* what ``Encrypted(T)`` does is the documented rule (docs/sqlalchemy.md, "What a column
  accepts"): the model below says, for each value, TypeError, ValueRejectedError or the value
  reads return;
* where plain ``T`` agrees with that rule, nothing more to say: an accepted value reads back as
  plain ``T`` returns it (same type and value, same UTC offset), a value plain ``T`` refuses
  (any exception from SQLAlchemy, the driver or the database) ccvault refuses before encrypting,
  with an error naming the column;
* where they disagree, one of the named departures below must explain it: the database is lossy
  or lenient in its own way and ccvault is stricter or more faithful. Each is listed in
  docs/sqlalchemy.md, "Where ccvault differs from a plain column". A disagreement no departure
  explains fails the test.

Every accepted ciphertext also fits the column ccvault declares (its MariaDB ``VARBINARY``).

Runtime: one engine, vault and pair of tables per backend; each example writes a few values of
every type. ``CCVAULT_TEST_PROPERTY_EXAMPLES`` sets the number of examples (default 50).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import json
import math
import os
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ccvault import ValueRejectedError, Vault
from ccvault.sqlalchemy import Encrypted

D = decimal.Decimal
EXAMPLES = int(os.environ.get("CCVAULT_TEST_PROPERTY_EXAMPLES", "50"))
UTC = dt.timezone.utc


class Tier(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


CHOICES = ("a", "bb", "ccc")

# -- the model: what Encrypted(T) does with a value (docs/sqlalchemy.md) ------------------------

# an outcome: ("ok", value read back), ("type",) a TypeError, ("value",) a ValueRejectedError;
# for plain columns ("error", exception) instead of the last two
Outcome = tuple[Any, ...]
TYPE: Outcome = ("type",)
VALUE: Outcome = ("value",)


def ok(value: Any) -> Outcome:
    return ("ok", value)


def _text(n: int | None) -> Callable[[Any], Outcome]:
    def model(v: Any) -> Outcome:
        if not isinstance(v, str):
            return TYPE
        try:
            v.encode()
        except UnicodeEncodeError:
            return VALUE
        return VALUE if n is not None and len(v) > n else ok(v)

    return model


def _binary(n: int | None) -> Callable[[Any], Outcome]:
    def model(v: Any) -> Outcome:
        if not isinstance(v, bytes | bytearray | memoryview):
            return TYPE
        return VALUE if n is not None and len(bytes(v)) > n else ok(bytes(v))

    return model


def _json(v: Any) -> Outcome:
    try:
        text = json.dumps(v, ensure_ascii=False, allow_nan=False).encode()
    except TypeError:
        return TYPE
    except ValueError:
        return VALUE
    return ok(json.loads(text))


def _integer(bits: int) -> Callable[[Any], Outcome]:
    def model(v: Any) -> Outcome:
        if isinstance(v, bool) or not isinstance(v, int):
            return TYPE
        return ok(v) if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1) else VALUE

    return model


def _numeric(precision: int | None, scale: int) -> Callable[[Any], Outcome]:
    def model(v: Any) -> Outcome:
        if isinstance(v, bool) or not isinstance(v, D | int):
            return TYPE
        n = D(v)
        if not n.is_finite():
            return VALUE
        if precision is None:
            digits, exponent = n.as_tuple().digits, int(n.as_tuple().exponent)
            too_big = not n.is_zero() and n.adjusted() >= 131_072
            if len(digits) > 1000 or too_big or exponent < -16_383:
                return VALUE
            return ok(abs(n) if n.is_zero() else n)
        if not n.is_zero() and n.adjusted() > precision - scale:
            return VALUE
        context = decimal.Context(prec=precision + 5, rounding=decimal.ROUND_HALF_UP)
        q = n.quantize(D(1).scaleb(-scale), context=context)
        if abs(q) >= D(10) ** (precision - scale):
            return VALUE
        return ok(abs(q) if q.is_zero() else q)

    return model


def _float(v: Any) -> Outcome:
    if isinstance(v, bool) or not isinstance(v, float | int):
        return TYPE
    try:
        f = float(v)
    except OverflowError:
        return VALUE
    return ok(f) if math.isfinite(f) else VALUE


def _boolean(v: Any) -> Outcome:
    return ok(v) if isinstance(v, bool) else TYPE


def _date(v: Any) -> Outcome:
    if not isinstance(v, dt.date):
        return TYPE
    if isinstance(v, dt.datetime):
        return VALUE if v.tzinfo is not None else ok(v.date())
    return ok(v)


def _time(v: Any) -> Outcome:
    if not isinstance(v, dt.time):
        return TYPE
    return VALUE if v.tzinfo is not None and v.utcoffset() is None else ok(v)


def _datetime(v: Any) -> Outcome:
    return ok(v) if isinstance(v, dt.datetime) else TYPE


def _tier(v: Any) -> Outcome:
    if isinstance(v, Tier):
        return ok(v)
    if isinstance(v, str):
        return ok(Tier[v]) if v in Tier.__members__ else VALUE
    return TYPE


def _choice(v: Any) -> Outcome:
    if isinstance(v, str):
        return ok(v) if v in CHOICES else VALUE
    return TYPE


def _uuid(v: Any) -> Outcome:
    return ok(v) if isinstance(v, uuid.UUID) else TYPE


# -- generated values ---------------------------------------------------------------------------


def _zones() -> list[dt.tzinfo]:
    """UTC and two named zones (when the system has the time zone database)."""
    out: list[dt.tzinfo] = [UTC]
    for name in ("Europe/Paris", "Asia/Kolkata"):
        with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError):  # no tzdata: UTC only
            out.append(zoneinfo.ZoneInfo(name))
    return out


_offsets = st.one_of(
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
    st.sampled_from(_zones()),
)
_surrogates = st.sampled_from(["\ud800", "ab\udfffc"])
_wrong = st.one_of(
    st.integers(-2, 2),
    st.text(max_size=3),
    st.floats(-10, 10),
    st.booleans(),
    st.binary(max_size=3),
)


def _mixed(right: st.SearchStrategy[Any], *edges: Any) -> st.SearchStrategy[Any]:
    """Mostly values of the right type, some boundaries, some wrong types, some None."""
    parts = [right, right, right, _wrong, st.none()]
    if edges:
        parts.append(st.sampled_from(edges))
    return st.one_of(*parts)


def _ints(bits: int) -> st.SearchStrategy[Any]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return _mixed(st.integers(2 * lo, 2 * hi), lo - 1, lo, hi, hi + 1, 2**64)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | _surrogates,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_decimals = st.one_of(
    st.decimals(),  # NaN, infinities, wild exponents
    st.decimals(min_value=-(10**9), max_value=10**9, places=3),
    st.integers(-(10**12), 10**12),
)
_aware = st.datetimes(timezones=_offsets)


@dataclass(frozen=True)
class Kind:
    name: str
    type_: sa.types.TypeEngine[Any]
    model: Callable[[Any], Outcome]
    values: st.SearchStrategy[Any]


KINDS = [
    Kind(
        "str5",
        sa.String(5),
        _text(5),
        _mixed(
            st.text(max_size=7) | st.text(max_size=4).map(lambda s: s + "   ") | _surrogates,
            "😀" * 5,
            "😀" * 6,
            "a\x00b",
            "abcdefghijklm",
        ),
    ),
    Kind("text", sa.Text(), _text(None), _mixed(st.text(max_size=40) | _surrogates, "\x00")),
    Kind(
        "blob",
        sa.LargeBinary(),
        _binary(None),
        _mixed(st.binary(max_size=20) | st.binary(max_size=9).map(bytearray)),
    ),
    Kind(
        "blob8",
        sa.LargeBinary(8),
        _binary(8),
        _mixed(st.binary(max_size=12) | st.binary(max_size=9).map(memoryview)),
    ),
    Kind("json", sa.JSON(), _json, _mixed(_json_values)),
    Kind("small", sa.SmallInteger(), _integer(16), _ints(16)),
    Kind("int", sa.Integer(), _integer(32), _ints(32)),
    Kind("big", sa.BigInteger(), _integer(64), _ints(64)),
    Kind(
        "num",
        sa.Numeric(10, 2),
        _numeric(10, 2),
        _mixed(
            _decimals,
            D("123456789012.345"),
            D("99999999.995"),
            D("99999999.994"),
            D("-99999999.995"),
            D("1.005"),
            D("-1.005"),
            D("-0.00"),
            D("1E+3"),
        ),
    ),
    Kind("numu", sa.Numeric(), _numeric(None, 0), _mixed(_decimals, D("1E+131071"), D("-0"))),
    Kind(
        "float",
        sa.Float(),
        _float,
        _mixed(
            st.floats() | st.integers(-(2**63) + 1, 2**63 - 1),
            5e-324,
            -0.0,
            1.7976931348623157e308,
            3.5e38,
            10**400,
        ),
    ),
    Kind("bool", sa.Boolean(), _boolean, _mixed(st.booleans())),
    Kind(
        "date",
        sa.Date(),
        _date,
        _mixed(st.dates() | st.datetimes() | _aware, dt.date.min, dt.date.max),
    ),
    Kind("time", sa.Time(), _time, _mixed(st.times() | st.times(timezones=_offsets))),
    Kind(
        "naive",
        sa.DateTime(),
        _datetime,
        _mixed(st.datetimes() | _aware | st.dates(), dt.datetime.min, dt.datetime.max),
    ),
    Kind(
        "aware",
        sa.DateTime(timezone=True),
        _datetime,
        _mixed(_aware | st.datetimes(), dt.datetime(2020, 1, 2, 3, 4, 5, 678901, UTC)),
    ),
    Kind(
        "tier",
        sa.Enum(Tier, name="tier"),
        _tier,
        _mixed(st.sampled_from(list(Tier)), "BASIC", "GOLD", "gold", "Gold", "bogus", ""),
    ),
    Kind(
        "choice",
        sa.Enum(*CHOICES, name="choice"),
        _choice,
        _mixed(st.sampled_from(CHOICES), "A", "Bb", "d", ""),
    ),
    Kind("uuid", sa.Uuid(), _uuid, _mixed(st.uuids() | st.uuids().map(str))),
]

# -- the named departures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    kind: str
    backend: str
    value: Any
    model: Outcome
    plain: Outcome

    @property
    def plain_ok(self) -> bool:
        return self.plain[0] == "ok"

    @property
    def back(self) -> Any:
        return self.plain[1]


def _wall(v: Any) -> Any:
    return v.replace(tzinfo=None)


def _instant(v: dt.datetime) -> dt.datetime:
    """The UTC wall time of an aware datetime (== refuses to compare in a DST gap or fold)."""
    offset = v.utcoffset()
    return _wall(v) if offset is None else _wall(v) - offset


def _utc_overflows(v: dt.datetime) -> bool:
    try:
        u = v.astimezone(UTC)
    except OverflowError:
        return True
    return not dt.datetime.min.replace(tzinfo=UTC) <= u <= dt.datetime.max.replace(tzinfo=UTC)


def _lengths(c: Case) -> bool:
    """SQLite ignores declared lengths; ``LargeBinary(n)`` is ``bytea`` on PostgreSQL and the
    smallest BLOB type holding n bytes on MariaDB (TINYBLOB: 255): ccvault refuses more than n
    characters or bytes everywhere."""
    return (
        c.model == VALUE
        and c.plain_ok
        and (c.kind == "blob8" or (c.kind == "str5" and c.backend == "sqlite"))
    )


def _trailing_spaces(c: Case) -> bool:
    """PostgreSQL and MariaDB cut excess trailing spaces off a too-long ``String(n)`` value
    without an error: ccvault refuses the value (it never stores less than it was given)."""
    v = c.value
    return (
        c.kind == "str5"
        and c.model == VALUE
        and c.plain_ok
        and len(v.rstrip(" ")) <= 5
        and c.back == v[:5]
    )


def _nul_in_text(c: Case) -> bool:
    """PostgreSQL refuses NUL characters in text: ccvault stores them (it stores bytes)."""
    return (
        c.backend == "postgresql"
        and c.kind in ("str5", "text")
        and c.model[0] == "ok"
        and "\x00" in c.value
        and not c.plain_ok
    )


def _non_finite(c: Case) -> bool:
    """PostgreSQL stores NaN and infinities (double precision) and NaN (numeric); SQLite stores
    infinities and NaN as NULL: ccvault refuses non-finite numbers, as MariaDB does."""
    v = c.value
    non_finite = (isinstance(v, float) and not math.isfinite(v)) or (
        isinstance(v, D) and not v.is_finite()
    )
    return c.kind in ("float", "num", "numu") and c.model == VALUE and non_finite and c.plain_ok


def _sqlite_integers(c: Case) -> bool:
    """SQLite integers are 64-bit whatever the declared type: ccvault keeps Integer to 32 bits
    and SmallInteger to 16, as PostgreSQL and MariaDB do."""
    return (
        c.backend == "sqlite"
        and c.kind in ("small", "int")
        and c.model == VALUE
        and c.plain_ok
        and c.back == c.value
    )


def _exact_types(c: Case) -> bool:
    """Plain columns coerce other Python types (1 for a Boolean, 1.5 or "12" for an Integer, a
    float for a Numeric, a Decimal for a Float, a str for a Uuid, a String or a LargeBinary, a
    date for a DateTime; SQLite stores anything): ccvault raises TypeError."""
    return c.model == TYPE and c.plain_ok


def _aware_date(c: Case) -> bool:
    """A Date column given an aware datetime stores a date that depends on a time zone
    (PostgreSQL's session zone, or the value's own): ccvault refuses it. A naive datetime is
    stored as its date, as the databases do."""
    v = c.value
    return (
        c.kind == "date"
        and isinstance(v, dt.datetime)
        and v.tzinfo is not None
        and c.model == VALUE
        and c.plain_ok
    )


def _enum_case(c: Case) -> bool:
    """MariaDB matches ENUM values case-insensitively ("gold" stores GOLD): ccvault refuses
    anything but a member, a member's name or a choice exactly."""
    return (
        c.backend == "mariadb"
        and c.kind in ("tier", "choice")
        and c.model == VALUE
        and isinstance(c.value, str)
        and c.plain_ok
    )


def _json_nonstandard(c: Case) -> bool:
    """SQLite stores JSON with NaN and infinities, PostgreSQL and SQLite JSON with lone
    surrogates (escaped): ccvault refuses both (not standard JSON, not UTF-8)."""
    return c.kind == "json" and c.model == VALUE and c.plain_ok


def _sqlite_numeric(c: Case) -> bool:
    """SQLite has no decimal type: Numeric values are stored as floats, checked for neither
    precision nor scale, and read back formatted with the scale (10 places without one):
    ccvault stores the exact, rounded decimal."""
    if c.backend != "sqlite" or c.kind not in ("num", "numu"):
        return False
    if c.model[0] != "ok":
        return c.model == VALUE
    places = 2 if c.kind == "num" else 10
    as_float = float(D(c.value))  # what the driver stores
    return c.plain_ok and c.back == D(f"{as_float:.{places}f}")


def _mariadb_numeric(c: Case) -> bool:
    """MariaDB makes a Numeric without precision DECIMAL(10,0) (integers of 10 digits):
    ccvault keeps the exact value, within PostgreSQL's limits."""
    if c.backend != "mariadb" or c.kind != "numu":
        return False
    if c.model[0] != "ok":
        return c.model == VALUE
    rounded = c.model[1].quantize(D(1), rounding=decimal.ROUND_HALF_UP) if c.plain_ok else None
    return not c.plain_ok or c.back == rounded


def _numeric_digits(c: Case) -> bool:
    """PostgreSQL's unconstrained numeric holds up to 131,072 integer digits: ccvault holds
    1,000 digits (and the same places), so that the MariaDB column has a bound."""
    v = c.value
    return (
        c.kind == "numu"
        and c.model == VALUE
        and isinstance(v, D | int)
        and len(D(v).as_tuple().digits) > 1000
        and c.plain_ok
    )


def _mariadb_float(c: Case) -> bool:
    """MariaDB's FLOAT is single precision (|x| < 3.4E38, read back to 6 digits): ccvault
    stores the double, as PostgreSQL and SQLite do."""
    if c.backend != "mariadb" or c.kind != "float" or c.model[0] != "ok":
        return False
    exact = c.model[1]
    # it reads back 6 significant digits
    return not c.plain_ok or math.isclose(c.back, exact, rel_tol=1e-5, abs_tol=1.2e-38)


def _temporal_back(c: Case) -> list[Any]:
    """What plain columns read back for a temporal value: the wall time (offset dropped), the
    UTC time without offset (PostgreSQL timestamp), the same instant in UTC (timestamptz)."""
    v = c.model[1]
    out = [v]
    if getattr(v, "tzinfo", None) is not None:
        out.append(_wall(v))
        if isinstance(v, dt.datetime) and not _utc_overflows(v):
            out.append(_wall(v.astimezone(UTC)))
    if c.backend == "mariadb":
        out += [x.replace(microsecond=0) for x in out]
    return out


def _same_offset(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b and a.utcoffset() == b.utcoffset()


def _offset_kept(c: Case) -> bool:
    """An aware time or datetime keeps its UTC offset exactly (`-05:30` reads back `-05:30`),
    in any column: SQLite and MariaDB drop the offset, PostgreSQL converts a datetime to UTC
    (timestamptz) or to a naive UTC time (timestamp) and drops a time's offset."""
    if c.kind not in ("time", "naive", "aware") or c.model[0] != "ok" or not c.plain_ok:
        return False
    if getattr(c.model[1], "tzinfo", None) is None:
        return False
    back = c.back
    return any(
        (back.tzinfo is None and x.tzinfo is None and back == x)
        or (
            isinstance(back, dt.datetime)
            and back.tzinfo is not None
            and x.tzinfo is not None
            and _instant(back) == _instant(x)
        )
        for x in _temporal_back(c)
    )


def _fractional_seconds(c: Case) -> bool:
    """MariaDB's DATETIME and TIME (no fractional precision declared) drop microseconds:
    ccvault keeps them."""
    return (
        c.backend == "mariadb"
        and c.kind in ("time", "naive", "aware")
        and c.model[0] == "ok"
        and c.plain_ok
        and c.back == c.model[1].replace(microsecond=0)
    )


def _naive_stays_naive(c: Case) -> bool:
    """PostgreSQL's timestamptz reads a naive value back aware (in the session's zone): ccvault
    reads naive back naive."""
    v = c.value
    return (
        c.backend == "postgresql"
        and c.kind == "aware"
        and isinstance(v, dt.datetime)
        and v.tzinfo is None
        and c.model[0] == "ok"
        and c.plain_ok
        and c.back.tzinfo is not None
        and _wall(c.back.astimezone(UTC)) == v
    )


def _utc_out_of_range(c: Case) -> bool:
    """PostgreSQL converts an aware datetime to UTC, which leaves years 1-9999 near the ends
    (psycopg then refuses it): ccvault stores it with its offset."""
    v = c.value
    return (
        c.backend == "postgresql"
        and c.kind in ("naive", "aware")
        and isinstance(v, dt.datetime)
        and v.tzinfo is not None
        and c.model[0] == "ok"
        and not c.plain_ok
        and _utc_overflows(v)
    )


def _mariadb_uuid(c: Case) -> bool:
    """MariaDB's UUID type refuses UUIDs whose version digit is 8 or more (the nil and max
    UUIDs aside): ccvault stores any UUID, as PostgreSQL and SQLite do."""
    v = c.value
    return (
        c.backend == "mariadb"
        and c.kind == "uuid"
        and c.model[0] == "ok"
        and not c.plain_ok
        and (v.int >> 76) & 0xF >= 8
    )


def _pg_time_offsets(c: Case) -> bool:
    """PostgreSQL's time with time zone takes offsets up to 15:59 only (psycopg sends an aware
    time as one): ccvault stores any offset Python allows."""
    v = c.value
    return (
        c.backend == "postgresql"
        and c.kind == "time"
        and isinstance(v, dt.time)
        and (offset := v.utcoffset()) is not None
        and abs(offset) >= dt.timedelta(hours=16)
        and c.model[0] == "ok"
        and not c.plain_ok
    )


def _named_zone_time(c: Case) -> bool:
    """A time in a named zone (``ZoneInfo``) has no UTC offset without a date: SQLite and
    MariaDB drop the zone, psycopg refuses it; ccvault refuses it too."""
    v = c.value
    return (
        c.kind == "time"
        and isinstance(v, dt.time)
        and v.tzinfo is not None
        and v.utcoffset() is None
        and c.model == VALUE
        and c.plain_ok
    )


def _sqlite_json_numbers(c: Case) -> bool:
    """A JSON column has NUMERIC affinity on SQLite: a JSON document that is a bare number is
    stored as an SQLite number (0.0 reads back 0, large integers lose digits): ccvault returns
    the JSON value."""
    if c.backend != "sqlite" or c.kind != "json" or c.model[0] != "ok" or not c.plain_ok:
        return False
    v, back = c.model[1], c.back
    numbers = (int, float)
    if not isinstance(v, numbers) or isinstance(v, bool) or not isinstance(back, numbers):
        return False
    try:
        expected = float(v)
    except OverflowError:  # an integer beyond the float range: SQLite keeps it as infinity
        expected = math.copysign(math.inf, v)
    return back == expected or math.isclose(float(back), expected, rel_tol=1e-15)


DEPARTURES: dict[str, Callable[[Case], bool]] = {
    "lengths are checked everywhere": _lengths,
    "trailing spaces are not cut": _trailing_spaces,
    "NUL in text (PostgreSQL)": _nul_in_text,
    "non-finite numbers are refused": _non_finite,
    "integer widths on SQLite": _sqlite_integers,
    "exact Python types": _exact_types,
    "aware datetime for a Date": _aware_date,
    "Enum case (MariaDB)": _enum_case,
    "standard JSON only": _json_nonstandard,
    "Numeric on SQLite": _sqlite_numeric,
    "Numeric without precision on MariaDB": _mariadb_numeric,
    "Numeric without precision: 1,000 digits": _numeric_digits,
    "Float on MariaDB": _mariadb_float,
    "offsets are kept": _offset_kept,
    "fractional seconds on MariaDB": _fractional_seconds,
    "naive stays naive (PostgreSQL timestamptz)": _naive_stays_naive,
    "UTC out of range (PostgreSQL)": _utc_out_of_range,
    "UUID versions (MariaDB)": _mariadb_uuid,
    "time offsets (PostgreSQL)": _pg_time_offsets,
    "bare JSON numbers (SQLite)": _sqlite_json_numbers,
    "times in a named zone": _named_zone_time,
}


def _same(a: Any, b: Any) -> bool:
    """Same type and value, recursively; aware values also the same UTC offset."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime | dt.time):  # (== is False across zones in a DST gap or fold)
        return _wall(a) == _wall(b) and a.utcoffset() == b.utcoffset()
    return bool(a == b)


def _agrees(model: Outcome, plain: Outcome) -> bool:
    if model[0] == "ok":
        return plain[0] == "ok" and _same(model[1], plain[1])
    return plain[0] == "error"


# -- the rig: two tables per backend ------------------------------------------------------------


@dataclass
class Rig:
    backend: str
    engine: sa.Engine
    plain: sa.Table
    enc: sa.Table
    owner: uuid.UUID


@pytest.fixture
def rig(vault: Vault, db_url: str) -> Iterator[Rig]:
    backend = sa.make_url(db_url).get_backend_name()
    backend = {"mysql": "mariadb"}.get(backend, backend)
    md = sa.MetaData()
    plain = sa.Table(
        "plain_t",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *[sa.Column(f"c_{k.name}", k.type_) for k in KINDS],
        mysql_charset="utf8mb4",
    )
    enc = sa.Table(
        "enc_t",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("owner", sa.Uuid),
        *[sa.Column(f"c_{k.name}", Encrypted(k.type_, subject="owner")) for k in KINDS],
    )
    url = db_url.replace("keys.db", "app.db") if backend == "sqlite" else db_url
    engine = sa.create_engine(url)
    if backend == "sqlite":  # commits without fsync: the file is thrown away

        @sa.event.listens_for(engine, "connect")
        def _fast(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous = OFF")

    md.create_all(engine)
    vault.attach(engine)
    try:
        yield Rig(backend, engine, plain, enc, uuid.uuid4())
    finally:
        engine.dispose()


def _plain_outcomes(
    conn: sa.Connection, rig: Rig, kind: Kind, rows: dict[int, Any]
) -> dict[int, Outcome]:
    """Each value written to the plain column and read back (a batch, else one by one), each
    attempt in a savepoint of the example's one transaction."""
    col = rig.plain.c[f"c_{kind.name}"]
    out: dict[int, Outcome] = {}
    try:
        with conn.begin_nested():
            conn.execute(rig.plain.insert(), [{"id": i, col.key: v} for i, v in rows.items()])
        written = list(rows)
    except Exception:
        written = []
        for i, v in rows.items():
            try:
                with conn.begin_nested():
                    conn.execute(rig.plain.insert(), {"id": i, col.key: v})
                written.append(i)
            except Exception as exc:
                out[i] = ("error", exc)
    query = sa.select(rig.plain.c.id, col)
    try:
        with conn.begin_nested():
            found = dict(conn.execute(query.where(rig.plain.c.id.in_(written))).all())
        out.update({i: ok(found[i]) for i in written})
    except Exception:
        for i in written:  # a value the column took but cannot return (SQLite Enum, PG dates)
            try:
                with conn.begin_nested():
                    out[i] = ok(conn.execute(query.where(rig.plain.c.id == i)).one()[1])
            except Exception as exc:
                out[i] = ("error", exc)
    return out


def _encrypted_outcomes(
    conn: sa.Connection, rig: Rig, kind: Kind, rows: dict[int, Any]
) -> dict[int, Outcome]:
    """Each value written to the encrypted column and read back: a refused value raises before
    anything reaches the database, so the transaction goes on."""
    col = rig.enc.c[f"c_{kind.name}"]
    label = f"enc_t.c_{kind.name}"
    out: dict[int, Outcome] = {}
    written = []
    for i, v in rows.items():
        error: Exception | None = None
        try:
            conn.execute(rig.enc.insert(), {"id": i, "owner": rig.owner, col.key: v})
            written.append(i)
        except (ValueRejectedError, TypeError) as exc:
            error = exc
        if error is None:
            continue
        # raised by the statement hook: no StatementError (which prints the parameters)
        assert not isinstance(error, sa.exc.StatementError)
        assert label in str(error), error
        if isinstance(error, ValueRejectedError):
            assert error.column == label
            out[i] = VALUE
        else:
            out[i] = TYPE
    query = sa.select(rig.enc.c.id, col).where(rig.enc.c.id.in_(written))
    out.update({i: ok(v) for i, v in conn.execute(query)})
    # every ciphertext fits the column ccvault declares (VARBINARY on MariaDB)
    limit = col.type.storage_length()  # type: ignore[attr-defined]
    if limit is not None:
        raw = conn.exec_driver_sql(f"SELECT id, c_{kind.name} FROM enc_t").all()
        for i, blob in raw:
            assert blob is None or len(blob) <= limit, (kind.name, i, len(blob), limit)
    return out


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    values=st.fixed_dictionaries(
        {k.name: st.lists(k.values, min_size=1, max_size=3) for k in KINDS}
    )
)
def test_encrypted_reads_back_what_plain_reads_back(rig: Rig, values: dict[str, list[Any]]) -> None:
    with rig.engine.begin() as conn:
        conn.execute(rig.plain.delete())
        conn.execute(rig.enc.delete())
        outcomes = []
        next_id = 0
        for kind in KINDS:
            rows = {}
            for v in values[kind.name]:
                rows[next_id] = v
                next_id += 1
            plain = _plain_outcomes(conn, rig, kind, rows)
            enc = _encrypted_outcomes(conn, rig, kind, rows)
            outcomes.append((kind, rows, plain, enc))
    for kind, rows, plain, enc in outcomes:
        for i, v in rows.items():
            model = ok(None) if v is None else kind.model(v)
            where = f"{kind.name} on {rig.backend}: {v!r}"
            # ccvault does what its rules say
            assert enc[i][0] == model[0], f"{where}: ccvault {enc[i]}, rule {model}"
            if model[0] == "ok":
                assert _same(enc[i][1], model[1]), f"{where}: read back {enc[i][1]!r}"
            # and agrees with plain T, or a named departure says why not
            if _agrees(model, plain[i]):
                continue
            case = Case(kind.name, rig.backend, v, model, plain[i])
            names = [name for name, applies in DEPARTURES.items() if applies(case)]
            assert names, f"{where}: ccvault {model}, plain {plain[i]!r}: no departure explains it"
            event(f"departure: {names[0]}")
