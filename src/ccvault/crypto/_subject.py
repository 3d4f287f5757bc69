"""Data-subject identifiers: the installation's declared type, coercion and canonical bytes.

An installation declares one subject type, recorded in the key store: ``str``, ``int``, ``uuid``
or a tuple of those (e.g. ``tuple[uuid,str]`` for a tenant and a customer). Inputs are coerced to
it or rejected with :class:`TypeError`, so ``shred(str(u))`` erases the subject ``u``.

Canonical bytes (part of the format; vectors in ``tests/vectors/subject_refs.json``)::

    str    0x01 || NFC-normalised UTF-8
    int    0x02 || ASCII decimal, '-' for negatives, no leading zeros
    uuid   0x03 || the 16 bytes of the UUID
    tuple  0x04 || u16 count || (u32 length || canonical(element))*
"""

from __future__ import annotations

import re
import struct
import unicodedata
import uuid
from collections.abc import Sequence

from .._repr import safe_repr
from ._encoding import U32

__all__ = ["Subject", "SubjectType"]

Subject = str | int | uuid.UUID | tuple["Subject", ...]

_SCALARS = ("str", "int", "uuid")
_TAG = {"str": b"\x01", "int": b"\x02", "uuid": b"\x03"}
_TUPLE_TAG = b"\x04"
_INT_RE = re.compile(r"-?(0|[1-9][0-9]{0,127})\Z")
MAX_SUBJECT_BYTES = 1024
_U16 = struct.Struct(">H")


def _scalar_name(t: object) -> str:
    if t is str or t == "str":
        return "str"
    if t is int or t == "int":
        return "int"
    if t is uuid.UUID or t == "uuid":
        return "uuid"
    raise ValueError(f"unsupported subject type {t!r}: use str, int, uuid or a tuple of them")


class SubjectType:
    """The declared type of an installation's data-subject identifiers."""

    __slots__ = ("_parts", "spec")

    def __init__(self, parts: Sequence[str]) -> None:
        if not parts:
            raise ValueError("a subject type needs at least one part")
        self._parts = tuple(parts)
        self.spec = parts[0] if len(parts) == 1 else "tuple[" + ",".join(parts) + "]"

    @classmethod
    def parse(cls, declared: object) -> SubjectType:
        """Accept ``"uuid"``, ``uuid.UUID``, ``"tuple[uuid,str]"``, ``(uuid.UUID, str)``..."""
        if isinstance(declared, SubjectType):
            return declared
        if isinstance(declared, str):
            text = declared.strip().lower().replace(" ", "")
            if text.startswith("tuple[") and text.endswith("]"):
                return cls([_scalar_name(p) for p in text[6:-1].split(",")])
            return cls([_scalar_name(text)])
        if isinstance(declared, tuple | list):
            return cls([_scalar_name(p) for p in declared])
        return cls([_scalar_name(declared)])

    @property
    def is_tuple(self) -> bool:
        return len(self._parts) > 1

    @safe_repr
    def __repr__(self) -> str:
        return f"SubjectType({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubjectType) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def coerce(self, value: object) -> Subject:
        """Return ``value`` as this type, or raise TypeError (the message never echoes it)."""
        if not self.is_tuple:
            return _coerce_scalar(self._parts[0], value)
        if not isinstance(value, tuple | list) or len(value) != len(self._parts):
            raise TypeError(f"subject must be a {len(self._parts)}-tuple ({self.spec})")
        return tuple(_coerce_scalar(p, v) for p, v in zip(self._parts, value, strict=True))

    def spellings(self, canonical: bytes) -> tuple[object, ...]:
        """The forms in which databases return the subject whose canonical bytes are
        ``canonical``, each of which this type coerces back to it: for ``uuid`` the
        :class:`uuid.UUID` (PostgreSQL), its 32 hex digits (SQLAlchemy's ``Uuid`` on SQLite and
        MariaDB, as the driver returns it) and its hyphenated text; nothing for other types
        (a driver returns those as the value itself). A reader that meets a spelling then finds
        its ref cached instead of computing it."""
        if self._parts != ("uuid",) or len(canonical) != 17:
            return ()
        value = uuid.UUID(bytes=canonical[1:])
        return (value, value.hex, str(value))

    def spellings_of(self, subject: object, canonical: bytes) -> tuple[object, ...]:
        """:meth:`spellings` of ``subject``, whose canonical bytes are ``canonical``: a
        :class:`uuid.UUID` of a ``uuid`` type is its own first spelling (not built again from
        the bytes)."""
        if type(subject) is uuid.UUID and self._parts == ("uuid",):
            return (subject, subject.hex, str(subject))
        return self.spellings(canonical)

    def canonical(self, value: object) -> bytes:
        """The canonical bytes of ``value`` coerced to this type."""
        coerced = self.coerce(value)
        if not self.is_tuple:
            out = _encode_scalar(self._parts[0], coerced)
        else:
            assert isinstance(coerced, tuple)
            out = _TUPLE_TAG + _U16.pack(len(coerced))
            for part, item in zip(self._parts, coerced, strict=True):
                enc = _encode_scalar(part, item)
                out += U32.pack(len(enc)) + enc
        if len(out) > MAX_SUBJECT_BYTES:
            raise TypeError(f"subject is longer than {MAX_SUBJECT_BYTES} bytes when encoded")
        return out


def _coerce_scalar(part: str, value: object) -> Subject:
    if part == "uuid":
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                raise TypeError("subject type is uuid: got a str that is not a UUID") from None
        raise TypeError(f"subject type is uuid: got {type(value).__name__}")
    if part == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 1000:
                raise TypeError("subject type is int: the integer is too large")
            return int(value)
        if isinstance(value, str) and _INT_RE.match(value):
            return int(value)
        raise TypeError(f"subject type is int: got {type(value).__name__} that is not an integer")
    # str
    if not isinstance(value, str):
        raise TypeError(f"subject type is str: got {type(value).__name__}")
    if not value:
        raise TypeError("subject must not be an empty string")
    return unicodedata.normalize("NFC", value)


def _encode_scalar(part: str, value: Subject) -> bytes:
    if part == "uuid":
        assert isinstance(value, uuid.UUID)
        return _TAG["uuid"] + value.bytes
    if part == "int":
        assert isinstance(value, int)
        return _TAG["int"] + str(value).encode("ascii")
    assert isinstance(value, str)
    try:
        return _TAG["str"] + value.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError("subject is not valid Unicode text (lone surrogate)") from None
