"""What a declared column type can hold, checked before a value is encrypted.

The database never sees the value of an encrypted column, only its ciphertext, so the limits it
would enforce on the plain column (a ``String(5)`` holds five characters, a ``Numeric(10, 2)``
eight integer digits) are checked here, once per value, from limits computed once per type. A
value of the right Python type that the column cannot hold raises :class:`Rejected` with a reason
that never contains the value; the write hook turns it into ``ValueRejectedError`` naming the
column. The same limits bound the bytes a value can take (``max_payload``), from which the
MariaDB/MySQL column is sized.

The rules (docs/sqlalchemy.md, "Types"):

* ``String(n)``, ``Text(n)``, ``Unicode(n)``: at most ``n`` characters (as PostgreSQL and MariaDB
  count them), text that UTF-8 can encode (no lone surrogates).
* ``LargeBinary(n)``: at most ``n`` bytes.
* ``SmallInteger``, ``Integer``, ``BigInteger``: 16-, 32- and 64-bit signed ranges.
* ``Numeric(p, s)``: rounded to ``s`` fractional digits, half away from zero (what PostgreSQL and
  MariaDB store), then at most ``p - s`` integer digits. ``Numeric`` without precision: at most
  1,000 digits, 131,072 integer and 16,383 fractional places (PostgreSQL's limits). Finite only.
* ``Float``: finite, within the float range.
* ``Date``: a naive ``datetime`` is stored as its date (as the three databases do); an aware one
  is refused (its date depends on a time zone the column cannot hold).
* ``Time``: a time in a named zone (``ZoneInfo``) is refused: it has no UTC offset without a
  date (psycopg refuses it; SQLite and MariaDB would drop the zone).
* ``Enum``: one of its members (or member names, or string choices).
* Subclasses of ``date``, ``time``, ``datetime`` are stored as the plain type (what reads return).
* ``JSON``: nested at most ``MAX_JSON_DEPTH`` (200) arrays/objects deep, so that a value written
  from a shallow stack is never too deep for the parser on the (deeper) read path.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ._codec import Codec

__all__ = ["Limits", "Rejected", "limits_for"]

# PostgreSQL's unconstrained numeric, and a digit bound that keeps its text form short
UNBOUNDED_DIGITS = 1000
UNBOUNDED_INTEGER_PLACES = 131_072
UNBOUNDED_FRACTION_PLACES = 16_383

# Bytes a fixed-size value takes at most (ISO texts with microseconds and a UTC offset that has
# seconds and microseconds, the longest float repr); 64 has been the sizing floor of these types
_SCALAR_PAYLOAD = 64


class Rejected(Exception):
    """Internal: a value of the right type the column cannot hold; the reason names no value."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one declared type.

    ``max_chars``: the most characters of a ``str`` value (``sys.maxsize`` when unbounded), the one
    comparison on the write hook's ``str`` fast path. ``check``: validates a value of the codec's
    Python types and returns the value to serialise (a rounded decimal, a date), or raises
    :class:`Rejected`; None when there is nothing to check. ``max_payload``: the most bytes of the
    codec's payload (the tag excluded), None when unbounded.
    """

    max_chars: int
    check: Callable[[Any], Any] | None
    max_payload: int | None


def limits_for(type_: sa.types.TypeEngine[Any], codec: Codec) -> Limits:
    """The limits of ``type_`` (the type ``Encrypted`` wraps), serialised by ``codec``."""
    name = codec.name
    if name == "str":
        length = getattr(type_, "length", None)
        if length is None:
            return Limits(sys.maxsize, None, None)
        return Limits(length, _chars(length, type(type_).__name__), 4 * length)  # UTF-8
    if name == "bytes":
        length = getattr(type_, "length", None) if isinstance(type_, sa.LargeBinary) else None
        if length is None:
            return Limits(sys.maxsize, None, None)
        return Limits(sys.maxsize, _bytes(length), length)
    if name == "int":
        bits = _integer_bits(type_)
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return Limits(sys.maxsize, _int_range(lo, hi, bits), len(str(lo)))
    if name in ("decimal", "float"):
        precision = getattr(type_, "precision", None)
        number: Callable[[Any], decimal.Decimal]
        if isinstance(type_, sa.Float) or precision is None:  # Float's precision is binary
            number = _decimal_unbounded
            payload = UNBOUNDED_DIGITS + 24  # sign, point, leading zeros, exponent
        else:
            scale = getattr(type_, "scale", None) or 0
            number = _decimal_scaled(precision, scale)
            # the text of a value of at most `precision` digits: sign, point, up to 5 leading
            # zeros (0.000001) or an exponent (-1.5E-30) of up to 18 digits
            payload = precision + 26
        if name == "float":
            check = _float if number is _decimal_unbounded else _float_scaled(number)
            return Limits(sys.maxsize, check, _SCALAR_PAYLOAD)
        return Limits(sys.maxsize, number, max(payload, _SCALAR_PAYLOAD))
    if name == "date":
        return Limits(sys.maxsize, _date, _SCALAR_PAYLOAD)
    if name == "time":
        return Limits(sys.maxsize, _time, _SCALAR_PAYLOAD)
    if name == "datetime":
        return Limits(sys.maxsize, _datetime, _SCALAR_PAYLOAD)
    if name == "enum":
        return _enum_limits(type_)
    if name == "json":
        return Limits(sys.maxsize, _json_depth, None)
    return Limits(sys.maxsize, None, _SCALAR_PAYLOAD)  # bool, uuid


MAX_JSON_DEPTH = 200


def _json_depth(value: Any) -> Any:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise Rejected(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)
    return value


# -- text and bytes ------------------------------------------------------------------------------


def _chars(length: int, type_name: str) -> Callable[[Any], Any]:
    reason = f"longer than the {length} characters {type_name}({length}) holds"

    def check(value: str) -> str:
        if len(value) > length:
            raise Rejected(reason)
        return value

    return check


def _bytes(length: int) -> Callable[[Any], Any]:
    reason = f"longer than the {length} bytes LargeBinary({length}) holds"

    def check(value: bytes | bytearray | memoryview) -> Any:
        n = value.nbytes if isinstance(value, memoryview) else len(value)
        if n > length:
            raise Rejected(reason)
        return value

    return check


# -- numbers -------------------------------------------------------------------------------------


def _integer_bits(type_: sa.types.TypeEngine[Any]) -> int:
    """The strictest of PostgreSQL, MariaDB and SQLite for the integer type."""
    if isinstance(type_, sa.SmallInteger):
        return 16
    if isinstance(type_, sa.BigInteger):
        return 64
    return 32


def _int_range(lo: int, hi: int, bits: int) -> Callable[[Any], Any]:
    reason = f"out of the {bits}-bit range of the column's integer type"

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise Rejected(reason)
        return value

    return check


_NOT_FINITE = "not a finite number"


def _finite_decimal(value: decimal.Decimal | int) -> decimal.Decimal:
    number = decimal.Decimal(value)
    if not number.is_finite():
        raise Rejected(_NOT_FINITE)
    return number


def _decimal_unbounded(value: decimal.Decimal | int) -> decimal.Decimal:
    number = _finite_decimal(value)
    _, digits, exponent = number.as_tuple()
    if number.is_zero():
        number = number.copy_abs()  # -0 is stored as 0, as PostgreSQL does
    if (
        len(digits) > UNBOUNDED_DIGITS
        or (not number.is_zero() and number.adjusted() >= UNBOUNDED_INTEGER_PLACES)
        or -int(exponent) > UNBOUNDED_FRACTION_PLACES
    ):
        raise Rejected(
            f"beyond what a Numeric without precision holds here ({UNBOUNDED_DIGITS} digits, "
            f"{UNBOUNDED_INTEGER_PLACES} integer and {UNBOUNDED_FRACTION_PLACES} fractional "
            "places)"
        )
    return number


def _decimal_scaled(precision: int, scale: int) -> Callable[[Any], decimal.Decimal]:
    places = precision - scale  # integer digits the column holds
    quantum = decimal.Decimal(1).scaleb(-scale)
    reason = (
        f"more than the {places} integer digits Numeric({precision}, {scale}) holds"
        if places > 0
        else f"not below 1E{places}, the largest Numeric({precision}, {scale}) holds"
    )

    def check(value: decimal.Decimal | int) -> decimal.Decimal:
        number = _finite_decimal(value)
        if not number.is_zero() and number.adjusted() >= places + 1:
            raise Rejected(reason)  # too large even before rounding (and for quantize)
        # a context of its own (contexts collect flags; this runs in many threads), with enough
        # precision for every value that can fit: at most precision + 1 digits before the check
        context = decimal.Context(
            prec=precision + 2,
            rounding=decimal.ROUND_HALF_UP,  # half away from zero, as PostgreSQL and MariaDB
            Emax=decimal.MAX_EMAX,
            Emin=decimal.MIN_EMIN,
        )
        rounded = number.quantize(quantum, context=context)
        if rounded.is_zero():
            return rounded.copy_abs()  # -0.00 is stored as 0.00, as the databases do
        if rounded.adjusted() >= places:
            raise Rejected(reason)
        return rounded

    return check


def _float(value: float | int) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise Rejected("out of the float range") from None
    if not math.isfinite(number):
        raise Rejected(_NOT_FINITE)
    return number


def _float_scaled(number: Callable[[Any], decimal.Decimal]) -> Callable[[Any], Any]:
    """``Numeric(p, s, asdecimal=False)``: the float of the value rounded as a decimal."""

    def check(value: float | int) -> float:
        exact = decimal.Decimal(repr(_float(value))) if isinstance(value, float) else value
        return float(number(exact))

    return check


# -- dates and times -----------------------------------------------------------------------------


# the fields that rebuild a subclass instance (pendulum's, pandas' Timestamp) as the base type,
# which is what reads return, serialised by the base type's isoformat
_DAY = ("year", "month", "day")
_CLOCK = ("hour", "minute", "second", "microsecond", "tzinfo")


def _date(value: dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise Rejected(
                "an aware datetime for a Date column: its date depends on the time zone; "
                "pass a date"
            )
        return value.date()
    if type(value) is not dt.date:
        return dt.date(*(getattr(value, f) for f in _DAY))
    return value


def _time(value: dt.time) -> dt.time:
    if value.tzinfo is not None and value.utcoffset() is None:
        raise Rejected(
            "a time in a named time zone, which has no UTC offset without a date; pass a "
            "fixed offset (datetime.timezone) or a naive time"
        )
    if type(value) is not dt.time:
        return dt.time(*(getattr(value, f) for f in _CLOCK), fold=value.fold)
    return value


def _datetime(value: dt.datetime) -> dt.datetime:
    if type(value) is not dt.datetime:
        return dt.datetime(*(getattr(value, f) for f in _DAY + _CLOCK), fold=value.fold)
    return value


# -- enums ---------------------------------------------------------------------------------------


def _enum_limits(type_: sa.types.TypeEngine[Any]) -> Limits:
    enum_class: type[enum.Enum] | None = getattr(type_, "enum_class", None)
    choices: list[str] = list(getattr(type_, "enums", []))
    stored = list(enum_class.__members__) if enum_class is not None else choices
    # the codec stores member names (string choices: the value); 4 times the longest value
    # has been the sizing so far and stays, unless a member name is longer (values_callable)
    payload = max([len(s.encode()) for s in stored] + [4 * len(s.encode()) for s in choices] + [1])
    reason = "not one of the Enum's values"
    if enum_class is not None:
        members = enum_class.__members__
        cls = enum_class

        def check_member(value: Any) -> Any:
            if isinstance(value, cls) or value in members:
                return value
            raise Rejected(reason)

        return Limits(sys.maxsize, check_member, payload)
    allowed = frozenset(choices)

    def check_choice(value: Any) -> Any:
        if value not in allowed:
            raise Rejected(reason)
        return value

    return Limits(sys.maxsize, check_choice, payload)
