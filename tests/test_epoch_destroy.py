"""destroy_epochs(): epochs retired past the backup window lose their KMS roots."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from ccvault import KmsError, KmsKeyNotFoundError, SubjectShreddedError, Vault
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms, MultiKms, RootState
from ccvault.testing import FrozenClock
from ccvault.testing._basics import KmsWrapper

CTX = "calls.recording_notes"
DAY = 86_400.0


def _epoch_roots(url: str) -> dict[int, list[str]]:
    store = SqlKeyStore(url)
    try:
        return {e.seq: [w.root_id for w in e.wraps] for e in store.epochs()}
    finally:
        store.close()


def _states(url: str) -> dict[int, str]:
    store = SqlKeyStore(url)
    try:
        return {e.seq: e.state for e in store.epochs()}
    finally:
        store.close()


def _backup(source: Path, target: Path) -> None:
    """An online SQLite backup (WAL included), as a backup job takes it."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_backup_from_a_destroyed_epoch_no_longer_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    kms, clock = LocalKms.from_file(tmp_path / "master.key", create=True), FrozenClock()
    kept, erased = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, url, per_epoch_roots=True, clock=clock) as vault:
        kept_blob = vault.encrypt(kept, b"still a customer", context=CTX)
        erased_blob = vault.encrypt(erased, b"asked to be forgotten", context=CTX)
        _backup(tmp_path / "keys.db", tmp_path / "backup.db")  # the nightly backup
        receipt = vault.shred(erased)
        assert receipt.erasure_horizon is not None
        vault.rotate_epoch()
        assert vault.destroy_epochs() == []  # inside the backup window: nothing yet
        clock.advance(34 * DAY)
        assert vault.destroy_epochs() == []
        clock.advance(1 * DAY)
        assert vault.destroy_epochs() == [1]
        assert vault.destroy_epochs() == []  # idempotent
        assert vault.decrypt(kept_blob, context=CTX, subject=kept) == b"still a customer"
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(erased_blob, context=CTX)
    root1 = _epoch_roots(url)[1][0]
    assert kms.root_state(root1) is RootState.DESTROYED
    assert _states(url)[1] == "destroyed"
    # The backup still holds the erased customer's wrapped key, but its epoch root is gone.
    backup = f"sqlite:///{tmp_path / 'backup.db'}"
    assert _states(backup) == {1: "active"}
    with pytest.raises(KmsKeyNotFoundError):
        Vault(LocalKms.from_file(tmp_path / "master.key"), backup)
    # The live installation opens in a fresh process.
    with Vault(LocalKms.from_file(tmp_path / "master.key"), url, per_epoch_roots=True) as fresh:
        assert fresh.decrypt(kept_blob, context=CTX, subject=kept) == b"still a customer"


def test_keys_written_under_a_stale_epoch_are_rewrapped_not_lost(db_url: str) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with (
        Vault(kms, db_url, per_epoch_roots=True, clock=clock) as stale,
        Vault(kms, db_url, per_epoch_roots=True, clock=clock) as admin,
    ):
        admin.rotate_epoch()
        # `stale` still caches epoch 1 as active: its new key is wrapped under the retired epoch.
        late = uuid.uuid4()
        blob = stale.encrypt(late, b"written during the rotation", context=CTX)
        clock.advance(36 * DAY)
        assert admin.destroy_epochs() == [1]
    with Vault(kms, db_url) as fresh:
        assert fresh.decrypt(blob, context=CTX, subject=late) == b"written during the rotation"


def test_a_shared_root_is_never_destroyed(sqlite_url: str) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    root = kms.current_root()
    with Vault(kms, sqlite_url, clock=clock) as vault:  # one root for every epoch
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        vault.rotate_epoch()
        clock.advance(36 * DAY)
        assert vault.destroy_epochs() == [1]  # the epoch is retired in the store...
        assert vault.decrypt(blob, context=CTX) == b"x"
    assert kms.root_state(root) is RootState.ENABLED  # ...but the shared root lives on
    assert _states(sqlite_url) == {1: "destroyed", 2: "active"}


def test_every_member_of_a_multikms_loses_the_root(sqlite_url: str) -> None:
    primary, dr, clock = LocalKms.ephemeral(), LocalKms.ephemeral(), FrozenClock()
    with Vault(MultiKms(primary, dr), sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        vault.rotate_epoch()
        clock.advance(36 * DAY)
        assert vault.destroy_epochs() == [1]
    store = SqlKeyStore(sqlite_url)
    try:
        epoch1 = next(e for e in store.epochs() if e.seq == 1)
    finally:
        store.close()
    states = {
        w.kms_id: (primary if w.kms_id == primary.kms_id else dr).root_state(w.root_id)
        for w in epoch1.wraps
    }
    assert states == {primary.kms_id: RootState.DESTROYED, dr.kms_id: RootState.DESTROYED}


def test_custom_backup_retention_and_active_epoch_untouched(db_url: str) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with Vault(
        kms, db_url, per_epoch_roots=True, clock=clock, backup_retention=timedelta(days=1)
    ) as vault:
        clock.advance(10 * DAY)
        assert vault.destroy_epochs() == []  # the active epoch is never destroyed
        vault.rotate_epoch()
        vault.rotate_epoch()
        clock.advance(1 * DAY)
        assert vault.destroy_epochs() == [1, 2]
        assert vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    assert _states(db_url) == {1: "destroyed", 2: "destroyed", 3: "active"}


def test_a_root_the_backend_refuses_to_destroy_is_skipped_with_a_warning(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Epochs made before per_epoch_roots was turned on share the configured root; backends
    refuse to destroy it, and destroy_epochs() goes on with the other epochs."""
    kms, clock = _RefusingKms(LocalKms.ephemeral()), FrozenClock()
    with Vault(kms, sqlite_url, clock=clock) as vault:  # epoch 1 under the shared root
        vault.rotate_epoch()
    with Vault(kms, sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        vault.rotate_epoch()  # epoch 3 has a root of its own
        vault.rotate_epoch()
        clock.advance(36 * DAY)
        with caplog.at_level("WARNING", logger="ccvault"):
            assert vault.destroy_epochs() == [1, 2, 3]
    assert "not destroyed" in caplog.text
    roots = _epoch_roots(sqlite_url)
    assert kms.inner.root_state(roots[3][0]) is RootState.DESTROYED
    assert kms.inner.root_state(roots[1][0]) is RootState.ENABLED


class _RefusingKms(KmsWrapper):
    """Refuses to destroy its original root, as AwsKms and VaultTransitKms do."""

    def __init__(self, inner: LocalKms) -> None:
        super().__init__(inner)
        self.protected = inner.current_root()

    def destroy_root(self, root_id: str) -> None:
        if root_id == self.protected:
            raise KmsError("refusing to destroy the configured root")
        self.inner.destroy_root(root_id)
