"""Owns the signed record of a retention policy recorded in the key store
(``ccvault-retention-policy/v1``), what the vault reports of it (:class:`RecordedPolicy`) and of
a recording (:class:`PolicyChange`), and what the record does to the key store
(:func:`apply_policy_record`, for the ledger-first step, the outbox and the replay alike). Must
not do I/O of its own nor decide what a new policy changes: ``retention.plan_changes`` does, and
:class:`~ccvault.erasure.RetentionPolicies` runs it.

DESIGN.md, lifecycle rules 3 and 8. The record *is* the policy document — its ``format`` is the
policy's canonical JSON's (``ccvault-retention-policy/v1``) and its ``categories`` that JSON's —
with the recording's fields beside them: the installation, the policy's digest (SHA-256 of the
canonical JSON of ``format`` and ``categories`` alone), the digest of the policy it replaces,
when and by whom, the policy grace, and what changed per category and when it takes effect.
Signed as ``lp("ccvault/sig/v1", format, canonical JSON)`` (docs/erasure.md, "Signing"); a
record that does not verify is never used. Byte-level description and vectors: docs/erasure.md,
"Journal and ledger", and tests/vectors/retention_policy_v1.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..keystore._protocol import JournalTxn
from ..retention import (
    POLICY_FORMAT,
    Category,
    CategoryChange,
    RetentionPolicy,
    in_force,
)
from ._hold_records import check_text
from ._records import Record, SignedRecord, UtcDatetime, register_record_type

__all__ = [
    "POLICY_RECORD_FORMAT",
    "PolicyChange",
    "RecordedPolicy",
    "RetentionPolicyRecord",
    "apply_policy_record",
    "policy_mismatch",
]

POLICY_RECORD_FORMAT: Final = POLICY_FORMAT
"""``ccvault-retention-policy/v1``: the record carries the policy's canonical JSON's format."""

_HEX64 = r"^[0-9a-f]{64}$"
_UTC = timezone.utc


def _by(value: str) -> str:
    return check_text(value, "by")


Actor = Annotated[str, AfterValidator(_by)]


@register_record_type
class RetentionPolicyRecord(SignedRecord):
    """The retention policy recorded in the key store, and what its recording changed
    (``ccvault retention set-policy``; :meth:`Vault.set_retention_policy`)."""

    FORMAT: ClassVar[str] = POLICY_RECORD_FORMAT

    format: Literal["ccvault-retention-policy/v1"] = POLICY_RECORD_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    categories: tuple[Category, ...] = Field(description="the policy: sorted by name")
    policy_digest: str = Field(
        pattern=_HEX64, description="SHA-256 of the canonical JSON of format and categories"
    )
    previous_policy_digest: str | None = Field(
        default=None,
        pattern=_HEX64,
        description="the policy compared with: the one recorded before, or (the first "
        "recording) the recording process's policy file; None: neither",
    )
    recorded_at: UtcDatetime
    by: Actor = Field(description="who recorded it")
    grace_seconds: float = Field(ge=0, allow_inf_nan=False, description="the policy grace")
    changes: tuple[CategoryChange, ...] = Field(
        description="per changed category (by name), what changed and when it takes effect"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RetentionPolicyRecord:
        policy = RetentionPolicy(categories=self.categories)  # names unique
        if policy.categories != self.categories:
            raise ValueError("categories must be sorted by name")
        if policy.digest() != self.policy_digest:
            raise ValueError("policy_digest is not the digest of the categories")
        names = [c.name for c in self.changes]
        if names != sorted(set(names)):
            raise ValueError("changes must be sorted by name, one per category")
        targets = {c.name: c for c in self.categories}
        for change in self.changes:
            target = targets.get(change.name)
            if (change.change == "dropped") != (target is None):
                raise ValueError("a change names a category of the policy unless it drops one")
            if target is not None and change.category() != target:
                raise ValueError("a change does not lead to its category in the policy")
            if change.effective_at < self.recorded_at:
                raise ValueError("a change takes effect before it was recorded")
        return self

    def policy(self) -> RetentionPolicy:
        """The policy recorded (its target: every change in effect)."""
        return RetentionPolicy(categories=self.categories)


_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _utc(now: datetime | float) -> datetime:
    if isinstance(now, bool) or not isinstance(now, datetime | int | float):
        raise TypeError("now must be an aware datetime or seconds since the epoch (a float)")
    if isinstance(now, datetime):
        if now.utcoffset() is None:
            raise ValueError("now must be an aware datetime (a naive one names no instant)")
        return now.astimezone(_UTC)
    return datetime.fromtimestamp(now, tz=_UTC)


class RecordedPolicy(BaseModel):
    """The retention policy recorded in the key store, verified
    (:meth:`Vault.recorded_retention_policy`). ``policy`` is what was recorded; what is *in
    force* at a time is :meth:`at` — a shortening, a drop or a category coming back waits for
    its ``effective_at`` (``changes``) — and enforcement follows that."""

    model_config = _FROZEN

    policy: RetentionPolicy
    policy_digest: str
    previous_policy_digest: str | None
    recorded_at: datetime
    by: str
    grace_seconds: float
    changes: tuple[CategoryChange, ...]
    ledger_seq: int | None = Field(description="seq of its ledger entry; None: in no ledger")

    @classmethod
    def of(cls, record: RetentionPolicyRecord, seq: int | None) -> RecordedPolicy:
        return cls(
            policy=record.policy(),
            policy_digest=record.policy_digest,
            previous_policy_digest=record.previous_policy_digest,
            recorded_at=record.recorded_at,
            by=record.by,
            grace_seconds=record.grace_seconds,
            changes=record.changes,
            ledger_seq=seq,
        )

    def at(self, now: datetime | float) -> RetentionPolicy:
        """The policy in force at ``now`` (an aware datetime, or seconds since the epoch): each
        category with the ``keep_for`` in force then — a shorter one only once its grace has
        passed, the longer one until then —, each dropped category until its drop takes
        effect, and no category that is absent (never expired)."""
        return in_force(self.policy, self.changes, _utc(now))

    def pending(self, now: datetime | float) -> tuple[CategoryChange, ...]:
        """The changes that have yet to take effect at ``now``."""
        when = _utc(now)
        return tuple(c for c in self.changes if c.waiting(when))


class PolicyChange(BaseModel):
    """What :meth:`Vault.set_retention_policy` did (or, ``dry_run``, would do).

    ``recorded``: a new record was written (False for a dry run, and for a policy equal to the
    one recorded: nothing to do). ``changes``: per changed category, as the record holds them;
    ``unchanged``: the other categories of the policy. ``would_expire``: per delayed change, the
    labels of the live periods the first enforcement at or after its ``effective_at`` would
    destroy because of it (counted from the key store's period rows; no data table is read).
    ``at``: the recording's time (the vault's clock)."""

    model_config = _FROZEN

    dry_run: bool
    recorded: bool
    policy_digest: str
    previous_policy_digest: str | None
    at: datetime
    by: str
    grace_seconds: float
    changes: tuple[CategoryChange, ...]
    unchanged: tuple[str, ...]
    would_expire: Mapping[str, tuple[str, ...]]
    ledger_seq: int | None = None

    def lines(self, *, shown: int = 10) -> list[str]:
        """The change as lines for a person: the policy, then one line per changed category
        (what changes, when, and the first ``shown`` periods it would expire)."""
        head = f"retention policy {self.policy_digest[:16]}"
        before = self.previous_policy_digest
        if before is None:
            head += " (before it: none)"
        elif before != self.policy_digest:
            head += f" (before it: {before[:16]})"
        if self.dry_run:
            head += ": dry run, nothing recorded"
        elif self.recorded:
            where = "" if self.ledger_seq is None else f", ledger seq {self.ledger_seq}"
            head += f": recorded at {_iso(self.at)} by {self.by}{where}"
        else:
            head += ": already recorded, nothing to do"
        out = [head]
        for change in self.changes:
            out.append(f"  {_describe(change, self.at)}")
            labels = self.would_expire.get(change.name, ())
            if labels:
                more = len(labels) - shown
                listed = ", ".join(labels[:shown]) + (f" (and {more} more)" if more > 0 else "")
                out.append(
                    f"    {len(labels)} period{'s' if len(labels) != 1 else ''} would then "
                    f"expire at the first enforcement from {_iso(change.effective_at)}: {listed}"
                )
        if self.unchanged:
            out.append(f"  unchanged: {', '.join(self.unchanged)}")
        return out


def _iso(t: datetime) -> str:
    return t.astimezone(_UTC).isoformat().replace("+00:00", "Z")


def _describe(change: CategoryChange, at: datetime) -> str:
    when = (
        "in effect now"
        if not change.waiting(at)
        else f"takes effect at {_iso(change.effective_at)} (after the policy grace)"
    )
    name = change.name
    if change.change == "added":
        return (
            f"{name}: added, keep_for {change.keep_for} ({change.granularity}, {change.tz}), {when}"
        )
    if change.change == "lengthened":
        return f"{name}: lengthened, keep_for {change.keep_for_before} -> {change.keep_for}, {when}"
    if change.change == "shortened":
        return (
            f"{name}: shortened, keep_for {change.keep_for_before} -> {change.keep_for}, {when}; "
            f"{change.keep_for_before} applies until then"
        )
    if change.change == "resumed":
        return (
            f"{name}: back in the policy with periods in the key store (not expired while "
            f"absent), keep_for {change.keep_for}, {when}"
        )
    if not change.waiting(at):
        return f"{name}: dropped (keep_for was {change.keep_for_before}), {when}: never expired"
    return (
        f"{name}: dropped (keep_for was {change.keep_for_before}), {when}; until then it "
        "expires as before, and never after"
    )


def apply_policy_record(txn: JournalTxn, record: Record, seq: int | None) -> bool:
    """Do to the key store what ``record`` says, in ``txn`` (``seq``: its ledger entry, None
    while it is in no ledger): record it as the retention policy; idempotent. False for a record
    that is not a policy's. Entries are applied in ledger order, so the last one applied is the
    policy recorded."""
    if not isinstance(record, RetentionPolicyRecord):
        return False
    txn.record_policy(record.canonical_bytes().decode("utf-8"), seq)
    return True


def policy_mismatch(
    file_policy: RetentionPolicy | None, recorded: RecordedPolicy | None
) -> str | None:
    """The one line that says a process's policy file differs from the recorded policy (the
    open's WARNING, ``ccvault doctor``'s failure): both digests and the command that records
    the file. None when they agree, or when either is missing. Never a category's values."""
    if file_policy is None or recorded is None:
        return None
    mine = file_policy.digest()
    if mine == recorded.policy_digest:
        return None
    return (
        f"the retention policy this process was given (CCVAULT_RETENTION_POLICY or "
        f"retention_policy=, digest {mine}) differs from the one recorded in the key store "
        f"(digest {recorded.policy_digest}, "
        f"recorded at {_iso(recorded.recorded_at)}): enforcement follows the recorded one. "
        "Record the file with `ccvault retention set-policy FILE --by NAME` (a change that may "
        "expire data earlier waits for the policy grace), or put the recorded policy back in "
        "the file (`ccvault retention show`)"
    )
