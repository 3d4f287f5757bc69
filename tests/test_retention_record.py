"""The retention policy recorded in the key store (issue 14 item 1; DESIGN.md, lifecycle rule 8;
docs/retention.md, "Recording the policy"): what a recording changes and when (a shorter
keep_for, a drop and a category coming back only after the policy grace), the policy in force
that enforcement takes (``vault._policy_at``), granularity and tz refused once a category has a
period, the dry run, the recording already recorded, the warning of a process whose file
differs and ``ccvault doctor``, the signed entry in the ledger (replayed into a restored store,
checked, reconciled) or in the key store alone, a tampered record, two recordings at once, bad
inputs, the frozen vectors and the CLI.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), a SQL ledger in a
SQLite file of its own. Time is the vault's clock (FrozenClock), never slept.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import ConfigurationError, KeyStoreError, LedgerUnavailableError, Vault
from ccvault._secret import SecretKey
from ccvault.cli import main
from ccvault.erasure import (
    Journal,
    JournalEntry,
    JsonlLedger,
    PolicyChange,
    RecordedPolicy,
    RetentionPolicyRecord,
)
from ccvault.kms import LocalKms
from ccvault.retention import (
    Category,
    CategoryChange,
    RetentionPolicy,
    brought_forward,
    fits_periods,
    in_force,
    never_shorter,
    plan_changes,
)
from ccvault.testing import FrozenClock
from conftest import run_sql
from vault_ledgers import Blockable, dump_store, entries, kinds, restore, snapshot

UTC = timezone.utc
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
DAY = 86_400.0
WEEK = 7 * DAY
AT0 = datetime.fromtimestamp(T0, tz=UTC)
VECTORS = json.loads((Path(__file__).parent / "vectors" / "retention_policy_v1.json").read_text())

TRANSCRIPTS = Category(name="transcripts", keep_for="P1Y", granularity="month", tz="Europe/Paris")
CHATS = Category(name="chats", keep_for="P6M", granularity="week")
CALLS = Category(name="calls", keep_for="P1M", granularity="day", tz="America/New_York")
POLICY = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))


def policy(*categories: Category) -> RetentionPolicy:
    return RetentionPolicy(categories=categories)


def cat(base: Category, **changes: str) -> Category:
    return Category(**{**base.canonical(), **changes})


def names(p: RetentionPolicy | None) -> dict[str, str]:
    assert p is not None
    return {c.name: c.keep_for for c in p.categories}


class Setup:
    """An installation on ``url`` (with a SQL ledger in a SQLite file, or none) and its clock."""

    def __init__(self, tmp_path: Path, url: str, *, ledger: bool = True) -> None:
        self.kms = LocalKms.ephemeral()
        self.url = url
        self.ledger = f"sqlite:///{tmp_path / 'ledger.db'}" if ledger else None
        self.clock = FrozenClock(T0)
        self.vault = self.open(create=True, retention_policy=POLICY)

    def open(self, **options: Any) -> Vault:
        return Vault(
            self.kms, self.url, ledger=self.ledger, clock=self.clock, listen_url="off", **options
        )

    def kinds(self) -> list[str]:
        assert self.ledger is not None
        return kinds(self.ledger, self.vault.installation_id)

    def periods(self, category: Category, *months: tuple[int, int]) -> None:
        """Period rows of ``category``, one per (year, month), made as a writer makes them."""
        for year, month in months:
            self.vault._periods.for_write(category, datetime(year, month, 15, tzinfo=UTC))


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, db_url)
    yield s
    s.vault.close()


@pytest.fixture(params=["ledger", "no-ledger"])
def either(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, db_url, ledger=request.param == "ledger")
    yield s
    s.vault.close()


# -- the pure part: what a recording changes ------------------------------------------------------


def test_never_shorter_compares_months_and_days_apart() -> None:
    assert never_shorter("P6M", "P90D") is False  # fewer days: may be shorter
    assert never_shorter("P1Y", "P6M")
    assert never_shorter("P1Y", "P12M")  # the same duration, canonical either way
    assert never_shorter("P1M2D", "P1M1D")
    assert not never_shorter("P30D", "P1M")  # February: 28 < 30, July: 31 > 30
    assert not never_shorter("P1M", "P30D")
    assert not never_shorter("P89D", "P90D")
    assert not never_shorter("P2Y", "P1Y11M30D")  # 1 Feb + 23 months + 30 days: past 1 Mar


def test_plan_changes_sorts_every_kind_and_delays_only_what_may_expire_data_earlier() -> None:
    before = policy(TRANSCRIPTS, CHATS, cat(CALLS, keep_for="P1M"))
    new = policy(
        cat(TRANSCRIPTS, keep_for="P90D"),  # shortened
        cat(CHATS, keep_for="P1Y"),  # lengthened
        Category(name="emails", keep_for="P30D", granularity="day"),  # added
        Category(name="archive", keep_for="P7Y", granularity="month"),  # resumed: has periods
    )
    grace = timedelta(days=7)
    changes = plan_changes(
        new, at=AT0, grace=grace, before=before, has_periods=lambda n: n == "archive"
    )
    got = {c.name: (c.change, c.keep_for_before, c.keep_for, c.effective_at) for c in changes}
    later = AT0 + grace
    assert got == {
        "archive": ("resumed", None, "P7Y", later),
        "calls": ("dropped", "P1M", None, later),
        "chats": ("lengthened", "P6M", "P1Y", AT0),
        "emails": ("added", None, "P30D", AT0),
        "transcripts": ("shortened", "P1Y", "P90D", later),
    }
    assert [c.name for c in changes] == sorted(got)
    dropped = next(c for c in changes if c.change == "dropped")
    assert (dropped.granularity, dropped.tz) == ("day", "America/New_York")
    # an unchanged keep_for is no change
    assert plan_changes(before, at=AT0, grace=grace, before=before, has_periods=bool) == ()
    # a grace of zero: every change at once
    now = plan_changes(new, at=AT0, grace=timedelta(0), before=before, has_periods=bool)
    assert {c.effective_at for c in now} == {AT0}
    with pytest.raises(ValueError, match="grace"):
        plan_changes(new, at=AT0, grace=timedelta(-1), before=before, has_periods=bool)
    with pytest.raises(ValueError, match="aware"):
        plan_changes(new, at=AT0.replace(tzinfo=None), grace=grace, before=before, has_periods=bool)


def test_in_force_keeps_what_was_in_force_until_each_grace_ends() -> None:
    before = policy(TRANSCRIPTS, CHATS)
    new = policy(
        cat(TRANSCRIPTS, keep_for="P90D"),
        Category(name="archive", keep_for="P7Y", granularity="month"),
    )
    changes = plan_changes(
        new, at=AT0, grace=timedelta(days=7), before=before, has_periods=lambda n: True
    )
    end = AT0 + timedelta(days=7)
    during = in_force(new, changes, end - timedelta(microseconds=1))
    assert names(during) == {"transcripts": "P1Y", "chats": "P6M"}  # archive: never expired yet
    assert during.category("chats") == CHATS  # the dropped one, as it was
    assert names(in_force(new, changes, end)) == {"transcripts": "P90D", "archive": "P7Y"}
    with pytest.raises(ValueError, match="aware"):
        in_force(new, changes, end.replace(tzinfo=None))


def test_a_waiting_change_is_kept_by_a_recording_that_keeps_its_target() -> None:
    grace = timedelta(days=7)
    first = policy(cat(TRANSCRIPTS, keep_for="P90D"), CHATS)
    changes = plan_changes(first, at=AT0, grace=grace, before=POLICY, has_periods=bool)
    # three days later another category changes: the shortening keeps its time
    later = AT0 + timedelta(days=3)
    second = policy(cat(TRANSCRIPTS, keep_for="P90D"), cat(CHATS, keep_for="P1Y"))
    again = plan_changes(
        second,
        at=later,
        grace=grace,
        before=in_force(first, changes, later),
        has_periods=bool,
        previous_target=first,
        previous_changes=changes,
    )
    by = {c.name: c for c in again}
    assert by["transcripts"] == next(c for c in changes if c.name == "transcripts")
    assert by["chats"].change == "lengthened"
    # fixing the typo before the grace ends: back to what is in force, no change at all
    fixed = plan_changes(
        POLICY,
        at=later,
        grace=grace,
        before=in_force(first, changes, later),
        has_periods=bool,
        previous_target=first,
        previous_changes=changes,
    )
    assert fixed == ()
    # shortening further: replaced, the grace starting again
    further = plan_changes(
        policy(cat(TRANSCRIPTS, keep_for="P30D"), CHATS),
        at=later,
        grace=grace,
        before=in_force(first, changes, later),
        has_periods=bool,
        previous_target=first,
        previous_changes=changes,
    )
    assert [(c.keep_for_before, c.keep_for, c.effective_at) for c in further] == [
        ("P1Y", "P30D", later + grace)
    ]
    # a drop still waiting is kept while the category stays out
    dropped = plan_changes(
        policy(TRANSCRIPTS), at=AT0, grace=grace, before=POLICY, has_periods=bool
    )
    kept = plan_changes(
        policy(cat(TRANSCRIPTS, keep_for="P2Y")),
        at=later,
        grace=grace,
        before=in_force(policy(TRANSCRIPTS), dropped, later),
        has_periods=bool,
        previous_target=policy(TRANSCRIPTS),
        previous_changes=dropped,
    )
    assert next(c for c in kept if c.name == "chats") == dropped[0]


def test_a_category_change_is_checked_as_it_is_built() -> None:
    good = {
        "name": "transcripts",
        "change": "shortened",
        "keep_for_before": "P1Y",
        "keep_for": "P90D",
        "granularity": "month",
        "tz": "Europe/Paris",
        "effective_at": AT0,
    }
    assert CategoryChange(**good).category() == cat(TRANSCRIPTS, keep_for="P90D")
    for bad in (
        {"keep_for_before": None},  # a shortening has a keep_for before it
        {"change": "dropped"},  # a drop has no keep_for after it
        {"change": "added"},
        {"keep_for": "P2W"},  # not canonical
        {"keep_for": "PT1H"},
        {"tz": "Mars/Olympus"},
        {"name": "no/slash"},
        {"granularity": "year"},
        {"effective_at": AT0.replace(tzinfo=None)},
        {"effective_at": AT0.astimezone(timezone(timedelta(hours=2)))},
        {"extra": 1},
    ):
        with pytest.raises(ValueError, match="validation error"):
            CategoryChange(**{**good, **bad})


def test_periods_fit_a_category_by_their_refs_and_what_a_change_brings_forward() -> None:
    from ccvault.retention import day_start, period_label, period_of, period_ref

    def row(category: Category, year: int, month: int) -> tuple[str, bytes]:
        p = period_of(category, day_start(category.tz, datetime(year, month, 1).date()))
        return period_label(p), period_ref(p)

    rows = [row(TRANSCRIPTS, 2026, m) for m in range(2, 13)]
    assert fits_periods(TRANSCRIPTS, rows)
    assert fits_periods(cat(TRANSCRIPTS, keep_for="P1D"), rows)  # keep_for is not in the ref
    assert not fits_periods(cat(TRANSCRIPTS, granularity="week"), rows)
    assert not fits_periods(cat(TRANSCRIPTS, tz="UTC"), rows)
    assert not fits_periods(TRANSCRIPTS, [(label, bytes(32)) for label, _ in rows])
    assert fits_periods(TRANSCRIPTS, [])
    assert fits_periods(TRANSCRIPTS, [("garbage", None), rows[0]])  # one fitting is enough

    [change] = plan_changes(
        policy(cat(TRANSCRIPTS, keep_for="P1M")),
        at=AT0,
        grace=timedelta(days=7),
        before=policy(TRANSCRIPTS),
        has_periods=bool,
    )
    labels = [label for label, _ in rows] + ["transcripts/2027-01-01", "transcripts/nonsense"]
    # by 2027-01-22 under P1M: the months that ended by 2026-12-22, i.e. up to November
    assert brought_forward(change, labels) == [f"transcripts/2026-{m:02d}-01" for m in range(2, 12)]
    immediate = CategoryChange(**{**change.model_dump(), "change": "lengthened"})
    assert brought_forward(immediate, labels) == []


# -- recording: the key store, the ledger, the clock ----------------------------------------------


def test_a_recorded_policy_reads_back_in_another_vault(either: Setup) -> None:
    vault = either.vault
    assert vault.recorded_retention_policy() is None
    assert vault._policy_at(T0) == POLICY  # nothing recorded: the vault's own policy
    change = vault.set_retention_policy(POLICY, by="ops@acme.example")
    assert isinstance(change, PolicyChange)
    assert (change.recorded, change.dry_run) == (True, False)
    assert change.policy_digest == POLICY.digest()
    assert change.previous_policy_digest == POLICY.digest()  # compared with the vault's own
    assert (change.changes, change.unchanged) == ((), ("chats", "transcripts"))
    assert (change.at, change.by) == (AT0, "ops@acme.example")
    with either.open(retention_policy=None) as other:  # another vault, with no file of its own
        recorded = other.recorded_retention_policy()
        assert isinstance(recorded, RecordedPolicy)
        assert recorded.policy == POLICY
        assert (recorded.recorded_at, recorded.by) == (AT0, "ops@acme.example")
        assert recorded.grace_seconds == 7 * DAY
        assert other._policy_at(T0) == POLICY  # the recorded one, not its (absent) file
    if either.ledger is None:
        assert recorded.ledger_seq is None
        assert len(vault._store.outbox()) == 1  # for the first ledger configured
    else:
        assert recorded.ledger_seq == 1
        assert either.kinds() == ["genesis", "ccvault-retention-policy/v1"]
        assert vault.verify_erasures().ok


def test_a_typo_that_shortens_keep_for_takes_effect_only_after_the_grace(setup: Setup) -> None:
    vault = setup.vault
    setup.periods(TRANSCRIPTS, *[(2026, m) for m in range(2, 13)], (2027, 1))
    vault.set_retention_policy(POLICY, by="ops")
    setup.clock.advance(60)
    typo = policy(cat(TRANSCRIPTS, keep_for="P1M"), CHATS)  # P1M for P1Y
    change = vault.set_retention_policy(typo, by="ops")
    [shortened] = change.changes
    effective = AT0 + timedelta(seconds=60) + timedelta(days=7)
    assert (shortened.change, shortened.keep_for_before, shortened.keep_for) == (
        "shortened",
        "P1Y",
        "P1M",
    )
    assert shortened.effective_at == effective
    assert change.would_expire == {
        "transcripts": tuple(f"transcripts/2026-{m:02d}-01" for m in range(2, 12))
    }
    text = "\n".join(change.lines())
    assert "10 periods would then expire" in text
    assert "transcripts/2026-02-01" in text
    # before the grace ends the longer keep_for is in force; from its end the shorter one
    edge = effective.timestamp()
    assert names(vault._policy_at(edge - 1)) == {"transcripts": "P1Y", "chats": "P6M"}
    assert names(vault._policy_at(edge)) == {"transcripts": "P1M", "chats": "P6M"}
    recorded = vault.recorded_retention_policy()
    assert recorded is not None
    assert (recorded.pending(edge - 1), recorded.pending(edge)) == ((shortened,), ())
    # the typo fixed meanwhile: no change waits any more
    setup.clock.advance(DAY)
    fixed = vault.set_retention_policy(POLICY, by="ops")
    assert (fixed.recorded, fixed.changes) == (True, ())
    assert names(vault._policy_at(edge + 1)) == {"transcripts": "P1Y", "chats": "P6M"}


def test_a_lengthening_takes_effect_at_once(setup: Setup) -> None:
    vault = setup.vault
    setup.periods(TRANSCRIPTS, (2026, 6))
    vault.set_retention_policy(POLICY, by="ops")
    change = vault.set_retention_policy(policy(cat(TRANSCRIPTS, keep_for="P2Y"), CHATS), by="ops")
    assert [(c.change, c.effective_at) for c in change.changes] == [("lengthened", AT0)]
    assert change.would_expire == {}
    assert names(vault._policy_at(T0))["transcripts"] == "P2Y"


def test_a_dropped_category_is_never_in_force_once_its_drop_takes_effect(setup: Setup) -> None:
    vault = setup.vault
    setup.periods(CHATS, (2026, 12))
    setup.periods(CALLS, (2027, 1))  # periods of a category no policy names
    vault.set_retention_policy(POLICY, by="ops")
    change = vault.set_retention_policy(policy(TRANSCRIPTS), by="ops")
    [dropped] = change.changes
    assert (dropped.name, dropped.change, dropped.keep_for_before) == ("chats", "dropped", "P6M")
    end = dropped.effective_at.timestamp()
    assert "chats" in names(vault._policy_at(end - 1))  # expires as before until then
    for t in (end, end + 365 * DAY, end + 100 * 365 * DAY):
        in_force_then = names(vault._policy_at(t))
        assert not {"chats", "calls"} & set(in_force_then)
    # back in the policy, with its periods: it waits for the grace again
    setup.clock.advance(8 * DAY)
    back = vault.set_retention_policy(POLICY, by="ops")
    [resumed] = back.changes
    assert (resumed.name, resumed.change, resumed.keep_for_before) == ("chats", "resumed", None)
    assert resumed.effective_at.timestamp() == T0 + 8 * DAY + WEEK
    assert "chats" not in names(vault._policy_at(T0 + 8 * DAY + WEEK - 1))
    assert "chats" in names(vault._policy_at(T0 + 8 * DAY + WEEK))


def test_granularity_and_tz_are_refused_once_a_category_has_a_period(setup: Setup) -> None:
    vault = setup.vault
    # no period yet: a category may still be regrouped
    regrouped = policy(cat(TRANSCRIPTS, granularity="week"), CHATS)
    assert vault.set_retention_policy(regrouped, by="ops", dry_run=True).changes == ()
    setup.periods(TRANSCRIPTS, (2026, 11))
    vault.set_retention_policy(POLICY, by="ops")
    before = dump_store(setup.url)
    for changed in (cat(TRANSCRIPTS, granularity="week"), cat(TRANSCRIPTS, tz="UTC")):
        for dry_run in (True, False):
            with pytest.raises(ConfigurationError) as refused:
                vault.set_retention_policy(policy(changed, CHATS), by="ops", dry_run=dry_run)
            message = str(refused.value)
            assert "'transcripts'" in message
            assert "nothing was recorded" in message
            assert "groups it by month in Europe/Paris" in message
    assert dump_store(setup.url) == before
    # a category that was never in a policy but has periods is checked too
    setup.periods(CALLS, (2027, 1))
    with pytest.raises(ConfigurationError, match="'calls'"):
        vault.set_retention_policy(policy(TRANSCRIPTS, CHATS, cat(CALLS, tz="UTC")), by="ops")


def test_the_dry_run_writes_nothing_and_a_read_only_vault_runs_it(either: Setup) -> None:
    vault = either.vault
    setup_periods = either.periods
    setup_periods(TRANSCRIPTS, (2026, 3))
    vault.set_retention_policy(POLICY, by="ops")
    before = dump_store(either.url)
    typo = policy(cat(TRANSCRIPTS, keep_for="P1D"), CHATS)
    change = vault.set_retention_policy(typo, by="ops", dry_run=True)
    assert (change.dry_run, change.recorded) == (True, False)
    assert change.would_expire == {"transcripts": ("transcripts/2026-03-01",)}
    assert "dry run, nothing recorded" in change.lines()[0]
    assert dump_store(either.url) == before
    with either.open(readonly=True) as reader:
        assert reader.set_retention_policy(typo, by="ops", dry_run=True).changes == change.changes
        with pytest.raises(ConfigurationError, match="read-only"):
            reader.set_retention_policy(typo, by="ops")
    assert dump_store(either.url) == before
    if either.ledger is not None:
        assert either.kinds() == ["genesis", "ccvault-retention-policy/v1"]


def test_recording_the_policy_recorded_changes_nothing(either: Setup) -> None:
    vault = either.vault
    vault.set_retention_policy(policy(cat(TRANSCRIPTS, keep_for="P90D"), CHATS), by="ops")
    before = dump_store(either.url)
    for _ in range(3):  # cron-safe: every deployment records the same file
        either.clock.advance(DAY)
        again = vault.set_retention_policy(
            policy(cat(TRANSCRIPTS, keep_for="P90D"), CHATS), by="deploy"
        )
        assert not again.recorded
        assert "already recorded" in again.lines()[0]
        assert [c.change for c in again.changes] == ["shortened"]  # still waiting, same time
        assert again.changes[0].effective_at == AT0 + timedelta(days=7)
    assert dump_store(either.url) == before


# -- a process whose file differs; doctor -------------------------------------------------------


def test_a_vault_whose_policy_differs_warns_once_at_open(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.vault.set_retention_policy(POLICY, by="ops")
    caplog.set_level(logging.DEBUG, logger="ccvault")
    mine = policy(cat(TRANSCRIPTS, keep_for="P3Y"), CHATS)
    with setup.open(retention_policy=mine) as vault:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        line = warnings[0].getMessage()
        assert mine.digest() in line
        assert POLICY.digest() in line
        assert "ccvault retention set-policy" in line
        assert "P3Y" not in caplog.text  # never a value
        assert "transcripts" not in caplog.text
        vault.encrypt("00000000-0000-0000-0000-000000000001", b"x", context="c")
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    caplog.clear()
    for same in (POLICY, None):  # the same policy, or none of its own: nothing to say
        with setup.open(retention_policy=same):
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_doctor_fails_on_a_policy_file_that_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from admin_cli import configure

    recorded_file = tmp_path / "retention.toml"
    recorded_file.write_text(
        '[categories.transcripts]\nkeep_for = "P1Y"\ngranularity = "month"\n'
        'tz = "Europe/Paris"\n[categories.chats]\nkeep_for = "P6M"\ngranularity = "week"\n'
    )
    kms, url = configure(tmp_path, monkeypatch)
    Vault(kms, url).close()
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("ok   retention policy: none")
    monkeypatch.setenv("CCVAULT_RETENTION_POLICY", str(recorded_file))
    assert main(["doctor"]) == 0  # not recorded yet: a warning
    assert capsys.readouterr().out.splitlines()[0].startswith("warn retention policy:")
    assert main(["retention", "set-policy", str(recorded_file), "--by", "ops"]) == 0
    capsys.readouterr()
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "matches the recorded one" in out
    assert out.endswith("ok: 2 checks, 0 failed\n")

    other = tmp_path / "other.toml"
    other.write_text(recorded_file.read_text().replace('"P1Y"', '"P3Y"'))
    monkeypatch.setenv("CCVAULT_RETENTION_POLICY", str(other))
    assert main(["doctor"]) == 3
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("FAIL retention policy")]
    assert POLICY.digest() in line
    from ccvault.retention import load_policy

    assert load_policy(other).digest() in line
    assert "ccvault retention set-policy FILE --by NAME" in line
    assert "P3Y" not in out
    assert out.endswith("FAIL: 2 checks, 1 failed\n")
    # the recorded policy edited in the key store: doctor fails, the vault still opens
    run_sql(
        url,
        sa.text(
            "UPDATE ccvault_meta SET value = replace(value, 'P1Y', 'P1D') "
            "WHERE name LIKE 'retention_policy/%'"
        ),
    )
    assert main(["doctor"]) == 3
    assert "does not verify" in capsys.readouterr().out


# -- the ledger: replay, check, reconcile; no ledger; a tampered record --------------------------


def test_a_restored_key_store_gets_the_policy_back_from_the_ledger(
    tmp_path: Path, db_url: str
) -> None:
    setup = Setup(tmp_path, db_url)
    vault = setup.vault
    vault.set_retention_policy(POLICY, by="ops")
    backup = tmp_path / "backup"
    backup.mkdir()
    snapshot(db_url, backup)
    setup.clock.advance(DAY)
    shorter = policy(cat(TRANSCRIPTS, keep_for="P90D"), CHATS)
    vault.set_retention_policy(shorter, by="ops")  # after the backup
    vault.close()
    restore(db_url, backup)
    with setup.open() as fresh:  # replays the second recording before it serves
        recorded = fresh.recorded_retention_policy()
        assert recorded is not None
        assert (recorded.policy, recorded.ledger_seq) == (shorter, 2)
        assert names(fresh._policy_at(T0 + DAY + WEEK - 1))["transcripts"] == "P1Y"
        assert names(fresh._policy_at(T0 + DAY + WEEK))["transcripts"] == "P90D"
        assert fresh.verify_erasures().ok


def test_a_policy_lost_behind_the_vaults_back_is_reported_and_put_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = setup.vault
    vault.set_retention_policy(POLICY, by="ops")
    meta = sa.table("ccvault_meta", sa.column("name"), sa.column("value"))
    run_sql(setup.url, sa.delete(meta).where(meta.c.name.like("retention_policy%")))
    check = vault.verify_erasures()
    assert check.counts["not_applied"] == 1
    assert "does not hold the retention policy recorded at this seq" in check.not_applied[0].detail
    assert vault.recorded_retention_policy() is None
    fixed = vault.reconcile_erasures()
    assert fixed.check is not None
    assert fixed.check.ok, fixed.check.lines()
    recorded = vault.recorded_retention_policy()
    assert recorded is not None
    assert (recorded.policy, recorded.ledger_seq) == (POLICY, 1)


def test_a_policy_recorded_without_a_ledger_reaches_the_first_ledger(
    tmp_path: Path, db_url: str
) -> None:
    setup = Setup(tmp_path, db_url, ledger=False)
    setup.vault.set_retention_policy(POLICY, by="ops")
    setup.vault.close()
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Vault(setup.kms, db_url, ledger=ledger, clock=setup.clock, listen_url="off") as vault:
        assert kinds(ledger, vault.installation_id) == ["genesis", "ccvault-retention-policy/v1"]
        recorded = vault.recorded_retention_policy()
        assert recorded is not None
        assert (recorded.policy, recorded.ledger_seq) == (POLICY, 1)
        assert vault._store.outbox() == []
        assert vault.verify_erasures().ok
    # from now on a vault without the ledger may not record one
    with (
        Vault(setup.kms, db_url, clock=setup.clock, listen_url="off") as bare,
        pytest.raises(ConfigurationError, match="records an erasure ledger"),
    ):
        bare.set_retention_policy(policy(TRANSCRIPTS), by="ops")


def test_an_unreachable_ledger_records_nothing(tmp_path: Path, db_url: str) -> None:
    ledger = Blockable("jsonl", tmp_path)
    kms = LocalKms.ephemeral()
    vault = Vault(kms, db_url, ledger=ledger.url, create=True, listen_url="off")
    try:
        for mode in ("strict", "best-effort"):
            with Vault(kms, db_url, ledger=ledger.url, ledger_mode=mode, listen_url="off") as v:
                ledger.block()
                with pytest.raises(LedgerUnavailableError):
                    v.set_retention_policy(POLICY, by="ops")
                ledger.unblock()
                assert v.recorded_retention_policy() is None
        assert kinds(ledger.url, vault.installation_id) == ["genesis"]
    finally:
        vault.close()
        ledger.close()


def test_a_tampered_record_is_never_used(either: Setup, caplog: pytest.LogCaptureFixture) -> None:
    vault = either.vault
    either.periods(TRANSCRIPTS, (2026, 10))
    vault.set_retention_policy(POLICY, by="ops")
    meta = sa.table("ccvault_meta", sa.column("name"), sa.column("value"))
    # an insider shortens keep_for in the stored record (and fixes up its checksum)
    raw = vault._store.recorded_policy()
    assert raw is not None
    forged = json.loads(raw[0])
    forged["categories"][1]["keep_for"] = "P1D"
    import hashlib

    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    run_sql(
        either.url,
        sa.delete(meta).where(meta.c.name.like("retention_policy/%")),
        sa.insert(meta).values(name="retention_policy/0000", value=text[:250]),
        *[
            sa.insert(meta).values(name=f"retention_policy/{i // 250:04d}", value=text[i : i + 250])
            for i in range(250, len(text), 250)
        ],
        sa.update(meta)
        .where(meta.c.name == "retention_policy")
        .values(value=f"{(len(text) + 249) // 250} {digest} {raw[1] if raw[1] else '-'}"),
    )
    with pytest.raises(KeyStoreError, match="does not verify"):
        vault.recorded_retention_policy()
    with pytest.raises(KeyStoreError, match="does not verify"):
        vault._policy_at(T0)  # enforcement refuses; it never falls back to a file
    caplog.set_level(logging.WARNING, logger="ccvault")
    with either.open(retention_policy=POLICY):
        assert any(
            r.levelno == logging.ERROR and "does not verify" in r.getMessage()
            for r in caplog.records
        )
    # recording again replaces it, comparing with nothing in force: transcripts has periods
    change = vault.set_retention_policy(POLICY, by="ops")
    assert [(c.name, c.change) for c in change.changes] == [
        ("chats", "added"),
        ("transcripts", "resumed"),
    ]
    assert names(vault._policy_at(T0)) == {"chats": "P6M"}
    assert names(vault._policy_at(T0 + WEEK)) == {"chats": "P6M", "transcripts": "P1Y"}


# -- two recordings at once -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize("with_ledger", [True, False])
def test_two_recordings_at_once_serialise(tmp_path: Path, backend: str, with_ledger: bool) -> None:
    """Two vaults (two engines, two threads) record two policies at the same moment, 10 times:
    each recording compares with what the other committed (its previous_policy_digest is the
    other's, or the first's), never both with the same one, and the store ends on one of them,
    consistent with the ledger."""
    from conftest import _server_db

    db = _server_db(backend)
    url = next(db)
    try:
        kms = LocalKms.ephemeral()
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}" if with_ledger else None
        clock = FrozenClock(T0)
        a = Vault(kms, url, ledger=ledger, create=True, listen_url="off", clock=clock)
        b = Vault(kms, url, ledger=ledger, listen_url="off", clock=clock)
        one = policy(cat(TRANSCRIPTS, keep_for="P3Y"), CHATS)
        two = policy(cat(TRANSCRIPTS, keep_for="P2Y"), CHATS)
        try:
            for _ in range(10):
                a.set_retention_policy(POLICY, by="ops")  # both start from POLICY
                start = threading.Barrier(2)
                out: dict[str, Any] = {}

                def record(
                    v: Vault,
                    p: RetentionPolicy,
                    key: str,
                    o: dict[str, Any] = out,
                    go: threading.Barrier = start,
                ) -> None:
                    go.wait()
                    try:
                        o[key] = v.set_retention_policy(p, by=key)
                    except Exception as exc:  # the assertion below shows it
                        o[key] = exc

                threads = [
                    threading.Thread(target=record, args=(a, one, "a")),
                    threading.Thread(target=record, args=(b, two, "b")),
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                made = [out["a"], out["b"]]
                assert all(isinstance(c, PolicyChange) and c.recorded for c in made), out
                first, second = sorted(
                    made, key=lambda c: c.previous_policy_digest != POLICY.digest()
                )
                assert first.previous_policy_digest == POLICY.digest()
                assert second.previous_policy_digest == first.policy_digest  # saw the first
                recorded = b.recorded_retention_policy()
                assert recorded is not None
                assert recorded.policy_digest == second.policy_digest
            if with_ledger:
                assert a.verify_erasures().ok
        finally:
            a.close()
            b.close()
    finally:
        db.close()


# -- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_are_refused_before_anything_is_recorded(setup: Setup) -> None:
    vault = setup.vault
    before = dump_store(setup.url)
    for bad in ("retention.toml", {"categories": {}}, None, [TRANSCRIPTS]):
        with pytest.raises(TypeError, match="RetentionPolicy"):
            vault.set_retention_policy(bad, by="ops")  # type: ignore[arg-type]
    for by in (None, 7, b"ops"):
        with pytest.raises(TypeError, match="by must be a str"):
            vault.set_retention_policy(POLICY, by=by)  # type: ignore[arg-type]
    for by in ("", "   ", "a\nb", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="by must be 1 to 128 printable") as refused:
            vault.set_retention_policy(POLICY, by=by)
        assert by.strip() == "" or by not in str(refused.value)
    with pytest.raises(TypeError, match="dry_run"):
        vault.set_retention_policy(POLICY, by="ops", dry_run="yes")  # type: ignore[arg-type]
    assert dump_store(setup.url) == before
    for wrong in ("tomorrow", None):
        with pytest.raises((TypeError, ValueError)):
            RecordedPolicy.of(RetentionPolicyRecord.model_validate(VECTORS["records"][0]), None).at(
                wrong
            )  # type: ignore[arg-type]


def test_policy_grace_is_an_option_and_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin_cli import configure
    from ccvault import CcvaultSettings

    kms, url = configure(tmp_path, monkeypatch, retention_policy_grace_days="2.5")
    with Vault.from_settings() as vault:
        assert vault.policy_grace == timedelta(days=2.5)
    with Vault(kms, url, policy_grace=timedelta(0)) as vault:
        assert vault.policy_grace == timedelta(0)
        change = vault.set_retention_policy(policy(CHATS), by="ops")
        vault.set_retention_policy(RetentionPolicy(), by="ops")  # dropped: at once, grace 0
        assert vault._policy_at(vault._options.now()) == RetentionPolicy()
        assert change.grace_seconds == 0
    for bad in (timedelta(days=-1), timedelta(days=36_501), 7, "P7D"):
        with pytest.raises(ConfigurationError, match="policy_grace"):
            Vault(kms, url, policy_grace=bad)  # type: ignore[arg-type]
    for bad in ("-1", "nan", "week", "40000"):
        monkeypatch.setenv("CCVAULT_RETENTION_POLICY_GRACE_DAYS", bad)
        with pytest.raises(ConfigurationError, match="CCVAULT_RETENTION_POLICY_GRACE_DAYS"):
            CcvaultSettings()


# -- frozen vectors -------------------------------------------------------------------------------


def test_policy_vectors_verify_and_parse_back_to_the_same_bytes() -> None:
    public = bytes.fromhex(VECTORS["public_key"])
    previous = VECTORS["entries"][0]["hash"]
    for vec, fields, doc in zip(
        VECTORS["entries"][1:], VECTORS["records"], VECTORS["policies"], strict=True
    ):
        entry = JournalEntry.model_validate_json(vec["line"])
        assert entry.canonical_bytes() == vec["line"].encode("utf-8")
        assert entry.signed_bytes().hex() == vec["signed_bytes"]
        assert (entry.digest(), entry.prev_hash, entry.kind) == (
            vec["hash"],
            previous,
            "ccvault-retention-policy/v1",
        )
        assert entry.verify(public)
        record = entry.parsed()
        assert isinstance(record, RetentionPolicyRecord)
        assert record.signed_bytes().hex() == vec["record_signed_bytes"]
        assert record.verify(public)
        assert record.model_dump(mode="json", exclude={"signing_key", "signature"}) == fields
        # the record carries the policy's canonical JSON: format and categories
        assert record.policy().canonical_json().decode() == doc["canonical_json"]
        assert record.policy_digest == doc["digest"] == record.policy().digest()
        previous = vec["hash"]
    second = RetentionPolicyRecord.model_validate(VECTORS["records"][1])
    assert [(c.name, c.change) for c in second.changes] == [
        ("calls", "added"),
        ("chats", "dropped"),
        ("transcripts", "shortened"),
    ]
    # a record that does not add up does not parse
    for broken in (
        {"policy_digest": "0" * 64},
        {"categories": list(reversed(VECTORS["records"][1]["categories"]))},
        {"changes": list(reversed(VECTORS["records"][1]["changes"]))},
        {"changes": VECTORS["records"][1]["changes"][1:]},  # fine: fewer changes...
    ):
        data = {**VECTORS["records"][1], **broken}
        if broken.get("changes") == VECTORS["records"][1]["changes"][1:]:
            RetentionPolicyRecord.model_validate(data)
            continue
        with pytest.raises(ValueError, match="validation error"):
            RetentionPolicyRecord.model_validate(data)
    lying = [dict(c) for c in VECTORS["records"][1]["changes"]]
    lying[2]["keep_for"] = "P1D"  # a change that does not lead to the policy's category
    with pytest.raises(ValueError, match="does not lead"):
        RetentionPolicyRecord.model_validate({**VECTORS["records"][1], "changes": lying})


def test_a_journal_with_the_vector_inputs_writes_the_vector_bytes_and_rows(
    tmp_path: Path,
) -> None:
    from ccvault.keystore import SqlKeyStore

    seed = SecretKey(bytes.fromhex(VECTORS["seed"]))
    start = datetime.fromisoformat(VECTORS["clock_start"])
    ticks = iter(start + timedelta(seconds=i) for i in range(20))
    path = tmp_path / "ledger.jsonl"
    journal = Journal(
        JsonlLedger(path), VECTORS["installation_id"], seed, clock=lambda: next(ticks)
    )
    records = [RetentionPolicyRecord.model_validate(f) for f in VECTORS["records"]]
    for record in records:
        journal.append(record)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [vec["line"] for vec in VECTORS["entries"]]
    # the key store's meta rows of the last one
    store = SqlKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        store.ensure_installation(VECTORS["installation_id"], "uuid")
        last = journal.tip()
        assert last is not None
        store.journal_transaction(
            lambda txn: txn.record_policy(
                records[-1].sign(seed).canonical_bytes().decode(), last.seq
            )
        )
        assert store.meta("retention_policy") == VECTORS["meta_rows"]
        assert store.recorded_policy() == (
            records[-1].sign(seed).canonical_bytes().decode(),
            last.seq,
        )
    finally:
        store.close()


# -- the CLI ---------------------------------------------------------------------------------------


def test_the_retention_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from admin_cli import configure, run

    kms, url = configure(tmp_path, monkeypatch)
    Vault(kms, url).close()
    good = tmp_path / "retention.toml"
    good.write_text('[categories.chats]\nkeep_for = "P6M"\ngranularity = "week"\n')
    dry = run(capsys, "retention", "set-policy", str(good), "--by", "ops", "--dry-run")
    assert (dry["dry_run"], dry["recorded"]) == (True, False)
    assert [c["change"] for c in dry["changes"]] == ["added"]
    assert run(capsys, "retention", "show")["recorded"] is None
    done = run(capsys, "retention", "set-policy", str(good), "--by", "ops")
    assert (done["recorded"], done["policy_digest"]) == (True, policy(CHATS).digest())
    # another process reads it back
    other = subprocess.run(
        [sys.executable, "-m", "ccvault", "retention", "show"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["recorded"]["policy_digest"] == policy(CHATS).digest()
    shown = run(capsys, "retention", "show")
    assert shown["recorded"]["categories"] == [CHATS.canonical()]
    assert shown["recorded"]["in_force"] == [CHATS.canonical()]
    assert (shown["recorded"]["pending"], shown["this_process"]) == ([], None)

    shorter = tmp_path / "shorter.toml"
    shorter.write_text('[categories.chats]\nkeep_for = "P1M"\ngranularity = "week"\n')
    assert main(["retention", "set-policy", str(shorter), "--by", "ops", "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "chats: shortened, keep_for P6M -> P1M, takes effect at" in text
    assert [c["name"] for c in run(capsys, "retention", "show")["recorded"]["pending"]] == ["chats"]
    again = run(capsys, "retention", "set-policy", str(shorter), "--by", "ops")
    assert again["recorded"] is False

    bad = tmp_path / "bad.toml"
    bad.write_text('[categories.chats]\nkeepfor = "P6M"\ngranularity = "week"\n')
    for argv, expected in (
        (["retention", "set-policy", str(bad), "--by", "ops"], "categories.chats.keepfor"),
        (["retention", "set-policy", str(tmp_path / "none.toml"), "--by", "ops"], "none.toml"),
        (["retention", "set-policy", str(good), "--by", "a\nb"], "by must be"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("ccvault retention set-policy: ")
        assert expected in err
    with pytest.raises(SystemExit) as usage:  # --by is required
        main(["retention", "set-policy", str(good)])
    assert usage.value.code == 2
    assert main(["retention"]) == 2
    capsys.readouterr()
    # a policy file naming a category whose periods forbid it
    with Vault(kms, url, retention_policy=policy(CHATS)) as vault:
        vault._periods.for_write(CHATS, datetime.fromtimestamp(vault._options.now(), UTC))
    regrouped = tmp_path / "regrouped.toml"
    regrouped.write_text('[categories.chats]\nkeep_for = "P6M"\ngranularity = "day"\n')
    assert main(["retention", "set-policy", str(regrouped), "--by", "ops"]) == 1
    assert "ConfigurationError: retention category 'chats'" in capsys.readouterr().err


def test_the_recorded_policy_is_in_the_ledger_kinds_list(setup: Setup) -> None:
    setup.vault.set_retention_policy(POLICY, by="ops")
    [entry] = [
        e
        for e in entries(setup.ledger or "", setup.vault.installation_id)
        if e.kind == "ccvault-retention-policy/v1"
    ]
    assert entry.record["policy_digest"] == POLICY.digest()
    assert entry.record["by"] == "ops"
