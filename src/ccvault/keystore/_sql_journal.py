"""Owns the SQL key store's side of the erasure journal: the ``ledger_applied_seq`` lock, the
outbox, the erasure rows, the queue of erasures awaiting completion, the legal holds and the
recorded retention policy (``meta`` rows), in one transaction (:class:`SqlJournalTxn`). Must
not talk to the ledger nor judge records: the erasure package does, inside the transaction
this opens.

Lock order: ``ledger_applied_seq`` first, then hold rows or the recorded retention policy's
header row, then subject heads or period rows, then epoch rows (shared, by key inserts), then the
invalidation channel's counter row (a shred, a hold, a release, a policy's recording, a
retention enforcement and a replay take them in that order; where the ``ledger_applied_seq``
row exists, every one of them holds it first, so they never deadlock each other). The period
and held-key rows of a retention enforcement are written by the key store's retention part
(``_sql_periods``), which this transaction calls through :class:`PeriodRows`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import KeyStoreError
from ._protocol import HeadSealer, ReceiptFactory, ShredJournal
from ._records import ErasureRow, HoldRow, KeyRecord, OutboxEntry, QueuedErasure, State
from ._schema import LEDGER_APPLIED, RETENTION_POLICY

__all__ = [
    "JournalTables",
    "PeriodRows",
    "ShredIn",
    "SqlJournalTxn",
    "erasure_row",
    "erasure_rows",
    "journal_step",
    "queue_erasures",
    "read_active_hold_refs",
    "read_applied",
    "read_holds",
    "read_outbox",
    "read_policy",
    "read_queue",
    "read_shredded_receipts",
    "unqueue_erasures",
    "write_erasures",
    "write_policy",
]

ShredIn = Callable[
    [Connection, bytes, float, ReceiptFactory, HeadSealer, Callable[[str], None] | None],
    tuple[str, bool],
]
"""The key store's shred in a given connection's transaction; the last argument runs before the
invalidation row is written (the shred's journal step)."""


class PeriodRows(Protocol):
    """The key store's statements on period and held-key rows in a given connection's
    transaction (implemented by ``_sql_periods``); see the retention methods of
    :class:`~ccvault.keystore.JournalTxn`."""

    def period_rows(
        self, conn: Connection, key_ids: Sequence[bytes], labels: Sequence[str], *, lock: bool
    ) -> list[KeyRecord]: ...

    def live_subject_keys(
        self, conn: Connection, refs: Sequence[bytes]
    ) -> dict[bytes, list[KeyRecord]]: ...

    def held_keys_by_ref(self, conn: Connection) -> dict[bytes, int]: ...

    def last_expired(self, conn: Connection) -> dict[str, str]: ...

    def add_held_keys(self, conn: Connection, records: Sequence[KeyRecord]) -> None: ...

    def expire_periods(self, conn: Connection, period_ids: Sequence[bytes], now: float) -> None: ...

    def destroy_held_keys(self, conn: Connection, refs: Sequence[bytes], now: float) -> int: ...

    def publish_expiry(
        self, conn: Connection, period_ids: Sequence[bytes], refs: Sequence[bytes], now: float
    ) -> None: ...


@dataclass(frozen=True)
class JournalTables:
    meta: sa.Table
    outbox: sa.Table
    erasures: sa.Table
    queue: sa.Table
    heads: sa.Table
    holds: sa.Table
    insert_ignore: Callable[[Connection, sa.Table, dict[str, Any]], bool]
    insert_ignore_many: Callable[[Connection, sa.Table, list[dict[str, Any]]], None]
    shred_in: ShredIn
    periods: PeriodRows | None = None  # the retention part's statements (SqlKeyStore has them)


def _applied_value(value: object) -> int | None:
    if value is None:
        return None
    text = str(value)
    try:
        return int(text)
    except ValueError:
        # A damaged row: -2 is below anything the ledger holds, so everything is replayed
        # and the store's receipts are checked against the ledger (a repair if missing).
        return -2


def read_applied(conn: Connection, t: JournalTables, *, lock: bool = False) -> int | None:
    query = sa.select(t.meta.c.value).where(t.meta.c.name == LEDGER_APPLIED)
    if lock:
        query = query.with_for_update()
    return _applied_value(conn.execute(query).scalar())


def read_outbox(conn: Connection, t: JournalTables) -> list[OutboxEntry]:
    o = t.outbox
    return [
        OutboxEntry(int(r.seq), r.kind, r.receipt_id, r.record, r.at)
        for r in conn.execute(sa.select(o).order_by(o.c.seq)).all()
    ]


def _erasure(r: Any) -> ErasureRow:
    return ErasureRow(
        receipt_id=r.receipt_id,
        ref=bytes(r.ref),
        origin=r.origin,
        ledger_seq=None if r.ledger_seq is None else int(r.ledger_seq),
        shredded_at=r.shredded_at,
        completion_seq=None if r.completion_seq is None else int(r.completion_seq),
    )


def erasure_row(conn: Connection, t: JournalTables, receipt_id: str) -> ErasureRow | None:
    e = t.erasures
    r = conn.execute(sa.select(e).where(e.c.receipt_id == receipt_id)).first()
    return None if r is None else _erasure(r)


def erasure_rows(
    conn: Connection, t: JournalTables, receipt_ids: Sequence[str]
) -> dict[str, ErasureRow]:
    e = t.erasures
    ids = sorted(set(receipt_ids))
    out: dict[str, ErasureRow] = {}
    for i in range(0, len(ids), 500):
        for r in conn.execute(sa.select(e).where(e.c.receipt_id.in_(ids[i : i + 500]))).all():
            out[r.receipt_id] = _erasure(r)
    return out


def read_shredded_receipts(
    conn: Connection, t: JournalTables, after: bytes | None, limit: int
) -> list[tuple[bytes, str]]:
    h = t.heads
    query = (
        sa.select(h.c.ref, h.c.receipt)
        .where(h.c.state == State.SHREDDED, h.c.receipt.is_not(None))
        .order_by(h.c.ref)
        .limit(limit)
    )
    if after is not None:
        query = query.where(h.c.ref > after)
    return [(bytes(ref), receipt) for ref, receipt in conn.execute(query).all()]


def write_erasures(conn: Connection, t: JournalTables, rows: Sequence[ErasureRow]) -> None:
    """Insert the rows absent; set ``ledger_seq`` where given on those present."""
    if not rows:
        return
    _insert_then_place(
        conn,
        t,
        t.erasures,
        "receipt_id",
        [
            {
                "receipt_id": r.receipt_id,
                "ref": r.ref,
                "origin": r.origin,
                "ledger_seq": r.ledger_seq,
                "completion_seq": r.completion_seq,
                "shredded_at": r.shredded_at,
            }
            for r in rows
        ],
    )


def _insert_then_place(
    conn: Connection, t: JournalTables, table: sa.Table, key: str, rows: list[dict[str, Any]]
) -> None:
    """Insert the rows absent (by primary key ``key``), then set ``ledger_seq`` on every row
    given one, present before or not: where an entry went is learnt after the row was made."""
    t.insert_ignore_many(conn, table, rows)
    placed = [{"k": r[key], "seq": r["ledger_seq"]} for r in rows if r["ledger_seq"] is not None]
    if placed:
        conn.execute(
            sa.update(table)
            .where(table.c[key] == sa.bindparam("k"))
            .values(ledger_seq=sa.bindparam("seq")),
            placed,
        )


def queue_erasures(conn: Connection, t: JournalTables, rows: Sequence[QueuedErasure]) -> None:
    """Queue ``rows`` for completion, replacing the row of the same receipt if there is one (a
    repeated shred queues it again under the day's key version)."""
    if not rows:
        return
    q = t.queue
    unqueue_erasures(conn, t, [row.receipt_id for row in rows])
    conn.execute(
        sa.insert(q),
        [
            {
                "receipt_id": row.receipt_id,
                "ref": row.ref,
                "key_id": row.key_id,
                "key_version": row.key_version,
                "sealed": row.sealed,
                "due": row.due,
                "queued_at": row.queued_at,
            }
            for row in rows
        ],
    )


def unqueue_erasures(conn: Connection, t: JournalTables, receipt_ids: Sequence[str]) -> None:
    q = t.queue
    ids = sorted(set(receipt_ids))
    for i in range(0, len(ids), 500):
        conn.execute(sa.delete(q).where(q.c.receipt_id.in_(ids[i : i + 500])))


def read_queue(
    conn: Connection, t: JournalTables, due_by: float, after: str | None, limit: int
) -> list[QueuedErasure]:
    """Queued erasures due at ``due_by`` (``due <= due_by``), by receipt id after ``after``."""
    q = t.queue
    query = sa.select(q).where(q.c.due <= due_by).order_by(q.c.receipt_id).limit(limit)
    if after is not None:
        query = query.where(q.c.receipt_id > after)
    return [
        QueuedErasure(
            receipt_id=r.receipt_id,
            ref=bytes(r.ref),
            key_id=bytes(r.key_id),
            key_version=int(r.key_version),
            sealed=bytes(r.sealed),
            due=float(r.due),
            queued_at=float(r.queued_at),
        )
        for r in conn.execute(query).all()
    ]


def _hold(r: Any) -> HoldRow:
    return HoldRow(
        hold_id=r.hold_id,
        ref=bytes(r.ref),
        case=r.legal_case,
        by=r.placed_by,
        placed_at=float(r.placed_at),
        until=None if r.held_until is None else float(r.held_until),
        ledger_seq=None if r.ledger_seq is None else int(r.ledger_seq),
        released_at=None if r.released_at is None else float(r.released_at),
        released_by=r.released_by,
        override_receipt=r.override_receipt,
        release_seq=None if r.release_seq is None else int(r.release_seq),
    )


def read_holds(
    conn: Connection,
    t: JournalTables,
    *,
    refs: Sequence[bytes] | None = None,
    hold_ids: Sequence[str] | None = None,
    unreleased: bool = False,
    lock: bool = False,
) -> list[HoldRow]:
    """Hold rows of ``refs`` (or ``hold_ids``; neither: every one), only those not released when
    ``unreleased``, locked (``FOR UPDATE``, in hold-id order) when ``lock``; in the order they
    were placed (their ledger entries' order)."""
    ho = t.holds
    keys: list[Any] | None = None
    column: Any = None
    if refs is not None:
        keys, column = sorted(set(refs)), ho.c.ref
    elif hold_ids is not None:
        keys, column = sorted(set(hold_ids)), ho.c.hold_id
    query = sa.select(ho).order_by(ho.c.hold_id)
    if unreleased:
        query = query.where(ho.c.released_at.is_(None))
    if lock:
        query = query.with_for_update()
    out: list[HoldRow] = []
    if keys is None:
        out = [_hold(r) for r in conn.execute(query).all()]
    for i in range(0, len(keys or ()), 500):
        chunk = (keys or [])[i : i + 500]
        out += [_hold(r) for r in conn.execute(query.where(column.in_(chunk))).all()]
    return sorted(
        out, key=lambda h: (h.ledger_seq is None, h.ledger_seq or 0, h.placed_at, h.hold_id)
    )


def read_active_hold_refs(conn: Connection, t: JournalTables, now: float) -> set[bytes]:
    """The refs with a hold not released whose ``held_until`` is NULL or after ``now``."""
    ho = t.holds
    query = (
        sa.select(ho.c.ref)
        .where(
            ho.c.released_at.is_(None),
            sa.or_(ho.c.held_until.is_(None), ho.c.held_until > now),
        )
        .distinct()
    )
    return {bytes(ref) for ref in conn.execute(query).scalars()}


def write_holds(conn: Connection, t: JournalTables, rows: Sequence[HoldRow]) -> None:
    """Insert the hold rows absent; set ``ledger_seq`` where given on those present."""
    if not rows:
        return
    _insert_then_place(
        conn,
        t,
        t.holds,
        "hold_id",
        [
            {
                "hold_id": r.hold_id,
                "ref": r.ref,
                "legal_case": r.case,
                "placed_by": r.by,
                "placed_at": r.placed_at,
                "held_until": r.until,
                "ledger_seq": r.ledger_seq,
            }
            for r in rows
        ],
    )


def release_holds(
    conn: Connection,
    t: JournalTables,
    hold_ids: Sequence[str],
    *,
    at: float,
    by: str | None,
    seq: int | None,
    override_receipt: str | None = None,
) -> None:
    """Mark the holds of ``hold_ids`` released (by a release, or by the shred of
    ``override_receipt``) unless they are already; give ``seq`` to those released without a
    seq of their entry yet (an override that waited in the outbox)."""
    ho = t.holds
    ids = sorted(set(hold_ids))
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        conn.execute(
            sa.update(ho)
            .where(ho.c.hold_id.in_(chunk), ho.c.released_at.is_(None))
            .values(
                released_at=at,
                released_by=by,
                override_receipt=override_receipt,
                release_seq=seq,
            )
        )
        if seq is not None:
            conn.execute(
                sa.update(ho)
                .where(
                    ho.c.hold_id.in_(chunk),
                    ho.c.release_seq.is_(None),
                    ho.c.override_receipt.is_not_distinct_from(override_receipt),
                )
                .values(release_seq=seq)
            )


_CHUNK: Final = 250  # characters of the policy record per meta row (meta.value is 255)


def _chunk_name(i: int) -> str:
    return f"{RETENTION_POLICY}/{i:04d}"


def read_policy(
    conn: Connection, t: JournalTables, *, lock: bool = False
) -> tuple[str, int | None] | None:
    """The recorded retention policy (the signed record's JSON, the seq of its ledger entry or
    None), None when none is recorded. Rows that do not add up (a row missing, edited) read as
    an empty text, which no record parses from. ``lock``: the header row is created empty if
    absent and locked (``FOR UPDATE``) first, so that writers of the policy serialise."""
    m = t.meta
    if lock:
        t.insert_ignore(conn, m, {"name": RETENTION_POLICY, "value": ""})
        conn.execute(
            sa.select(m.c.value).where(m.c.name == RETENTION_POLICY).with_for_update()
        ).scalar()
    rows = dict(
        conn.execute(
            sa.select(m.c.name, m.c.value).where(
                m.c.name.startswith(RETENTION_POLICY, autoescape=True)
            )
        ).all()
    )
    header = rows.pop(RETENTION_POLICY, "")
    if not header:
        return None
    parts = header.split(" ")
    seq: int | None = None
    if len(parts) == 3 and parts[0].isdigit():
        count, digest, where = int(parts[0]), parts[1], parts[2]
        seq = int(where) if where.isdigit() else None
        chunks = [rows.get(_chunk_name(i)) for i in range(count)]
        if all(c is not None for c in chunks):
            text = "".join(c for c in chunks if c is not None)
            if hashlib.sha256(text.encode("utf-8")).hexdigest() == digest:
                return text, seq
    return "", seq


def write_policy(conn: Connection, t: JournalTables, record: str, seq: int | None) -> None:
    """Record ``record`` (a signed policy record's JSON) as the retention policy, with ``seq``
    (its ledger entry; None: in no ledger), replacing the one recorded. The caller holds the
    header's lock (:func:`read_policy` with ``lock``)."""
    m = t.meta
    chunks = [record[i : i + _CHUNK] for i in range(0, len(record), _CHUNK)] or [""]
    digest = hashlib.sha256(record.encode("utf-8")).hexdigest()
    header = f"{len(chunks)} {digest} {'-' if seq is None else seq}"
    conn.execute(sa.delete(m).where(m.c.name.startswith(f"{RETENTION_POLICY}/", autoescape=True)))
    conn.execute(sa.insert(m), [{"name": _chunk_name(i), "value": c} for i, c in enumerate(chunks)])
    if not t.insert_ignore(conn, m, {"name": RETENTION_POLICY, "value": header}):
        conn.execute(sa.update(m).where(m.c.name == RETENTION_POLICY).values(value=header))


class SqlJournalTxn:
    """:class:`~ccvault.keystore.JournalTxn` on one connection, its transaction already begun:
    the constructor locks ``ledger_applied_seq`` (creating it as -1 first when ``create``)."""

    def __init__(self, conn: Connection, tables: JournalTables, *, create: bool) -> None:
        self._conn = conn
        self._t = tables
        if create:
            tables.insert_ignore(conn, tables.meta, {"name": LEDGER_APPLIED, "value": "-1"})
        self._applied = read_applied(conn, tables, lock=True)

    @property
    def applied(self) -> int | None:
        return self._applied

    def set_applied(self, seq: int) -> None:
        m = self._t.meta
        if self._applied is None:
            self._t.insert_ignore(self._conn, m, {"name": LEDGER_APPLIED, "value": str(seq)})
        self._conn.execute(sa.update(m).where(m.c.name == LEDGER_APPLIED).values(value=str(seq)))
        self._applied = seq

    def shred(
        self, ref: bytes, now: float, make_receipt: ReceiptFactory, seal_head: HeadSealer
    ) -> tuple[str, bool]:
        return self._t.shred_in(self._conn, ref, now, make_receipt, seal_head, None)

    def outbox(self) -> list[OutboxEntry]:
        return read_outbox(self._conn, self._t)

    def enqueue(self, kind: str, receipt_id: str | None, record: str, now: float) -> int:
        o = self._t.outbox
        top = self._conn.execute(sa.select(sa.func.max(o.c.seq))).scalar()
        seq = (top or 0) + 1
        self._conn.execute(
            sa.insert(o).values(seq=seq, kind=kind, receipt_id=receipt_id, record=record, at=now)
        )
        return seq

    def dequeue(self, seqs: Sequence[int]) -> None:
        if seqs:
            o = self._t.outbox
            self._conn.execute(sa.delete(o).where(o.c.seq.in_(list(seqs))))

    def record_erasures(self, rows: Sequence[ErasureRow]) -> None:
        write_erasures(self._conn, self._t, rows)

    def erasure_rows(self, receipt_ids: Sequence[str]) -> dict[str, ErasureRow]:
        return erasure_rows(self._conn, self._t, receipt_ids)

    def record_completion(self, receipt_id: str, seq: int) -> None:
        e = self._t.erasures
        self._conn.execute(
            sa.update(e).where(e.c.receipt_id == receipt_id).values(completion_seq=seq)
        )

    def shredded_receipts(self, after: bytes | None, limit: int) -> list[tuple[bytes, str]]:
        return read_shredded_receipts(self._conn, self._t, after, limit)

    def queue_erasure(self, row: QueuedErasure) -> None:
        queue_erasures(self._conn, self._t, [row])

    def queue_erasures(self, rows: Sequence[QueuedErasure]) -> None:
        queue_erasures(self._conn, self._t, rows)

    def unqueue_erasures(self, receipt_ids: Sequence[str]) -> None:
        unqueue_erasures(self._conn, self._t, receipt_ids)

    def head_state(self, ref: bytes) -> str | None:
        h = self._t.heads
        return self._conn.execute(
            sa.select(h.c.state).where(h.c.ref == ref).with_for_update()
        ).scalar()

    def holds(self, refs: Sequence[bytes] | None) -> list[HoldRow]:
        return read_holds(self._conn, self._t, refs=refs, unreleased=True, lock=True)

    def active_hold_refs(self, now: float) -> set[bytes]:
        return read_active_hold_refs(self._conn, self._t, now)

    def hold_rows(self, hold_ids: Sequence[str]) -> dict[str, HoldRow]:
        rows = read_holds(self._conn, self._t, hold_ids=hold_ids, lock=True)
        return {r.hold_id: r for r in rows}

    def record_holds(self, rows: Sequence[HoldRow]) -> None:
        write_holds(self._conn, self._t, rows)

    def recorded_policy(self) -> tuple[str, int | None] | None:
        return read_policy(self._conn, self._t, lock=True)

    def record_policy(self, record: str, seq: int | None) -> None:
        read_policy(self._conn, self._t, lock=True)  # the header's lock, if not taken yet
        write_policy(self._conn, self._t, record, seq)

    def release_holds(
        self,
        hold_ids: Sequence[str],
        *,
        at: float,
        by: str | None,
        seq: int | None,
        override_receipt: str | None = None,
    ) -> None:
        release_holds(
            self._conn,
            self._t,
            hold_ids,
            at=at,
            by=by,
            seq=seq,
            override_receipt=override_receipt,
        )

    # -- retention: the statements are the retention part's (PeriodRows) -----------------------

    def _periods(self) -> PeriodRows:
        rows = self._t.periods
        if rows is None:
            raise KeyStoreError("this key store has no retention part: it cannot enforce retention")
        return rows

    def period_rows(
        self, *, key_ids: Sequence[bytes] = (), labels: Sequence[str] = ()
    ) -> list[KeyRecord]:
        return self._periods().period_rows(self._conn, key_ids, labels, lock=True)

    def live_subject_keys(self, refs: Sequence[bytes]) -> dict[bytes, list[KeyRecord]]:
        return self._periods().live_subject_keys(self._conn, refs)

    def held_keys_by_ref(self) -> dict[bytes, int]:
        return self._periods().held_keys_by_ref(self._conn)

    def last_expired(self) -> dict[str, str]:
        return self._periods().last_expired(self._conn)

    def add_held_keys(self, records: Sequence[KeyRecord]) -> None:
        self._periods().add_held_keys(self._conn, records)

    def expire_periods(self, period_ids: Sequence[bytes], now: float) -> None:
        self._periods().expire_periods(self._conn, period_ids, now)

    def destroy_held_keys(self, refs: Sequence[bytes], now: float) -> int:
        return self._periods().destroy_held_keys(self._conn, refs, now)

    def publish_expiry(
        self, period_ids: Sequence[bytes], refs: Sequence[bytes], now: float
    ) -> None:
        self._periods().publish_expiry(self._conn, period_ids, refs, now)


def journal_step(txn: SqlJournalTxn, journal: ShredJournal) -> Callable[[str], None]:
    """The shred's callback for ``shred_in``: ``journal`` with this transaction."""

    def step(receipt: str) -> None:
        journal(txn, receipt)

    return step
