"""vault.decrypt_many: batched single-value reads (issue 13, item 8), and vault.decrypt as its
batch of one.

Statements are counted as ``benchmarks/bench_cold.py`` counts them: every statement the key
store's engine sends (``before_cursor_execute``, ``BEGIN`` included).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

import ccvault.keyring._epochs as epochs_module  # where the vault draws new keys
from ccvault import (
    NO_SUBJECT,
    SHREDDED,
    DecryptionError,
    Sentinel,
    SubjectShreddedError,
    Vault,
)
from ccvault.crypto import _format as fmt
from ccvault.kms import LocalKms
from leaks import raised, secrets_in

CTX = "customers.phone"
WIDE = "ivr.prompts"


@contextmanager
def statements(vault: Vault) -> Iterator[Counter[str]]:
    """Statements the vault sends to its key store for keys, by first keyword (as bench_cold
    counts), but the invalidation channel's polls: each is one read transaction (BEGIN, then a
    SELECT of ccvault_invalidations), at most one per 0.8 s of key use, counted by
    tests/test_invalidation.py; here they are taken out."""
    engine = vault._store.engine  # type: ignore[attr-defined]  # SqlKeyStore's engine
    seen: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "ccvault_invalidations" in statement:
            seen["BEGIN"] -= 1  # the poll's own transaction, counted just before
            if not seen["BEGIN"]:
                del seen["BEGIN"]
            return
        seen[statement.split(None, 1)[0].upper()] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


class _Bytes(bytes):
    pass


def _tampered(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


def _suite2(blob: bytes) -> bytes:
    """The same key reference and body under a suite-2 header (no period secrets exist yet)."""
    header, nonce, body = fmt.parse(blob)
    return fmt.build_header(2, header.key_id, header.key_version, b"\x01" * 16) + nonce + body


def _mixed(vault: Vault) -> tuple[list[tuple[Any, ...]], list[bytes | Sentinel | None]]:
    """Items of every kind and what each reads as (None: a DecryptionError)."""
    a, b, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a1 = vault.encrypt(a, b"a-phone", context=CTX)
    a2 = vault.encrypt(a, b"a-notes", context="customers.notes")
    b1 = vault.encrypt(b, b"b-phone", context=CTX)
    wide = vault.encrypt(NO_SUBJECT, b"press 1", context=WIDE)
    erased = vault.encrypt(gone, b"gone-phone", context=CTX)
    vault.shred(gone)
    cases: list[tuple[tuple[Any, ...], bytes | Sentinel | None]] = [
        ((a1, CTX), b"a-phone"),
        ((a1, CTX, a), b"a-phone"),
        ((a2, "customers.notes", a), b"a-notes"),
        ((b1, CTX, b), b"b-phone"),
        ((wide, WIDE), b"press 1"),
        ((wide, WIDE, NO_SUBJECT), b"press 1"),
        ((erased, CTX), SHREDDED),
        ((erased, CTX, gone), SHREDDED),
        ((_tampered(b1), CTX, b), None),  # tampered
        ((a1, "customers.notes", a), None),  # a blob of another context
        ((b1, CTX, a), None),  # checked against the wrong subject
        ((erased, CTX, a), None),  # a shredded value moved to another subject: no erasure
        ((wide, WIDE, a), None),  # vault-wide data checked against a subject
        ((a1, CTX, NO_SUBJECT), None),  # a subject's value checked as vault-wide
        ((_suite2(a1), CTX, a), None),  # suite 2 is reserved until retention periods
        ((a1[:-5], CTX, a), None),  # truncated: part of the tag is gone
        ((a1[:20], CTX), None),  # truncated inside the header
        ((b"", CTX), None),
        ((bytearray(b1), CTX, b), b"b-phone"),
        ((memoryview(wide), WIDE), b"press 1"),
        ([a1, CTX, a], b"a-phone"),  # a list is an item too
        ((_Bytes(a1), CTX, a), b"a-phone"),  # and a bytes subclass a blob
    ]
    return [item for item, _ in cases], [want for _, want in cases]


def test_mixed_items_read_aligned_with_the_input(vault: Vault, kms: LocalKms, db_url: str) -> None:
    items, wanted = _mixed(vault)
    for reader in (vault, Vault(kms, db_url)):  # warm caches, then a fresh process's cold ones
        with reader:
            got = reader.decrypt_many(items, errors="return")
            assert len(got) == len(items)
            for index, (value, want) in enumerate(zip(got, wanted, strict=True)):
                if want is None:
                    assert isinstance(value, DecryptionError), index
                    assert value.index == index
                    assert str(value) == f"ciphertext could not be decrypted: item {index}"
                elif want is SHREDDED:
                    assert value is SHREDDED, index
                else:
                    assert type(value) is bytes, index
                    assert value == want, index


def test_decrypt_is_decrypt_many_of_one_item_raising(svault: Vault) -> None:
    items, wanted = _mixed(svault)
    for item, want in zip(items, wanted, strict=True):
        blob, context, *subject = item
        kwargs = {"subject": subject[0]} if subject else {}
        if want is None:
            with pytest.raises(DecryptionError) as info:
                svault.decrypt(blob, context=context, **kwargs)
            assert str(info.value) == "ciphertext could not be decrypted"  # bare: one value
            assert info.value.index is None
        elif want is SHREDDED:
            with pytest.raises(SubjectShreddedError):
                svault.decrypt(blob, context=context, **kwargs)
        else:
            assert svault.decrypt(blob, context=context, **kwargs) == want
        (one,) = svault.decrypt_many([item], errors="return")
        assert isinstance(one, DecryptionError) if want is None else one == want, item


def test_errors_raise_names_the_first_failing_item(svault: Vault) -> None:
    s = uuid.uuid4()
    good = svault.encrypt(s, b"fine", context=CTX)
    gone = uuid.uuid4()
    erased = svault.encrypt(gone, b"erased", context=CTX)
    svault.shred(gone)
    # A tag failure at 2 comes before a format failure at 4, found in an earlier pass.
    items = [(good, CTX), (erased, CTX), (_tampered(good), CTX), (good, CTX), (b"\x01", CTX)]
    with pytest.raises(DecryptionError) as info:
        svault.decrypt_many(items)  # errors="raise" is the default
    assert info.value.index == 2
    assert str(info.value) == "ciphertext could not be decrypted: item 2"
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    items[2] = (good, CTX)
    with pytest.raises(DecryptionError) as info:
        svault.decrypt_many(items, errors="raise")
    assert info.value.index == 4
    # A shredded value is a sentinel, not an error, in either mode.
    assert svault.decrypt_many(items[:4]) == [b"fine", SHREDDED, b"fine", b"fine"]
    returned = svault.decrypt_many(items, errors="return")
    assert returned[:4] == [b"fine", SHREDDED, b"fine", b"fine"]
    assert isinstance(returned[4], DecryptionError)
    assert returned[4].index == 4
    with pytest.raises(ValueError, match="errors must be 'raise' or 'return'"):
        svault.decrypt_many(items, errors="ignore")  # type: ignore[arg-type]


def test_wrong_types_raise_type_error_naming_the_item_before_any_read(
    svault: Vault, kms: LocalKms, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = uuid.uuid4()
    good = svault.encrypt(s, b"x", context=CTX)
    fresh = Vault(kms, sqlite_url)  # cold caches
    wrong: list[tuple[object, str]] = [
        (good, r"an item is \(blob, context\) or \(blob, context, subject\)"),
        ((good,), "an item is"),
        ((good, CTX, s, s), "an item is"),
        ((good.hex(), CTX), "blob must be bytes from encrypt\\(\\), not str"),
        ((None, CTX), "blob must be bytes from encrypt\\(\\), not NoneType"),
        ((5, CTX), "blob must be bytes from encrypt\\(\\), not int"),
        ((good, ""), "context must be a non-empty str"),
        ((good, None), "context must be a non-empty str"),
        ((good, b"customers.phone"), "context must be a non-empty str"),
        ((good, ["unhashable"]), "context must be a non-empty str"),
        ((good, CTX, None), "a subject is required"),
        ((good, CTX, 42), "subject type is uuid: got int"),
        ((b"junk", CTX, "not-a-uuid"), "subject type is uuid: got a str that is not a UUID"),
    ]

    def forbidden(*_a: object, **_k: object) -> object:
        raise AssertionError("no key may be looked up before every item is checked")

    monkeypatch.setattr(fresh._store, "value_keys", forbidden)  # type: ignore[attr-defined]
    for bad, message in wrong:
        items = [(good, CTX, s)] * 3 + [bad]
        for errors in ("raise", "return"):
            with pytest.raises(TypeError, match=r"^items\[3\]: " + message) as info:
                fresh.decrypt_many(items, errors=errors)  # type: ignore[arg-type]
            assert str(s) not in str(info.value)
            assert "not-a-uuid" not in str(info.value)
    # decrypt keeps its own messages (no item to name)
    with pytest.raises(TypeError, match=r"^blob must be bytes from encrypt"):
        fresh.decrypt(good.hex(), context=CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^subject type is uuid"):
        fresh.decrypt(b"junk", context=CTX, subject=42)
    fresh.close()


def test_empty_input_and_any_iterable(svault: Vault) -> None:
    with statements(svault) as seen:
        assert svault.decrypt_many([]) == []
        assert svault.decrypt_many(()) == []
        assert svault.decrypt_many(iter([])) == []
    assert seen == {}
    s = uuid.uuid4()
    blobs = [svault.encrypt(s, f"v{i}".encode(), context=CTX) for i in range(3)]
    assert svault.decrypt_many((b, CTX, s) for b in blobs) == [b"v0", b"v1", b"v2"]


def test_duplicates_read_alike_with_one_key_lookup(
    svault: Vault, kms: LocalKms, sqlite_url: str
) -> None:
    s = uuid.uuid4()
    blob = svault.encrypt(s, b"same", context=CTX)
    with Vault(kms, sqlite_url) as fresh, statements(fresh) as seen:
        got = fresh.decrypt_many([(blob, CTX, s)] * 50 + [(blob, CTX)] * 50)
        assert got == [b"same"] * 100
        assert seen["SELECT"] == 1
        with statements(fresh) as warm:
            assert fresh.decrypt_many([(blob, CTX, s)] * 10) == [b"same"] * 10
        assert warm == {}  # every key cached: no statement at all


def test_a_batch_of_more_than_500_keys_is_read_in_several_queries(
    vault: Vault, kms: LocalKms, db_url: str
) -> None:
    subjects = [uuid.uuid4() for _ in range(1_201)]
    assert vault.warm(subjects) == len(subjects)
    items = [(vault.encrypt(s, s.bytes, context=CTX), CTX, s) for s in subjects]
    gone = subjects[7]
    vault.shred(gone)
    with Vault(kms, db_url) as fresh, statements(fresh) as seen:
        got = fresh.decrypt_many(items)
    assert seen["SELECT"] == 3  # ceil(1,201 / 500) queries, each key with its subject's head
    assert sum(seen.values()) <= 6, seen
    assert got[7] is SHREDDED
    assert all(got[i] == s.bytes for i, s in enumerate(subjects) if s != gone)


def test_cold_read_of_10k_values_of_2k_customers_costs_at_most_10_statements(
    vault: Vault, kms: LocalKms, db_url: str
) -> None:
    customers = [uuid.uuid4() for _ in range(2_000)]
    vault.warm(customers)
    items, expected = [], []
    for i in range(10_000):
        subject = customers[i % len(customers)]
        value = f"row {i:05d}".encode()
        items.append((vault.encrypt(subject, value, context=CTX), CTX, subject))
        expected.append(value)
    with Vault(kms, db_url) as fresh:  # a new process: empty caches
        with statements(fresh) as seen:
            assert fresh.decrypt_many(items) == expected
        assert sum(seen.values()) <= 10, seen
        # vault.decrypt, the same path one item at a time, pays a query per cold key instead.
        with Vault(kms, db_url) as one_by_one, statements(one_by_one) as each:
            for blob, context, subject in items[:100]:
                one_by_one.decrypt(blob, context=context, subject=subject)
        assert each["SELECT"] == 100


def _key_recorder(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every 32-byte value ``random_bytes`` or ``random_chunks`` hands the epochs from now on
    (new keys: one at a time, or a batch's with one CSPRNG call)."""
    keys: list[bytes] = []
    real, real_chunks = epochs_module.random_bytes, epochs_module.random_chunks

    def recording(n: int) -> bytes:
        out = real(n)
        if n == 32:
            keys.append(out)
        return out

    def recording_chunks(size: int, count: int) -> list[bytes]:
        out = real_chunks(size, count)
        if size == 32:
            keys.extend(out)
        return out

    monkeypatch.setattr(epochs_module, "random_bytes", recording)
    monkeypatch.setattr(epochs_module, "random_chunks", recording_chunks)
    return keys


def test_no_plaintext_key_material_or_subject_in_errors_reprs_or_logs(
    kms: LocalKms,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = b"SECRET-PLAINTEXT-4111111111111111"
    s, other = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, sqlite_url) as writer:
        keys = _key_recorder(monkeypatch)
        good = writer.encrypt(s, secret, context=CTX)
        bad = writer.encrypt(other, b"other", context=CTX)
        wide = writer.encrypt(NO_SUBJECT, secret, context=WIDE)
    assert len(keys) == 3  # the two subject keys and the vault-wide key
    items = [(good, CTX, s), (wide, WIDE), (bad, CTX, s), (_tampered(good), CTX, s)]
    # A fresh vault: the keys are loaded and unwrapped inside the failing call.
    with Vault(kms, sqlite_url) as reader:
        exc = raised(lambda: reader.decrypt_many(items))
        assert isinstance(exc, DecryptionError)
        assert exc.index == 2
        # (the subjects are in the caller's items, which the frames of the traceback hold)
        for needle in (secret, *keys):
            assert secrets_in(exc, needle) == [], needle[:4]
        returned = reader.decrypt_many(items, errors="return")
        assert returned[:2] == [secret, secret]
        typed = raised(lambda: reader.decrypt_many([*items, (good, CTX, "x" + str(s))]))
        assert isinstance(typed, TypeError)
    texts = [repr(returned[2:]), str(returned[2]), str(returned[3]), str(typed), caplog.text]
    for text in texts:
        assert "SECRET-PLAINTEXT" not in text
        assert str(s) not in text
        assert s.hex not in text
        assert not any(key.hex() in text for key in keys)


def test_a_read_only_vault_reads_batches(kms: LocalKms, db_url: str) -> None:
    kept, gone = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url) as writer:
        items = [
            (writer.encrypt(kept, b"kept", context=CTX), CTX, kept),
            (writer.encrypt(gone, b"gone", context=CTX), CTX, gone),
            (writer.encrypt(NO_SUBJECT, b"wide", context=WIDE), WIDE, NO_SUBJECT),
        ]
        writer.shred(gone)
    with Vault(kms, db_url, readonly=True) as ro, statements(ro) as seen:
        assert ro.decrypt_many(items) == [b"kept", SHREDDED, b"wide"]
        assert ro.decrypt(items[0][0], context=CTX, subject=kept) == b"kept"
    assert set(seen) <= {"BEGIN", "SELECT"}, seen  # nothing written
