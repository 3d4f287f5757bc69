"""Owns the retention policy recorded in the key store (DESIGN.md, lifecycle rule 8;
docs/retention.md, "Recording the policy"): recording one (``vault.set_retention_policy``,
``ccvault retention set-policy``) — the categories whose periods forbid it refused, what changes
and when planned, what it would expire counted from period rows —, reading it back verified,
the policy in force at a time (what enforcement follows: :meth:`RetentionPolicies.policy_at`),
and the warning of a process whose policy file differs. Must not destroy periods (enforcement
does) nor talk to the ledger itself (the ledger link does).

Ledger first, as a hold is: with a ledger the signed record is appended in the key-store
journal transaction that then records it (strict whatever the ``ledger_mode``), and a key
store restored from a backup gets it back by the replay. Unlike holds, a vault **without** a
ledger records a policy too: in the key store alone, the record also waiting in the outbox so
that the first ledger configured takes it (a restore of such a store takes back the policy its
backup held — docs/retention.md says so). A key store that records a ledger refuses a vault
without one, as a shred does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

from .._secret import SecretKey
from ..crypto._primitives import ed25519_public_key
from ..errors import ConfigurationError, KeyStoreError
from ..keyring import VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import KeyRecord, State
from ..retention import (
    CategoryChange,
    RetentionPolicy,
    brought_forward,
    fits_periods,
    plan_changes,
)
from ._hold_records import check_text
from ._journal import Journal
from ._link import LedgerLink
from ._policy_records import (
    POLICY_RECORD_FORMAT,
    PolicyChange,
    RecordedPolicy,
    RetentionPolicyRecord,
    policy_mismatch,
)

__all__ = ["UNVERIFIED_POLICY", "RetentionPolicies"]

log = logging.getLogger("ccvault")

_UTC = timezone.utc
_NONE: Final = RetentionPolicy()

UNVERIFIED_POLICY: Final = (
    "the retention policy recorded in the key store does not verify under the installation's "
    "key (its rows were edited behind ccvault's back, or damaged): enforcement refuses to run "
    "on it. With a ledger, `ccvault reconcile-erasures` puts the ledger's back; without one, "
    "record the policy again (`ccvault retention set-policy FILE --by NAME`: every category "
    "with periods then waits for the policy grace)"
)


class _Periods:
    """The period rows of each category, read once per recording (outside its transaction:
    rows are only ever added, and tombstoned, never deleted)."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._rows: dict[str, list[KeyRecord]] = {}

    def rows(self, name: str) -> list[KeyRecord]:
        if name not in self._rows:
            self._rows[name] = self._store.period_keys(name)
        return self._rows[name]

    def has(self, name: str) -> bool:
        return bool(self.rows(name))

    def live_labels(self, name: str) -> list[str]:
        return [r.label for r in self.rows(name) if r.state == State.LIVE and r.label is not None]


@dataclass(frozen=True)
class _Baseline:
    """What a recording compares with, at its time."""

    before: RetentionPolicy  # the policy in force
    target: RetentionPolicy | None  # the last recording's policy
    changes: tuple[CategoryChange, ...]  # the last recording's changes
    digest: str | None  # what previous_policy_digest says
    recorded: str | None  # the digest recorded and verified (equal: nothing to do)


@dataclass(frozen=True)
class _Plan:
    record: RetentionPolicyRecord  # unsigned
    changes: tuple[CategoryChange, ...]
    unchanged: tuple[str, ...]
    would_expire: dict[str, tuple[str, ...]]
    needed: bool  # False: this policy is the one recorded

    def report(self, *, dry_run: bool, recorded: bool, seq: int | None = None) -> PolicyChange:
        r = self.record
        return PolicyChange(
            dry_run=dry_run,
            recorded=recorded,
            policy_digest=r.policy_digest,
            previous_policy_digest=r.previous_policy_digest,
            at=r.recorded_at,
            by=r.by,
            grace_seconds=r.grace_seconds,
            changes=self.changes,
            unchanged=self.unchanged,
            would_expire=self.would_expire,
            ledger_seq=seq,
        )


class RetentionPolicies:
    """``vault.set_retention_policy``, ``vault.recorded_retention_policy`` and the policy in
    force that enforcement takes (``vault._policy_at``); see the module docstring."""

    def __init__(
        self,
        store: KeyStore,
        installation_id: str,
        options: VaultOptions,
        link: LedgerLink,
        *,
        seed: SecretKey,
    ) -> None:
        self._store = store
        self._id = installation_id
        self._options = options
        self._link = link
        self._seed = seed
        self._public = ed25519_public_key(seed.reveal())

    # -- reading -----------------------------------------------------------------------------------

    def _verified(self, text: str, seq: int | None) -> RecordedPolicy | None:
        try:
            record = RetentionPolicyRecord.model_validate_json(text)
        except ValueError:
            return None
        if record.installation_id != self._id or not record.verify(self._public):
            return None
        return RecordedPolicy.of(record, seq)

    def recorded(self) -> RecordedPolicy | None:
        """The recorded policy, verified; None when none is recorded. KeyStoreError when the
        one recorded does not verify (:data:`UNVERIFIED_POLICY`)."""
        raw = self._store.recorded_policy()
        if raw is None:
            return None
        found = self._verified(*raw)
        if found is None:
            raise KeyStoreError(UNVERIFIED_POLICY)
        return found

    def policy_at(self, now: float) -> RetentionPolicy | None:
        """The retention policy in force at ``now`` (seconds since the epoch): the recorded
        one's (:meth:`RecordedPolicy.at`) or, while none is recorded, the vault's own
        ``retention_policy`` (None: no policy at all). KeyStoreError when the recorded one does
        not verify: enforcement must not fall back to a file then."""
        recorded = self.recorded()
        if recorded is None:
            return self._options.retention_policy
        return recorded.at(now)

    def check_at_open(self) -> None:
        """At the vault's open: one WARNING when this process's policy file differs from the
        recorded policy (both digests, never a value), one ERROR when the recorded policy does
        not verify. The vault opens either way."""
        try:
            recorded = self.recorded()
        except KeyStoreError as exc:
            log.error("%s", exc)
            return
        line = policy_mismatch(self._options.retention_policy, recorded)
        if line is not None:
            log.warning("%s", line)

    # -- recording ---------------------------------------------------------------------------------

    def set(self, policy: object, *, by: object, dry_run: object = False) -> PolicyChange:
        """Record ``policy``; see :meth:`Vault.set_retention_policy`."""
        if not isinstance(policy, RetentionPolicy):
            raise TypeError(
                "policy must be a ccvault.retention.RetentionPolicy (load a file with "
                "ccvault.retention.load_policy)"
            )
        actor = check_text(by, "by")
        if not isinstance(dry_run, bool):
            raise TypeError("dry_run must be a bool")
        periods = _Periods(self._store)
        if dry_run:
            plan = self._plan(policy, self._store.recorded_policy(), actor, periods)
            return plan.report(dry_run=True, recorded=False)
        self._options.writable("record a retention policy")
        if self._link.configured:

            def step(txn: JournalTxn, journal: Journal) -> PolicyChange:
                plan = self._plan(policy, txn.recorded_policy(), actor, periods)
                if not plan.needed:
                    return plan.report(dry_run=False, recorded=False)
                signed = plan.record.sign(self._seed, public_key=self._public)
                self._link.append(txn, journal, [signed])  # then recorded with its seq
                return plan.report(dry_run=False, recorded=True, seq=txn.applied)

            return self._link.journal_entries("set_retention_policy", step)
        return self._store.journal_transaction(self._without_ledger(policy, actor, periods))

    def _without_ledger(
        self, policy: RetentionPolicy, actor: str, periods: _Periods
    ) -> Callable[[JournalTxn], PolicyChange]:
        def run(txn: JournalTxn) -> PolicyChange:
            if txn.applied is not None:
                raise ConfigurationError(
                    "the key store records an erasure ledger and this vault has none "
                    "configured (CCVAULT_LEDGER_URL): a policy recorded here would be in no "
                    "ledger, so it refuses (nothing was recorded)"
                )
            plan = self._plan(policy, txn.recorded_policy(), actor, periods)
            if not plan.needed:
                return plan.report(dry_run=False, recorded=False)
            signed = plan.record.sign(self._seed, public_key=self._public)
            text = signed.canonical_bytes().decode("utf-8")
            txn.record_policy(text, None)
            # the first ledger configured takes it from the outbox
            txn.enqueue(POLICY_RECORD_FORMAT, None, text, self._options.now())
            return plan.report(dry_run=False, recorded=True)

        return run

    def _baseline(self, raw: tuple[str, int | None] | None, at: datetime) -> _Baseline:
        if raw is None:
            file_policy = self._options.retention_policy
            digest = None if file_policy is None else file_policy.digest()
            return _Baseline(file_policy or _NONE, None, (), digest, None)
        found = self._verified(*raw)
        if found is None:
            log.error(
                "the retention policy recorded in the key store does not verify: this "
                "recording replaces it and compares with no policy in force, so every category "
                "with periods waits for the policy grace"
            )
            return _Baseline(_NONE, None, (), None, None)
        return _Baseline(
            found.at(at), found.policy, found.changes, found.policy_digest, found.policy_digest
        )

    def _plan(
        self,
        policy: RetentionPolicy,
        raw: tuple[str, int | None] | None,
        actor: str,
        periods: _Periods,
    ) -> _Plan:
        at = datetime.fromtimestamp(self._options.now(), tz=_UTC)
        grace: timedelta = self._options.policy_grace
        base = self._baseline(raw, at)
        for category in policy.categories:
            rows = periods.rows(category.name)
            if not fits_periods(category, [(r.label or "", r.ref) for r in rows]):
                raise ConfigurationError(_immutable(category.name, policy, base))
        changes = plan_changes(
            policy,
            at=at,
            grace=grace,
            before=base.before,
            has_periods=periods.has,
            previous_target=base.target,
            previous_changes=base.changes,
        )
        named = {c.name for c in changes}
        would = {
            c.name: tuple(brought_forward(c, periods.live_labels(c.name)))
            for c in changes
            if c.waiting(at) and c.keep_for is not None
        }
        record = RetentionPolicyRecord(
            installation_id=self._id,
            categories=policy.categories,
            policy_digest=policy.digest(),
            previous_policy_digest=base.digest,
            recorded_at=at,
            by=actor,
            grace_seconds=grace.total_seconds(),
            changes=changes,
        )
        return _Plan(
            record=record,
            changes=changes,
            unchanged=tuple(n for n in policy.names if n not in named),
            would_expire={k: v for k, v in would.items() if v},
            needed=base.recorded != policy.digest(),
        )


def _immutable(name: str, policy: RetentionPolicy, base: _Baseline) -> str:
    wanted = policy.category(name)
    known = {c.name: c for c in (base.target or base.before).categories}.get(name)
    was = ""
    if known is not None and (known.granularity, known.tz) != (wanted.granularity, wanted.tz):
        was = f"; the policy in force groups it by {known.granularity} in {known.tz}"
    return (
        f"retention category {name!r} has periods in the key store that were not made with "
        f"this policy's granularity and time zone ({wanted.granularity} in {wanted.tz}){was}: "
        "granularity and tz never change once a category has a period (its periods' labels "
        "and refs depend on them; or the time-zone database moved their bounds). Keep them, "
        "or give the new grouping a new category name (nothing was recorded)"
    )
