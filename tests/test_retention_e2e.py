"""Retention end to end (issue 14, "Tests"): values written with ``retention=`` read until the
first enforcement at their period's expiry and read EXPIRED after it — never a second early —
for day, ISO week and month periods, across a DST change, a leap day and in non-UTC zones; a
held subject's values keep reading; ``hold()`` names the periods it cannot bring back; a key
store backup restored after the period secret's epoch was destroyed stays expired."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ccvault import EXPIRED, KmsKeyNotFoundError, RetentionExpiredError
from ccvault.retention import Category, RetentionPolicy, expires_at, period_label, period_of
from test_enforce_retention import Setup

UTC = timezone.utc
CTX = "calls.transcript"


def policy(*categories: Category) -> RetentionPolicy:
    return RetentionPolicy(categories=categories)


CASES = [
    # (category, event time): a day across the spring-forward in Paris, an ISO week in New
    # York across its DST change, a month ending on a leap day, a month end in Tokyo
    (
        Category(name="chats", keep_for="P1D", granularity="day", tz="Europe/Paris"),
        datetime(2026, 3, 29, 10, 0, tzinfo=UTC),
    ),
    (
        Category(name="emails", keep_for="P2W", granularity="week", tz="America/New_York"),
        datetime(2026, 10, 28, 12, 0, tzinfo=UTC),  # the week clocks go back (1 November)
    ),
    (
        Category(name="transcripts", keep_for="P1M", granularity="month", tz="UTC"),
        datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC),
    ),
    (
        Category(name="recordings", keep_for="P90D", granularity="month", tz="Asia/Tokyo"),
        datetime(2026, 5, 31, 15, 30, tzinfo=UTC),  # 1 June 00:30 in Tokyo
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c, _ in CASES])
def case(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str
) -> Iterator[tuple[Setup, Category, datetime]]:
    category, event = request.param
    s = Setup(tmp_path, db_url, policy=policy(category))
    s.to(event)
    yield s, category, event
    s.vault.close()


def test_a_value_reads_until_the_enforcement_at_its_expiry_and_is_expired_after(
    case: tuple[Setup, Category, datetime],
) -> None:
    setup, category, event = case
    vault = setup.vault
    customer, held = uuid.uuid4(), uuid.uuid4()
    blob = vault.encrypt(customer, b"said", context=CTX, retention=category.name)
    kept = vault.encrypt(held, b"kept", context=CTX, retention=category.name)
    vault.hold(held, case="LIT-9", by="legal")
    period = period_of(category, event)
    due = expires_at(period)
    setup.to(due - timedelta(seconds=1))
    before = vault.enforce_retention()
    assert before.destroyed == {}
    assert vault.decrypt(blob, context=CTX, subject=customer) == b"said"
    setup.to(due)
    report = vault.enforce_retention()
    assert report.destroyed == {category.name: (period_label(period),)}
    with pytest.raises(RetentionExpiredError):
        vault.decrypt(blob, context=CTX, subject=customer)
    assert vault.decrypt_many([(blob, CTX, customer), (kept, CTX, held)]) == [EXPIRED, b"kept"]
    # another process, cold: the same outcomes
    with setup.open() as other:
        assert other.decrypt_many([(blob, CTX, customer), (kept, CTX, held)]) == [
            EXPIRED,
            b"kept",
        ]
        # no write into the expired period, by time
        with pytest.raises(RetentionExpiredError):
            other.encrypt(
                customer, b"x", context=CTX, retention=category.name, retention_from=event
            )
    # a new hold names the period it cannot bring back
    late = vault.hold(customer, case="LIT-10", by="legal")
    assert late.expired == (period_label(period),)
    assert isinstance(late, str)
    assert len(late) == 32
    assert vault.decrypt_many([(blob, CTX, customer)]) == [EXPIRED]
    # the subject export lists the holds (cases are opaque references)
    exported = vault.export_subject(held, sa.create_engine("sqlite://")).as_dict()
    assert [(h["case"], h["active"]) for h in exported["holds"]] == [("LIT-9", True)]
    # releasing the held subject: its values expire at the next run
    (hold,) = [h for h in vault.holds() if h.subject_ref == vault.subject_ref(held).hex()]
    vault.release(hold.hold_id, by="legal")
    vault.enforce_retention()
    assert vault.decrypt_many([(kept, CTX, held)]) == [EXPIRED]


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database in WAL mode (what a backup tool does)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def test_a_restored_backup_of_the_key_store_stays_expired_once_its_epoch_is_gone(
    tmp_path: Path,
) -> None:
    """Copy the key store → enforce → rotate → past backup_retention → destroy_epochs (per-epoch
    roots) → restore the copy: the expired value does not open. The ledger's replay tombstones
    the period again at open; and without it, the backup's period secret is wrapped under an
    epoch whose root the KMS destroyed."""
    category = Category(name="chats", keep_for="P1D", granularity="day")
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    setup = Setup(tmp_path, url, policy=policy(category), per_epoch_roots=True)
    vault = setup.vault
    customer = uuid.uuid4()
    start = datetime.fromtimestamp(setup.clock(), UTC)
    blob = vault.encrypt(customer, b"old chat", context=CTX, retention="chats")
    _sqlite_copy(tmp_path / "keys.db", tmp_path / "backup.db")  # the nightly backup
    setup.to(expires_at(period_of(category, start)))
    assert vault.enforce_retention().destroyed
    vault.rotate_epoch()
    later = datetime.fromtimestamp(setup.clock(), UTC) + vault.backup_retention
    setup.to(later + timedelta(days=1))
    assert vault.destroy_epochs()
    vault.close()
    for leftover in tmp_path.glob("keys.db*"):
        leftover.unlink()
    _sqlite_copy(tmp_path / "backup.db", tmp_path / "keys.db")  # the restore
    # The backup's epoch (which wraps the period secret, and every key of that time) has its
    # KMS root destroyed: nothing in the backup opens any more, the expired value included.
    with pytest.raises(KmsKeyNotFoundError) as info:
        setup.open().decrypt(blob, context=CTX, subject=customer)
    assert "old chat" not in str(info.value)
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        (wrapped,) = conn.execute(
            "SELECT wrapped FROM ccvault_keys WHERE kind = 'period'"
        ).fetchone()
    conn.close()
    assert wrapped is not None  # the backup still holds the wrapped secret, which never opens


def test_a_restored_backup_within_its_horizon_is_expired_again_by_the_ledger(
    tmp_path: Path,
) -> None:
    """The same restore before the epoch is gone: the open replays the ledger's retention
    report, which tombstones the period again before the first read."""
    category = Category(name="chats", keep_for="P1D", granularity="day")
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    setup = Setup(tmp_path, url, policy=policy(category))
    vault = setup.vault
    customer = uuid.uuid4()
    start = datetime.fromtimestamp(setup.clock(), UTC)
    blob = vault.encrypt(customer, b"old chat", context=CTX, retention="chats")
    _sqlite_copy(tmp_path / "keys.db", tmp_path / "backup.db")
    setup.to(expires_at(period_of(category, start)))
    assert vault.enforce_retention().destroyed
    vault.close()
    for leftover in tmp_path.glob("keys.db*"):
        leftover.unlink()
    _sqlite_copy(tmp_path / "backup.db", tmp_path / "keys.db")
    with setup.open() as restored:
        with pytest.raises(RetentionExpiredError) as info:
            restored.decrypt(blob, context=CTX, subject=customer)
        assert "old chat" not in str(info.value)
