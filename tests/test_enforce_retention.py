"""Retention enforcement (issue 14 items 4 and 6; DESIGN.md, lifecycle rules 3, 5, 7 and 8;
docs/retention.md, "Enforcement"): ``vault.enforce_retention()`` and ``ccvault
enforce-retention``.

* The boundary by the vault's clock (expiry - 1 s: nothing; expiry: destroyed) for day, ISO
  week and month periods, two of them in a zone other than UTC; the tombstone, the ``expiry``
  row of the invalidation channel and the signed report in the ledger; an idempotent second run.
* Held subjects: a held key per live key version and period whose material is the suite-2
  value key (computed here from the store's rows), none for the others; overlapping holds, one
  released (still preserved), both released (destroyed at the next run); a hold racing
  enforcement 100 times on PostgreSQL and MariaDB; the store behind the ledger (a hold the
  restore lost is replayed before anything is destroyed).
* Several enforcers at once (processes, on SQLite, PostgreSQL and MariaDB): one state, no
  error, counts that add up. The dry run changes nothing; refusals (unverified ledger, no
  ledger, read-only); the best-effort outbox; categories absent from the policy; labels that
  are no period of their category.
* The replay into a key store restored from a backup (held keys made again, periods
  tombstoned; released holds' held keys destroyed again), the check and the reconciliation of a
  period row put back; the frozen vectors of signed reports; the CLI.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), a SQL ledger in a
SQLite file of its own. Period secrets are created as the write path will create them
(``Periods.for_write``); time is the vault's FrozenClock, never slept.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import enforce_child
from ccvault import (
    ConfigurationError,
    LedgerUnavailableError,
    RetentionExpiredError,
    RetentionReport,
    Vault,
)
from ccvault._secret import SecretKey
from ccvault.cli import main
from ccvault.crypto._format import derive_period_key, held_key_id
from ccvault.erasure import Journal, JournalEntry, JsonlLedger, RetentionReportRecord
from ccvault.keyring import PeriodSecret
from ccvault.keystore._records import KeyKind, State
from ccvault.kms import LocalKms
from ccvault.retention import RetentionPolicy, expires_at, period_of
from ccvault.testing import FrozenClock
from conftest import _server_db, run_sql
from vault_ledgers import Blockable, dump_store, entries, kinds, restore, snapshot

UTC = timezone.utc
CTX = "transcripts.text"
REPORT = "ccvault-retention-report/v1"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday
POLICY_DICT: dict[str, Any] = {
    "categories": {
        "chats": {"keep_for": "P1D", "granularity": "day"},
        "emails": {"keep_for": "P2W", "granularity": "week", "tz": "America/New_York"},
        "transcripts": {"keep_for": "P1M", "granularity": "month", "tz": "Europe/Paris"},
    }
}
POLICY = RetentionPolicy.from_dict(POLICY_DICT)
VECTORS = json.loads((Path(__file__).parent / "vectors" / "retention_reports_v1.json").read_text())


class Setup:
    """An installation on ``url`` with a SQL ledger in a SQLite file, the vault's FrozenClock
    and the retention policy above."""

    def __init__(
        self,
        tmp_path: Path,
        url: str,
        *,
        ledger: str | None = None,
        policy: RetentionPolicy | None = POLICY,
        **options: Any,
    ) -> None:
        self.kms = LocalKms.ephemeral()
        self.url = url
        self.ledger = ledger or f"sqlite:///{tmp_path / 'ledger.db'}"
        self.clock = FrozenClock(T0.timestamp())
        self.policy = policy
        self.vault = self.open(create=True, **options)

    def open(self, **options: Any) -> Vault:
        options.setdefault("retention_policy", self.policy)
        return Vault(
            self.kms, self.url, ledger=self.ledger, clock=self.clock, listen_url="off", **options
        )

    def to(self, when: datetime) -> None:
        """Move the vault's clock forward to ``when``."""
        self.clock.advance(when.timestamp() - self.clock())

    def period(self, name: str, when: datetime | None = None) -> PeriodSecret:
        """The period secret of category ``name`` at ``when`` (None: the clock's now), created
        as the write path creates it."""
        assert self.policy is not None
        return self.vault._periods.for_write(self.policy.category(name), when)

    def expiry(self, name: str, when: datetime | None = None) -> datetime:
        assert self.policy is not None
        t = when or datetime.fromtimestamp(self.clock(), UTC)
        return expires_at(period_of(self.policy.category(name), t))

    def keys(self, kind: str) -> list[Any]:
        return _rows(self.url, "ccvault_keys", sa.column("kind") == kind)

    def channel(self) -> list[Any]:
        return _rows(self.url, "ccvault_invalidations", sa.column("kind") == "expiry")

    def reports(self) -> list[dict[str, Any]]:
        return [
            e.record for e in entries(self.ledger, self.vault.installation_id) if e.kind == REPORT
        ]

    def kinds(self) -> list[str]:
        return kinds(self.ledger, self.vault.installation_id)


def _rows(url: str, table: str, *where: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            t = sa.table(table, *(sa.column(c) for c in _COLUMNS[table]))
            return list(conn.execute(sa.select(t).where(*where)).all())
    finally:
        engine.dispose()


_COLUMNS = {
    "ccvault_keys": (
        "key_id", "version", "kind", "label", "ref", "epoch_id", "wrapped", "commitment",
        "state", "destroyed_at",
    ),
    "ccvault_invalidations": ("seq", "kind", "ref", "period", "at"),
}  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, db_url)
    yield s
    s.vault.close()


def expected_held(vault: Vault, subject: object, period: PeriodSecret) -> dict[bytes, bytes]:
    """The held keys a hold on ``subject`` must keep in ``period``: held key id -> material,
    computed here from the key store's rows (the subject's live keys) and the period secret."""
    ref = vault.subject_ref(subject)
    out = {}
    for rec in vault._store.live_subject_keys([ref]).get(ref, []):
        key = vault._epochs.unwrap_record(rec).reveal()
        material = derive_period_key(
            key, period.secret.reveal(), rec.key_id, rec.version, period.period_id
        )
        out[held_key_id(rec.key_id, rec.version, period.period_id)] = material
    return out


def stored_held(vault: Vault, subject: object) -> dict[bytes, bytes]:
    """The live held keys of ``subject`` in the key store, unwrapped: key id -> material."""
    ref = vault.subject_ref(subject)
    _, rows = vault._store.ref_keys(ref)
    return {
        r.key_id: vault._epochs.unwrap_record(r).reveal()
        for r in rows
        if r.kind == KeyKind.HELD and r.state == State.LIVE
    }


# -- the boundary, by the vault's clock -----------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "expiry"),
    [
        ("chats", "2026-03-12T00:00:00+00:00"),  # day 2026-03-10 + P1D
        ("emails", "2026-03-30T00:00:00-04:00"),  # ISO week from Monday 9 March, New York, + P2W
        ("transcripts", "2026-05-01T00:00:00+02:00"),  # March 2026, Paris, + P1M
    ],
)
def test_a_period_is_destroyed_at_its_expiry_and_not_a_second_before(
    setup: Setup, category: str, expiry: str
) -> None:
    vault = setup.vault
    period = setup.period(category)
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    assert setup.expiry(category) == datetime.fromisoformat(expiry)
    label = period.label

    setup.to(datetime.fromisoformat(expiry) - timedelta(seconds=1))
    preview = vault.enforce_retention(dry_run=True)
    before = vault.enforce_retention()
    assert (preview.periods, before.periods, before.destroyed) == (0, 0, {})
    assert before.ledger_seqs == ()
    [row] = setup.keys("period")
    assert (row.state, row.label) == ("live", label)
    assert setup.kinds() == ["genesis"]  # nothing destroyed, nothing appended

    setup.to(datetime.fromisoformat(expiry))
    preview = vault.enforce_retention(dry_run=True)
    assert (preview.dry_run, preview.destroyed) == (True, {category: (label,)})
    report = vault.enforce_retention()
    assert isinstance(report, RetentionReport)
    assert (report.dry_run, report.periods, report.destroyed) == (False, 1, {category: (label,)})
    assert report.ok
    assert report.problems == ()
    assert report.clock == datetime.fromisoformat(expiry)
    assert report.policy_digest == POLICY.digest()
    # the row stays, a tombstone: label and ref kept, material, commitment and epoch gone
    [row] = setup.keys("period")
    assert (row.state, row.label, bytes(row.key_id), bytes(row.ref)) == (
        "destroyed",
        label,
        period.period_id,
        period.ref,
    )
    assert (row.wrapped, row.commitment, row.epoch_id) == (None, None, None)
    assert row.destroyed_at == datetime.fromisoformat(expiry).timestamp()
    # the channel: one expiry row naming the period, for every subject
    [published] = setup.channel()
    assert (published.ref, bytes(published.period)) == (None, period.period_id)
    # the ledger: the signed report, at the seq the report gives
    assert setup.kinds() == ["genesis", REPORT]
    assert report.ledger_seqs == (1,)
    [record] = setup.reports()
    assert record["periods"] == {category: [label]}
    assert (record["clock"], record["policy_digest"]) == (
        datetime.fromisoformat(expiry).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        POLICY.digest(),
    )
    assert (record["held_refs"], record["held_count"], record["released_refs"]) == ([], 0, [])
    assert record["erasure_horizon"] is None  # epochs share one KMS root here
    signed = RetentionReportRecord.model_validate(record)
    assert signed.verify(vault.receipt_public_key)
    # the period is never written again, and the next run has nothing to do
    with pytest.raises(RetentionExpiredError):
        setup.period(category, datetime.fromtimestamp(setup.clock(), UTC) - timedelta(days=40))
    again = vault.enforce_retention()
    assert (again.periods, again.ledger_seqs) == (0, ())
    assert setup.kinds() == ["genesis", REPORT]
    assert vault.verify_erasures().ok


def test_only_the_due_periods_of_a_category_go(setup: Setup) -> None:
    """Days 10 to 14 March of ``chats`` (P1D): at 15 March 00:00 the 10th to the 13th have
    expired (a day expires at the start of the day two days later), the 14th has not."""
    made = []
    for day in range(10, 15):
        setup.to(datetime(2026, 3, day, 12, tzinfo=UTC))
        made.append(setup.period("chats").label)
    setup.to(datetime(2026, 3, 15, 0, tzinfo=UTC))
    report = setup.vault.enforce_retention()
    assert report.destroyed == {"chats": tuple(made[:4])}
    live = sorted(r.label for r in setup.keys("period") if r.state == "live")
    assert live == made[4:]
    assert len(setup.channel()) == 4


# -- held subjects -------------------------------------------------------------------------------


def test_held_subjects_keep_their_keys_and_the_others_do_not(setup: Setup) -> None:
    vault = setup.vault
    chats, transcripts = setup.period("chats"), setup.period("transcripts")
    held, other, lapsed, keyless = (uuid.uuid4() for _ in range(4))
    for subject in (held, other, lapsed):
        vault.encrypt(subject, b"call notes", context=CTX)
    vault.hold(held, case="LIT-1", by="legal")
    vault.hold(lapsed, case="LIT-2", by="legal", until=T0 + timedelta(hours=1))
    vault.hold(keyless, case="LIT-3", by="legal")  # never seen: nothing to keep
    want = {
        **expected_held(vault, held, chats),
        **expected_held(vault, held, transcripts),
    }
    assert len(want) == 2

    setup.to(setup.expiry("transcripts"))  # both periods are due by then
    report = vault.enforce_retention()
    assert report.destroyed == {"chats": (chats.label,), "transcripts": (transcripts.label,)}
    assert (report.held_subjects, report.held_keys) == (1, 2)
    assert stored_held(vault, held) == want
    assert stored_held(vault, other) == stored_held(vault, lapsed) == {}
    rows = setup.keys("held")
    assert len(rows) == 2
    assert {r.version for r in rows} == {1}
    assert {bytes(r.ref) for r in rows} == {vault.subject_ref(held)}
    assert {r.label for r in rows} == {None}
    [record] = setup.reports()
    assert (record["held_refs"], record["held_count"], record["held_keys"]) == (
        [vault.subject_ref(held).hex()],
        1,
        2,
    )
    assert str(held) not in json.dumps(record) + repr(report)
    # held keys are keys of the subject: its shred (overriding the hold) destroys them
    vault.shred(held, override_hold=True)
    assert stored_held(vault, held) == {}
    assert vault.verify_erasures().ok


def test_overlapping_holds_keep_the_keys_until_the_last_is_released(setup: Setup) -> None:
    vault = setup.vault
    first, second = setup.period("chats"), None
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    a = vault.hold(customer, case="LIT-1", by="legal")
    b = vault.hold(customer, case="REG-7", by="compliance")
    want = expected_held(vault, customer, first)
    setup.to(setup.expiry("chats"))
    vault.enforce_retention()
    assert stored_held(vault, customer) == want

    vault.release(a, by="legal")  # still held by b
    second = setup.period("chats")  # a period of today, which expires while b holds
    want.update(expected_held(vault, customer, second))
    setup.to(setup.expiry("chats"))
    report = vault.enforce_retention()
    assert (report.periods, report.held_keys, report.released_keys) == (1, 1, 0)
    assert stored_held(vault, customer) == want

    vault.release(b, by="compliance")  # no hold left: the held keys go at the next run
    assert stored_held(vault, customer) == want
    preview = vault.enforce_retention(dry_run=True)
    assert (preview.released_subjects, preview.released_keys) == (1, 2)
    report = vault.enforce_retention()
    assert (report.periods, report.released_subjects, report.released_keys) == (0, 1, 2)
    assert stored_held(vault, customer) == {}
    assert {r.state for r in setup.keys("held")} == {"destroyed"}
    record = setup.reports()[-1]
    assert (record["periods"], record["released_refs"], record["released_keys"]) == (
        {},
        [vault.subject_ref(customer).hex()],
        2,
    )
    # the channel: an expiry row naming the subject, for every period
    last = setup.channel()[-1]
    assert (last.ref, last.period) == (vault.subject_ref(customer), None)
    assert vault.enforce_retention().released_keys == 0  # done
    assert vault.verify_erasures().ok


def test_a_hold_whose_until_passed_lets_its_held_keys_go(setup: Setup) -> None:
    vault = setup.vault
    period = setup.period("chats")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    vault.hold(customer, case="LIT-1", by="legal", until=T0 + timedelta(days=10))
    setup.to(setup.expiry("chats"))
    vault.enforce_retention()
    assert stored_held(vault, customer) == expected_held(vault, customer, period)
    setup.to(T0 + timedelta(days=10))  # the hold lapses by the clock, nothing written
    assert vault.enforce_retention().released_keys == 1
    assert stored_held(vault, customer) == {}


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_hold_racing_enforcement_never_loses_the_subjects_keys(
    tmp_path: Path, backend: str
) -> None:
    """Two vaults (two engines, two threads) place a hold on a customer and enforce the period
    of its values at the same moment, 100 times: either the hold's transaction came first and
    the customer's held key exists (with the right material), or the period was destroyed first
    and the hold came after it (the ledger orders them) — then the period legitimately
    expired for it. Never a hold committed before the destruction that lost the keys."""
    db = _server_db(backend)
    url = next(db)
    try:
        s = Setup(tmp_path, url)
        enforcer = s.open()
        wins = {"hold": 0, "enforcement": 0}
        try:
            for i in range(100):
                s.to(T0 + timedelta(days=2 * i))
                period = s.period("chats")
                customer = uuid.uuid4()
                s.vault.encrypt(customer, b"call notes", context=CTX)
                want = expected_held(s.vault, customer, period)
                s.to(s.expiry("chats"))
                start = threading.Barrier(2)
                outcome: dict[str, Any] = {}

                def place(
                    c: uuid.UUID = customer,
                    o: dict[str, Any] = outcome,
                    b: threading.Barrier = start,
                    lag: int = i % 3,
                ) -> None:
                    b.wait()
                    # The enforcement reads what is due before its transaction: the hold
                    # reads as much first one time in three, twice as much another.
                    for _ in range(lag):
                        s.vault.enforce_retention(dry_run=True)
                    try:
                        o["hold"] = s.vault.hold(c, case="LIT-1", by="legal")
                    except Exception as exc:
                        o["hold"] = exc

                def enforce(o: dict[str, Any] = outcome, b: threading.Barrier = start) -> None:
                    b.wait()
                    try:
                        o["report"] = enforcer.enforce_retention()
                    except Exception as exc:
                        o["report"] = exc

                threads = [threading.Thread(target=place), threading.Thread(target=enforce)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                hold_id, report = outcome["hold"], outcome["report"]
                assert isinstance(hold_id, str), hold_id
                assert isinstance(report, RetentionReport), report
                assert report.destroyed == {"chats": (period.label,)}
                stored = entries(s.ledger, s.vault.installation_id)
                hold_seq = next(e.seq for e in stored if e.record.get("hold_id") == hold_id)
                [report_seq] = report.ledger_seqs
                if hold_seq < report_seq:
                    assert stored_held(s.vault, customer) == want
                    wins["hold"] += 1
                else:
                    assert stored_held(s.vault, customer) == {}
                    wins["enforcement"] += 1
        finally:
            enforcer.close()
            s.vault.close()
        print(f"\n{backend}: hold first {wins['hold']}, enforcement first {wins['enforcement']}")
        assert min(wins.values()) > 0  # both orders were exercised
        with s.open(readonly=True) as check:
            assert check.verify_erasures().ok
    finally:
        db.close()


def test_a_hold_the_restore_lost_is_replayed_before_a_period_is_destroyed(
    tmp_path: Path, db_url: str
) -> None:
    """The key store is restored under a running vault from a backup taken before a hold: the
    enforcement's transaction finds the ledger ahead (the hold's entry), rolls back, replays
    the hold and runs again — the held subject's keys are preserved."""
    s = Setup(tmp_path, db_url)
    vault = s.vault
    period = s.period("chats")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    backup = tmp_path / "backup"
    backup.mkdir()
    snapshot(db_url, backup)
    vault.hold(customer, case="LIT-1", by="legal")
    want = expected_held(vault, customer, period)
    restore(db_url, backup)  # the hold is gone from the key store, not from the ledger
    assert vault._store.holds() == []
    s.to(s.expiry("chats"))
    report = vault.enforce_retention()
    assert (report.periods, report.held_keys) == (1, 1)
    assert stored_held(vault, customer) == want
    assert len(vault.holds(customer)) == 1
    assert vault.verify_erasures().ok
    vault.close()


# -- several enforcers at once ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def forkserver() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ccvault", "ccvault.vault", "sqlalchemy", "enforce_child"])
    return ctx


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_enforcers_in_several_processes_at_once_agree(
    forkserver: Any, tmp_path: Path, backend: str
) -> None:
    """Three processes enforce the same 30 due periods (5 held subjects) at the same moment:
    no error, every period destroyed once, the counts of their reports add up to the store's,
    one held key per held subject and period."""
    db = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        db = _server_db(backend)
        url = next(db)
    try:
        key_path = tmp_path / "m.key"
        kms = LocalKms.generate(key_path)
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
        clock = FrozenClock(T0.timestamp())
        with Vault(
            kms, url, ledger=ledger, create=True, clock=clock, retention_policy=POLICY
        ) as vault:
            labels = []
            for day in range(30):
                clock.advance(86_400 if day else 0)
                labels.append(vault._periods.for_write(POLICY.category("chats"), None).label)
            held = [uuid.uuid4() for _ in range(5)]
            for subject in held:
                vault.encrypt(subject, b"call notes", context=CTX)
                vault.hold(subject, case="LIT-1", by="legal")
            installation = vault.installation_id
        now = clock() + 2 * 86_400
        children = []
        for _ in range(3):
            mine, theirs = forkserver.Pipe()
            process = forkserver.Process(
                target=enforce_child.run,
                args=(str(key_path), url, ledger, now, POLICY_DICT, theirs),
            )
            process.start()
            children.append((process, mine))
        try:
            for _, pipe in children:
                assert pipe.poll(60)
                assert pipe.recv() == ("ready",)
            for _, pipe in children:
                pipe.send("go")
            got = []
            for _, pipe in children:
                assert pipe.poll(120)
                got.append(pipe.recv())
        finally:
            for process, _ in children:
                process.join(30)
                if process.is_alive():
                    process.kill()
        assert [kind for kind, _ in got] == ["report"] * 3, got
        reports = [RetentionReport.model_validate_json(text) for _, text in got]
        destroyed = [label for r in reports for label in r.destroyed.get("chats", ())]
        assert sorted(destroyed) == sorted(labels)  # each once, by one of them
        assert sum(r.periods for r in reports) == 30
        assert sum(r.held_keys for r in reports) == 5 * 30
        stored = [e for e in entries(ledger, installation) if e.kind == REPORT]
        assert sorted(label for e in stored for label in e.record["periods"]["chats"]) == sorted(
            labels
        )
        assert sum(e.record["held_keys"] for e in stored) == 5 * 30
        assert sorted(s for r in reports for s in r.ledger_seqs) == [e.seq for e in stored]
        period_rows = _rows(url, "ccvault_keys", sa.column("kind") == "period")
        assert {r.state for r in period_rows} == {"destroyed"}
        held_rows = _rows(url, "ccvault_keys", sa.column("kind") == "held")
        assert len(held_rows) == 5 * 30
        assert {r.state for r in held_rows} == {"live"}
        assert len(_rows(url, "ccvault_invalidations", sa.column("kind") == "expiry")) == 30
        with Vault(kms, url, ledger=ledger, readonly=True) as check:
            assert check.verify_erasures().ok
        print(f"\n{backend}: periods destroyed per process {[r.periods for r in reports]}")
    finally:
        if db is not None:
            db.close()


# -- what enforcement refuses, leaves alone or changes nothing for ---------------------------------


def test_the_dry_run_changes_nothing(setup: Setup) -> None:
    vault = setup.vault
    setup.period("chats")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    vault.hold(customer, case="LIT-1", by="legal")
    setup.to(setup.expiry("chats"))
    before, ledger_before = dump_store(setup.url), setup.kinds()
    preview = vault.enforce_retention(dry_run=True)
    assert (preview.dry_run, preview.periods, preview.held_subjects, preview.held_keys) == (
        True,
        1,
        1,
        1,
    )
    assert preview.ledger_seqs == ()
    assert dump_store(setup.url) == before
    assert setup.kinds() == ledger_before
    with setup.open(readonly=True) as readonly:
        assert readonly.enforce_retention(dry_run=True).periods == 1
        with pytest.raises(ConfigurationError, match="read-only"):
            readonly.enforce_retention()
    with pytest.raises(TypeError):
        vault.enforce_retention(dry_run="yes")  # type: ignore[arg-type]
    assert dump_store(setup.url) == before


def test_enforcement_refuses_while_the_ledger_is_unverified(tmp_path: Path, db_url: str) -> None:
    ledger = Blockable("jsonl", tmp_path)
    s = Setup(tmp_path, db_url, ledger=ledger.url)
    s.period("chats")
    s.to(s.expiry("chats"))
    s.vault.close()
    ledger.block()
    vault = s.vault = s.open()  # the ledger cannot be reached at open: unverified
    assert vault.ledger_unverified
    with pytest.raises(LedgerUnavailableError, match="enforce_retention refuses to run while"):
        vault.enforce_retention()
    assert {r.state for r in s.keys("period")} == {"live"}
    assert vault.enforce_retention(dry_run=True).periods == 1  # a dry run needs no ledger
    ledger.unblock()
    assert vault.enforce_retention().periods == 1  # it catches up first
    assert not vault.ledger_unverified
    vault.close()
    ledger.close()


def test_enforcement_needs_a_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    clock = FrozenClock(T0.timestamp())
    with Vault(LocalKms.ephemeral(), url, clock=clock, retention_policy=POLICY) as vault:
        vault._periods.for_write(POLICY.category("chats"), None)
        clock.advance(3 * 86_400)
        with pytest.raises(ConfigurationError, match="CCVAULT_LEDGER_URL"):
            vault.enforce_retention()
        assert vault.enforce_retention(dry_run=True).periods == 1


@pytest.mark.parametrize("mode", ["strict", "best-effort"])
def test_an_unreachable_ledger_mid_run(tmp_path: Path, mode: str) -> None:
    """Strict: the transaction rolls back, nothing is destroyed. Best-effort: destroyed, the
    report waits in the outbox (``queued``), the vault is unverified (the next run refuses
    until the ledger is back) and the report reaches the ledger at the next catch-up."""
    ledger = Blockable("jsonl", tmp_path)
    s = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}", ledger=ledger.url, ledger_mode=mode)
    s.period("chats")
    s.to(s.expiry("chats"))
    ledger.block()
    if mode == "strict":
        with pytest.raises(LedgerUnavailableError):
            s.vault.enforce_retention()
        assert {r.state for r in s.keys("period")} == {"live"}
        ledger.unblock()
    else:
        report = s.vault.enforce_retention()
        assert (report.periods, report.queued, report.ledger_seqs) == (1, 1, ())
        assert s.vault.ledger_unverified
        assert {r.state for r in s.keys("period")} == {"destroyed"}
        with pytest.raises(LedgerUnavailableError):
            s.vault.enforce_retention()
        ledger.unblock()
        s.vault.reconcile_erasures()
        assert s.kinds() == ["genesis", REPORT]
    assert s.vault.enforce_retention().periods == (1 if mode == "strict" else 0)
    assert s.vault.verify_erasures().ok
    s.vault.close()
    ledger.close()


def test_categories_outside_the_policy_and_labels_of_another_granularity(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    chats, emails = s.period("chats"), s.period("emails")
    s.to(datetime(2027, 1, 1, tzinfo=UTC))  # long after both expired
    # a policy without "chats": its period is never expired, and is reported skipped
    only_emails = RetentionPolicy.from_dict(
        {"categories": {"emails": POLICY_DICT["categories"]["emails"]}}
    )
    with s.open(retention_policy=only_emails) as vault:
        report = vault.enforce_retention()
        assert report.destroyed == {"emails": (emails.label,)}
        assert report.skipped == {"chats": 1}
        assert report.ok
    # "chats" with another granularity: its day label is no month start, left alone
    monthly = RetentionPolicy.from_dict(
        {"categories": {"chats": {"keep_for": "P1D", "granularity": "month"}}}
    )
    with s.open(retention_policy=monthly) as vault:
        report = vault.enforce_retention()
        assert report.periods == 0
        assert not report.ok
        assert report.problem_count == 1
        assert chats.label in report.problems[0]
        assert "granularity or time zone" in report.problems[0]
    # no policy at all: nothing is expired, and the report says why
    with s.open(retention_policy=None) as vault:
        report = vault.enforce_retention()
        assert (report.periods, report.policy_digest, report.skipped) == (0, None, {"chats": 1})
        assert "no retention policy" in report.problems[0]
    assert [r.state for r in s.keys("period") if r.label == chats.label] == ["live"]
    report = s.vault.enforce_retention()  # the policy again
    assert report.destroyed == {"chats": (chats.label,)}
    s.vault.close()


# -- restores: the replay, the check, the reconciliation -------------------------------------------


def _drop_snapshot(url: str) -> None:
    """MariaDB's snapshot is a copy of each table in the database: drop it before another."""
    if sa.make_url(url).get_backend_name() != "mysql":
        return
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for (name,) in conn.execute(sa.text("SHOW TABLES LIKE 'snap\\_%'")).all():
            conn.exec_driver_sql(f"DROP TABLE {name}")
    engine.dispose()


def test_a_restored_key_store_replays_the_reports(tmp_path: Path, db_url: str) -> None:
    """A backup taken before an enforcement, restored: the next open makes the held keys again
    (the period secret is still in the backup) and tombstones the period; a backup taken
    before the held keys of a released subject were destroyed: the next open destroys them."""
    s = Setup(tmp_path, db_url)
    vault = s.vault
    period = s.period("chats")
    held, other = uuid.uuid4(), uuid.uuid4()
    vault.encrypt(held, b"call notes", context=CTX)
    vault.encrypt(other, b"call notes", context=CTX)
    hold_id = vault.hold(held, case="LIT-1", by="legal")
    want = expected_held(vault, held, period)
    backup = tmp_path / "backup"
    backup.mkdir()
    snapshot(db_url, backup)
    s.to(s.expiry("chats"))
    vault.enforce_retention()
    vault.close()
    restore(db_url, backup)
    assert {r.state for r in s.keys("period")} == {"live"}  # as in the backup
    with s.open() as fresh:  # replays the report before it serves
        assert {r.state for r in s.keys("period")} == {"destroyed"}
        assert stored_held(fresh, held) == want
        assert stored_held(fresh, other) == {}
        assert len(s.channel()) == 1
        assert fresh.verify_erasures().ok
        assert fresh.enforce_retention().periods == 0
        _drop_snapshot(db_url)
        snapshot(db_url, backup)  # held keys live in this one
        fresh.release(hold_id, by="legal")
        assert fresh.enforce_retention().released_keys == 1
    restore(db_url, backup)
    assert len([r for r in s.keys("held") if r.state == "live"]) == 1
    with s.open() as fresh:
        assert stored_held(fresh, held) == {}
        assert fresh.verify_erasures().ok


def test_a_period_row_put_back_is_reported_and_destroyed_again(tmp_path: Path) -> None:
    s = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = s.vault
    s.period("chats")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    vault.hold(customer, case="LIT-1", by="legal")
    [row] = s.keys("period")
    s.to(s.expiry("chats"))
    vault.enforce_retention()
    keys = sa.table(
        "ccvault_keys", *(sa.column(c) for c in ("key_id", "kind", "state", "wrapped",
                                                  "commitment", "epoch_id", "destroyed_at"))
    )  # fmt: skip
    held = sa.table("ccvault_keys", sa.column("kind"))
    run_sql(
        s.url,
        sa.update(keys)
        .where(keys.c.key_id == row.key_id, keys.c.kind == "period")
        .values(
            state="live",
            wrapped=row.wrapped,
            commitment=row.commitment,
            epoch_id=row.epoch_id,
            destroyed_at=None,
        ),
        sa.delete(held).where(held.c.kind == "held"),
    )
    check = vault.verify_erasures()
    assert check.counts["not_applied"] == 1
    assert "holds retention period chats/2026-03-10 as live" in check.not_applied[0].detail
    fixed = vault.reconcile_erasures()
    assert fixed.check is not None
    assert fixed.check.ok, fixed.check.lines()
    assert {r.state for r in s.keys("period")} == {"destroyed"}
    assert len(stored_held(vault, customer)) == 1  # made again from the secret put back
    vault.close()


# -- the signed report: vectors and validation -----------------------------------------------------


def test_report_vectors_verify_and_parse_back_to_the_same_bytes() -> None:
    public = bytes.fromhex(VECTORS["public_key"])
    previous = VECTORS["entries"][0]["hash"]
    for vec, fields in zip(VECTORS["entries"][1:], VECTORS["records"], strict=True):
        entry = JournalEntry.model_validate_json(vec["line"])
        assert entry.canonical_bytes() == vec["line"].encode("utf-8")
        assert entry.signed_bytes().hex() == vec["signed_bytes"]
        assert (entry.digest(), entry.prev_hash, entry.kind) == (vec["hash"], previous, REPORT)
        assert entry.verify(public)
        record = entry.parsed()
        assert isinstance(record, RetentionReportRecord)
        assert record.signed_bytes().hex() == vec["record_signed_bytes"]
        assert record.verify(public)
        assert record.model_dump(mode="json", exclude={"signing_key", "signature"}) == fields
        previous = vec["hash"]


def test_a_journal_with_the_vector_inputs_writes_the_vector_bytes(tmp_path: Path) -> None:
    seed = SecretKey(bytes.fromhex(VECTORS["seed"]))
    start = datetime.fromisoformat(VECTORS["clock_start"])
    ticks = iter(start + timedelta(seconds=i) for i in range(20))
    path = tmp_path / "ledger.jsonl"
    journal = Journal(
        JsonlLedger(path), VECTORS["installation_id"], seed, clock=lambda: next(ticks)
    )
    for fields in VECTORS["records"]:
        journal.append(RetentionReportRecord.model_validate(fields))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [vec["line"] for vec in VECTORS["entries"]]


def test_a_report_record_refuses_what_it_cannot_mean() -> None:
    good = dict(VECTORS["records"][0])
    RetentionReportRecord.model_validate(good)
    bad_cases = [
        {**good, "extra": 1},
        {**good, "held_count": good["held_count"] + 1},
        {**good, "periods": {"chats": ["emails/2025-03-03"]}},
        {**good, "periods": {"chats": ["chats/March"]}},
        {**good, "periods": {"chats": []}},
        {**good, "held_refs": ["not hex"], "held_count": 1},
        {**good, "run_id": "x"},
        {**good, "clock": "2025-03-01T10:00:00+01:00"},
    ]
    for bad in bad_cases:
        with pytest.raises(ValueError, match="validation error"):
            RetentionReportRecord.model_validate(bad)


# -- the CLI ---------------------------------------------------------------------------------------


def test_the_enforce_retention_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from admin_cli import configure, run

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    policy = tmp_path / "retention.toml"
    policy.write_text('[categories.chats]\nkeep_for = "P1D"\ngranularity = "day"\n')
    kms, url = configure(tmp_path, monkeypatch, ledger_url=ledger, retention_policy=str(policy))
    past = FrozenClock(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp())
    loaded = RetentionPolicy.from_dict(
        {"categories": {"chats": {"keep_for": "P1D", "granularity": "day"}}}
    )
    customer = uuid.uuid4()
    with Vault(kms, url, ledger=ledger, create=True, clock=past, retention_policy=loaded) as v:
        for _ in range(3):  # three days of 2024, long expired by the real clock
            v._periods.for_write(loaded.category("chats"), None)
            past.advance(86_400)
        v.encrypt(customer, b"call notes", context=CTX)
        v.hold(customer, case="LIT-1", by="legal")
    before = dump_store(url)
    preview = run(capsys, "enforce-retention", "--dry-run")
    assert (preview["dry_run"], preview["periods"], preview["held_keys"]) == (True, 3, 3)
    assert dump_store(url) == before
    out = run(capsys, "enforce-retention")
    assert (out["dry_run"], out["periods"], out["held_subjects"], out["held_keys"]) == (
        False,
        3,
        1,
        3,
    )
    assert out["destroyed"] == {
        "chats": ["chats/2024-05-01", "chats/2024-05-02", "chats/2024-05-03"]
    }
    assert len(out["ledger_seqs"]) == 1
    assert str(customer) not in json.dumps(out)
    assert main(["enforce-retention"]) == 0  # again: nothing to do
    captured = capsys.readouterr()
    assert json.loads(captured.out)["periods"] == 0
    assert "ccvault enforce-retention: destroyed 0 period secret(s)" in captured.err
    # exit status 3 when period rows are left alone (a granularity changed)
    with Vault(kms, url, ledger=ledger, clock=past, retention_policy=loaded) as v:
        v._periods.for_write(loaded.category("chats"), None)
    policy.write_text('[categories.chats]\nkeep_for = "P1D"\ngranularity = "month"\n')
    assert main(["enforce-retention"]) == 3
    captured = capsys.readouterr()
    assert "is not the start of a month period" in captured.err
    # an error: exit status 1, one line
    monkeypatch.delenv("CCVAULT_LEDGER_URL")
    assert main(["enforce-retention"]) == 1
    assert capsys.readouterr().err.startswith("ccvault enforce-retention: ")


def test_the_command_prints_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from admin_cli import configure

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    policy = tmp_path / "retention.toml"
    policy.write_text('[categories.chats]\nkeep_for = "P1D"\ngranularity = "day"\n')
    kms, url = configure(tmp_path, monkeypatch, ledger_url=ledger, retention_policy=str(policy))
    past = FrozenClock(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp())
    loaded = RetentionPolicy.from_dict(
        {"categories": {"chats": {"keep_for": "P1D", "granularity": "day"}}}
    )
    with Vault(kms, url, ledger=ledger, create=True, clock=past, retention_policy=loaded) as v:
        for _ in range(150):  # two batches of at most 100 periods
            v._periods.for_write(loaded.category("chats"), None)
            past.advance(86_400)
    assert main(["enforce-retention"]) == 0
    captured = capsys.readouterr()
    assert "ccvault enforce-retention: 150/150 periods" in captured.err
    assert len(json.loads(captured.out)["ledger_seqs"]) == 2


def test_a_period_secret_that_does_not_authenticate(tmp_path: Path) -> None:
    """While customers are held, a period whose secret does not open is left alone (their keys
    could not be preserved) and named in the report; with nobody held it is destroyed."""
    s = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = s.vault
    broken, other = s.period("chats"), s.period("transcripts")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    hold_id = vault.hold(customer, case="LIT-1", by="legal")
    keys = sa.table("ccvault_keys", sa.column("key_id"), sa.column("commitment"))
    run_sql(
        s.url,
        sa.update(keys).where(keys.c.key_id == broken.period_id).values(commitment=b"\0" * 32),
    )
    s.to(s.expiry("transcripts"))
    report = vault.enforce_retention()
    assert report.destroyed == {"transcripts": (other.label,)}
    assert report.problem_count == 1
    assert f"period {broken.label}: its secret does not authenticate" in report.problems[0]
    assert {r.label: r.state for r in s.keys("period")}[broken.label] == "live"
    vault.release(hold_id, by="legal")
    report = vault.enforce_retention()
    assert report.destroyed == {"chats": (broken.label,)}
    assert report.ok
    vault.close()


def test_enforcement_logs_no_subject(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = s.vault
    s.period("chats")
    customer = uuid.uuid4()
    vault.encrypt(customer, b"call notes", context=CTX)
    hold_id = vault.hold(customer, case="LIT-1", by="legal")
    s.to(s.expiry("chats"))
    with caplog.at_level("DEBUG"):
        vault.enforce_retention(dry_run=True)
        vault.enforce_retention()
        vault.release(hold_id, by="legal")
        vault.enforce_retention()
    assert "enforce_retention (run" in caplog.text
    for secret in (str(customer), customer.hex, vault.subject_ref(customer).hex(), "call notes"):
        assert secret not in caplog.text
    vault.close()
