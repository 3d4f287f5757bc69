"""Field round trips of the peers: what users would pick instead of ccvault.

Each builder returns a loop ``fn(n)`` that encrypts and decrypts the same value ``n`` times, and
checks once, before it is timed, that the round trip gives the value back. A peer that cannot be
imported raises :class:`Unavailable`, whose message becomes the figure's note.
"""

from __future__ import annotations

import base64
import os
from importlib import metadata
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks._measure import Loop


class Unavailable(Exception):
    """The peer is not installed or cannot run here."""


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _checked(loop: Loop, roundtrip: Any, value: Any) -> Loop:
    if roundtrip(value) != value:
        raise RuntimeError("round trip did not return the value")
    return loop


def aesgcm(value: bytes) -> Loop:
    """The physical limit: cryptography's AESGCM, a fresh random nonce each time, no AD."""
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    urandom = os.urandom
    encrypt, decrypt = aes.encrypt, aes.decrypt

    def roundtrip(v: bytes) -> bytes:
        nonce = urandom(12)
        return decrypt(nonce, encrypt(nonce, v, None), None)

    def loop(n: int) -> None:
        for _ in range(n):
            nonce = urandom(12)
            decrypt(nonce, encrypt(nonce, value, None), None)

    return _checked(loop, roundtrip, value)


def sqlalchemy_utils(value: bytes) -> Loop:
    """``StringEncryptedType(String, key, AesGcmEngine)``, called as SQLAlchemy would."""
    try:
        from sqlalchemy import String
        from sqlalchemy.dialects import sqlite
        from sqlalchemy_utils import StringEncryptedType
        from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine
    except ImportError as exc:
        raise Unavailable(f"sqlalchemy-utils is not installed ({exc})") from None
    column = StringEncryptedType(String, base64.b64encode(os.urandom(32)).decode(), AesGcmEngine)
    dialect = sqlite.dialect()
    text = value.decode("ascii")
    bind, result = column.process_bind_param, column.process_result_value

    def roundtrip(v: str) -> str:
        return str(result(bind(v, dialect), dialect))

    def loop(n: int) -> None:
        for _ in range(n):
            result(bind(text, dialect), dialect)

    return _checked(loop, roundtrip, text)


def _tink() -> Any:
    try:
        import tink
        from tink import aead
    except ImportError as exc:
        raise Unavailable(f"tink is not installed ({exc})") from None
    aead.register()
    return tink


def tink_aead(value: bytes, associated_data: bytes) -> Loop:
    """Tink AEAD from a fresh AES256_GCM keyset (no KMS involved)."""
    tink = _tink()
    from tink import aead

    primitive = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
    encrypt, decrypt = primitive.encrypt, primitive.decrypt

    def roundtrip(v: bytes) -> bytes:
        return bytes(decrypt(encrypt(v, associated_data), associated_data))

    def loop(n: int) -> None:
        for _ in range(n):
            decrypt(encrypt(value, associated_data), associated_data)

    return _checked(loop, roundtrip, value)


def tink_envelope(value: bytes, associated_data: bytes) -> Loop:
    """Tink KmsEnvelopeAead: a new AES256_GCM data key per value, wrapped by a KMS AEAD.

    The KMS is Tink's own ``tink.testing.fake_kms`` client: its key-encryption key is a local
    AES256_GCM keyset, so the figure has no network round trip in it (a real KMS adds one per
    encrypt and per decrypt).
    """
    tink = _tink()
    from tink import aead, secret_key_access
    from tink.testing import fake_kms

    kek = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
    serialized = tink.proto_keyset_format.serialize(kek, secret_key_access.TOKEN)
    uri = fake_kms.FAKE_KMS_PREFIX + base64.urlsafe_b64encode(serialized).decode().rstrip("=")
    remote = fake_kms.FakeKmsClient(uri).get_aead(uri)
    primitive = aead.KmsEnvelopeAead(aead.aead_key_templates.AES256_GCM, remote)
    encrypt, decrypt = primitive.encrypt, primitive.decrypt

    def roundtrip(v: bytes) -> bytes:
        return bytes(decrypt(encrypt(v, associated_data), associated_data))

    def loop(n: int) -> None:
        for _ in range(n):
            decrypt(encrypt(value, associated_data), associated_data)

    return _checked(loop, roundtrip, value)


def esdk(value: bytes, context: str, *, signed: bool) -> Loop:
    """AWS Encryption SDK with a raw AES-256 wrapping key (RawMasterKeyProvider).

    ``signed=False``: the committing suite without signing, AES_256_GCM_HKDF_SHA512_COMMIT_KEY;
    ``signed=True``: the SDK's default suite, which adds an ECDSA P-384 signature per message.
    Every message gets a new data key wrapped under the raw key (no caching CMM).
    """
    try:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import (
            Algorithm,
            CommitmentPolicy,
            EncryptionKeyType,
            WrappingAlgorithm,
        )
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
    except ImportError as exc:
        raise Unavailable(f"aws-encryption-sdk is not installed ({exc})") from None

    wrapping_key = WrappingKey(
        wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
        wrapping_key=os.urandom(32),
        wrapping_key_type=EncryptionKeyType.SYMMETRIC,
    )

    class StaticKeyProvider(RawMasterKeyProvider):  # type: ignore[misc]
        provider_id = "ccvault-bench"

        def _get_raw_key(self, key_id: bytes) -> WrappingKey:
            return wrapping_key

    provider = StaticKeyProvider()
    provider.add_master_key(b"bench-key")
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    options: dict[str, Any] = {"key_provider": provider, "encryption_context": {"ctx": context}}
    if not signed:
        options["algorithm"] = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
    encrypt, decrypt = client.encrypt, client.decrypt

    def roundtrip(v: bytes) -> bytes:
        ciphertext, _ = encrypt(source=v, **options)
        plaintext, header = decrypt(source=ciphertext, key_provider=provider)
        expected = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY if not signed else None
        if expected is not None and header.algorithm != expected:
            raise RuntimeError(f"unexpected ESDK suite {header.algorithm}")
        return bytes(plaintext)

    def loop(n: int) -> None:
        for _ in range(n):
            ciphertext, _ = encrypt(source=value, **options)
            decrypt(source=ciphertext, key_provider=provider)

    return _checked(loop, roundtrip, value)
