"""Ciphertext format v1 for values (byte-by-byte description in docs/format.md).

::

    offset  size  field
    0       1     version         0x01
    1       1     suite           0x01 AES-256-GCM under the data key
                                  0x02 AES-256-GCM under a per-retention-period derived key
    2       16    key id          random 128-bit id of the data key's lineage
    18      4     key version     big-endian u32, >= 1
    [22     16    period id       suite 0x02 only]
    22|38   12    nonce           random
    34|50   n+16  ciphertext || GCM tag

    associated data = lp("ccvault/value/v1", header, context label (UTF-8), subject ref)

where ``header`` is every byte before the nonce and ``lp`` length-prefixes each part with a
big-endian u32. A vault-wide key's subject ref is empty.

Parsing is bounded and total: every malformed input raises :class:`FormatError`, which the
vault maps to the one opaque :class:`~ccvault.errors.DecryptionError`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import NoReturn

from .._repr import safe_repr
from ._encoding import U32
from ._primitives import (
    NONCE_BYTES,
    TAG_BYTES,
    Aead,
    AeadFailure,
    InvalidTag,
    NonceSource,
    fresh_nonce,
    hkdf_sha256,
    nonce_batch,
    random_bytes,
)

__all__ = [
    "FORMAT_VERSION",
    "SUITE1_BODY_OFFSET",
    "SUITE1_HEADER_BYTES",
    "SUITE2_HEADER_BYTES",
    "SUITE_AES256GCM",
    "SUITE_AES256GCM_PERIOD",
    "FormatError",
    "Header",
    "InvalidTag",
    "NonceSource",
    "ValueKey",
    "derive_period_key",
    "fresh_nonce",
    "held_key_id",
    "nonce_batch",
    "open_value",
    "parse",
    "seal_value",
    "value_associated_data",
    "value_header",
]

FORMAT_VERSION = 1
SUITE_AES256GCM = 1
SUITE_AES256GCM_PERIOD = 2

KEY_ID_BYTES = 16
PERIOD_ID_BYTES = 16
_HEAD = struct.Struct(">BB16sI")  # version, suite, key id, key version
_HEADER_LEN = {SUITE_AES256GCM: _HEAD.size, SUITE_AES256GCM_PERIOD: _HEAD.size + PERIOD_ID_BYTES}
_AD_LABEL = b"ccvault/value/v1"
_AD_PREFIX = U32.pack(len(_AD_LABEL)) + _AD_LABEL
_PERIOD_INFO = b"ccvault/v1/suite2/period-key"
_HELD_LABEL = b"ccvault/held/v1"

OVERHEAD = {suite: n + NONCE_BYTES + TAG_BYTES for suite, n in _HEADER_LEN.items()}


class FormatError(Exception):
    """Internal: the bytes are not a well-formed v1 ciphertext (or fail authentication)."""


@dataclass(frozen=True, slots=True)
class Header:
    suite: int
    key_id: bytes
    key_version: int
    period_id: bytes | None
    raw: bytes


def build_header(
    suite: int, key_id: bytes, key_version: int, period_id: bytes | None = None
) -> bytes:
    if suite not in _HEADER_LEN:
        raise ValueError("unknown suite")
    if len(key_id) != KEY_ID_BYTES or not 1 <= key_version <= 0xFFFFFFFF:
        raise ValueError("bad key reference")
    head = _HEAD.pack(FORMAT_VERSION, suite, key_id, key_version)
    if suite == SUITE_AES256GCM_PERIOD:
        if period_id is None or len(period_id) != PERIOD_ID_BYTES:
            raise ValueError("suite 2 needs a 16-byte period id")
        return head + period_id
    if period_id is not None:
        raise ValueError("suite 1 has no period id")
    return head


def parse(blob: bytes) -> tuple[Header, bytes, bytes]:
    """Split a ciphertext into (header, nonce, ciphertext||tag) without decrypting anything."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise FormatError
    blob = bytes(blob)
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise FormatError
    suite = blob[1]
    header_len = _HEADER_LEN.get(suite)
    if header_len is None or len(blob) < header_len + NONCE_BYTES + TAG_BYTES:
        raise FormatError
    _, _, key_id, key_version = _HEAD.unpack_from(blob)
    if key_version == 0:
        raise FormatError
    period_id = blob[_HEAD.size : header_len] if suite == SUITE_AES256GCM_PERIOD else None
    header = Header(suite, key_id, key_version, period_id, blob[:header_len])
    nonce = blob[header_len : header_len + NONCE_BYTES]
    return header, nonce, blob[header_len + NONCE_BYTES :]


def value_associated_data(header: bytes, context: bytes, subject_ref: bytes) -> bytes:
    return b"".join(
        (
            _AD_PREFIX,
            U32.pack(len(header)),
            header,
            U32.pack(len(context)),
            context,
            U32.pack(len(subject_ref)),
            subject_ref,
        )
    )


def seal_value(
    aead: Aead,
    header: bytes,
    plaintext: bytes,
    context: bytes,
    subject_ref: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal ``plaintext``. ``nonce`` is for known-answer vectors only; leave it None."""
    if nonce is None:
        nonce = random_bytes(NONCE_BYTES)
    ad = value_associated_data(header, context, subject_ref)
    return header + nonce + aead.seal(nonce, plaintext, ad)


def open_value(
    aead: Aead, header: Header, nonce: bytes, body: bytes, context: bytes, subject_ref: bytes
) -> bytes:
    try:
        return aead.open(nonce, body, value_associated_data(header.raw, context, subject_ref))
    except AeadFailure:
        raise FormatError from None


SUITE1_HEADER_BYTES = _HEAD.size  # version, suite, key id, key version
SUITE1_BODY_OFFSET = _HEAD.size + NONCE_BYTES  # where ciphertext || tag starts
_SUITE1_PREFIX = bytes((FORMAT_VERSION, SUITE_AES256GCM))
_SUITE1_REF = struct.Struct(">2x16sI").unpack


def suite1_key_ref(header: bytes) -> tuple[bytes, int] | None:
    """(key id, key version) of a suite-1 value header, or None when it is not one."""
    if len(header) != SUITE1_HEADER_BYTES or header[:2] != _SUITE1_PREFIX:
        return None
    key_id, version = _SUITE1_REF(header)
    return key_id, version


SUITE2_HEADER_BYTES = _HEAD.size + PERIOD_ID_BYTES  # ... and the period id
_SUITE2_PREFIX = bytes((FORMAT_VERSION, SUITE_AES256GCM_PERIOD))
_SUITE2_SUITE = bytes((SUITE_AES256GCM_PERIOD,))
_SUITE2_REF = struct.Struct(">2x16sI16s").unpack


def value_header(blob: bytes) -> bytes:
    """The header a value's keys are looked up by: 38 bytes for suite 2, else 22 (the first
    bytes of anything else, which names no key)."""
    return blob[:SUITE2_HEADER_BYTES] if blob[1:2] == _SUITE2_SUITE else blob[:SUITE1_HEADER_BYTES]


def suite2_key_ref(header: bytes) -> tuple[bytes, int, bytes] | None:
    """(key id, key version, period id) of a suite-2 value header, or None when it is not one."""
    if len(header) != SUITE2_HEADER_BYTES or header[:2] != _SUITE2_PREFIX:
        return None
    key_id, version, period_id = _SUITE2_REF(header)
    return key_id, version, period_id


_MAX_ADS = 64  # context labels whose associated data a ValueKey keeps


# By suite: where a value keeps its nonce and its ciphertext || tag, and the associated data's
# fixed start (the prefix and the header's length).
_VALUE_SLICES: dict[int, tuple[slice, slice]] = {
    suite: (slice(n, n + NONCE_BYTES), slice(n + NONCE_BYTES, None))
    for suite, n in _HEADER_LEN.items()
}
_AD_PREFIXES: dict[int, bytes] = {
    suite: _AD_PREFIX + U32.pack(n) for suite, n in _HEADER_LEN.items()
}


class ValueKey:
    """A value key ready to seal and open values, with its header and the fixed parts of the
    associated data computed once (they depend only on the key and its subject ref): a data key
    (suite 1), or with ``period_id`` a suite-2 key derived for one retention period.

    A reader that opens many values in one loop may inline :meth:`open`::

        key.decrypt(blob[key.nonce_at], blob[key.body_at],
                    key.ads.get(context_lp) or key.associated_data(context_lp))

    which raises :class:`InvalidTag` where :meth:`open` raises :class:`FormatError`.
    """

    __slots__ = (
        "ad_prefix",
        "ad_suffix",
        "ads",
        "aead",
        "body_at",
        "checked",
        "decrypt",
        "header",
        "key_id",
        "nonce_at",
        "period_id",
        "ref",
        "version",
    )

    def __init__(
        self,
        aead: Aead,
        key_id: bytes,
        version: int,
        ref: bytes,
        period_id: bytes | None = None,
    ) -> None:
        self.aead = aead
        self.key_id = key_id
        self.version = version
        self.ref = ref
        # suite 1: the data key itself; suite 2 (``period_id``): the key derived from the data
        # key and the period secret (or a held key), sealing under the 38-byte header
        self.period_id = period_id
        suite = SUITE_AES256GCM if period_id is None else SUITE_AES256GCM_PERIOD
        self.header = build_header(suite, key_id, version, period_id)
        # where a value under this key keeps its nonce and its ciphertext || tag (the slices
        # of its suite, shared: no two objects more per cached key for the cyclic GC to visit)
        self.nonce_at, self.body_at = _VALUE_SLICES[suite]
        # associated data = ad_prefix || u32(len(context)) || context || ad_suffix
        self.ad_prefix = _AD_PREFIXES[suite] + self.header
        self.ad_suffix = U32.pack(len(ref)) + ref
        # whole associated data by context_lp, for the few labels a key is used with
        self.ads: dict[bytes, bytes] = {}
        self.decrypt = aead.open_raw
        # The last subject value whose ref was found equal to ``ref`` (a cache for callers that
        # check many rows of the same subject: equality instead of an HMAC per row).
        self.checked: object = None

    @safe_repr
    def __repr__(self) -> str:
        period = "" if self.period_id is None else ", suite=2"
        return f"ValueKey(id={self.key_id.hex()}, v={self.version}{period})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("ValueKey cannot be pickled")

    def associated_data(self, context_lp: bytes) -> bytes:
        """The associated data of this key's values under ``context_lp``, kept for reuse."""
        ad = self.ads.get(context_lp)
        if ad is None:
            ad = self.ad_prefix + context_lp + self.ad_suffix
            if len(self.ads) < _MAX_ADS:
                self.ads[context_lp] = ad
        return ad

    def seal(self, plaintext: bytes, context_lp: bytes, nonces: NonceSource = fresh_nonce) -> bytes:
        """``context_lp`` is ``u32(len(context)) || context``; ``nonces`` gives the nonce."""
        nonce = nonces()
        ad = self.ads.get(context_lp) or self.associated_data(context_lp)
        return self.header + nonce + self.aead.seal(nonce, plaintext, ad)

    def open(self, blob: bytes, context_lp: bytes) -> bytes:
        """Open a value whose header names this key (the caller looked it up by it)."""
        try:
            return self.decrypt(
                blob[self.nonce_at], blob[self.body_at], self.associated_data(context_lp)
            )
        except InvalidTag:
            raise FormatError from None


def context_lp(context: bytes) -> bytes:
    return U32.pack(len(context)) + context


def derive_period_key(
    data_key: bytes, period_secret: bytes, key_id: bytes, key_version: int, period_id: bytes
) -> bytes:
    """Suite 2: HKDF-SHA256(data key, salt=period secret, info=label||key id||version||period)."""
    info = _PERIOD_INFO + key_id + U32.pack(key_version) + period_id
    return hkdf_sha256(data_key, salt=period_secret, info=info)


def held_key_id(key_id: bytes, key_version: int, period_id: bytes) -> bytes:
    """The key id of a held key (DESIGN.md, lifecycle rule 7): the suite-2 value key of subject
    key (``key_id``, ``key_version``) in period ``period_id``, preserved by a legal hold when the
    period expired. SHA-256("ccvault/held/v1" || key id || u32(version) || period id)[:16]: a
    reader derives it from the value header alone."""
    if len(key_id) != KEY_ID_BYTES or len(period_id) != PERIOD_ID_BYTES:
        raise ValueError("a held key id needs a 16-byte key id and a 16-byte period id")
    return hashlib.sha256(_HELD_LABEL + key_id + U32.pack(key_version) + period_id).digest()[:16]
