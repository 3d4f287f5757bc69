"""Ciphertext format v1: golden vectors, parsing, and tampering (every bit, every truncation)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ccvault import DecryptionError, SubjectShreddedError, Vault
from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import Aead

VECTORS = json.loads((Path(__file__).parent / "vectors" / "values_v1.json").read_text())
CTX = "customers.phone"


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden_vectors_open(vec: dict[str, object]) -> None:
    blob = bytes.fromhex(str(vec["ciphertext"]))
    header, nonce, body = fmt.parse(blob)
    assert header.suite == vec["suite"]
    assert header.key_id.hex() == vec["key_id"]
    assert header.key_version == vec["key_version"]
    assert nonce.hex() == vec["nonce"]
    key = bytes.fromhex(str(vec["key"]))
    if header.suite == fmt.SUITE_AES256GCM_PERIOD:
        assert header.period_id is not None
        assert header.period_id.hex() == vec["period_id"]
        key = fmt.derive_period_key(
            key,
            bytes.fromhex(str(vec["period_secret"])),
            header.key_id,
            header.key_version,
            header.period_id,
        )
        assert key.hex() == vec["derived_key"]
    plaintext = fmt.open_value(
        Aead(key),
        header,
        nonce,
        body,
        str(vec["context"]).encode(),
        bytes.fromhex(str(vec["subject_ref"])),
    )
    assert plaintext.hex() == vec["plaintext"]
    # The encoding is frozen too: sealing again with the same nonce gives the same bytes.
    again = fmt.seal_value(
        Aead(key),
        header.raw,
        plaintext,
        str(vec["context"]).encode(),
        bytes.fromhex(str(vec["subject_ref"])),
        nonce=nonce,
    )
    assert again == blob


def test_header_layout() -> None:
    key_id = bytes(range(16))
    h1 = fmt.build_header(fmt.SUITE_AES256GCM, key_id, 258)
    assert h1 == b"\x01\x01" + key_id + b"\x00\x00\x01\x02"
    h2 = fmt.build_header(fmt.SUITE_AES256GCM_PERIOD, key_id, 1, b"\xee" * 16)
    assert h2 == b"\x01\x02" + key_id + b"\x00\x00\x00\x01" + b"\xee" * 16
    assert fmt.OVERHEAD == {1: 50, 2: 66}
    for bad in [
        lambda: fmt.build_header(9, key_id, 1),
        lambda: fmt.build_header(1, key_id[:15], 1),
        lambda: fmt.build_header(1, key_id, 0),
        lambda: fmt.build_header(1, key_id, 1, b"\x00" * 16),
        lambda: fmt.build_header(2, key_id, 1),
    ]:
        with pytest.raises(ValueError, match=r"suite|key reference|period"):
            bad()


@pytest.fixture
def sample(svault: Vault) -> tuple[Vault, bytes]:
    return svault, svault.encrypt(uuid.uuid4(), b"0123456789", context=CTX)


def test_every_bit_flip_is_decryption_error(sample: tuple[Vault, bytes]) -> None:
    vault, blob = sample
    for i in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(DecryptionError) as info:
                vault.decrypt(bytes(tampered), context=CTX)
            assert str(info.value) == DecryptionError.MESSAGE


def test_every_truncation_and_extension_is_decryption_error(sample: tuple[Vault, bytes]) -> None:
    vault, blob = sample
    for n in range(len(blob)):
        with pytest.raises(DecryptionError):
            vault.decrypt(blob[:n], context=CTX)
    with pytest.raises(DecryptionError):
        vault.decrypt(blob + b"\x00", context=CTX)


@pytest.mark.parametrize(
    ("offset", "value"), [(0, 0), (0, 2), (0, 0xFF), (1, 0), (1, 3), (1, 0xFF)]
)
def test_unknown_version_or_suite_attempts_no_decryption(
    sample: tuple[Vault, bytes], monkeypatch: pytest.MonkeyPatch, offset: int, value: int
) -> None:
    vault, blob = sample
    tampered = bytearray(blob)
    tampered[offset] = value

    def forbidden(*_a: object, **_k: object) -> object:
        raise AssertionError("no key lookup or decryption may happen")

    monkeypatch.setattr(Aead, "open", forbidden)
    monkeypatch.setattr(vault._store, "get_keys", forbidden)
    monkeypatch.setattr(vault._store, "value_keys", forbidden)
    with pytest.raises(DecryptionError):
        vault.decrypt(bytes(tampered), context=CTX)


def test_suite2_is_reserved_until_retention(sample: tuple[Vault, bytes]) -> None:
    vault, blob = sample
    header, nonce, body = fmt.parse(blob)
    forged = fmt.build_header(2, header.key_id, header.key_version, b"\x01" * 16) + nonce + body
    with pytest.raises(DecryptionError):
        vault.decrypt(forged, context=CTX)


def test_shredded_key_id_is_told_apart_from_unknown(sample: tuple[Vault, bytes]) -> None:
    vault, _ = sample
    s = uuid.uuid4()
    blob = vault.encrypt(s, b"x", context=CTX)
    vault.shred(s)
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob, context=CTX)
    unknown = bytearray(blob)
    unknown[2:18] = uuid.uuid4().bytes
    with pytest.raises(DecryptionError):
        vault.decrypt(bytes(unknown), context=CTX)


def test_value_moved_between_subjects_fails(svault: Vault) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    blob_a = svault.encrypt(a, b"x", context=CTX)
    blob_b = svault.encrypt(b, b"y", context=CTX)
    # Splice A's key reference onto B's sealed body: the AD (key ref + subject ref) no longer fits.
    spliced = blob_a[:22] + blob_b[22:]
    with pytest.raises(DecryptionError):
        svault.decrypt(spliced, context=CTX)


def test_nonce_batch_hands_out_each_nonce_once() -> None:
    nonces = fmt.nonce_batch(1_000)
    drawn = [nonces() for _ in range(1_500)]  # 1,000 from the pool, then one CSPRNG call each
    assert all(type(n) is bytes and len(n) == 12 for n in drawn)
    assert len(set(drawn)) == len(drawn)
    assert len({fmt.nonce_batch(1)() for _ in range(100)}) == 100  # no pool shared by batches


def test_random_chunks_draws_independent_values_of_the_size_asked() -> None:
    """New key ids and keys of a batch: one CSPRNG call, each value its own bytes."""
    from ccvault.crypto._primitives import random_chunks

    keys = random_chunks(32, 1_000)
    assert len(keys) == 1_000
    assert all(type(k) is bytes and len(k) == 32 for k in keys)
    assert len(set(keys)) == 1_000
    assert [len(i) for i in random_chunks(16, 3)] == [16, 16, 16]
    assert random_chunks(16, 0) == []
    assert random_chunks(32, 1)[0] != random_chunks(32, 1)[0]  # nothing pooled across calls


def test_value_key_seals_with_a_nonce_batch_and_opens_inline() -> None:
    key = fmt.ValueKey(Aead(bytes(range(32))), bytes(16), 1, b"r" * 32)
    ctx = fmt.context_lp(CTX.encode())
    nonces = fmt.nonce_batch(2)
    first, second = key.seal(b"v", ctx, nonces), key.seal(b"v", ctx, nonces)
    assert (
        first[fmt.SUITE1_HEADER_BYTES : fmt.SUITE1_BODY_OFFSET]
        != second[fmt.SUITE1_HEADER_BYTES : fmt.SUITE1_BODY_OFFSET]
    )
    for blob in (first, second, key.seal(b"v", ctx)):
        assert key.open(blob, ctx) == b"v"
        assert (
            key.decrypt(
                blob[fmt.SUITE1_HEADER_BYTES : fmt.SUITE1_BODY_OFFSET],
                blob[fmt.SUITE1_BODY_OFFSET :],
                key.ad_prefix + ctx + key.ad_suffix,
            )
            == b"v"
        )
    with pytest.raises(fmt.FormatError):
        key.open(first, fmt.context_lp(b"customers.email"))


def test_value_key_associated_data_is_the_format_and_keeps_few_labels() -> None:
    ref = b"r" * 32
    key = fmt.ValueKey(Aead(bytes(range(32))), bytes(16), 1, ref)
    for i in range(100):
        label = f"t.c{i}".encode()
        expected = fmt.value_associated_data(key.header, label, ref)
        assert key.associated_data(fmt.context_lp(label)) == expected
        assert key.associated_data(fmt.context_lp(label)) == expected  # kept or rebuilt alike
    assert len(key.ads) == 64  # bounded: a vault-wide key may serve many labels


def test_suite1_key_ref_reads_only_suite1_headers() -> None:
    key = fmt.ValueKey(Aead(bytes(range(32))), bytes(range(16)), 7, b"r" * 32)
    assert fmt.suite1_key_ref(key.header) == (bytes(range(16)), 7)
    assert fmt.suite1_key_ref(key.header[:-1]) is None
    assert fmt.suite1_key_ref(bytes([1, 2]) + key.header[2:]) is None  # suite 2
    assert fmt.suite1_key_ref(bytes([2, 1]) + key.header[2:]) is None  # format version 2
