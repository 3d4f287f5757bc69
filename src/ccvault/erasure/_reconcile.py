"""Owns bringing the key store and the ledger into agreement: replaying ledger entries into the
store (receipts, completions, legal holds, their releases and overrides, retention policies,
retention reports — these through the enforcer's applier, :data:`ReportApplier`), re-adding the
store's receipts to a ledger behind it (after a signed repair entry), appending the outbox, and
the read-only check of one against the other. Must not decide when:
the ledger link does (at open, after a restore, before a shred, on request).

Every step that writes runs in one key-store :class:`~ccvault.keystore.JournalTxn` (the
``ledger_applied_seq`` lock) and appends to the ledger inside it, conditionally on the seq the
store has applied (:meth:`Journal.append_after`): a crash between the ledger's write and the
store's commit leaves the ledger *ahead*, which the next replay applies, never behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final, Literal

from .._failpoints import failpoint
from ..audit._receipt import RECEIPT_FORMAT, ErasureReceipt
from ..errors import ConfigurationError, LedgerIntegrityError
from ..keystore._protocol import HeadSealer, JournalTxn, KeyStore, ReceiptFactory
from ..keystore._records import (
    ErasureOrigin,
    ErasureRow,
    HeadRecord,
    KeyRecord,
    OutboxEntry,
    State,
)
from ._check import check_store, index_ledger, live_expired, store_receipts
from ._hold_records import HOLD_FORMAT, RELEASE_FORMAT, apply_hold_record
from ._journal import Journal, JournalMoved
from ._policy_records import RetentionPolicyRecord, apply_policy_record
from ._records import (
    CompletionRecord,
    JournalEntry,
    Record,
    RetentionReportRecord,
    parse_record,
)
from ._status import ErasureCheck, Reconciliation, RepairRecord

__all__ = ["CompletionDraft", "Reconciler", "ReportApplier", "policy_text", "receipt_row"]

ReportApplier = Callable[[JournalTxn, RetentionReportRecord], None]
"""Does to the key store what a retention report says, in a journal transaction (the replay of
its entry): made by the retention enforcer, which holds the keys it needs (held keys are
derived from the subject keys and the period secrets, and wrapped under the active epoch)."""

_BATCH: Final = 500  # entries replayed per key-store transaction; store rows read per page
_REPAIRED: Final = 499  # receipts after one repair entry (one sink write of 500)


def _ts(value: datetime) -> float:
    return value.timestamp()


def _ref(receipt: ErasureReceipt, seq: int | None) -> bytes:
    try:
        ref = bytes.fromhex(receipt.subject_ref)
    except ValueError:
        ref = b""
    if len(ref) != 32:
        raise LedgerIntegrityError(
            f"the receipt {receipt.receipt_id} at seq {seq} names no 32-byte subject ref", seq=seq
        )
    return ref


def receipt_row(
    receipt: ErasureReceipt, origin: str, seq: int | None, ref: bytes | None = None
) -> ErasureRow:
    """The key store's erasure row of ``receipt``."""
    return ErasureRow(
        receipt_id=receipt.receipt_id,
        ref=ref if ref is not None else _ref(receipt, seq),
        origin=origin,
        ledger_seq=seq,
        shredded_at=_ts(receipt.shredded_at),
    )


def _original(receipt: ErasureReceipt) -> ReceiptFactory:
    """The receipt factory of a replay: the ledger's receipt as it is, never a new one."""
    text = receipt.model_dump_json()

    def same(_head: HeadRecord | None, _keys: Sequence[KeyRecord]) -> str:
        return text

    return same


@dataclass(frozen=True, slots=True)
class CompletionDraft:
    """What a completion record says, before the transaction that appends it reads where its
    receipt is in the ledger."""

    receipt: ErasureReceipt
    completed_at: datetime
    bound_waited_seconds: float
    tables_swept: tuple[str, ...]


def policy_text(entry: JournalEntry) -> str | None:
    """The key store's text of the retention policy of ledger entry ``entry`` (None: it does
    not parse as one)."""
    try:
        record = entry.parsed()
    except ValueError:
        return None
    if not isinstance(record, RetentionPolicyRecord):
        return None
    return record.canonical_bytes().decode("utf-8")


def _outbox_record(entry: OutboxEntry) -> Record:
    record = parse_record(entry.kind, json.loads(entry.record))
    if record is None:  # pragma: no cover - only this library queues records, of kinds it knows
        raise ConfigurationError(f"the outbox holds a record of unknown kind {entry.kind!r}")
    return record


class Reconciler:
    """The steps that make the key store and the ledger agree; see the module docstring."""

    def __init__(
        self,
        store: KeyStore,
        installation_id: str,
        public_key: bytes,
        seal: HeadSealer,
        now: Callable[[], float],
    ) -> None:
        self._store = store
        self._id = installation_id
        self._public = public_key
        self._seal = seal
        self._now = now
        self.report_applier: ReportApplier | None = None  # set by the vault (its enforcer)

    # -- ledger first: appending with the outbox ---------------------------------------------------

    def append(self, txn: JournalTxn, journal: Journal, new: Sequence[Record]) -> int:
        """Append the outbox and then ``new`` after the store's applied seq, record where they
        went (a receipt's erasure row; a completion marks its erasure completed and drops it
        from the queue; a hold, release or override its hold rows), empty the outbox; returns
        how many entries were appended. Raises
        :class:`JournalMoved` when the ledger is not where the store says (nothing written)."""
        applied = txn.applied
        if applied is None or applied < 0:
            raise JournalMoved(None, -1 if applied is None else applied)
        outbox = txn.outbox()
        records: list[Record] = [_outbox_record(o) for o in outbox]
        records += new
        if not records:
            return 0
        entries = journal.append_after(applied, records)
        rows = [
            receipt_row(r, ErasureOrigin.LEDGER, e.seq)
            for r, e in zip(records, entries, strict=True)
            if isinstance(r, ErasureReceipt)
        ]
        txn.record_erasures(rows)
        for r, e in zip(records, entries, strict=True):
            # a hold, release or override: its rows follow; a retention policy: recorded
            apply_hold_record(txn, r, e.seq) or apply_policy_record(txn, r, e.seq)
        done = [
            (r.receipt_id, e.seq)
            for r, e in zip(records, entries, strict=True)
            if isinstance(r, CompletionRecord)
        ]
        for receipt_id, seq in done:
            txn.record_completion(receipt_id, seq)
        txn.unqueue_erasures([receipt_id for receipt_id, _ in done])
        txn.dequeue([o.seq for o in outbox])
        txn.set_applied(entries[-1].seq)
        return len(entries)

    def complete(
        self,
        txn: JournalTxn,
        journal: Journal,
        drafts: Sequence[CompletionDraft],
        stale: Sequence[str] = (),
    ) -> list[CompletionRecord]:
        """Append a completion record for each draft whose erasure is in the ledger and not
        completed yet (read in this transaction: two hosts completing at once append one
        each), after the outbox; returns the records appended. ``stale``: receipt ids found
        completed already, whose queue rows go."""
        rows = txn.erasure_rows([d.receipt.receipt_id for d in drafts] + list(stale))
        records: list[CompletionRecord] = []
        for d in drafts:
            row = rows.get(d.receipt.receipt_id)
            if row is None or row.ledger_seq is None or row.completion_seq is not None:
                continue
            records.append(
                CompletionRecord.for_receipt(
                    d.receipt,
                    ledger_seq=row.ledger_seq,
                    completed_at=d.completed_at,
                    bound_waited_seconds=d.bound_waited_seconds,
                    tables_swept=d.tables_swept,
                )
            )
        # completed meanwhile (another host, a replay): their queue rows go all the same
        txn.unqueue_erasures([r.receipt_id for r in rows.values() if r.completion_seq is not None])
        if records:
            self.append(txn, journal, records)
            failpoint("after-ledger-append")  # the crash tests: in the ledger, not committed
        return records

    def flush(self, journal: Journal) -> Reconciliation:
        """Append whatever waits in the outbox."""

        def run(txn: JournalTxn) -> Reconciliation:
            if not txn.outbox():
                return Reconciliation()
            return Reconciliation(flushed=self.append(txn, journal, []))

        if not self._store.outbox():
            return Reconciliation()
        return self._store.journal_transaction(run)

    # -- replay: the ledger's entries into the store ----------------------------------------------

    def replay(self, journal: Journal, after: int) -> Reconciliation:
        """Apply every entry after seq ``after`` in order, ``_BATCH`` per key-store transaction:
        a receipt shreds its subject with the ledger's own receipt (never a new one), a
        completion marks its erasure completed, a hold records its hold, a release or an
        override marks its holds released; the store's applied seq follows."""
        total = Reconciliation()
        legacy: set[str] = set()
        batch: list[JournalEntry] = []
        for entry in journal.entries(after=max(after, -1)):
            batch.append(entry)
            if len(batch) == _BATCH:
                total += self._apply(batch, legacy)
                batch = []
        if batch:
            total += self._apply(batch, legacy)
        return total

    def _apply(self, batch: list[JournalEntry], legacy: set[str]) -> Reconciliation:
        def run(txn: JournalTxn) -> Reconciliation:
            start = -1 if txn.applied is None else max(txn.applied, -1)
            todo = [e for e in batch if e.seq > start]
            if not todo:
                return Reconciliation()  # another process applied them meanwhile
            if todo[0].seq != start + 1:  # the store went back meanwhile: look again
                raise JournalMoved(todo[0].seq - 1, start)
            queued: dict[str, list[int]] = {}
            for o in txn.outbox():
                if o.receipt_id:  # a receipt, and the override entry that went with it
                    queued.setdefault(o.receipt_id, []).append(o.seq)
            rows: list[ErasureRow] = []
            completions: list[tuple[str, int]] = []
            dropped: list[int] = []
            shredded = 0
            for entry in todo:
                record = entry.parsed()
                if record is None:
                    raise ConfigurationError(
                        f"the ledger's entry at seq {entry.seq} is of kind {entry.kind!r}, which "
                        "this ccvault does not know: a newer ccvault wrote it. Run that version "
                        "(it applies it), never an older one"
                    )
                if isinstance(record, RepairRecord) and record.reason == "genesis-import":
                    legacy.update(record.receipt_ids)
                elif isinstance(record, ErasureReceipt):
                    ref = _ref(record, entry.seq)
                    _, newly = txn.shred(
                        ref, _ts(record.shredded_at), _original(record), self._seal
                    )
                    shredded += newly
                    origin = (
                        ErasureOrigin.LEGACY
                        if record.receipt_id in legacy
                        else ErasureOrigin.LEDGER
                    )
                    rows.append(receipt_row(record, origin, entry.seq, ref))
                    dropped += queued.get(record.receipt_id, [])
                elif isinstance(record, CompletionRecord):
                    completions.append((record.receipt_id, entry.seq))
                elif isinstance(record, RetentionReportRecord):
                    self._apply_report(txn, record, entry.seq)
                else:
                    apply_hold_record(txn, record, entry.seq) or apply_policy_record(
                        txn, record, entry.seq
                    )
            txn.record_erasures(rows)
            for receipt_id, seq in completions:
                txn.record_completion(receipt_id, seq)
            txn.unqueue_erasures([receipt_id for receipt_id, _ in completions])
            txn.dequeue(dropped)
            txn.set_applied(todo[-1].seq)
            replayed = sum(e.seq > 0 for e in todo)  # the genesis entry is nothing to apply
            return Reconciliation(replayed=replayed, shredded=shredded)

        return self._store.journal_transaction(run, create=True)

    def _apply_report(self, txn: JournalTxn, record: RetentionReportRecord, seq: int) -> None:
        if self.report_applier is None:
            raise ConfigurationError(
                f"the ledger's entry at seq {seq} is a retention report, and this reconciler "
                "has no retention enforcer to replay it (open a Vault to replay the ledger)"
            )
        self.report_applier(txn, record)

    def reapply(self, journal: Journal) -> Reconciliation:
        """Shred again, with the ledger's receipt, every subject a ledger receipt names that the
        store does not hold as shredded although it applied the entry (its rows were put back
        piecemeal: an insider, or a restore of single rows); apply again every hold,
        release and override entry when the store lacks a hold or holds a released one as
        active; and apply again every retention report whose periods the store holds as live."""
        index = index_ledger(journal, self._id, self._public)
        by_ref: dict[bytes, str] = {}
        for rid, (_, ref_hex) in index.receipts.items():
            try:
                by_ref.setdefault(bytes.fromhex(ref_hex), rid)
            except ValueError:
                continue
        holds = index.hold_entries  # judged one by one: a tampered entry is the check's to name
        policy = index.policy if self._policy_lost(index.policy) else None
        refs = list(by_ref)
        live: list[bytes] = []
        for i in range(0, len(refs), _BATCH):
            chunk = refs[i : i + _BATCH]
            found = self._store.subject_keys(chunk)
            live += [r for r in chunk if r not in found or found[r][0].state != State.SHREDDED]
        applied = self._store.ledger_applied()
        expired = live_expired(self._store, index.reports, -1 if applied is None else applied)
        if not live and not expired and not self._holds_lost(holds) and policy is None:
            return Reconciliation()
        wanted = {by_ref[r] for r in live}
        receipts = (
            [
                (e.seq, r)
                for e in journal.entries()
                if e.kind == RECEIPT_FORMAT and e.record.get("receipt_id") in wanted
                for r in [e.parsed()]
                if isinstance(r, ErasureReceipt)
            ]
            if wanted
            else []
        )

        def run(txn: JournalTxn) -> Reconciliation:
            shredded = 0
            for seq, receipt in receipts:
                ref = _ref(receipt, seq)
                _, newly = txn.shred(ref, _ts(receipt.shredded_at), _original(receipt), self._seal)
                shredded += newly
                txn.record_erasures([receipt_row(receipt, ErasureOrigin.LEDGER, seq, ref)])
            for entry in holds:  # holds, releases and overrides: idempotent
                record = entry.parsed()
                if record is not None:
                    apply_hold_record(txn, record, entry.seq)
            if policy is not None:  # the ledger's last policy, where the store lost it
                record = policy.parsed()
                if record is not None:
                    apply_policy_record(txn, record, policy.seq)
            for entry, _ in expired:  # retention reports: idempotent
                report = entry.parsed()
                if isinstance(report, RetentionReportRecord):
                    self._apply_report(txn, report, entry.seq)
            return Reconciliation(shredded=shredded)

        return self._store.journal_transaction(run, create=True)

    def _policy_lost(self, entry: JournalEntry | None) -> bool:
        """Whether the store does not hold the ledger's last retention policy (``entry``) as
        its recorded one, with its seq: its rows were deleted, edited or put back piecemeal."""
        if entry is None:
            return False
        raw = self._store.recorded_policy()
        if raw is None or raw[1] != entry.seq:
            return True
        return policy_text(entry) != raw[0]

    def _holds_lost(self, entries: Sequence[JournalEntry]) -> bool:
        """Whether the store lacks a hold the ledger holds, or holds one as active that the
        ledger released (its rows deleted or put back piecemeal)."""
        placed = {str(e.record.get("hold_id")) for e in entries if e.kind == HOLD_FORMAT}
        released = {
            str(h)
            for e in entries
            if e.kind != HOLD_FORMAT
            for h in (
                [e.record.get("hold_id")]
                if e.kind == RELEASE_FORMAT
                else list(e.record.get("hold_ids") or [])
            )
        }
        rows = {r.hold_id: r for r in self._store.holds()}
        return any(h not in rows for h in placed) or any(
            h in rows and rows[h].released_at is None for h in released
        )

    # -- repair: the store's receipts into a ledger that lacks them -------------------------------

    def repair(
        self, journal: Journal, reason: Literal["genesis-import", "ledger-behind"]
    ) -> Reconciliation:
        """Re-add every receipt the store holds and the ledger lacks (nor the outbox), each
        batch after a signed repair entry; a ledger whose head is behind the store's applied
        seq gets a repair entry even when no receipt is missing. The store's applied seq becomes
        the ledger's head. Raises :class:`JournalMoved` when the ledger holds entries the store
        has not applied (replay first)."""

        def run(txn: JournalTxn) -> Reconciliation:
            tip = journal.tip()
            head = -1 if tip is None else tip.seq
            applied = -1 if txn.applied is None else max(txn.applied, -1)
            if applied < head and not (applied == -1 and head == 0):
                raise JournalMoved(head, applied)
            known = index_ledger(journal, self._id, self._public).receipts
            queued = {o.receipt_id for o in txn.outbox()}
            missing = [
                r
                for r, _ in store_receipts(txn.shredded_receipts, self._id, self._public)
                if r is not None and r.receipt_id not in known and r.receipt_id not in queued
            ]
            behind = applied > head
            if not missing and not behind:
                if txn.applied != head:
                    txn.set_applied(head)
                return Reconciliation()
            when = datetime.fromtimestamp(self._now(), tz=timezone.utc)
            rows: list[ErasureRow] = []
            for i in range(0, max(len(missing), 1), _REPAIRED):
                chunk = missing[i : i + _REPAIRED]
                note = RepairRecord(
                    installation_id=self._id,
                    repaired_at=when,
                    reason=reason,
                    receipt_ids=tuple(r.receipt_id for r in chunk),
                    store_applied_seq=applied,
                    ledger_head_seq=head,
                )
                entries = journal.append_after(head, [note, *chunk])
                rows += [
                    receipt_row(r, ErasureOrigin.LEGACY, e.seq)
                    for r, e in zip(chunk, entries[1:], strict=True)
                ]
                head = entries[-1].seq
            txn.record_erasures(rows)
            txn.set_applied(head)
            count = len(missing)
            if reason == "genesis-import":
                return Reconciliation(imported=count)
            return Reconciliation(repaired=count)

        return self._store.journal_transaction(run, create=True)

    def check(self, journal: Journal, *, repair_torn: bool = False) -> ErasureCheck:
        """The key store against the ledger; see :class:`ErasureCheck`. Writes nothing but,
        with ``repair_torn``, the cut of a torn write at the ledger's end."""
        return check_store(self._store, journal, self._id, self._public, repair_torn=repair_torn)
