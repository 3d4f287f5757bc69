"""Issue 11, item 10: the receipt's erasure horizon is conservative.

It counts the KMS's own waiting period (AWS: tests/test_kms_aws.py), the daily destroy job, and a
rotation that is already overdue when the shred happens; and under the operating assumptions of
docs/security.md ("Erasure horizon") the epoch is beyond recall by then.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from admin_cli import configure, run, sqlite_backup
from ccvault import KmsKeyNotFoundError, Vault
from ccvault.kms import LocalKms, MultiKms, RootState
from ccvault.testing import FrozenClock
from ccvault.testing._basics import KmsWrapper

CTX = "calls.recording_notes"
DAY = 86_400.0
ROTATION, RETENTION = timedelta(days=30), timedelta(days=35)


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@pytest.mark.parametrize("shred_day", [0.0, 5.0, 29.5, 30.0, 40.0, 95.0])
def test_local_horizon_is_retire_by_plus_backup_window_plus_a_day(
    shred_day: float, sqlite_url: str
) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    assert kms.root_destruction_delay == timedelta(0)
    with Vault(kms, sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        created = _at(vault.epochs()[0].created_at)
        clock.advance(shred_day * DAY)
        receipt = vault.shred(uuid.uuid4())
    assert receipt.erasure_horizon is not None
    shredded = receipt.shredded_at
    # Overdue at the shred (day 30 and later): one rotation period from the shred, not the
    # long-past due date.
    retire_by = created + ROTATION if shredded < created + ROTATION else shredded + ROTATION
    assert receipt.erasure_horizon >= retire_by + RETENTION + kms.root_destruction_delay
    assert receipt.erasure_horizon == retire_by + RETENTION + timedelta(days=1)


def test_a_multikms_horizon_waits_for_its_slowest_member(sqlite_url: str) -> None:
    class _Pending(KmsWrapper):
        @property
        def root_destruction_delay(self) -> timedelta:
            return timedelta(days=12)

    kms, clock = MultiKms(LocalKms.ephemeral(), _Pending(LocalKms.ephemeral())), FrozenClock()
    assert kms.root_destruction_delay == timedelta(days=12)
    with Vault(kms, sqlite_url, per_epoch_roots=True, clock=clock) as vault:
        created = _at(vault.epochs()[0].created_at)
        receipt = vault.shred(uuid.uuid4())
    assert receipt.erasure_horizon is not None
    assert receipt.erasure_horizon >= created + ROTATION + RETENTION + timedelta(days=12)


@pytest.mark.parametrize("shred_day", [5.0, 29.5, 40.0, 95.0])
def test_the_epoch_is_beyond_recall_by_the_horizon_even_with_the_latest_jobs(
    shred_day: float, tmp_path: Path
) -> None:
    """Rotation as late as the assumptions allow, the daily destroy job at the worst time of
    day: the backup taken before the shred still stops opening by the signed date."""
    kms = LocalKms.from_file(tmp_path / "master.key", create=True)
    clock, url = FrozenClock(), f"sqlite:///{tmp_path / 'keys.db'}"
    subject = uuid.uuid4()
    with Vault(kms, url, per_epoch_roots=True, clock=clock) as vault:
        vault.encrypt(subject, b"asked to be forgotten", context=CTX)
        created = vault.epochs()[0].created_at
        root = vault.epochs()[0].roots[0][1]
        sqlite_backup(tmp_path / "keys.db", tmp_path / "backup.db")  # the nightly backup, before
        clock.advance(shred_day * DAY)
        receipt = vault.shred(subject)
        assert receipt.erasure_horizon is not None
        horizon = receipt.erasure_horizon.timestamp()
        # The rotation: on its due date, or — already overdue at the shred — one period later.
        due = created + ROTATION.total_seconds()
        rotate_at = due if clock() < due else clock() + ROTATION.total_seconds()
        clock.advance(rotate_at - clock())
        vault.rotate_epoch()
        # The daily destroy job runs a second before the epoch is due, then a day later.
        clock.advance(RETENTION.total_seconds() - 1)
        assert vault.destroy_epochs() == []
        clock.advance(DAY)
        assert vault.destroy_epochs() == [1]
        destroyed_at = clock()
    assert kms.root_state(root) is RootState.DESTROYED
    assert destroyed_at <= horizon
    with pytest.raises(KmsKeyNotFoundError):
        Vault(LocalKms.from_file(tmp_path / "master.key"), f"sqlite:///{tmp_path / 'backup.db'}")


def test_status_flags_the_overdue_rotation_that_moves_the_horizon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kms, url = configure(tmp_path, monkeypatch, per_epoch_roots="true")
    with Vault(kms, url, per_epoch_roots=True, clock=FrozenClock()):  # epoch 1 made in 2023
        pass
    status = run(capsys, "status")
    assert status["rotation_overdue"] is True
    assert datetime.fromisoformat(status["rotation_due_at"]).timestamp() < time.time()
    with Vault(kms, url, per_epoch_roots=True) as vault:  # the application, today
        now = _at(time.time())
        receipt = vault.shred(uuid.uuid4())
    assert receipt.erasure_horizon is not None
    assert receipt.erasure_horizon >= now + ROTATION + RETENTION
    run(capsys, "rotate-epoch")
    status = run(capsys, "status")
    assert status["rotation_overdue"] is False
    assert datetime.fromisoformat(status["rotation_due_at"]).timestamp() > time.time()
