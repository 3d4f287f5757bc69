"""Owns what the vault reports about erasures and the ledger: the repair record, an erasure's
status, the key store checked against the ledger, and what a reconciliation did. Must not do
I/O: the reconciler and the ledger link fill these in.

DESIGN.md, lifecycle rules 3 and 4: an erasure's phases are ``destroyed`` (its receipt is in the
ledger, or waiting in the outbox of a ``best-effort`` vault) and ``completed`` (a completion
record in the ledger: the completion step writes it); receipts of shreds made without a ledger,
or before one was configured, read as ``legacy``.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._chain import LedgerReport
from ._records import SignedRecord, UtcDatetime, register_record_type

__all__ = [
    "REPAIR_FORMAT",
    "CompletionReport",
    "ErasureCheck",
    "ErasureProblem",
    "ErasureStatus",
    "Reconciliation",
    "RepairRecord",
]

REPAIR_FORMAT: Final = "ccvault-journal-repair/v1"


@register_record_type
class RepairRecord(SignedRecord):
    """Why the receipt entries after it were added late: the key store held receipts the ledger
    lacked. ``genesis-import``: the ledger was configured for an existing store (every stored
    receipt is imported); ``ledger-behind``: the ledger lost entries (restored from an older
    copy, cut off) or never got them. ``receipt_ids`` are the receipts of the entries that
    follow it (at most 499: one sink write with it); ``store_applied_seq`` and
    ``ledger_head_seq`` say where the key store and the ledger stood (-1: nowhere)."""

    FORMAT: ClassVar[str] = REPAIR_FORMAT

    format: Literal["ccvault-journal-repair/v1"] = REPAIR_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    repaired_at: UtcDatetime
    reason: Literal["genesis-import", "ledger-behind"]
    receipt_ids: tuple[str, ...] = Field(max_length=499)
    store_applied_seq: int = Field(ge=-1)
    ledger_head_seq: int = Field(ge=-1)


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ErasureStatus(BaseModel):
    """Where one erasure stands (:meth:`Vault.erasure_status`).

    ``phase``: ``destroyed`` (the keys are gone and the receipt is in the ledger, or waits in
    the outbox: ``in_ledger`` False), ``completed`` (a completion record for it is in the
    ledger: ``completion_seq``) or ``legacy`` (shredded without a ledger, or before one was
    configured; such a receipt may still be in the ledger, imported: ``ledger_seq``)."""

    model_config = _FROZEN

    receipt_id: str
    phase: Literal["destroyed", "completed", "legacy"]
    in_ledger: bool
    ledger_seq: int | None
    completion_seq: int | None
    subject_ref: str = Field(description="hex of the subject ref (the receipt's pseudonym)")
    shredded_at: datetime


class ErasureProblem(BaseModel):
    """One erasure the key store and the ledger disagree about. ``subject_ref`` is the first 16
    hex characters of the ref (enough to find it, never a subject in clear)."""

    model_config = _FROZEN

    receipt_id: str | None
    subject_ref: str | None
    seq: int | None = Field(default=None, description="the ledger entry, when there is one")
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "not in the ledger"
        who = f"receipt {self.receipt_id}" if self.receipt_id else "an entry"
        ref = f", subject ref {self.subject_ref}" if self.subject_ref else ""
        return f"{who} ({where}{ref}): {self.detail}"


class ErasureCheck(BaseModel):
    """What :meth:`Vault.verify_erasures` found (read-only).

    * ``ledger``: the chain verification (every tampered, missing, reordered, truncated, foreign
      or torn entry by seq; the store's applied seq is its known head);
    * ``not_applied``: ledger entries the key store has not applied (seq after its applied seq),
      receipts in the ledger whose subject the store does not hold as shredded, legal holds the
      store lacks, and holds the ledger released that the store holds as not released;
    * ``missing_from_ledger``: receipts the store holds that the ledger lacks (a ledger behind:
      ``reconcile_erasures()`` re-adds them after a signed repair entry), and hold rows the
      ledger has no entry for;
    * ``pending``: entries of ``best-effort`` shreds still waiting in the outbox;
    * ``unverifiable``: receipts in the store that do not parse or verify under the
      installation's receipt key (a damaged or edited row: never copied to the ledger).

    ``counts`` has every kind's full count; the tuples list the first 1,000 of each.
    """

    model_config = _FROZEN

    installation_id: str
    location: str
    store_applied_seq: int | None
    ledger_head_seq: int | None
    ledger_receipts: int
    store_receipts: int
    ledger: LedgerReport
    counts: dict[str, int]
    not_applied: tuple[ErasureProblem, ...]
    missing_from_ledger: tuple[ErasureProblem, ...]
    pending: tuple[ErasureProblem, ...]
    unverifiable: tuple[ErasureProblem, ...]

    @property
    def ok(self) -> bool:
        return self.ledger.ok and not any(self.counts.values())

    def lines(self) -> list[str]:
        """Every problem as one line of text (empty when :attr:`ok`)."""
        out = [
            f"ledger: {p}" for p in self.ledger.problems if not (p.kind == "torn" and p.repaired)
        ]
        for name, problems in (
            ("not applied", self.not_applied),
            ("missing from the ledger", self.missing_from_ledger),
            ("pending in the outbox", self.pending),
            ("unverifiable in the key store", self.unverifiable),
        ):
            out += [f"{name}: {p}" for p in problems]
        return out


class Reconciliation(BaseModel):
    """What :meth:`Vault.reconcile_erasures` did, and the check it made afterwards:
    ``replayed`` ledger entries applied to the key store (``shredded`` of them shredded a
    subject the store held as live), ``imported`` receipts of a store the ledger was configured
    for, ``repaired`` receipts re-added to a ledger behind the store (each batch after a signed
    repair entry), ``flushed`` outbox entries appended."""

    model_config = _FROZEN

    replayed: int = 0
    shredded: int = 0
    imported: int = 0
    repaired: int = 0
    flushed: int = 0
    check: ErasureCheck | None = None

    def __add__(self, other: Reconciliation) -> Reconciliation:
        return Reconciliation(
            replayed=self.replayed + other.replayed,
            shredded=self.shredded + other.shredded,
            imported=self.imported + other.imported,
            repaired=self.repaired + other.repaired,
            flushed=self.flushed + other.flushed,
            check=other.check or self.check,
        )


class CompletionReport(BaseModel):
    """What :meth:`Vault.complete_erasures` did.

    * ``completed``: erasures completed by this run (a signed completion record of each is in
      the ledger); ``receipt_ids`` lists the first 1,000 of them;
    * ``tables_swept``: the tables the second sweeps cleared (of the engines attached in this
      process: tables outside the data map are outside the promise);
    * ``waiting``: queued erasures whose propagation bound has not passed yet (``next_due``:
      the first of them); ``not_in_ledger``: due, but their receipt still waits in the outbox of a
      ``best-effort`` vault (completed once it is in the ledger);
    * ``incomplete``: due erasures not completed because a sweep failed, a column with blind
      indexes has no engine attached here to sweep it, or key material of the subject remains;
      they stay queued and the next run tries again;
    * ``lapsed``: queued erasures whose erasure-queue key version was destroyed
      (``backup_retention`` passed): the subject cannot be swept from the queue any more;
      ``vault.shred(subject, wait=True)`` with the subject in hand completes it.
    """

    model_config = _FROZEN

    completed: int = 0
    receipt_ids: tuple[str, ...] = ()
    tables_swept: tuple[str, ...] = ()
    waiting: int = 0
    next_due: datetime | None = None
    not_in_ledger: int = 0
    incomplete: tuple[ErasureProblem, ...] = ()
    lapsed: tuple[ErasureProblem, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing due was left behind (waiting and not-in-ledger erasures are not problems)."""
        return not self.incomplete and not self.lapsed

    def lines(self) -> list[str]:
        """Every problem as one line of text (empty when :attr:`ok`)."""
        return [f"incomplete: {p}" for p in self.incomplete] + [f"lapsed: {p}" for p in self.lapsed]
