"""The only module of ccvault that touches ``cryptography.hazmat``.

Everything here is a thin, typed layer over audited primitives: AES-256-GCM, HMAC-SHA256,
HKDF-SHA256 and Ed25519. No protocol decisions are made here; see :mod:`ccvault.crypto._format`
and :mod:`ccvault.crypto._wrap` for those.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, overload

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "Aead",
    "AeadFailure",
    "HmacSha256",
    "InvalidTag",
    "NonceSource",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "fresh_nonce",
    "hkdf_sha256",
    "hmac_sha256",
    "nonce_batch",
    "random_bytes",
    "random_chunks",
]

T = TypeVar("T")

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class AeadFailure(Exception):
    """Authentication failed. Internal: callers map it to DecryptionError (or worse)."""


def random_bytes(n: int) -> bytes:
    """Bytes from the operating system's CSPRNG (fork-safe: nothing is pooled)."""
    return os.urandom(n)


def random_chunks(size: int, count: int) -> list[bytes]:
    """``count`` random byte strings of ``size`` bytes each (new key ids, new keys), drawn from
    the operating system's CSPRNG with one call for all of them; nothing is pooled beyond it."""
    pool = os.urandom(size * count)
    return [pool[i : i + size] for i in range(0, size * count, size)]


NonceSource = Callable[[], bytes]
"""Returns a fresh random 12-byte nonce on each call, never the same one twice."""

fresh_nonce: NonceSource = functools.partial(os.urandom, NONCE_BYTES)
"""One nonce from the operating system's CSPRNG (a C call: it is on every seal's path)."""


def nonce_batch(count: int) -> NonceSource:
    """A source of fresh random nonces for one batch of seals (a statement's rows): the first
    ``count`` are drawn with one CSPRNG call, any further ones one call each.

    Each nonce is handed out once, and the pool lives only as long as the caller keeps the
    source: never keep one beyond the batch, so that nothing is pooled across calls and a forked
    process never shares a nonce with its parent."""
    pool = os.urandom(NONCE_BYTES * count)
    nonces = [pool[i : i + NONCE_BYTES] for i in range(0, len(pool), NONCE_BYTES)]
    return itertools.chain(nonces, iter(fresh_nonce, b"")).__next__


class Aead:
    """AES-256-GCM with one key; the cipher context is built once and reused."""

    __slots__ = ("_aesgcm", "open_raw", "seal")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            del key  # not kept in the frame of the error's traceback
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aesgcm = AESGCM(key)
        # seal(nonce, plaintext, associated_data) -> ciphertext || tag: the C call itself, no
        # Python frame in between (it is on every write's hot path).
        self.seal = self._aesgcm.encrypt
        # open_raw(nonce, ciphertext, associated_data): raises InvalidTag (re-exported here).
        self.open_raw = self._aesgcm.decrypt

    def __repr__(self) -> str:
        return "Aead(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Aead cannot be pickled")

    def open(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
        try:
            return self._aesgcm.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise AeadFailure from None


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, hashlib.sha256)


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one fixed key, set up once (its keyed inner and outer
    SHA-256 states): each MAC copies that state and hashes the message, instead of a full HMAC
    setup (about half the time for the short messages blind indexes and subject refs hash). The
    state is OpenSSL's HMAC context (``cryptography``'s ``HMAC.copy``): one copy and one
    finalisation a MAC, where two ``hashlib`` states took four copies."""

    __slots__ = ("_hmac", "_mac")

    def __init__(self, key: bytes) -> None:
        self._hmac = HMAC(key, hashes.SHA256())
        self._mac = self.function()

    def __repr__(self) -> str:
        return "HmacSha256(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("HmacSha256 cannot be pickled")

    def __call__(self, message: bytes) -> bytes:
        return self._mac(message)

    @overload
    def function(self, length: int = 32) -> Callable[[bytes], bytes]: ...

    @overload
    def function(self, length: int, prepare: Callable[[T], bytes]) -> Callable[[T], bytes]: ...

    def function(
        self, length: int = 32, prepare: Callable[[Any], bytes] | None = None
    ) -> Callable[[Any], bytes]:
        """This MAC truncated to ``length`` bytes as a plain function: no method lookups per
        call (blind indexes compute one per searchable value written or searched). With
        ``prepare``, the MAC of ``prepare(value)``, in the same call (one Python frame less)."""
        keyed = self._hmac.copy

        if prepare is None:

            def mac(message: bytes) -> bytes:
                h = keyed()
                h.update(message)
                return h.finalize()[:length]

            return mac

        def mac_of(value: Any) -> bytes:
            h = keyed()
            h.update(prepare(value))
            return h.finalize()[:length]

        return mac_of


def hkdf_sha256(key: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def ed25519_public_key(seed: bytes) -> bytes:
    """The raw 32-byte public key of an Ed25519 private key given as its 32-byte seed."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
