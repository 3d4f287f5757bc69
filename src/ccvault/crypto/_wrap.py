"""Wrapping stored keys under an epoch key, with associated data and a key commitment.

Every wrapped key (subject, vault-wide, long-lived) is sealed with AES-256-GCM under the epoch
key, with associated data binding what the key is::

    ad = lp("ccvault/wrap/v1", installation id, kind, key id, u32 version, epoch id, subject ref)

and stores a commitment ``HMAC-SHA256(key, lp("ccvault/commit/v1", kind, key id, u32 version))``
that is checked after every unwrap. A wrapped key copied onto another row fails the AEAD (its
associated data differs) and, should an attacker manage to wrap a key of their own, the
commitment of the row it is placed on.

Wrapped form: nonce (12) || ciphertext (32) || tag (16).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from ._encoding import U32, lp, u32
from ._primitives import (
    KEY_BYTES,
    NONCE_BYTES,
    Aead,
    AeadFailure,
    InvalidTag,
    hmac_sha256,
    nonce_batch,
    random_bytes,
)

__all__ = [
    "KeyBinding",
    "UnwrapError",
    "commitment",
    "unwrap_key",
    "unwrap_keys",
    "wrap_key",
    "wrap_keys",
]

_WRAP_LABEL = b"ccvault/wrap/v1"
_COMMIT_LABEL = b"ccvault/commit/v1"

WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + 16
_VERSION_LEN = U32.pack(4)  # lp's length prefix of a u32


class UnwrapError(Exception):
    """Internal: a stored key failed its associated data or its commitment."""


@dataclass(frozen=True, slots=True)
class KeyBinding:
    """What a wrapped key is bound to."""

    installation_id: bytes
    kind: str
    key_id: bytes
    version: int
    epoch_id: bytes
    subject_ref: bytes = b""

    def associated_data(self) -> bytes:
        return lp(
            _WRAP_LABEL,
            self.installation_id,
            self.kind.encode("ascii"),
            self.key_id,
            u32(self.version),
            self.epoch_id,
            self.subject_ref,
        )


def commitment(key: bytes, kind: str, key_id: bytes, version: int) -> bytes:
    return hmac_sha256(key, lp(_COMMIT_LABEL, kind.encode("ascii"), key_id, u32(version)))


def wrap_key(epoch: Aead, key: bytes, binding: KeyBinding) -> tuple[bytes, bytes]:
    """Return (wrapped, commitment) for ``key`` under the epoch key."""
    nonce = random_bytes(NONCE_BYTES)
    wrapped = nonce + epoch.seal(nonce, key, binding.associated_data())
    return wrapped, commitment(key, binding.kind, binding.key_id, binding.version)


def wrap_keys(
    epoch: Aead,
    installation_id: bytes,
    kind: str,
    epoch_id: bytes,
    keys: Sequence[tuple[bytes, bytes, int, bytes]],
) -> list[tuple[bytes, bytes]]:
    """:func:`wrap_key` of many keys of one kind under one epoch: (wrapped, commitment) of each
    ``(key, key id, version, subject ref)``, in order. The same bytes as :func:`wrap_key` with
    the binding of each (``lp`` concatenates, so the parts every key of the batch shares are
    encoded once), and one CSPRNG call for the batch's nonces."""
    kind_bytes = kind.encode("ascii")
    ad_head = lp(_WRAP_LABEL, installation_id, kind_bytes)
    ad_epoch = lp(epoch_id)
    commit_head = lp(_COMMIT_LABEL, kind_bytes)
    nonces = nonce_batch(len(keys))
    seal = epoch.seal
    out = []
    pack = U32.pack
    for key, key_id, version, ref in keys:
        named = pack(len(key_id)) + key_id + _VERSION_LEN + pack(version)  # lp(id, u32(version))
        nonce = nonces()
        wrapped = nonce + seal(nonce, key, ad_head + named + ad_epoch + pack(len(ref)) + ref)
        out.append((wrapped, hmac_sha256(key, commit_head + named)))
    return out


def unwrap_key(epoch: Aead, wrapped: bytes, stored_commitment: bytes, binding: KeyBinding) -> bytes:
    # The binding comes from the key-store row: a kind that is not ASCII (a damaged or tampered
    # row; ccvault's kinds are ASCII words) binds nothing ccvault ever wrapped.
    if len(wrapped) != WRAPPED_BYTES or not binding.kind.isascii():
        raise UnwrapError
    try:
        key = epoch.open(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], binding.associated_data())
    except AeadFailure:
        raise UnwrapError from None
    expected = commitment(key, binding.kind, binding.key_id, binding.version)
    if hmac.compare_digest(expected, stored_commitment):
        return key
    # The key opened but is not the one committed to: it must not stay in this frame, which the
    # error's traceback (kept as the caller's __context__, suppressed or not) holds.
    del key
    raise UnwrapError


def unwrap_keys(
    epoch: Aead,
    installation_id: bytes,
    kind: str,
    epoch_id: bytes,
    rows: Sequence[tuple[bytes, bytes, bytes, int, bytes]],
) -> list[bytes | None]:
    """:func:`unwrap_key` of many stored keys of one kind wrapped under one epoch: the key of
    each ``(wrapped, commitment, key id, version, subject ref)``, in order, or None for one that
    fails its associated data or its commitment. The same checks as :func:`unwrap_key` with the
    binding of each; the parts every key of the batch shares are encoded once."""
    if not kind.isascii():
        return [None] * len(rows)
    kind_bytes = kind.encode("ascii")
    ad_head = lp(_WRAP_LABEL, installation_id, kind_bytes)
    ad_epoch = lp(epoch_id)
    commit_head = lp(_COMMIT_LABEL, kind_bytes)
    decrypt = epoch.open_raw
    compare = hmac.compare_digest
    pack = U32.pack
    out: list[bytes | None] = []
    for wrapped, stored_commitment, key_id, version, ref in rows:
        if len(wrapped) != WRAPPED_BYTES:
            out.append(None)
            continue
        named = pack(len(key_id)) + key_id + _VERSION_LEN + pack(version)
        try:
            key = decrypt(
                wrapped[:NONCE_BYTES],
                wrapped[NONCE_BYTES:],
                ad_head + named + ad_epoch + pack(len(ref)) + ref,
            )
        except InvalidTag:
            out.append(None)
            continue
        if compare(hmac_sha256(key, commit_head + named), stored_commitment):
            out.append(key)
        else:
            out.append(None)  # opened, but not the key committed to: not kept
    return out
