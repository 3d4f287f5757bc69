"""New keys are never stored under a destroyed epoch, and shred's post-commit path cannot fail
before the shredding process stops serving the subject (issue 11, item 7).

A process whose cached active epoch was retired and then destroyed (it stalled, or it had not
re-read the epoch yet) wrapped new keys under that epoch, and nobody could unwrap them again. The
key store now checks the epoch's state in the transaction that inserts the key, and the epoch row
is locked so that ``destroy_epoch`` and an insert never interleave; the vault re-reads the active
epoch and wraps again.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import DestroyedKey, KeyStoreError, SubjectShreddedError, Vault
from ccvault.crypto._blind import normalizer
from ccvault.keystore import KeyKind, KeyRecord, SqlKeyStore, State
from ccvault.keystore._protocol import EpochNotUsableError
from ccvault.kms import LocalKms, WrappedKey
from ccvault.testing import FrozenClock
from ccvault.vault import NO_SUBJECT

CTX = "calls.notes"
DAY = 86_400.0


# -- the key store refuses keys under a destroyed epoch -------------------------------------------


def _key(epoch_id: bytes, *, kind: str = KeyKind.SUBJECT, label: str | None = None) -> KeyRecord:
    return KeyRecord(
        key_id=os.urandom(16),
        version=1,
        kind=kind,
        label=label,
        ref=os.urandom(32) if kind == KeyKind.SUBJECT else None,
        epoch_id=epoch_id,
        wrapped=os.urandom(60),
        commitment=os.urandom(32),
        state=State.LIVE,
        created_at=0.0,
    )


def _no_mac(*_fields: object) -> bytes:
    return bytes(32)  # these tests are about epochs: the heads' MACs are never read


def _rows(store: SqlKeyStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM ccvault_{table}")).scalar_one())


def test_the_store_refuses_new_keys_under_a_destroyed_or_unknown_epoch(db_url: str) -> None:
    store = SqlKeyStore(db_url)
    try:
        wrap = [WrappedKey("k", "r", b"w")]
        one, two = os.urandom(16), os.urandom(16)
        store.add_epoch(one, 1, os.urandom(32), wrap, 0.0)
        store.add_epoch(two, 2, os.urandom(32), wrap, 1.0)  # epoch 1 retired
        # Active and retired epochs take new keys (a process may not have seen the rotation).
        for epoch in (one, two):
            assert store.create_subject_keys([_key(epoch)], 2.0, _no_mac)
            assert store.insert_key_if_absent(
                _key(epoch, kind=KeyKind.VAULTWIDE, label="x" + epoch.hex())
            )
        assert store.destroy_epoch(one, 3.0) is False  # it holds the keys just made
        store.rewrap(
            [(k, os.urandom(60), os.urandom(32)) for k in store.keys_before_epoch(2, 100)], two
        )
        assert store.destroy_epoch(one, 3.0) is True
        heads, keys = _rows(store, "subject_heads"), _rows(store, "keys")
        for epoch in (one, os.urandom(16)):  # destroyed, and unknown to the store
            with pytest.raises(EpochNotUsableError):
                store.create_subject_keys([_key(two), _key(epoch)], 4.0, _no_mac)
            with pytest.raises(EpochNotUsableError):
                store.insert_key_if_absent(_key(epoch, kind=KeyKind.VAULTWIDE, label="late"))
        assert (_rows(store, "subject_heads"), _rows(store, "keys")) == (heads, keys)  # nothing
        assert isinstance(EpochNotUsableError(), KeyStoreError)
    finally:
        store.close()


# -- a process that had not seen the rotation re-wraps under the active epoch ----------------------


def test_a_stalled_process_rewraps_new_keys_instead_of_losing_them(db_url: str) -> None:
    """``late`` read epoch 1 as active and stalled (its clock stands still) while the admin
    rotated, waited out the backup window and destroyed epoch 1 with its root."""
    kms = LocalKms.ephemeral()
    admin_clock, late_clock = FrozenClock(), FrozenClock()
    with (
        Vault(kms, db_url, per_epoch_roots=True, clock=late_clock) as late,
        Vault(kms, db_url, per_epoch_roots=True, clock=admin_clock) as admin,
    ):
        admin.rotate_epoch()
        admin_clock.advance(36 * DAY)
        assert admin.destroy_epochs() == [1]
        customer = uuid.uuid4()
        blob = late.encrypt(customer, b"a new customer", context=CTX)  # a subject key
        shared = late.encrypt(NO_SUBJECT, b"vault-wide data", context=CTX)  # a vault-wide key
        late.blind_index("customers.phone", normalizer("phone"), "+44 20 7946 0000", 8)  # root key
        assert [(e.seq, e.state, e.live_keys) for e in admin.epochs()] == [
            (1, "destroyed", 0),
            (2, "active", 6),  # K_ref, receipt and head keys (re-wrapped), the three new ones
        ]
    with Vault(kms, db_url, per_epoch_roots=True) as fresh:
        assert fresh.decrypt(blob, context=CTX, subject=customer) == b"a new customer"
        assert fresh.decrypt(shared, context=CTX, subject=NO_SUBJECT) == b"vault-wide data"


def test_destroy_epoch_and_an_insert_under_it_never_interleave(db_url: str) -> None:
    """The insert holds the epoch row (shared) until it commits; destroy_epoch locks it first
    (exclusively), so its count of live keys sees the new key. Before, on PostgreSQL and
    MariaDB, destroy_epoch counted without waiting, destroyed the epoch, and the paused insert
    then committed a key under it. (SQLite serialises write transactions: it held already.)"""
    kms = LocalKms.ephemeral()
    admin_clock, late_clock = FrozenClock(), FrozenClock()
    with (
        Vault(kms, db_url, clock=late_clock) as late,
        Vault(kms, db_url, clock=admin_clock) as admin,
    ):
        late.encrypt(uuid.uuid4(), b"warm", context=CTX)  # epoch 1's key is cached in `late`
        admin.rotate_epoch()
        admin_clock.advance(36 * DAY)
        paused, release = threading.Event(), threading.Event()

        # Paused where the insert of the new key rows starts (an executemany, or on PostgreSQL
        # through psycopg a COPY, which no SQLAlchemy cursor event sees), the epoch row held.
        store = late._store  # type: ignore[attr-defined]  # SqlKeyStore
        insert_new_rows = store._insert_new_rows

        def pause_at_key_insert(conn: Any, table: sa.Table, rows: Any, **kw: Any) -> Any:
            if table.name == "ccvault_keys" and not paused.is_set():
                paused.set()
                release.wait(30)
            return insert_new_rows(conn, table, rows, **kw)

        store._insert_new_rows = pause_at_key_insert
        customer, out, destroyed = uuid.uuid4(), [], []
        writer = threading.Thread(
            target=lambda: out.append(late.encrypt(customer, b"paused", context=CTX))
        )
        writer.start()
        assert paused.wait(30)
        destroyer = threading.Thread(target=lambda: destroyed.append(admin.destroy_epochs()))
        destroyer.start()
        destroyer.join(1.0)  # before: finished at once, epoch 1 destroyed under the paused key
        release.set()
        writer.join(30)
        destroyer.join(30)
        assert out
        assert destroyed == [[]]  # the new key was seen: not destroyed this time
        assert admin.destroy_epochs() == [1]  # the next run re-wraps it, then destroys
    with Vault(kms, db_url) as fresh:
        assert fresh.decrypt(out[0], context=CTX, subject=customer) == b"paused"


# -- shred: nothing after the commit can fail before the caches are emptied ----------------------


class _ShredReturns:
    """The real key store, except that ``shred`` returns (after committing) a receipt of the
    test's choosing, or raises after committing, as a lost connection at COMMIT would."""

    def __init__(self, inner: SqlKeyStore) -> None:
        self._inner = inner
        self.receipt: str | None = None
        self.fail_after_commit = False

    def shred(self, ref: bytes, now: float, *args: Any, **kwargs: Any) -> tuple[str, bool]:
        receipt, newly = self._inner.shred(ref, now, *args, **kwargs)
        if self.fail_after_commit:
            raise KeyStoreError("the key store could not be written")
        return (self.receipt if self.receipt is not None else receipt), newly

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize(
    "receipt",
    [
        "not json",
        '{"format": "ccvault-erasure-receipt/v1"}',
        "null",
        "receipt-with-bad-key-id",
    ],
)
def test_a_receipt_that_does_not_parse_still_empties_the_caches(db_url: str, receipt: str) -> None:
    store = _ShredReturns(SqlKeyStore(db_url))
    with Vault(LocalKms.ephemeral(), store) as vault:  # type: ignore[arg-type]
        customer = uuid.uuid4()
        blob = vault.encrypt(customer, b"to be erased", context=CTX)
        assert vault.decrypt(blob, context=CTX) == b"to be erased"  # the read key is cached
        if receipt == "receipt-with-bad-key-id":
            good = vault.shred(uuid.uuid4()).model_copy(
                update={"destroyed_keys": (DestroyedKey(key_id="zz", version=1),)}
            )
            receipt = good.model_dump_json()
        store.receipt = receipt
        with pytest.raises(KeyStoreError, match=r"is shredded .* does not parse") as caught:
            vault.shred(customer)
        assert caught.value.__context__ is None
        with pytest.raises(SubjectShreddedError):
            vault.encrypt(customer, b"again", context=CTX)
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)
    store._inner.close()


def test_a_shred_that_fails_after_committing_still_empties_the_caches(db_url: str) -> None:
    store = _ShredReturns(SqlKeyStore(db_url))
    with Vault(LocalKms.ephemeral(), store) as vault:  # type: ignore[arg-type]
        customer = uuid.uuid4()
        blob = vault.encrypt(customer, b"to be erased", context=CTX)
        assert vault.decrypt(blob, context=CTX) == b"to be erased"
        store.fail_after_commit = True
        with pytest.raises(KeyStoreError):
            vault.shred(customer)
        with pytest.raises(SubjectShreddedError):
            vault.encrypt(customer, b"again", context=CTX)
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)
        store.fail_after_commit = False
        assert vault.shred(customer).subject_was_known  # the stored receipt, read back
    store._inner.close()
