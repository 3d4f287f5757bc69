"""Owns phase 2 of an erasure (DESIGN.md, lifecycle rule 4): once the propagation bound has
passed since a shred, check that no key material of the subject remains, run the second
blind-index sweep with the subject (opened from the erasure queue, or the caller's own for
``shred(wait=True)``), and have the ledger link append a signed completion record. Must not
destroy keys (the shred did) nor write the ledger or the queue itself (the ledger link does, in
the key-store transaction that marks the erasure completed and drops its queue row).

The bound is why it waits: every process drops a shredded subject's cached keys within it, so a
warm writer cannot add a blind index after it, and the second sweep clears what was added
between the shred's first sweep and then. Never a completion while key material or a blind
index the sweep knows of remains: a subject with a live key row, a failed sweep, or a column with
blind indexes that no engine attached in this process sweeps leaves the erasure queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final

from .._repr import safe_repr
from ..audit._receipt import ErasureReceipt
from ..crypto._primitives import Aead
from ..errors import (
    ConfigurationError,
    ErasureIncompleteError,
    KeyStoreError,
    LedgerUnavailableError,
)
from ..keyring import KeyRing, VaultOptions
from ..keystore._protocol import KeyStore
from ..keystore._records import HeadRecord, QueuedErasure, State
from ._link import LedgerLink
from ._queue import COMMIT_SLACK, ErasureQueue
from ._reconcile import CompletionDraft
from ._status import CompletionReport, ErasureProblem
from ._sweep import SweepOutcome, sweep_many, unswept_labels

__all__ = ["Completer"]

log = logging.getLogger("ccvault")

_PAGE: Final = 500  # queued erasures read, swept (one batch) and completed per transaction
_LISTED: Final = 1000  # receipt ids and problems a report lists (counts are whole)
_sleep: Callable[[float], None] = time.sleep  # tests replace it: they never wait for time to pass


class Completer:
    """``complete_erasures()`` and the completion of ``shred(wait=True)``."""

    def __init__(
        self,
        store: KeyStore,
        ring: KeyRing,
        queue: ErasureQueue,
        link: LedgerLink,
        options: VaultOptions,
        bound: float,
        receipt_of: Callable[[bytes, HeadRecord], ErasureReceipt | None],
    ) -> None:
        self._store = store
        self._ring = ring
        self._queue = queue
        self._link = link
        self._options = options
        self._bound = bound
        self._receipt_of = receipt_of

    def _guard(self) -> None:
        self._options.writable("complete erasures")
        self._link.require_configured("complete_erasures")
        self._link.require_verified_ledger("complete_erasures")

    # -- the queue (cron) ------------------------------------------------------------------------

    def run(self, required_tables: frozenset[str] | None = None) -> CompletionReport:
        """Complete every queued erasure that is due; see :class:`CompletionReport`.
        ``required_tables``: tables (the data map's searchable ones) each completion must have
        swept. Idempotent and safe from several hosts at once."""
        self._guard()
        now = self._options.now()
        self._queue.lapse(now)
        due_by = now  # a row's due time includes the bound and the commit slack
        keys: dict[tuple[bytes, int], Aead | None] = {}
        completed: list[str] = []
        tables: set[str] = set()
        incomplete: list[ErasureProblem] = []
        lapsed: list[ErasureProblem] = []
        not_in_ledger = 0
        after: str | None = None
        while True:
            rows = self._store.queued_erasures(due_by, after, _PAGE)
            if not rows:
                break
            erasures = self._store.erasure_rows([r.receipt_id for r in rows])
            drafts: list[CompletionDraft] = []
            stale: list[str] = []
            due: list[_Due] = []
            for row in rows:
                found = erasures.get(row.receipt_id)
                if found is not None and found.completion_seq is not None:
                    stale.append(row.receipt_id)  # completed elsewhere (a replay, another host)
                    continue
                if found is None:  # the queue row and the erasure row are written together
                    incomplete.append(
                        _problem(row, None, "the key store has no record of this erasure")
                    )
                    continue
                if found.ledger_seq is None:
                    not_in_ledger += 1
                    continue
                seq = found.ledger_seq
                try:
                    subject = self._queue.open(row, keys)
                except KeyStoreError as exc:
                    incomplete.append(_problem(row, seq, str(exc)))
                    continue
                if subject is None:
                    lapsed.append(
                        _problem(
                            row,
                            seq,
                            "its erasure-queue key version was destroyed (backup_retention "
                            "passed): repeat vault.shred(subject, wait=True) with the subject",
                        )
                    )
                    continue
                due.append(_Due(row.ref, row.receipt_id, seq, subject))
            batch, problems = self._complete_batch(due, required_tables)
            drafts += batch
            incomplete += [
                ErasureProblem(
                    receipt_id=d.receipt_id, subject_ref=d.ref.hex()[:16], seq=d.seq, detail=why
                )
                for d, why in problems
            ]
            for draft in batch:
                tables.update(draft.tables_swept)
            if drafts or stale:
                records = self._link.complete(drafts, stale)
                completed += [r.receipt_id for r in records]
            if len(rows) < _PAGE:
                break
            after = rows[-1].receipt_id
        waiting, first = self._store.queue_waiting(due_by)
        if incomplete or lapsed:
            log.warning(
                "complete_erasures left %d due erasures incomplete and %d lapsed: %s",
                len(incomplete),
                len(lapsed),
                "; ".join(str(p) for p in (incomplete + lapsed)[:5]),
            )
        return CompletionReport(
            completed=len(completed),
            receipt_ids=tuple(completed[:_LISTED]),
            tables_swept=tuple(sorted(tables)),
            waiting=waiting,
            next_due=None if first is None else datetime.fromtimestamp(first, tz=timezone.utc),
            not_in_ledger=not_in_ledger,
            incomplete=tuple(incomplete[:_LISTED]),
            lapsed=tuple(lapsed[:_LISTED]),
        )

    # -- one erasure, the subject in hand (shred(wait=True)) -------------------------------------

    def complete_now(self, subject: object, receipt: ErasureReceipt, committed_at: float) -> None:
        """Wait for the bound (from ``committed_at``, when the shred returned), sweep again and
        complete ``receipt``'s erasure; ErasureIncompleteError (with the receipt) when it
        cannot be completed now: it stays queued for ``complete_erasures``."""
        deadline = max(
            committed_at + self._bound,
            receipt.shredded_at.timestamp() + self._bound + COMMIT_SLACK,
        )
        self._wait_until(deadline)
        try:
            self._guard()
        except (ConfigurationError, LedgerUnavailableError) as exc:
            why = f"the erasure ledger is unverified ({type(exc).__name__})"
            raise _incomplete(receipt, why) from None
        ref = bytes.fromhex(receipt.subject_ref)
        found = self._store.erasure(receipt.receipt_id)
        if found is not None and found.completion_seq is not None:
            return
        if found is None or found.ledger_seq is None:
            raise _incomplete(receipt, "its receipt is not in the erasure ledger yet")
        drafts, problems = self._complete_batch(
            [_Due(ref, receipt.receipt_id, found.ledger_seq, subject)], None
        )
        if problems:
            raise _incomplete(receipt, problems[0][1])
        self._link.complete(drafts)

    def _wait_until(self, deadline: float) -> None:
        now = self._options.now()
        while now < deadline:
            _sleep(deadline - now)
            before, now = now, self._options.now()
            if now <= before:
                break
        else:
            return
        raise ConfigurationError(
            "the vault's clock does not advance while shred(wait=True) waits for the "
            "propagation bound (a clock= that stands still?)"
        )

    # -- the second sweep ------------------------------------------------------------------------

    def _complete_batch(
        self, due: list[_Due], required: frozenset[str] | None
    ) -> tuple[list[CompletionDraft], list[tuple[_Due, str]]]:
        """The checks and the second sweep of a batch of erasures (their subjects opened): the
        drafts of their completions, and each erasure that cannot be completed now with why.
        One read of the batch's heads and keys, one batched sweep (a table that fails it fails
        the batch: the next run tries again)."""
        material = self._store.refs_keys([d.ref for d in due])
        ready: list[tuple[_Due, ErasureReceipt]] = []
        problems: list[tuple[_Due, str]] = []
        for d in due:
            head, keys = material.get(d.ref, (None, []))
            if head is None or head.state != State.SHREDDED:
                problems.append((d, "the key store does not hold the subject as shredded"))
                continue
            if any(k.wrapped is not None or k.state == State.LIVE for k in keys):
                problems.append((d, "key material of the subject remains in the key store"))
                continue
            try:
                receipt = self._receipt_of(d.ref, head)
            except KeyStoreError as exc:
                problems.append((d, str(exc)))
                continue
            if receipt is None or receipt.receipt_id != d.receipt_id:
                problems.append((d, "the key store holds no verifiable receipt of this erasure"))
                continue
            ready.append((d, receipt))
        if not ready:
            return [], problems
        started = self._options.now()
        outcome = sweep_many(self._ring, [d.subject for d, _ in ready])
        why = self._unswept(outcome, required)
        if why:
            return [], problems + [(d, why) for d, _ in ready]
        completed_at = datetime.fromtimestamp(self._options.now(), tz=timezone.utc)
        swept = tuple(sorted(outcome.tables))
        drafts = [
            CompletionDraft(
                receipt=receipt,
                completed_at=completed_at,
                bound_waited_seconds=round(max(started - receipt.shredded_at.timestamp(), 0), 3),
                tables_swept=swept,
            )
            for _, receipt in ready
        ]
        return drafts, problems

    def _unswept(self, outcome: SweepOutcome, required: frozenset[str] | None) -> str:
        """Why a second sweep does not complete its erasures ("" when it does)."""
        if outcome.incomplete:
            return "the second sweep failed: " + "; ".join(outcome.reasons())
        unswept = unswept_labels(self._ring, outcome)  # nothing failed: every label is here
        if unswept is None:
            return "could not read which columns have blind indexes"
        if unswept:
            return (
                "no engine attached in this process sweeps the blind indexes of "
                + ", ".join(unswept)
                + " (attach the application's engine with its models imported)"
            )
        missing = sorted((required or frozenset()) - outcome.tables)
        if missing:
            return "the data map's tables " + ", ".join(missing) + " were not swept"
        return ""


@dataclass(frozen=True, slots=True)
class _Due:
    """A due erasure whose subject is in hand."""

    ref: bytes
    receipt_id: str
    seq: int | None
    subject: object

    @safe_repr
    def __repr__(self) -> str:  # never the subject
        return f"_Due(receipt={self.receipt_id}, ref={self.ref.hex()[:16]})"


def _problem(row: QueuedErasure, seq: int | None, detail: str) -> ErasureProblem:
    """A queued erasure not completed; ``seq``: its receipt's ledger entry."""
    return ErasureProblem(
        receipt_id=row.receipt_id, subject_ref=row.ref.hex()[:16], seq=seq, detail=detail
    )


def _incomplete(receipt: ErasureReceipt, why: str) -> ErasureIncompleteError:
    message = (
        f"subject ref {receipt.subject_ref[:16]} is shredded (its keys are destroyed; the "
        f"signed receipt is this error's .receipt), but its erasure could not be completed: "
        f"{why}. It stays queued: vault.complete_erasures() (`ccvault complete-erasures`) "
        "completes it"
    )
    log.error(message)
    return ErasureIncompleteError(message, receipt=receipt)
