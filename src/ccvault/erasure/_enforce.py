"""Owns retention enforcement (DESIGN.md, lifecycle rules 3, 5, 7 and 8; docs/retention.md,
"Enforcement"): which period secrets are due by the vault's clock and the policy in force,
preserving the keys of the subjects then held (held keys) before each due period is destroyed,
one key-store journal transaction per batch of periods with its signed retention report
appended ledger first, the held keys of subjects no longer held destroyed in the same run, the
dry run, and the replay of a report into a key store restored from a backup. Must not read or
write a data table (expiring a period is a key deletion), decide which policy applies (the
injected ``policy_at`` does: the vault's, later the recorded policy with its grace), nor talk
to the ledger itself (the ledger link does).

A period row is due when its label's category is in the policy and its period — recomputed
from the label's date in the category's zone, never from its ref — has expired by the clock.
A period is looked up by its label and opened by its stored row: no ref is recomputed to open
anything. Each batch runs under the ``ledger_applied_seq`` lock that ``hold()`` takes too:
a hold committed first is seen (its subject's keys are preserved), a hold that comes after
finds the period destroyed (holds are not retroactive). Two enforcers at once: the second
re-reads the rows under the lock and finds them destroyed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from .._repr import safe_repr
from .._secret import SecretKey
from ..crypto._format import derive_period_key, held_key_id
from ..errors import DecryptionError
from ..keyring import Epochs, Installation, KeyRing, Periods, Progress, Rotation, VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import KeyKind, KeyRecord, State
from ..retention import (
    Category,
    RetentionPolicy,
    day_start,
    expires_at,
    expiring_by,
    period_label,
    period_of,
)
from ._journal import Journal
from ._link import LedgerLink
from ._records import RetentionReportRecord

__all__ = ["Enforcer", "PolicyAt", "RetentionReport"]

log = logging.getLogger("ccvault")

PolicyAt = Callable[[float], RetentionPolicy | None]
"""The retention policy in force at a time of the vault's clock (None: no policy)."""

_PERIODS_PER_BATCH: Final = 100
"""Periods destroyed per key-store transaction (and retention report), at most."""
_HELD_KEYS_PER_BATCH: Final = 20_000
"""Held keys made per transaction, roughly: with many held subjects a batch holds fewer periods
(never fewer than one: a period's held keys and its destruction are one transaction)."""
_LISTED: Final = 1000  # problems a report lists (they are counted in full)
_UTC: Final = timezone.utc


class RetentionReport(BaseModel):
    """What :meth:`Vault.enforce_retention` did — or, with ``dry_run``, would do (nothing is
    signed then). Never a subject: held subjects are counted, the ledger's entries name their
    refs.

    ``destroyed``: the labels of the period secrets destroyed, by category; ``held_subjects``
    and ``held_keys``: the held subjects whose keys were preserved before that (a subject once
    per transaction) and the held keys made; ``released_subjects`` and ``released_keys``: the
    subjects no longer held whose held keys were destroyed. ``skipped``: categories that have
    live periods and are not in the policy (never expired), with how many; ``problems``: period
    rows left alone and why (a label that is not a period of its category, a secret that does
    not authenticate while subjects are held, no policy). ``ledger_seqs``: the seqs of the
    signed retention reports appended (one per transaction); ``queued``: reports waiting in the
    outbox (``ledger_mode="best-effort"`` with the ledger unreachable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    dry_run: bool
    clock: datetime = Field(description="the vault clock's reading the run decided by")
    policy_digest: str | None
    destroyed: dict[str, tuple[str, ...]]
    periods: int = Field(description="period secrets destroyed (dry run: due)")
    held_subjects: int
    held_keys: int
    released_subjects: int
    released_keys: int
    skipped: dict[str, int]
    problems: tuple[str, ...]
    problem_count: int = 0
    ledger_seqs: tuple[int, ...] = ()
    queued: int = 0

    @property
    def ok(self) -> bool:
        """No period row was left alone for a problem."""
        return self.problem_count == 0

    def lines(self) -> list[str]:
        """The report as short lines (the CLI's stderr): what was destroyed and kept."""
        verb = "would destroy" if self.dry_run else "destroyed"
        out = [
            f"{verb} {self.periods} period secret(s)"
            + "".join(f"; {c}: {len(labels)}" for c, labels in sorted(self.destroyed.items())),
            f"held keys made for {self.held_subjects} held subject(s): {self.held_keys}",
            f"held keys of {self.released_subjects} subject(s) no longer held {verb}: "
            f"{self.released_keys}",
        ]
        out += [
            f"category {c!r} is not in the retention policy: its {n} live period(s) are kept"
            for c, n in sorted(self.skipped.items())
        ]
        out += list(self.problems)
        if self.queued:
            out.append(f"{self.queued} report(s) wait in the outbox for the erasure ledger")
        return out


@dataclass(frozen=True, slots=True)
class _Due:
    """A live period row whose time has come (by the clock, as read before the transaction)."""

    category: str
    label: str
    period_id: bytes

    @safe_repr
    def __repr__(self) -> str:
        return f"_Due({self.label!r})"


@dataclass
class _Batch:
    """What one transaction did (a retried transaction starts afresh)."""

    destroyed: dict[str, list[str]] = field(default_factory=dict)
    period_ids: list[bytes] = field(default_factory=list)
    held_refs: int = 0
    held_keys: int = 0
    released_refs: int = 0
    released_keys: int = 0
    problems: list[str] = field(default_factory=list)
    seq: int | None = None
    queued: bool = False


class Enforcer:
    """``vault.enforce_retention()`` and the replay of retention reports; see the module
    docstring."""

    def __init__(
        self,
        store: KeyStore,
        epochs: Epochs,
        ring: KeyRing,
        periods: Periods,
        rotation: Rotation,
        installation: Installation,
        options: VaultOptions,
        link: LedgerLink,
        policy_at: PolicyAt,
    ) -> None:
        self._store = store
        self._epochs = epochs
        self._ring = ring
        self._periods = periods
        self._rotation = rotation
        self._installation = installation
        self._options = options
        self._link = link
        self._policy_at = policy_at

    # -- the run -----------------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False, progress: Progress | None = None) -> RetentionReport:
        """Enforce the policy in force by the vault's clock; see :meth:`Vault.enforce_retention`."""
        if not isinstance(dry_run, bool):
            raise TypeError("dry_run must be a bool")
        if not dry_run:
            self._options.writable("enforce retention")
            self._link.require_configured("enforce_retention")
            self._link.require_verified_ledger("enforce_retention")
        now = self._options.now()
        at = datetime.fromtimestamp(now, _UTC)
        policy = self._policy_at(now)
        due, problems = self._due(policy, at)
        skipped = self._skipped(policy)
        run_id = uuid.uuid4().hex
        if policy is None and (skipped or self._store.held_keys_by_ref()):
            problems.append(
                "no retention policy is configured (Vault(retention_policy=...), "
                "CCVAULT_RETENTION_POLICY): nothing was expired"
            )
        if dry_run or policy is None:
            return self._preview(run_id, at, policy, due, skipped, problems, dry_run=dry_run)
        return self._enforce(run_id, now, at, policy, due, skipped, problems, progress)

    def _enforce(
        self,
        run_id: str,
        now: float,
        at: datetime,
        policy: RetentionPolicy,
        due: list[_Due],
        skipped: dict[str, int],
        problems: list[str],
        progress: Progress | None,
    ) -> RetentionReport:
        held = len(self._active_refs(now))  # read before the lock: only sizes the batches
        size = max(1, min(_PERIODS_PER_BATCH, _HELD_KEYS_PER_BATCH // max(held, 1)))
        batches = [due[i : i + size] for i in range(0, len(due), size)]
        if not batches and self._released(now):
            batches = [[]]  # nothing due, but held keys of subjects no longer held to destroy
        total = _Batch()
        seqs: list[int] = []
        queued = 0
        done = 0
        for index, batch in enumerate(batches):

            def step(
                txn: JournalTxn,
                journal: Journal,
                batch: list[_Due] = batch,
                first: bool = index == 0,
            ) -> _Batch:
                return self._batch(txn, journal, batch, now, at, run_id, policy, release=first)

            outcome = self._link.journal_run(step)
            # This process drops what it cached at once; the others by the channel's rows.
            if outcome.period_ids:
                self._ring.evict_periods(set(outcome.period_ids))
            if outcome.released_keys:
                self._ring.evict_periods(None)
            for category, labels in outcome.destroyed.items():
                total.destroyed.setdefault(category, []).extend(labels)
            total.held_refs += outcome.held_refs
            total.held_keys += outcome.held_keys
            total.released_refs += outcome.released_refs
            total.released_keys += outcome.released_keys
            problems += outcome.problems
            if outcome.seq is not None:
                seqs.append(outcome.seq)
            queued += outcome.queued
            done += len(batch)
            if progress is not None and due:
                progress(done, len(due))
        destroyed = {c: tuple(sorted(v)) for c, v in sorted(total.destroyed.items())}
        count = sum(len(v) for v in destroyed.values())
        if count or total.released_keys:
            log.info(
                "enforce_retention (run %s) destroyed %d period secret(s) (%s), made %d held "
                "key(s) for %d held subject(s), destroyed %d held key(s) of %d subject(s) no "
                "longer held",
                run_id,
                count,
                ", ".join(f"{c}: {len(v)}" for c, v in destroyed.items()) or "none",
                total.held_keys,
                total.held_refs,
                total.released_keys,
                total.released_refs,
            )
        if problems:
            log.warning(
                "enforce_retention left %d period row(s) alone: %s",
                len(problems),
                "; ".join(problems[:5]),
            )
        return RetentionReport(
            run_id=run_id,
            dry_run=False,
            clock=at,
            policy_digest=policy.digest(),
            destroyed=destroyed,
            periods=count,
            held_subjects=total.held_refs,
            held_keys=total.held_keys,
            released_subjects=total.released_refs,
            released_keys=total.released_keys,
            skipped=skipped,
            problems=tuple(problems[:_LISTED]),
            problem_count=len(problems),
            ledger_seqs=tuple(seqs),
            queued=queued,
        )

    def _batch(
        self,
        txn: JournalTxn,
        journal: Journal,
        batch: list[_Due],
        now: float,
        at: datetime,
        run_id: str,
        policy: RetentionPolicy,
        *,
        release: bool,
    ) -> _Batch:
        """One transaction: under the ledger lock, the batch's period rows again (another
        enforcer may have destroyed them), the active holds, the held keys made, the periods
        tombstoned, the held keys of subjects no longer held destroyed, the report appended
        (ledger first) and the channel's rows written last."""
        out = _Batch()
        wanted = {d.period_id: d for d in batch}
        rows = txn.period_rows(key_ids=list(wanted)) if wanted else []
        live = [
            r
            for r in rows
            if r.state == State.LIVE and r.key_id in wanted and r.label == wanted[r.key_id].label
        ]
        active = sorted(txn.active_hold_refs(now))
        released: list[bytes] = []
        if release:
            held = txn.held_keys_by_ref()
            keep = set(active)
            released = sorted(ref for ref in held if ref not in keep)
        if not live and not released:
            return out  # nothing left to do: another enforcer did it
        made, unopened = self._preserve(txn, live, active)
        for rec in live:
            if rec.key_id in unopened:
                out.problems.append(
                    f"period {rec.label}: its secret does not authenticate, and subjects are "
                    "held: not destroyed (their keys could not be preserved)"
                )
        live = [r for r in live if r.key_id not in unopened]
        if not live and not released:
            return out
        txn.expire_periods([r.key_id for r in live], now)
        released_keys = txn.destroy_held_keys(released, now) if released else 0
        released = released if released_keys else []
        if not live and not released:
            return out
        for rec in live:
            out.destroyed.setdefault(wanted[rec.key_id].category, []).append(
                wanted[rec.key_id].label
            )
        held_refs = sorted({r.ref for r in made if r.ref is not None})
        epoch = self._epochs.active()
        record = RetentionReportRecord(
            installation_id=self._installation.id,
            run_id=run_id,
            policy_digest=policy.digest(),
            clock=at,
            periods={c: tuple(sorted(v)) for c, v in sorted(out.destroyed.items())},
            held_refs=tuple(r.hex() for r in held_refs),
            held_count=len(held_refs),
            held_keys=len(made),
            released_refs=tuple(r.hex() for r in released),
            released_keys=released_keys,
            propagation_bound_seconds=self._installation.propagation_bound,
            erasure_horizon=(
                self._rotation.erasure_horizon(epoch, at) if self._options.per_epoch_roots else None
            ),
        )
        what = f"retention run {run_id}"
        out.seq = self._link.append_or_queue(txn, journal, [record], what)
        out.queued = out.seq is None
        txn.publish_expiry([r.key_id for r in live], released, now)
        out.period_ids = [r.key_id for r in live]
        out.held_refs, out.held_keys = len(held_refs), len(made)
        out.released_refs, out.released_keys = len(released), released_keys
        return out

    def _preserve(
        self, txn: JournalTxn, live: Sequence[KeyRecord], refs: Sequence[bytes]
    ) -> tuple[list[KeyRecord], set[bytes]]:
        """Make and insert the held keys of ``refs`` (their live subject key versions) in each
        period of ``live``: (the held keys, the ids of periods whose secret does not open). A
        subject key that does not authenticate is left out (its values are unreadable anyway)."""
        if not live or not refs:
            return [], set()
        keys = txn.live_subject_keys(refs)
        if not keys:
            return [], set()
        recs = [rec for recs in keys.values() for rec in recs]
        # One batched unwrap: None for a row that does not authenticate.
        subjects = [
            (rec, key)
            for rec, key in zip(recs, self._epochs.unwrap_records(recs), strict=True)
            if key is not None
        ]
        broken = len(recs) - len(subjects)
        if broken:
            log.warning(
                "enforce_retention: %d key row(s) of held subjects do not authenticate: no held "
                "key is made for them (their values are unreadable already)",
                broken,
            )
        secrets: dict[bytes, SecretKey] = {}
        unopened: set[bytes] = set()
        for period in live:
            try:
                secrets[period.key_id] = self._epochs.unwrap_record(period)
            except DecryptionError:
                unopened.add(period.key_id)

        # Each held key: the subject key's suite-2 value key in the period (derived once, even
        # if the wraps are made again under a fresh epoch).
        named: list[tuple[bytes, int, bytes | None]] = []
        materials: list[bytes] = []
        for period_id, secret in secrets.items():
            period_secret = secret.reveal()
            for rec, key in subjects:
                materials.append(
                    derive_period_key(
                        key.reveal(), period_secret, rec.key_id, rec.version, period_id
                    )
                )
                held_id = held_key_id(rec.key_id, rec.version, period_id)
                named.append((held_id, rec.version, rec.ref))
        del subjects, secrets

        def build() -> list[KeyRecord]:
            # wrapped under the active epoch in one batch, inserted in one statement (COPY on
            # PostgreSQL)
            made = [
                rec for rec, _ in self._epochs.new_records(KeyKind.HELD, named, materials=materials)
            ]
            txn.add_held_keys(made)
            return made

        try:
            # A destroyed active epoch (this process had not seen a rotation): wrap them again.
            return self._epochs.with_fresh_epoch(build), unopened
        finally:
            materials.clear()  # no key material left in this frame

    # -- the replay of a report (a key store restored from a backup) ------------------------------

    def apply_report(self, txn: JournalTxn, record: RetentionReportRecord) -> None:
        """Do to the key store what ``record`` says, in ``txn`` (the replay of its entry;
        idempotent): the listed held subjects' keys made again in each listed period whose
        secret is still live here, then those periods tombstoned and the listed subjects'
        held keys destroyed. A restore neither brings expired data back nor loses held keys."""
        now = self._options.now()
        live = [r for r in txn.period_rows(labels=record.labels()) if r.state == State.LIVE]
        refs = [bytes.fromhex(h) for h in record.held_refs]
        _, unopened = self._preserve(txn, live, refs)
        if unopened:
            log.error(
                "the replay of retention run %s: %d period secret(s) do not authenticate: "
                "destroyed as the ledger says, without their held keys",
                record.run_id,
                len(unopened),
            )
        ids = [r.key_id for r in live]
        txn.expire_periods(ids, now)
        released = [bytes.fromhex(h) for h in record.released_refs]
        gone = txn.destroy_held_keys(released, now) if released else 0
        txn.publish_expiry(ids, released if gone else [], now)
        self._ring.evict_periods(set(ids))

    # -- what is due -------------------------------------------------------------------------------

    def _due(self, policy: RetentionPolicy | None, at: datetime) -> tuple[list[_Due], list[str]]:
        """The live period rows due at ``at`` (by label, oldest first) and the rows left alone
        with why. One index range of the period rows per category of the policy."""
        due: list[_Due] = []
        problems: list[str] = []
        if policy is None:
            return due, problems
        for category in policy.categories:
            try:
                through = period_label(expiring_by(category, at))
            except ValueError:
                continue  # the clock is outside the range periods are computed for
            for rec in self._store.live_periods(category.name, through):
                label = rec.label or ""
                if not label.startswith(f"{category.name}/") or label > through:
                    continue  # another category's, by the database's collation
                why = _not_due(category, label, at)
                if why is None:
                    due.append(_Due(category.name, label, rec.key_id))
                elif why:
                    problems.append(f"period {label}: {why}")
        return due, problems

    def _skipped(self, policy: RetentionPolicy | None) -> dict[str, int]:
        names = [] if policy is None else list(policy.names)
        counts: dict[str, int] = {}
        for label in self._store.period_labels_outside(names):
            category = label.rpartition("/")[0]
            if category not in names:
                counts[category] = counts.get(category, 0) + 1
        return dict(sorted(counts.items()))

    def _active_refs(self, now: float) -> set[bytes]:
        return self._store.active_hold_refs(now)

    def _released(self, now: float) -> dict[bytes, int]:
        """Held keys of subjects no longer held, by ref (read without locking)."""
        held = self._store.held_keys_by_ref()
        if not held:
            return {}
        active = self._active_refs(now)
        return {ref: n for ref, n in held.items() if ref not in active}

    def _preview(
        self,
        run_id: str,
        at: datetime,
        policy: RetentionPolicy | None,
        due: list[_Due],
        skipped: dict[str, int],
        problems: list[str],
        *,
        dry_run: bool,
    ) -> RetentionReport:
        """The dry run (and a run without a policy, which destroys nothing): what would be
        destroyed and kept, read without locking, writing nothing and signing nothing."""
        now = at.timestamp()
        destroyed: dict[str, list[str]] = {}
        for d in due:
            destroyed.setdefault(d.category, []).append(d.label)
        held_subjects = held_keys = 0
        released: dict[bytes, int] = {}
        if policy is not None:
            active = sorted(self._active_refs(now))
            keys = self._store.live_subject_keys(active) if due and active else {}
            held_subjects = len(keys)
            held_keys = sum(len(v) for v in keys.values()) * len(due)
            released = self._released(now)
        return RetentionReport(
            run_id=run_id,
            dry_run=dry_run,
            clock=at,
            policy_digest=None if policy is None else policy.digest(),
            destroyed={c: tuple(sorted(v)) for c, v in sorted(destroyed.items())},
            periods=len(due),
            held_subjects=held_subjects,
            held_keys=held_keys,
            released_subjects=len(released),
            released_keys=sum(released.values()),
            skipped=skipped,
            problems=tuple(problems[:_LISTED]),
            problem_count=len(problems),
        )


def _not_due(category: Category, label: str, at: datetime) -> str | None:
    """None when the period of ``label`` has expired at ``at``; "" when it has not (yet); else
    why the label is not a period of ``category`` (its granularity or zone changed, or the row
    was edited): such a row is left alone."""
    day_text = label.rpartition("/")[2]
    try:
        day = date.fromisoformat(day_text)
        if len(day_text) != 10:
            raise ValueError(day_text)
        period = period_of(category, day_start(category.tz, day))
    except ValueError:
        return "its label names no date"
    if period_label(period) != label:
        return (
            f"its label is not the start of a {category.granularity} period in {category.tz} "
            "(were the category's granularity or time zone changed?)"
        )
    return None if expires_at(period) <= at else ""
