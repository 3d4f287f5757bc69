"""Owns reading the ledger and the key store side by side: every receipt, legal hold and
recorded retention policy and retention reports each holds (entries judged one by one, stored
receipts verified) and the read-only check of one against the other (:class:`ErasureCheck`).
Must not write: the reconciler repairs what this finds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from ..audit._receipt import RECEIPT_FORMAT, ErasureReceipt
from ..keystore._protocol import KeyStore
from ..keystore._records import KeyRecord, State
from ._chain import Fault, judge
from ._hold_records import HOLD_FORMAT, HOLD_KINDS, OVERRIDE_FORMAT, RELEASE_FORMAT
from ._journal import Journal
from ._policy_records import POLICY_RECORD_FORMAT, RetentionPolicyRecord
from ._records import RETENTION_REPORT_FORMAT, JournalEntry, RetentionReportRecord
from ._status import ErasureCheck, ErasureProblem

__all__ = ["LedgerIndex", "check_store", "index_ledger", "live_expired", "store_receipts"]

_BATCH: Final = 500  # store rows read per page; subject heads per query
_LISTED: Final = 1000  # problems an ErasureCheck lists of each kind (its counts count them all)

Page = Callable[[bytes | None, int], list[tuple[bytes, str]]]


@dataclass
class LedgerIndex:
    """What a ledger holds, judged entry by entry (an entry that fails is left out: the chain
    verification names it)."""

    receipts: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (seq, ref hex)
    entries: list[tuple[int, str]] = field(default_factory=list)  # (seq, kind)
    holds: dict[str, tuple[int, str]] = field(default_factory=dict)  # hold id -> (seq, ref hex)
    released: dict[str, int] = field(default_factory=dict)  # hold id -> seq of its release
    hold_entries: list[JournalEntry] = field(default_factory=list)  # holds, releases, overrides
    policy: JournalEntry | None = None  # the last retention policy recorded
    reports: list[JournalEntry] = field(default_factory=list)  # retention reports


def index_ledger(journal: Journal, installation_id: str, public_key: bytes) -> LedgerIndex:
    index = LedgerIndex()
    for item in journal.sink.read(installation_id):
        try:
            entry = judge(item, installation_id, public_key)
        except Fault:
            continue
        index.entries.append((entry.seq, entry.kind))
        if entry.kind == RECEIPT_FORMAT:
            rid, ref = entry.record.get("receipt_id"), entry.record.get("subject_ref")
            if isinstance(rid, str) and rid not in index.receipts:
                index.receipts[rid] = (entry.seq, str(ref))
        if entry.kind in HOLD_KINDS:
            index.hold_entries.append(entry)
        if entry.kind == POLICY_RECORD_FORMAT:
            index.policy = entry
        if entry.kind == RETENTION_REPORT_FORMAT:
            index.reports.append(entry)
        if entry.kind == HOLD_FORMAT:
            hid = entry.record.get("hold_id")
            if isinstance(hid, str):
                index.holds.setdefault(hid, (entry.seq, str(entry.record.get("subject_ref"))))
        elif entry.kind in (RELEASE_FORMAT, OVERRIDE_FORMAT):
            ids = entry.record.get("hold_ids") or [entry.record.get("hold_id")]
            for hid in ids if isinstance(ids, list) else []:
                if isinstance(hid, str):
                    index.released.setdefault(hid, entry.seq)
    return index


def live_expired(
    store: KeyStore, reports: list[JournalEntry], through: int
) -> list[tuple[JournalEntry, list[KeyRecord]]]:
    """The retention reports up to seq ``through`` (applied) whose periods the key store holds
    as live all the same (rows put back piecemeal: an insider, a restore of single rows), each
    with those period rows."""
    wanted: dict[str, JournalEntry] = {}
    for entry in reports:
        record = entry.parsed()
        if entry.seq <= through and isinstance(record, RetentionReportRecord):
            for label in record.labels():
                wanted.setdefault(label, entry)
    found: dict[int, tuple[JournalEntry, list[KeyRecord]]] = {}
    labels = sorted(wanted)
    for i in range(0, len(labels), _BATCH):
        for row in store.period_rows(labels=labels[i : i + _BATCH]):
            if row.state == State.LIVE and row.label in wanted:
                entry = wanted[row.label]
                found.setdefault(entry.seq, (entry, []))[1].append(row)
    return [found[seq] for seq in sorted(found)]


def store_receipts(
    page: Page, installation_id: str, public_key: bytes
) -> Iterator[tuple[ErasureReceipt | None, tuple[bytes, str]]]:
    """Every receipt the store holds, parsed and verified (None for one that fails), with its
    ref and stored text."""
    after: bytes | None = None
    while True:
        rows = page(after, _BATCH)
        for ref, text in rows:
            try:
                receipt: ErasureReceipt | None = ErasureReceipt.model_validate_json(text)
            except ValueError:
                receipt = None
            if receipt is not None and not (
                receipt.subject_ref == ref.hex()
                and receipt.verify(public_key, installation_id=installation_id)
            ):
                receipt = None
            yield receipt, (ref, text)
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def check_store(
    store: KeyStore,
    journal: Journal,
    installation_id: str,
    public_key: bytes,
    *,
    repair_torn: bool = False,
) -> ErasureCheck:
    """The key store against the ledger; see :class:`ErasureCheck`. Writes nothing, except
    that ``repair_torn`` cuts a torn write from the ledger's end (the sink's own repair, under
    its write lock: a write no process acknowledged)."""
    applied = store.ledger_applied()
    report = journal.verify(
        expect_head=applied if applied is not None and applied >= 0 else None, repair=repair_torn
    )
    index = index_ledger(journal, installation_id, public_key)
    start = -1 if applied is None else applied
    late = [
        ErasureProblem(
            receipt_id=None, subject_ref=None, seq=seq, detail=f"a {kind} entry not applied"
        )
        for seq, kind in index.entries
        if seq > start and kind != RECEIPT_FORMAT
    ]
    by_ref: dict[bytes, list[tuple[str, int]]] = {}
    for rid, (seq, ref_hex) in index.receipts.items():
        try:
            by_ref.setdefault(bytes.fromhex(ref_hex), []).append((rid, seq))
        except ValueError:
            continue
    refs = list(by_ref)
    shredded: set[bytes] = set()
    for i in range(0, len(refs), _BATCH):
        found = store.subject_keys(refs[i : i + _BATCH])
        shredded |= {r for r, (head, _) in found.items() if head.state == State.SHREDDED}
    late += [
        ErasureProblem(
            receipt_id=rid,
            subject_ref=ref.hex()[:16],
            seq=seq,
            detail="the key store does not hold its subject as shredded"
            if ref not in shredded
            else "not applied (after the key store's applied seq)",
        )
        for ref, pairs in by_ref.items()
        for rid, seq in pairs
        if ref not in shredded or seq > start
    ]
    queued = store.outbox()
    pending = [
        ErasureProblem(
            receipt_id=o.receipt_id,
            subject_ref=None,
            detail=f"a {o.kind} entry waiting in the outbox ("
            + (
                "recorded without a ledger"
                if o.kind == POLICY_RECORD_FORMAT
                else "ledger_mode='best-effort'"
            )
            + ")",
        )
        for o in queued
    ]
    missing: list[ErasureProblem] = []
    unverifiable: list[ErasureProblem] = []
    stored = 0
    waiting = {o.receipt_id for o in queued}
    for receipt, (ref, _) in store_receipts(store.shredded_receipts, installation_id, public_key):
        stored += 1
        if receipt is None:
            unverifiable.append(
                ErasureProblem(
                    receipt_id=None,
                    subject_ref=ref.hex()[:16],
                    detail="the receipt stored for this subject does not parse or verify",
                )
            )
        elif receipt.receipt_id not in index.receipts and receipt.receipt_id not in waiting:
            missing.append(
                ErasureProblem(
                    receipt_id=receipt.receipt_id,
                    subject_ref=ref.hex()[:16],
                    detail="in the key store, not in the ledger",
                )
            )
    held = {h.hold_id: h for h in store.holds()}
    late += [
        ErasureProblem(
            receipt_id=None,
            subject_ref=ref_hex[:16],
            seq=seq,
            detail=f"the key store does not hold the legal hold {hid}",
        )
        for hid, (seq, ref_hex) in index.holds.items()
        if seq <= start and hid not in held
    ]
    late += [
        ErasureProblem(
            receipt_id=None,
            subject_ref=held[hid].ref.hex()[:16],
            seq=seq,
            detail=f"the key store holds the legal hold {hid} as not released",
        )
        for hid, seq in index.released.items()
        if seq <= start and hid in held and held[hid].released_at is None
    ]
    missing += [
        ErasureProblem(
            receipt_id=None,
            subject_ref=row.ref.hex()[:16],
            detail=f"the legal hold {hid}: in the key store, not in the ledger",
        )
        for hid, row in held.items()
        if hid not in index.holds
    ]
    late += _policy_late(store, index, start)
    missing += _policy_missing(store, index, {o.kind for o in queued})
    late += [
        ErasureProblem(
            receipt_id=None,
            subject_ref=None,
            seq=entry.seq,
            detail=f"the key store holds retention period {row.label} as live (the retention "
            "report of this seq destroyed it)",
        )
        for entry, rows in live_expired(store, index.reports, start)
        for row in rows
    ]
    late.sort(key=lambda p: -1 if p.seq is None else p.seq)
    return ErasureCheck(
        installation_id=installation_id,
        location=journal.location,
        store_applied_seq=applied,
        ledger_head_seq=report.head_seq,
        ledger_receipts=len(index.receipts),
        store_receipts=stored,
        ledger=report,
        counts={
            "not_applied": len(late),
            "missing_from_ledger": len(missing),
            "pending": len(pending),
            "unverifiable": len(unverifiable),
        },
        not_applied=tuple(late[:_LISTED]),
        missing_from_ledger=tuple(missing[:_LISTED]),
        pending=tuple(pending[:_LISTED]),
        unverifiable=tuple(unverifiable[:_LISTED]),
    )


def _stored_policy(store: KeyStore) -> tuple[RetentionPolicyRecord | None, int | None, bool]:
    """The store's recorded policy: (record or None when it does not parse, its seq, whether
    one is recorded at all)."""
    raw = store.recorded_policy()
    if raw is None:
        return None, None, False
    try:
        return RetentionPolicyRecord.model_validate_json(raw[0]), raw[1], True
    except ValueError:
        return None, raw[1], True


def _policy_late(store: KeyStore, index: LedgerIndex, start: int) -> list[ErasureProblem]:
    """The ledger's last retention policy, applied (seq <= the store's), that the store does
    not hold as its recorded one."""
    entry = index.policy
    if entry is None or entry.seq > start:
        return []  # none, or after the store's applied seq: the entries' own problem above
    record, seq, _ = _stored_policy(store)
    ledger = entry.parsed()
    if (
        record is not None
        and seq == entry.seq
        and isinstance(ledger, RetentionPolicyRecord)
        and record.canonical_bytes() == ledger.canonical_bytes()
    ):
        return []
    return [
        ErasureProblem(
            receipt_id=None,
            subject_ref=None,
            seq=entry.seq,
            detail="the key store does not hold the retention policy recorded at this seq as "
            "its recorded policy",
        )
    ]


def _policy_missing(
    store: KeyStore, index: LedgerIndex, queued_kinds: set[str]
) -> list[ErasureProblem]:
    """A retention policy the store records that no ledger entry holds (nor the outbox)."""
    record, seq, present = _stored_policy(store)
    if not present or POLICY_RECORD_FORMAT in queued_kinds:
        return []
    entry = index.policy
    if entry is not None and (record is None or (seq is not None and seq <= entry.seq)):
        return []  # damaged, or older than the ledger's last: the check above names it
    digest = "unparsable" if record is None else record.policy_digest[:16]
    return [
        ErasureProblem(
            receipt_id=None,
            subject_ref=None,
            seq=seq,
            detail=f"the retention policy recorded in the key store (digest {digest}): "
            "in the key store, not in the ledger",
        )
    ]
