"""Plaintext serialisation of column values (part of the format: docs/format.md, section 6).

Each value is ``tag || payload``; the tag names the codec so that a value is never read back as
another type. ``None`` is never serialised: it is SQL NULL.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

__all__ = ["Codec", "CodecError", "codec_for"]


class CodecError(Exception):
    """Internal: the bytes are not a value of the codec's type."""


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    tag: int
    python_types: tuple[type, ...]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]

    def dumps(self, value: Any) -> bytes:
        return bytes((self.tag,)) + self.encode(value)

    def loads(self, data: bytes) -> Any:
        if not data or data[0] != self.tag:
            raise CodecError
        try:
            return self.decode(data[1:])
        except (ValueError, TypeError, LookupError, decimal.InvalidOperation) as exc:
            raise CodecError from exc
        except RecursionError:  # JSON nested deeper than the parser goes
            raise CodecError from None


def _utf8(b: bytes) -> str:
    return b.decode("utf-8")


def _enc_int(v: int) -> bytes:
    return str(int(v)).encode("ascii")


def _dec_int(b: bytes) -> int:
    if not b or len(b) > 4300:
        raise ValueError
    return int(b.decode("ascii"))


def _dec_bool(b: bytes) -> bool:
    if b == b"\x01":
        return True
    if b == b"\x00":
        return False
    raise ValueError


def _enc_json(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _dec_datetime(b: bytes) -> dt.datetime:
    return dt.datetime.fromisoformat(b.decode("ascii"))


def _dec_time(b: bytes) -> dt.time:
    return dt.time.fromisoformat(b.decode("ascii"))


def _iso(v: dt.date | dt.time) -> bytes:
    return v.isoformat().encode("ascii")


def _iso_micro(v: dt.datetime | dt.time) -> bytes:
    return v.isoformat(timespec="microseconds").encode("ascii")


STR = Codec("str", 0x01, (str,), str.encode, _utf8)
BYTES = Codec("bytes", 0x02, (bytes, bytearray, memoryview), bytes, bytes)
INT = Codec("int", 0x03, (int,), _enc_int, _dec_int)
DECIMAL = Codec(
    "decimal",
    0x04,
    (decimal.Decimal, int),
    lambda v: str(decimal.Decimal(v)).encode("ascii"),
    lambda b: decimal.Decimal(b.decode("ascii")),
)
BOOL = Codec("bool", 0x05, (bool,), lambda v: b"\x01" if v else b"\x00", _dec_bool)
DATE = Codec("date", 0x06, (dt.date,), _iso, lambda b: dt.date.fromisoformat(b.decode("ascii")))
TIME = Codec("time", 0x07, (dt.time,), _iso_micro, _dec_time)
DATETIME = Codec("datetime", 0x08, (dt.datetime,), _iso_micro, _dec_datetime)
UUID = Codec("uuid", 0x0B, (uuid.UUID,), lambda v: v.bytes, lambda b: uuid.UUID(bytes=b))
JSON = Codec("json", 0x0C, (object,), _enc_json, lambda b: json.loads(b.decode("utf-8")))
FLOAT = Codec(
    "float",
    0x0D,
    (float, int),
    lambda v: repr(float(v)).encode("ascii"),
    lambda b: float(b.decode("ascii")),
)


def _enum_codec(enum_class: type[enum.Enum] | None, choices: tuple[str, ...]) -> Codec:
    if enum_class is not None:
        members = enum_class.__members__

        def encode(v: Any) -> bytes:
            member = v if isinstance(v, enum_class) else enum_class[v]
            return member.name.encode("utf-8")

        def decode(b: bytes) -> Any:
            return members[b.decode("utf-8")]

        return Codec("enum", 0x0A, (enum_class, str), encode, decode)

    allowed = frozenset(choices)

    def encode_str(v: Any) -> bytes:
        if v not in allowed:
            raise ValueError("not one of the enum's values")
        return str(v).encode("utf-8")

    def decode_str(b: bytes) -> str:
        s = b.decode("utf-8")
        if s not in allowed:
            raise ValueError
        return s

    return Codec("enum", 0x0A, (str,), encode_str, decode_str)


def codec_for(type_: sa.types.TypeEngine[Any]) -> Codec:
    """The codec of an SQLAlchemy type (the type ``Encrypted`` wraps)."""
    if isinstance(type_, sa.Enum):
        return _enum_codec(type_.enum_class, tuple(type_.enums))
    if isinstance(type_, sa.JSON):
        return JSON
    if isinstance(type_, sa.Boolean):
        return BOOL
    if isinstance(type_, sa.Uuid):
        return UUID
    if isinstance(type_, sa.DateTime):
        return DATETIME
    if isinstance(type_, sa.Date):
        return DATE
    if isinstance(type_, sa.Time):
        return TIME
    if isinstance(type_, sa.Float):
        return FLOAT if not type_.asdecimal else DECIMAL
    if isinstance(type_, sa.Numeric):
        return DECIMAL if type_.asdecimal else FLOAT
    if isinstance(type_, sa.Integer):
        return INT
    if isinstance(type_, sa.String):
        return STR
    if isinstance(type_, sa.LargeBinary | sa.PickleType):
        return BYTES
    raise TypeError(f"Encrypted does not support {type(type_).__name__} columns")
