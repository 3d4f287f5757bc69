"""Owns the SQL key store's entry points for the erasure package (DESIGN.md, lifecycle rule 3):
the shred and the batched shred, each in one transaction with the journal's step and the legal
holds' guard (lock order: ``ledger_applied_seq``, then hold rows, then subject heads, then the
invalidation channel), and the reads and writes of the journal's tables, which
``_sql_journal`` implements. Must not judge records nor talk to the ledger: the erasure package
does, inside the transaction this opens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import KeyStoreError
from ._protocol import (
    HeadSealer,
    JournalTxn,
    ReceiptFactory,
    RefReceiptFactory,
    ShredGuard,
    ShredJournal,
    ShredManyJournal,
)
from ._records import ErasureRow, HoldRow, OutboxEntry, QueuedErasure
from ._sql_base import BATCH
from ._sql_journal import (
    JournalTables,
    SqlJournalTxn,
    erasure_row,
    erasure_rows,
    journal_step,
    queue_erasures,
    read_active_hold_refs,
    read_applied,
    read_holds,
    read_outbox,
    read_policy,
    read_queue,
    read_shredded_receipts,
    write_erasures,
)
from ._sql_subjects import SqlSubjects

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

__all__ = ["SqlErasure"]

T = TypeVar("T")


class SqlErasure(SqlSubjects):
    """Shreds with their journal step and guard; the journal's, queue's and holds' tables."""

    def __init__(self, bind: Engine | AsyncEngine | str, *, prefix: str = "ccvault_") -> None:
        super().__init__(bind, prefix=prefix)
        t = self._md.tables
        self._jt = JournalTables(
            meta=self._meta,
            outbox=t[f"{prefix}ledger_outbox"],
            erasures=t[f"{prefix}erasures"],
            queue=t[f"{prefix}erasure_queue"],
            heads=self._heads,
            holds=t[f"{prefix}holds"],
            insert_ignore=self._insert_ignore,
            insert_ignore_many=self._insert_ignore_many,
            shred_in=self._shred_in,
        )

    def shred(
        self,
        ref: bytes,
        now: float,
        make_receipt: ReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredJournal | None = None,
        *,
        guard: ShredGuard | None = None,
    ) -> tuple[str, bool]:
        def run(conn: Connection) -> tuple[str, bool]:
            step = None
            if journal is not None or guard is not None:
                # the ledger lock first, then holds, then the head (one lock order)
                txn = SqlJournalTxn(conn, self._jt, create=False)
                if guard is not None and guard(txn, [ref]):
                    raise KeyStoreError("a shred guard may refuse a single shred only by raising")
                if journal is not None:
                    step = journal_step(txn, journal)
            return self._shred_in(conn, ref, now, make_receipt, seal_head, step)

        return self._write(run)

    def shred_many(
        self,
        refs: Sequence[bytes],
        now: float,
        make_receipt: RefReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredManyJournal,
        *,
        guard: ShredGuard | None = None,
    ) -> list[tuple[str, bool] | None]:
        if len(set(refs)) != len(refs):
            raise ValueError("shred_many takes distinct refs")

        def run(conn: Connection) -> list[tuple[str, bool] | None]:
            txn = SqlJournalTxn(conn, self._jt, create=False)  # the ledger lock first
            skip = set(guard(txn, refs)) if guard is not None else set()
            todo = [ref for ref in refs if ref not in skip]

            def aligned(out: Sequence[tuple[str, bool]]) -> list[tuple[str, bool] | None]:
                done = dict(zip(todo, out, strict=True))
                return [done.get(ref) for ref in refs]

            out = self._shred_many_in(
                conn, todo, now, make_receipt, seal_head, lambda o: journal(txn, aligned(o))
            )
            return aligned(out)

        return self._write(run)

    # -- the erasure journal's side (DESIGN.md, lifecycle rule 3) --------------------------------

    def journal_transaction(self, fn: Callable[[JournalTxn], T], *, create: bool = False) -> T:
        return self._write(lambda conn: fn(SqlJournalTxn(conn, self._jt, create=create)))

    def ledger_applied(self) -> int | None:
        with self._read() as conn:
            return read_applied(conn, self._jt)

    def outbox(self) -> list[OutboxEntry]:
        with self._read() as conn:
            return read_outbox(conn, self._jt)

    def erasure(self, receipt_id: str) -> ErasureRow | None:
        with self._read() as conn:
            return erasure_row(conn, self._jt, receipt_id)

    def erasure_rows(self, receipt_ids: Sequence[str]) -> dict[str, ErasureRow]:
        with self._read() as conn:
            return erasure_rows(conn, self._jt, receipt_ids)

    def record_erasures(self, rows: Sequence[ErasureRow]) -> None:
        for i in range(0, len(rows), BATCH):
            self._write(functools.partial(write_erasures, t=self._jt, rows=rows[i : i + BATCH]))

    def shredded_receipts(self, after: bytes | None, limit: int) -> list[tuple[bytes, str]]:
        with self._read() as conn:
            return read_shredded_receipts(conn, self._jt, after, limit)

    def holds(
        self, refs: Sequence[bytes] | None = None, *, unreleased: bool = False
    ) -> list[HoldRow]:
        with self._read() as conn:
            return read_holds(conn, self._jt, refs=refs, unreleased=unreleased)

    def recorded_policy(self) -> tuple[str, int | None] | None:
        with self._read() as conn:
            return read_policy(conn, self._jt)

    def active_hold_refs(self, now: float) -> set[bytes]:
        with self._read() as conn:
            return read_active_hold_refs(conn, self._jt, now)

    def queue_erasure(self, row: QueuedErasure) -> None:
        self._write(functools.partial(queue_erasures, t=self._jt, rows=[row]))

    def queued_erasures(self, due_by: float, after: str | None, limit: int) -> list[QueuedErasure]:
        with self._read() as conn:
            return read_queue(conn, self._jt, due_by, after, limit)

    def queue_waiting(self, due_by: float) -> tuple[int, float | None]:
        q = self._jt.queue
        with self._read() as conn:
            count, first = conn.execute(
                sa.select(sa.func.count(), sa.func.min(q.c.due)).where(q.c.due > due_by)
            ).one()
        return int(count), None if first is None else float(first)
