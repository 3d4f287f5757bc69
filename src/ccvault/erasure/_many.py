"""Owns ``shred_many``: shredding a queue of subjects (the nightly batch of deletion requests)
500 per key-store journal transaction, one result per subject — shredded, already shredded,
held (a legal hold: left out, nothing destroyed) or an error, never all-or-nothing —, then the
blind-index sweep of each batch at once. Must not destroy keys itself (the key store's
``shred_many`` does), talk to the ledger (the ledger link does: one append per batch, at most
500 entries per sink write) nor sweep tables (the after-shred hooks do, through their batched
form when they have one).

Each batch keeps every promise of :meth:`Erasure.shred` (docs/erasure.md, 'Ledger first' and
'Shredding many subjects'): the ledger lock, then the heads in ref order, the keys destroyed,
one ledger append of the batch's receipts (after the outbox), the erasure rows and the queue
rows of the completion (subjects sealed before the transaction), the invalidation rows, one
commit. A batch whose transaction fails for another reason than the ledger is shredded again
one subject at a time, so that one bad subject costs only its own result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..audit._receipt import ErasureReceipt
from ..errors import (
    CcvaultError,
    ConfigurationError,
    LedgerIntegrityError,
    LedgerUnavailableError,
    SubjectHeldError,
)
from ..keyring import Epochs, KeyRing, Progress, VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import EpochRecord, HeadRecord, KeyRecord, QueuedErasure
from ._holds import HeldGuard
from ._link import LedgerLink
from ._queue import ErasureQueue, Sealed
from ._shred import Erasure, check_override, parse_receipt, requeues, unparsable_receipt
from ._sweep import sweep_many, warn_unswept

__all__ = ["BATCH", "ShredMany", "ShredResult"]

log = logging.getLogger("ccvault")

BATCH: Final = 500
"""Subjects per key-store journal transaction (and so per ledger append) of ``shred_many``."""

# Errors after which no later batch is tried: a strict ledger that is down for one batch is down
# for all of them, and nothing is ever destroyed without the ledger.
_STOPS: Final = (LedgerUnavailableError, LedgerIntegrityError, ConfigurationError)

Outcome = Literal["shredded", "already_shredded", "held", "error"]


class ShredResult(BaseModel):
    """What ``shred_many`` did with one subject of its input (never the subject itself)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(description="the subject's position in the input (from 0)")
    outcome: Outcome = Field(
        description="shredded: this call destroyed its keys (or fenced a subject never seen: "
        "the receipt's subject_was_known is False); already_shredded: an earlier shred did "
        "(the stored receipt; also every repeat of a subject within the input); held: the "
        "subject is under an active legal hold, nothing was destroyed (hold_ids; "
        "override_hold=True overrides it); error: nothing was destroyed for it by this call"
    )
    receipt: ErasureReceipt | None = Field(
        default=None, description="the signed receipt, as vault.shred() returns it"
    )
    error: str | None = Field(
        default=None,
        description="outcome error: the error's class and message (never the subject)",
    )
    hold_ids: tuple[str, ...] = Field(
        default=(),
        description="outcome held: the subject's active legal holds; shredded with "
        "override_hold=True: the holds its shred overrode",
    )
    sweep_incomplete: str | None = Field(
        default=None,
        description="shredded, but the blind-index sweep of its batch failed for some table: "
        "why. The keys are destroyed and the receipt stands; repeat the shred to sweep again",
    )

    @property
    def ok(self) -> bool:
        """Shredded (now or before) and swept."""
        return self.outcome in ("shredded", "already_shredded") and self.sweep_incomplete is None


@dataclass
class _Item:
    """One distinct subject ref of the input: its first subject, every position and every
    value given for it (a ``str`` subject may come in several Unicode forms)."""

    subject: object
    ref: bytes
    indices: list[int] = field(default_factory=list)
    values: list[object] = field(default_factory=list)


@dataclass(frozen=True)
class _Done:
    outcome: Outcome
    receipt: ErasureReceipt | None = None
    error: str | None = None
    sweep_incomplete: str | None = None
    hold_ids: tuple[str, ...] = ()


def _describe(exc: BaseException) -> str:
    """An error as a result states it: ccvault's typed errors with their message (which never
    holds a subject), anything else by its class alone (its text may quote data)."""
    if isinstance(exc, CcvaultError):
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return f"{type(exc).__name__} (message withheld: it may quote data)"


class ShredMany:
    """``vault.shred_many(subjects)``; see :meth:`Vault.shred_many`."""

    def __init__(
        self,
        store: KeyStore,
        ring: KeyRing,
        epochs: Epochs,
        options: VaultOptions,
        *,
        link: LedgerLink,
        queue: ErasureQueue,
        erasure: Erasure,
    ) -> None:
        self._store = store
        self._ring = ring
        self._epochs = epochs
        self._options = options
        self._link = link
        self._queue = queue
        self._erasure = erasure

    def run(
        self,
        subjects: Iterable[object],
        progress: Progress | None = None,
        *,
        override_hold: bool = False,
        by: str | None = None,
    ) -> list[ShredResult]:
        """Shred every subject; one result per input position, in order. A held subject is
        left out (``held``) unless ``override_hold`` (its override entry naming ``by``)."""
        self._options.writable("shred")
        check_override(override_hold, by)
        if isinstance(subjects, str | bytes):  # iterating it would shred each character
            raise TypeError("shred_many takes an iterable of subjects, not one: use shred()")
        given = list(subjects)
        total = len(given)
        results: list[ShredResult | None] = [None] * total
        items: dict[bytes, _Item] = {}
        done = 0
        for i, subject in enumerate(given):
            try:
                ref = self._ring.subject_ref(subject)  # TypeError: never echoes the subject
            except TypeError as exc:
                results[i] = ShredResult(index=i, outcome="error", error=f"TypeError: {exc}")
                done += 1
                continue
            item = items.setdefault(ref, _Item(subject, ref))
            item.indices.append(i)
            if subject not in item.values:  # another form of it (a str in NFD, a UUID as text)
                item.values.append(subject)
        order = list(items.values())
        stop: str | None = None
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            if stop is None:
                outcomes, stop = self._batch(batch, override_hold, by)
            else:
                why = f"{stop} (not attempted: an earlier batch failed so)"
                outcomes = {it.ref: _Done("error", error=why) for it in batch}
            for it in batch:
                first = outcomes[it.ref]
                for n, i in enumerate(it.indices):
                    repeat = n > 0 and first.outcome in ("shredded", "already_shredded")
                    results[i] = ShredResult(
                        index=i,
                        outcome="already_shredded" if repeat else first.outcome,
                        receipt=first.receipt,
                        error=first.error,
                        sweep_incomplete=first.sweep_incomplete,
                        hold_ids=first.hold_ids,
                    )
                done += len(it.indices)
            if progress is not None:
                progress(done, total)
        if not order and progress is not None:
            progress(done, total)
        return [r for r in results if r is not None]

    # -- one batch ---------------------------------------------------------------------------------

    def _batch(
        self, batch: list[_Item], override_hold: bool, by: str | None
    ) -> tuple[dict[bytes, _Done], str | None]:
        """Shred a batch and sweep what it shredded: each ref's outcome, and the error that
        stops the later batches (None: go on)."""
        ring = self._ring
        try:
            self._link.before_shred()  # strict, ledger unreachable: raises, nothing destroyed
            now = self._options.now()
            guard = HeldGuard(now, override=override_hold, raising=False)
            epoch = self._store.active_epoch() or self._epochs.active()
            sealed = (
                self._queue.seal_many([(it.subject, it.ref) for it in batch], now)
                if self._link.configured
                else None
            )
            for it in batch:
                ring.fence(it.ref)
            try:
                out, made = self._commit(batch, now, epoch, sealed, guard, by)
            except BaseException:
                ring.evict_subjects({it.ref for it in batch})  # committed or not: evicted
                raise
        except _STOPS as exc:
            why = _describe(exc)
            log.error("shred_many: a batch of %d subjects failed: %s", len(batch), why)
            return {it.ref: _Done("error", error=why) for it in batch}, why
        except Exception as exc:
            log.warning(
                "shred_many: the transaction of a batch of %d subjects failed (%s): shredding "
                "them one at a time",
                len(batch),
                _describe(exc),
            )
            outcomes, stop = self._one_by_one(batch, override_hold, by)
        else:
            outcomes, stop = self._outcomes(batch, out, made, guard), None
        return self._sweep(batch, outcomes), stop

    def _commit(
        self,
        batch: list[_Item],
        now: float,
        epoch: EpochRecord,
        sealed: list[Sealed] | None,
        guard: HeldGuard,
        by: str | None,
    ) -> tuple[list[tuple[str, bool] | None], dict[bytes, ErasureReceipt]]:
        """The batch's key-store transaction, hold check first (``guard``: held refs are left
        out, or their holds overridden), ledger first (caught up and retried when the ledger
        moved); returns each ref's (receipt JSON, newly shredded) — None for a held ref — and
        the receipts made."""
        made: dict[bytes, ErasureReceipt] = {}
        seals = None if sealed is None else {it.ref: s for it, s in zip(batch, sealed, strict=True)}

        def make(ref: bytes, head: HeadRecord | None, keys: Sequence[KeyRecord]) -> str:
            receipt = self._erasure.new_receipt(ref, now, epoch, head, keys)
            made[ref] = receipt  # a retried transaction makes it again: the last one commits
            return receipt.model_dump_json()

        def journal(txn: JournalTxn, out: Sequence[tuple[str, bool] | None]) -> None:
            new = [it.ref for it, o in zip(batch, out, strict=True) if o is not None and o[1]]
            if new:
                overrides = guard.overrides(
                    self._erasure.installation_id, [(r, made[r].receipt_id) for r in new], by
                )
                self._link.journal_receipts(txn, [made[ref] for ref in new], overrides)
            if seals is not None:
                t = self._options.now()
                rows = [
                    self._erasure.queue_row(made[ref].receipt_id, ref, seals[ref], t, t)
                    for ref in new
                ]
                rows += self._requeued(txn, batch, out, seals, t)
                txn.queue_erasures(rows)

        refs = [it.ref for it in batch]
        seal_head = self._ring.heads.seal
        out = self._link.ledger_first(
            lambda: self._store.shred_many(refs, now, make, seal_head, journal, guard=guard)
        )
        return out, made

    def _requeued(
        self,
        txn: JournalTxn,
        batch: list[_Item],
        out: Sequence[tuple[str, bool] | None],
        seals: dict[bytes, Sealed],
        now: float,
    ) -> list[QueuedErasure]:
        """The repeats' erasures not completed yet, queued again (as a repeated shred does)."""
        repeats = [
            (it.ref, parsed[0])
            for it, o in zip(batch, out, strict=True)
            if o is not None and not o[1] and (parsed := parse_receipt(o[0])) is not None
        ]
        if not repeats:
            return []
        rows = txn.erasure_rows([r.receipt_id for _, r in repeats])
        return [
            self._erasure.requeue_row(r, ref, seals[ref], now)
            for ref, r in repeats
            if requeues(rows.get(r.receipt_id))
        ]

    def _outcomes(
        self,
        batch: list[_Item],
        out: Sequence[tuple[str, bool] | None],
        made: dict[bytes, ErasureReceipt],
        guard: HeldGuard,
    ) -> dict[bytes, _Done]:
        """Each ref's outcome after the commit, its keys evicted from this process."""
        ring = self._ring
        outcomes: dict[bytes, _Done] = {}
        lost: set[bytes] = set()
        for it, o in zip(batch, out, strict=True):
            if o is None:  # held: left out, nothing destroyed
                outcomes[it.ref] = _Done("held", hold_ids=tuple(guard.held.get(it.ref, ())))
                continue
            text, newly = o
            if newly:
                receipt = made[it.ref]
                keys = [(bytes.fromhex(k.key_id), k.version) for k in receipt.destroyed_keys]
                ring.evict_subject(it.ref, keys)
                overridden = tuple(guard.overridden.get(it.ref, ()))
                outcomes[it.ref] = _Done("shredded", receipt, hold_ids=overridden)
                continue
            parsed = parse_receipt(text)
            if parsed is None:
                lost.add(it.ref)
                outcomes[it.ref] = _Done("error", error=_describe(unparsable_receipt(it.ref)))
                continue
            ring.evict_subject(it.ref, parsed[1])
            outcomes[it.ref] = _Done("already_shredded", parsed[0])
        if lost:
            ring.evict_subjects(lost)
        shredded = sum(o.outcome == "shredded" for o in outcomes.values())
        held = sum(o.outcome == "held" for o in outcomes.values())
        log.info(
            "shred_many: a batch committed",
            extra={
                "shredded": shredded,
                "already_shredded": len(batch) - shredded - held - len(lost),
                "held": held,
            },
        )
        return outcomes

    def _one_by_one(
        self, batch: list[_Item], override_hold: bool, by: str | None
    ) -> tuple[dict[bytes, _Done], str | None]:
        """The batch shredded as :meth:`Erasure.shred` does, one subject at a time (its
        after-shred hooks apart: the batch sweep follows). A ledger error stops here as in a
        batch; a batch of several in which no subject could be shredded stops too (the key
        store is failing, not a subject)."""
        outcomes: dict[bytes, _Done] = {}
        stop: str | None = None
        last = ""
        for it in batch:
            if stop is not None:
                outcomes[it.ref] = _Done("error", error=stop)
                continue
            try:
                receipt, newly = self._erasure.destroy(
                    it.subject, override_hold=override_hold, by=by
                )
            except SubjectHeldError as exc:
                outcomes[it.ref] = _Done("held", hold_ids=exc.hold_ids)
            except _STOPS as exc:
                stop = _describe(exc)
                outcomes[it.ref] = _Done("error", error=stop)
            except Exception as exc:
                last = _describe(exc)
                outcomes[it.ref] = _Done("error", error=last)
            else:
                outcomes[it.ref] = _Done("shredded" if newly else "already_shredded", receipt)
        if stop is None and len(batch) > 1 and all(o.outcome == "error" for o in outcomes.values()):
            stop = last
        return outcomes, stop

    def _sweep(self, batch: list[_Item], outcomes: dict[bytes, _Done]) -> dict[bytes, _Done]:
        """Run the after-shred hooks for every subject the batch shredded (now or before); a
        failure is stated in each of their results, never loses a receipt."""
        swept = ("shredded", "already_shredded")
        values = [v for it in batch if outcomes[it.ref].outcome in swept for v in it.values]
        if not values:
            return outcomes
        outcome = sweep_many(self._ring, values)
        warn_unswept(self._ring, outcome, f"shred_many of {len(values)} subjects")
        if not outcome.incomplete:
            return outcomes
        why = "; ".join(outcome.reasons())
        log.error(
            "shred_many: %d subjects are shredded (their keys are destroyed, their receipts "
            "stand), but the sweep of what they left is incomplete: %s. Repeat the shred to "
            "sweep again (docs/sqlalchemy.md, 'When the sweep fails').",
            len(values),
            why,
        )
        return {
            ref: o
            if o.outcome not in swept
            else _Done(o.outcome, o.receipt, sweep_incomplete=why, hold_ids=o.hold_ids)
            for ref, o in outcomes.items()
        }
