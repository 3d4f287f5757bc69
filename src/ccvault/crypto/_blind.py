"""Blind indexes: normalisers and the keyed, truncated HMAC of a normalised value.

Part of the format (vectors in tests/vectors/blind_index_v1.json)::

    column key = HKDF-SHA256(ikm = K_bidx, salt = "ccvault/bidx/v1",
                             info = lp(normaliser id, u32(normaliser version), parameters,
                                       context label))
    index      = HMAC-SHA256(column key, UTF-8(normalise(value)))[:length]

``K_bidx`` is a long-lived random key (kind ``bidx``). A change of normaliser version or
parameters gives other keys, so old and new indexes never compare equal by accident.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from .._repr import safe_repr
from ._encoding import lp, u32
from ._primitives import HmacSha256, hkdf_sha256

__all__ = ["BlindIndexer", "Normalizer", "blind_index", "column_key", "normalizer"]

_SALT = b"ccvault/bidx/v1"
_PHONE_JUNK = re.compile(r"[\s().\-/]")
_NOT_DIGIT = re.compile(r"[^0-9]")


@dataclass(frozen=True, slots=True)
class Normalizer:
    """How a value is normalised before indexing: id, version and parameters are in the key."""

    id: str
    version: int
    params: str = ""

    @property
    def spec(self) -> str:
        return f"{self.id}:{self.params}" if self.params else self.id

    def __call__(self, value: str) -> str:
        if not isinstance(value, str):
            raise TypeError("blind indexes take str values")
        return self.function()(value)

    def function(self) -> Callable[[str], str]:
        """The normalisation as a plain function of a str (the caller checks the type)."""
        return _function(self.id, self.params)

    def utf8(self) -> Callable[[str], bytes]:
        """``function()(value).encode("utf-8")`` as one plain function (what a blind index
        hashes), faster on ASCII text: the same bytes, the same errors."""
        return _utf8(self.id, self.params)


@functools.cache
def _function(kind: str, params: str) -> Callable[[str], str]:
    if kind == "exact":
        return _exact
    if kind == "email":
        return _email
    return functools.partial(_phone, country_code=params)


def _exact(value: str) -> str:
    if value.isascii():  # NFC is the identity on ASCII
        return value
    return unicodedata.normalize("NFC", value)


def _email(value: str) -> str:
    if value.isascii():  # NFKC is the identity on ASCII, and casefold() is lower()
        return value.strip().lower()
    return unicodedata.normalize("NFKC", value).strip().casefold()


def _phone(value: str, country_code: str = "") -> str:
    """E.164-like: '+' and digits only; 00 means +; a national number gets the default code."""
    if value.isascii():
        # The same result without the regular expressions (it is on every write and lookup):
        # NFKC is the identity on ASCII, and split() drops exactly what \s matches there.
        v = "".join(value.split())
        for junk in "().-/":
            if junk in v:
                v = v.replace(junk, "")
    else:
        v = _PHONE_JUNK.sub("", unicodedata.normalize("NFKC", value).strip())
    if v.startswith("00"):
        v = "+" + v[2:]
    if not v.startswith("+") and country_code:
        v = "+" + country_code + (v[1:] if v.startswith("0") else v)
    plus = v.startswith("+")
    digits = v[1:] if plus else v
    if not (digits.isascii() and digits.isdigit()):
        digits = _NOT_DIGIT.sub("", digits)
    return "+" + digits if plus else digits


# The ASCII characters an ASCII phone number loses: those str.split() splits on (\s of a str
# pattern is the same set on ASCII: \t\n\v\f\r, \x1c-\x1f and the space) and the junk.
_PHONE_DELETE = bytes(c for c in range(128) if chr(c).isspace() or chr(c) in "().-/")
_NOT_DIGIT_BYTES = re.compile(rb"[^0-9]")


@functools.cache
def _utf8(kind: str, params: str) -> Callable[[str], bytes]:
    """The UTF-8 of the normalised value (:meth:`Normalizer.utf8`). ASCII input is normalised
    as the str functions normalise it, in fewer calls (a phone number as bytes: one translate
    instead of a split, a join and a scan per junk character); other text goes through the str
    function."""
    if kind == "exact":

        def exact(value: str) -> bytes:
            if value.isascii():
                return value.encode()
            return unicodedata.normalize("NFC", value).encode("utf-8")

        return exact
    if kind == "email":

        def email(value: str) -> bytes:
            if value.isascii():  # str.strip(), not bytes.strip(): it also strips \x1c-\x1f
                return value.strip().lower().encode()
            return _email(value).encode("utf-8")

        return email
    code = params.encode()
    delete = _PHONE_DELETE
    not_digit = _NOT_DIGIT_BYTES.sub

    def phone(value: str) -> bytes:
        """_phone(value, params) in UTF-8: each step of its ASCII path, on bytes."""
        if not value.isascii():
            return _phone(value, params).encode("utf-8")
        v = value.encode().translate(None, delete)
        # the common forms first, with the result the steps below give them: digits only ...
        if v.isdigit():
            if v.startswith(b"00"):
                return b"+" + v[2:]
            if code:
                return b"+" + code + (v[1:] if v.startswith(b"0") else v)
            return v
        # ... and "+" and digits (none of the steps below changes them)
        if v[:1] == b"+" and v[1:].isdigit():
            return v
        if v.startswith(b"00"):
            v = b"+" + v[2:]
        if code and not v.startswith(b"+"):
            v = b"+" + code + (v[1:] if v.startswith(b"0") else v)
        if v.startswith(b"+"):
            digits = v[1:]
            return v if digits.isdigit() else b"+" + not_digit(b"", digits)
        return v if v.isdigit() else not_digit(b"", v)

    return phone


def normalizer(spec: str) -> Normalizer:
    """``"phone"`` (no default country code), ``"phone:44"``, ``"email"`` or ``"exact"``."""
    name, _, params = spec.partition(":")
    if name == "phone":
        if params and not params.isdigit():
            raise ValueError("phone:<country code>, digits only (e.g. phone:44)")
        return Normalizer("phone", 1, params)
    if name in ("email", "exact") and not params:
        return Normalizer(name, 1)
    raise ValueError(f"unknown normaliser {spec!r}: use phone, phone:<cc>, email or exact")


def column_key(root: bytes, norm: Normalizer, label: str) -> bytes:
    info = lp(norm.id.encode(), u32(norm.version), norm.params.encode(), label.encode("utf-8"))
    return hkdf_sha256(root, salt=_SALT, info=info)


def blind_index(key: bytes | HmacSha256, normalized: str, length: int) -> bytes:
    mac = key if isinstance(key, HmacSha256) else HmacSha256(key)
    return mac(normalized.encode("utf-8"))[:length]


class BlindIndexer:
    """One column's blind index as a callable: normalise, HMAC under the column key, truncate
    (the same bytes as :func:`blind_index`). Holds the column key: no pickling, no key in repr.

    :attr:`index` is the same without the type check, for callers that checked ``str``."""

    __slots__ = ("_normalizer", "index", "length")

    def __init__(self, key: HmacSha256, normalizer: Normalizer, length: int) -> None:
        self._normalizer = normalizer
        self.length = length
        # the MAC of the normalised value's UTF-8, one Python call a value
        self.index: Callable[[str], bytes] = key.function(length, normalizer.utf8())

    @safe_repr
    def __repr__(self) -> str:
        return f"BlindIndexer({self._normalizer.spec!r}, length={self.length})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("BlindIndexer cannot be pickled")

    def __call__(self, value: str) -> bytes:
        if not isinstance(value, str):
            raise TypeError("blind indexes take str values")
        return self.index(value)
