"""destroy_epochs(): epochs retired past the backup window lose their KMS roots."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from admin_cli import sqlite_backup
from ccvault import (
    KmsError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
    RotationReport,
    SubjectShreddedError,
    Vault,
)
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


def test_backup_from_a_destroyed_epoch_no_longer_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    kms, clock = LocalKms.from_file(tmp_path / "master.key", create=True), FrozenClock()
    kept, erased = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, url, per_epoch_roots=True, clock=clock) as vault:
        kept_blob = vault.encrypt(kept, b"still a customer", context=CTX)
        erased_blob = vault.encrypt(erased, b"asked to be forgotten", context=CTX)
        sqlite_backup(tmp_path / "keys.db", tmp_path / "backup.db")  # the nightly backup
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


# -- issue 10: progress, interruption, dry run and what status reports -------------------------


def _keys_per_epoch(vault: Vault) -> list[tuple[int, str, int]]:
    return [(e.seq, e.state, e.live_keys) for e in vault.epochs()]


def test_an_interrupted_rotation_is_finished_by_the_next_one(db_url: str) -> None:
    """Ctrl-C after the first batch: the next rotate_epoch() finishes the re-wrapping under the
    epoch the interrupted one started, and starts no third epoch; the one after rotates."""
    kms = LocalKms.ephemeral()
    subjects = [uuid.uuid4() for _ in range(1100)]
    with Vault(kms, db_url) as vault:
        vault.warm(subjects)  # 1100 subject keys, plus K_ref, the receipt and head keys: 1103
        blob = vault.encrypt(subjects[-1], b"still readable", context=CTX)
        seen: list[tuple[int, int]] = []

        def interrupt(done: int, total: int) -> None:
            seen.append((done, total))
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            vault.rotate_epoch(progress=interrupt)
        assert seen == [(500, 1103)]
        assert _keys_per_epoch(vault) == [(1, "retired", 603), (2, "active", 500)]
    with Vault(kms, db_url) as fresh:  # the next run, in another process
        assert fresh.decrypt(blob, context=CTX) == b"still readable"
        progress: list[tuple[int, int]] = []
        report = fresh.rotate_epoch(progress=lambda done, total: progress.append((done, total)))
        assert report == RotationReport(2, 603, resumed=True)
        assert progress == [(500, 603), (603, 603)]
        assert _keys_per_epoch(fresh) == [(1, "retired", 0), (2, "active", 1103)]
        assert fresh.rotate_epoch() == RotationReport(3, 1103)  # finished: this one rotates
        assert fresh.decrypt(blob, context=CTX, subject=subjects[-1]) == b"still readable"


def test_keys_a_stale_writer_leaves_behind_do_not_hold_up_the_next_rotation(
    sqlite_url: str,
) -> None:
    kms = LocalKms.ephemeral()
    with Vault(kms, sqlite_url) as stale, Vault(kms, sqlite_url) as admin:
        assert admin.rotate_epoch() == RotationReport(2, 3)
        late = uuid.uuid4()
        blob = stale.encrypt(late, b"late", context=CTX)  # still wraps under epoch 1
        assert _keys_per_epoch(admin) == [(1, "retired", 1), (2, "active", 3)]
        assert admin.rotate_epoch() == RotationReport(3, 4)  # a new epoch, the late key too
        assert admin.decrypt(blob, context=CTX, subject=late) == b"late"


def test_destroy_epochs_dry_run_changes_nothing_then_the_run_reports_progress(
    db_url: str,
) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with (
        Vault(kms, db_url, per_epoch_roots=True, clock=clock) as stale,
        Vault(kms, db_url, per_epoch_roots=True, clock=clock) as admin,
    ):
        admin.rotate_epoch()
        stale.encrypt(uuid.uuid4(), b"late", context=CTX)  # one key left under epoch 1
        clock.advance(36 * DAY)
        before = admin.epochs(check_roots=True)
        root1 = before[0].roots[0][1]
        assert admin.destroy_epochs(dry_run=True) == [1]
        assert admin.epochs(check_roots=True) == before
        assert kms.root_state(root1) is RootState.ENABLED
        with Vault(kms, db_url, readonly=True, per_epoch_roots=True, clock=clock) as ro:
            assert ro.destroy_epochs(dry_run=True) == [1]
        progress: list[tuple[int, int]] = []
        assert admin.destroy_epochs(progress=lambda d, t: progress.append((d, t))) == [1]
        assert progress == [(1, 1)]
        assert kms.root_state(root1) is RootState.DESTROYED


def test_epochs_report_keys_due_dates_and_what_became_of_each_root(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = _SchedulingKms(LocalKms.ephemeral())
    t0 = clock()
    with Vault(kms, sqlite_url, clock=clock) as shared:  # epochs 1 and 2 share the first root
        shared.encrypt(uuid.uuid4(), b"x", context=CTX)
        clock.advance(DAY)
        shared.rotate_epoch()
    with Vault(kms, sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        clock.advance(DAY)
        vault.rotate_epoch()  # epoch 3: a root of its own
        clock.advance(DAY)
        vault.rotate_epoch()  # epoch 4
        e1, e2, e3, e4 = vault.epochs()
        assert [e.live_keys for e in (e1, e2, e3, e4)] == [0, 0, 0, 4]
        assert (e1.destroyable_at, e2.destroyable_at) == (t0 + 36 * DAY, t0 + 37 * DAY)
        assert (e3.destroyable_at, e4.destroyable_at) == (t0 + 38 * DAY, None)
        assert e4.rotation_due_at == t0 + 33 * DAY
        assert e1.rotation_due_at is None
        clock.advance(34 * DAY)  # t0 + 37 days: epochs 1 and 2 are due, 3 is not
        assert vault.destroy_epochs() == [1, 2]
        kms.outage_on_destroy = True
        clock.advance(DAY)
        with pytest.raises(KmsUnavailableError):  # epoch 3 is destroyed, its root is not
            vault.destroy_epochs()
        fates = {e.seq: e.root_destruction for e in vault.epochs(check_roots=True)}
        assert fates == {1: ("pending",), 2: ("pending",), 3: ("failed",), 4: ()}
        assert all(e.root_destruction == () for e in vault.epochs())  # only when asked
        kms.outage_on_destroy = False
        assert vault.destroy_epochs() == []  # the next run retries the root
        kms.scheduled.clear()  # AWS's waiting period is over: the roots are gone
        fates = {e.seq: e.root_destruction for e in vault.epochs(check_roots=True)}
        assert fates == {1: ("destroyed",), 2: ("destroyed",), 3: ("destroyed",), 4: ()}
    with Vault(kms, sqlite_url, clock=clock) as plain:  # without per_epoch_roots: not asked
        assert all(e.root_destruction == () for e in plain.epochs(check_roots=True))


def test_a_shared_root_reads_shared(sqlite_url: str) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with Vault(kms, sqlite_url, clock=clock) as vault:
        vault.rotate_epoch()
        clock.advance(DAY)
        vault.rotate_epoch()
        clock.advance(34.5 * DAY)  # epoch 1 is due, epoch 2 not yet
        assert vault.destroy_epochs() == [1]
    with Vault(kms, sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        assert vault.epochs(check_roots=True)[0].root_destruction == ("shared",)


class _SchedulingKms(KmsWrapper):
    """Schedules a root for deletion rather than destroying it, as AWS KMS does; can fail the
    scheduling call as an outage would."""

    def __init__(self, inner: LocalKms) -> None:
        super().__init__(inner)
        self.scheduled: set[str] = set()
        self.outage_on_destroy = False

    def destroy_root(self, root_id: str) -> None:
        if self.outage_on_destroy:
            raise KmsUnavailableError("the KMS did not answer")
        self.scheduled.add(root_id)
        self.inner.destroy_root(root_id)

    def root_state(self, root_id: str) -> RootState:
        if root_id in self.scheduled:
            return RootState.PENDING_DELETION
        return self.inner.root_state(root_id)
