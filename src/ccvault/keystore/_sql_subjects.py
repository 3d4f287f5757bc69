"""Owns the SQL key store's subject heads: creating heads and first keys under the head rows'
locks (one lock order: by ref), fences for subjects shredded before they had a key, the body of
a shred (keys destroyed, head shredded, then the invalidation rows, in the caller's
transaction), heads read with their keys, and heads sealed with their MACs. Must not talk to
the journal or the ledger, nor make receipts or MACs: the caller's factories do, and
``_sql_erasure`` opens the shred's transaction.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..crypto._primitives import random_bytes
from ..errors import KeyStoreError
from ._protocol import HeadSealer, ReceiptFactory, RefReceiptFactory
from ._records import HeadRecord, InvalidationKind, KeyKind, KeyRecord, State
from ._sql_base import BATCH, among
from ._sql_channel import SqlChannel
from ._sql_keys import SqlKeys, destroyed_values

__all__ = ["CREATE_PER_TRANSACTION", "SqlSubjects"]

log = logging.getLogger("ccvault")

CREATE_PER_TRANSACTION = 20 * BATCH
"""New subjects whose heads and keys one key-store transaction creates (statements of 500 rows):
each commit is an fsync (SQLite ``synchronous=FULL``, PostgreSQL's WAL flush) and, on SQLite, a
write of every page the transaction dirtied, to the WAL and then back to the database by the
checkpoint. The new subjects' refs are random, so their head and key rows land all over the
indexes: at 100,000 subjects 2,000 new ones dirty most index pages, and 10,000 barely more, for
one commit instead of five. The heads stay locked (on SQLite, the database's write lock held:
other writers wait, readers do not) for the few hundred milliseconds the transaction lasts."""


class SqlSubjects(SqlChannel, SqlKeys):
    """Subject heads and subject keys: creation, fences, the shred's body, sealing."""

    def has_subjects(self) -> bool:
        h, k = self._heads, self._keys
        with self._read() as conn:
            head = conn.execute(sa.select(h.c.ref).limit(1)).first()
            key = conn.execute(
                sa.select(k.c.key_id).where(k.c.kind == KeyKind.SUBJECT).limit(1)
            ).first()
        return head is not None or key is not None

    def subject_head(self, ref: bytes) -> HeadRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(self._heads).where(self._heads.c.ref == ref)).first()
        return self._head(row) if row is not None else None

    def _locked_heads(self, conn: Connection, refs: Sequence[bytes]) -> dict[bytes, HeadRecord]:
        """The heads of ``refs`` that exist, locked (in ref order, 500 per statement)."""
        h = self._heads
        found: dict[bytes, HeadRecord] = {}
        ordered = sorted(set(refs))
        for i in range(0, len(ordered), BATCH):
            rows = conn.execute(
                sa.select(h)
                .where(among(h.c.ref, ordered[i : i + BATCH], self._dialect))
                .order_by(h.c.ref)
                .with_for_update()
            ).all()
            found.update((bytes(r.ref), self._head(r)) for r in rows)
        return found

    def _shred_in(
        self,
        conn: Connection,
        ref: bytes,
        now: float,
        make_receipt: ReceiptFactory,
        seal_head: HeadSealer,
        before_commit: Callable[[str], None] | None,
    ) -> tuple[str, bool]:
        """Shred ``ref`` in ``conn``'s transaction; ``before_commit(receipt)`` runs once the
        keys are destroyed and the head says shredded, before the invalidation row (not for a
        repeat, which returns the stored receipt)."""

        def step(out: Sequence[tuple[str, bool]]) -> None:
            receipt, newly = out[0]
            if newly and before_commit is not None:
                before_commit(receipt)

        def receipt_of(_ref: bytes, head: HeadRecord | None, keys: Sequence[KeyRecord]) -> str:
            return make_receipt(head, keys)

        return self._shred_many_in(conn, [ref], now, receipt_of, seal_head, step)[0]

    def _shred_many_in(
        self,
        conn: Connection,
        refs: Sequence[bytes],
        now: float,
        make_receipt: RefReceiptFactory,
        seal_head: HeadSealer,
        before_commit: Callable[[Sequence[tuple[str, bool]]], None] | None,
    ) -> list[tuple[str, bool]]:
        """Shred the distinct ``refs`` in ``conn``'s transaction, a few statements for all of
        them; returns each ref's (receipt, newly shredded) in order. ``before_commit(results)``
        runs once the keys of the refs newly shredded are destroyed and their heads say
        shredded, before the invalidation rows."""
        h, k = self._heads, self._keys
        heads = self._locked_heads(conn, refs)
        missing = [ref for ref in refs if ref not in heads]
        if missing:
            # Never seen: fence them anyway, so that no key is ever created for them.
            self._insert_ignore_many(
                conn,
                h,
                [
                    {
                        "ref": ref,
                        "key_id": random_bytes(16),
                        "state": State.ACTIVE,
                        "current_version": 0,
                        "created_at": now,
                    }
                    for ref in missing
                ],
            )
            fenced = self._locked_heads(conn, missing)
            if len(fenced) != len(missing):
                raise KeyStoreError("subject head vanished")
            # ... and keep a tombstone of each too, as for a subject that had keys: the fence
            # then outlives its head row (see create_subject_keys).
            tombstones = [
                _fence_tombstone(head.key_id, ref, now)
                for ref, head in fenced.items()
                if head.state == State.ACTIVE and head.current_version == 0
            ]
            if tombstones:
                self._insert_ignore_many(conn, k, tombstones)
            heads.update(fenced)
        out: dict[bytes, tuple[str, bool]] = {}
        macs: dict[bytes, bytes] = {}
        remac: list[dict[str, Any]] = []
        for ref in refs:
            head = heads[ref]
            mac = seal_head(ref, head.key_id, State.SHREDDED, head.current_version)
            if head.state == State.SHREDDED and head.receipt is not None:
                if head.mac is None or not hmac.compare_digest(head.mac, mac):
                    # A shredded state may always be (re-)authenticated: that fails closed.
                    remac.append({"h_ref": ref, "h_mac": mac})
                out[ref] = (head.receipt, False)
            else:
                macs[ref] = mac
        if remac:
            conn.execute(
                sa.update(h)
                .where(h.c.ref == sa.bindparam("h_ref"))
                .values(mac=sa.bindparam("h_mac")),
                remac,
            )
        todo = list(macs)
        if todo:
            keys: dict[bytes, list[KeyRecord]] = {ref: [] for ref in todo}
            for i in range(0, len(todo), BATCH):
                chunk = todo[i : i + BATCH]
                for row in conn.execute(
                    sa.select(k).where(among(k.c.ref, chunk, self._dialect))
                ).all():
                    keys[bytes(row.ref)].append(self._key(row))
                conn.execute(
                    sa.update(k)
                    .where(among(k.c.ref, chunk, self._dialect))
                    .values(destroyed_values(now))
                )
            updates = []
            for ref in todo:
                head = heads[ref]
                receipt = make_receipt(ref, head if head.current_version else None, keys[ref])
                out[ref] = (receipt, True)
                updates.append({"h_ref": ref, "h_receipt": receipt, "h_mac": macs[ref]})
            conn.execute(
                sa.update(h)
                .where(h.c.ref == sa.bindparam("h_ref"))
                .values(
                    state=State.SHREDDED,
                    shredded_at=now,
                    receipt=sa.bindparam("h_receipt"),
                    mac=sa.bindparam("h_mac"),
                ),
                updates,
            )
        results = [out[ref] for ref in refs]
        if before_commit is not None:
            before_commit(results)  # the ledger append: raising rolls everything back
        if todo:
            # Last, so that the channel's counter row stays locked only until the commit.
            self._invalidate_many(conn, InvalidationKind.SHRED, todo, now)
        return results

    # -- batches of subjects -------------------------------------------------------------------

    def subject_keys(
        self, refs: Sequence[bytes]
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        h = self._heads
        out: dict[bytes, tuple[HeadRecord, KeyRecord | None]] = {}
        with self._read() as conn:
            for i in range(0, len(refs), BATCH):
                heads = [
                    self._head(r)
                    for r in conn.execute(
                        sa.select(h).where(among(h.c.ref, refs[i : i + BATCH], self._dialect))
                    )
                ]
                keys = self._current_keys(conn, heads)
                for head in heads:
                    out[head.ref] = (head, keys.get(head.ref))
        return out

    def _current_keys(
        self, conn: Connection, heads: Sequence[HeadRecord]
    ) -> dict[bytes, KeyRecord]:
        k = self._keys
        wanted = {(hd.key_id, hd.current_version): hd.ref for hd in heads if hd.current_version}
        if not wanted:
            return {}
        rows = conn.execute(
            sa.select(k).where(among(k.c.key_id, [kid for kid, _ in wanted], self._dialect))
        )
        out = {}
        for row in rows:
            rec = self._key(row)
            ref = wanted.get((rec.key_id, rec.version))
            if ref is not None:
                out[ref] = rec
        return out

    def create_subject_keys(
        self, candidates: Sequence[KeyRecord], now: float, seal_head: HeadSealer
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        """Create heads and first keys for subjects that have none, in one transaction per
        CREATE_PER_TRANSACTION subjects (statements of 500).

        Returns the head of every candidate's subject, with its current key where the head says
        active (the candidate where it won, the existing key where another writer got there
        first). A subject whose ref has no head but key rows gets no head and no key and is left
        out: ccvault never deletes a head, so its tombstones (or a key row restored from a
        backup) say it was shredded, whatever became of the head row.
        """
        for c in candidates:
            if c.ref is None or c.kind != KeyKind.SUBJECT:
                raise ValueError("not a subject key")
        ordered = sorted(candidates, key=lambda c: c.ref or b"")  # one lock order for everyone
        out: dict[bytes, tuple[HeadRecord, KeyRecord | None]] = {}
        for i in range(0, len(ordered), CREATE_PER_TRANSACTION):
            group = ordered[i : i + CREATE_PER_TRANSACTION]
            out.update(
                self._write(
                    functools.partial(self._create_group, group=group, now=now, seal_head=seal_head)
                )
            )
        if self._dialect == "postgresql" and not self._statistics_checked:
            self._statistics_checked = True
            self._analyze_if_never_analyzed()
        return out

    def _analyze_if_never_analyzed(self) -> None:
        """PostgreSQL, once a process, after its first creation of subject keys: ``ANALYZE``
        the heads and keys tables if the planner has no statistics of their ``ref`` columns
        (never analyzed: autovacuum off, or not yet run on a new store). Without them it
        estimates a third of the table for ``ref IN (500 refs)`` and scans the whole table for
        each statement of a load or creation (20 ms at 100,000 subjects, and growing); with
        them it probes the indexes (1 ms). Once gathered, the statistics stay good as the
        tables grow (refs are unique). Best effort: it waits at most 200 ms for a lock, and a
        failure (no privilege, a lock held) changes nothing but the plans."""
        prep = self.engine.dialect.identifier_preparer
        try:
            with self._connect() as conn, conn.begin():
                missing = [
                    table
                    for table in (self._heads, self._keys)
                    if conn.execute(
                        sa.text(
                            "SELECT 1 FROM pg_stats WHERE schemaname = "
                            "COALESCE(:schema, current_schema()) AND tablename = :name "
                            "AND attname = 'ref' LIMIT 1"
                        ),
                        {"schema": table.schema, "name": table.name},
                    ).first()
                    is None
                ]
                if missing:
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                    conn.exec_driver_sql(
                        "ANALYZE " + ", ".join(prep.format_table(t) for t in missing)
                    )
        except (sa.exc.SQLAlchemyError, KeyStoreError) as exc:
            log.debug("key store tables not analyzed: %s", type(exc).__name__)

    def _create_group(
        self, conn: Connection, *, group: Sequence[KeyRecord], now: float, seal_head: HeadSealer
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        """The batches of 500 of ``group`` (in ref order) in one transaction: one commit (one
        fsync) for up to CREATE_PER_TRANSACTION new subjects, the heads still locked in one
        order, ascending refs. The epochs of the whole group are checked (and locked, shared,
        until the commit) first, once."""
        self._check_epochs(conn, group)
        out: dict[bytes, tuple[HeadRecord, KeyRecord | None]] = {}
        for i in range(0, len(group), BATCH):
            out.update(
                self._create_batch(conn, batch=group[i : i + BATCH], now=now, seal_head=seal_head)
            )
        return out

    def _create_batch(
        self, conn: Connection, *, batch: Sequence[KeyRecord], now: float, seal_head: HeadSealer
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        """One statement's worth of :meth:`_create_group` (its epochs checked already)."""
        h, k = self._heads, self._keys
        refs = [c.ref for c in batch]

        def locked_heads() -> dict[bytes, HeadRecord]:
            rows = conn.execute(
                sa.select(h)
                .where(among(h.c.ref, refs, self._dialect))
                .order_by(h.c.ref)
                .with_for_update()
            )
            return {hd.ref: hd for hd in map(self._head, rows)}

        heads = locked_heads()
        missing = [c for c in batch if c.ref not in heads]
        if missing:
            fenced = self._keyed(conn, [c.ref for c in missing if c.ref is not None])
            missing = [c for c in missing if c.ref not in fenced]
            active = State.ACTIVE
            new = [
                HeadRecord(
                    ref=c.ref or b"",
                    key_id=c.key_id,
                    state=active,
                    current_version=c.version,
                    created_at=now,
                    shredded_at=None,
                    receipt=None,
                    mac=seal_head(c.ref or b"", c.key_id, active, c.version),
                )
                for c in missing
            ]
            rows = [
                (hd.ref, hd.key_id, hd.state, hd.current_version, hd.created_at, hd.mac)
                for hd in new
            ]
            inserted = self._insert_new_rows(conn, h, rows, ignore=True, columns=_HEAD_COLUMNS)
            if fenced or inserted is None or inserted != len(rows):
                # Read again: the key rows of a ref fenced above may be those of a writer that
                # created its head after our first read (READ COMMITTED), and a head another
                # writer inserted first (ours ignored) is theirs.
                heads = locked_heads()
            else:
                # Every head inserted, none fenced: the heads of the batch are those read
                # locked above and ours, which no one else can change before we commit.
                heads.update((hd.ref, hd) for hd in new)
            won = {
                c.ref: c
                for c in missing
                if c.ref is not None and c.ref in heads and heads[c.ref].key_id == c.key_id
            }
            new_keys = [
                (
                    c.key_id,
                    c.version,
                    c.kind,
                    c.label,
                    c.ref,
                    c.epoch_id,
                    c.wrapped,
                    c.commitment,
                    c.state,
                    c.created_at,
                )
                for c in won.values()
            ]
            self._insert_new_rows(conn, k, new_keys, ignore=False, columns=_KEY_COLUMNS)
        else:
            won = {}
        # The key rows just inserted are the candidates themselves: only the other active heads'
        # current keys are read.
        keys: dict[bytes, KeyRecord] = dict(won)
        others = [hd for hd in heads.values() if hd.state == State.ACTIVE and hd.ref not in won]
        keys.update(self._current_keys(conn, others))
        return {ref: (hd, keys.get(ref)) for ref, hd in heads.items()}

    def _keyed(self, conn: Connection, refs: Sequence[bytes]) -> set[bytes]:
        """The refs among ``refs`` that have subject key rows (live or tombstones)."""
        k = self._keys
        if not refs:
            return set()
        # The kind is filtered here, not in SQL: given ``kind = ?`` SQLite's planner (without
        # ANALYZE statistics) picks the (kind, label, version) index and scans every subject
        # key of the store instead of probing the ref index.
        rows = conn.execute(sa.select(k.c.ref, k.c.kind).where(among(k.c.ref, refs, self._dialect)))
        return {bytes(ref) for ref, kind in rows if kind == KeyKind.SUBJECT}

    def keyed_refs(self, refs: Sequence[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        with self._read() as conn:
            for i in range(0, len(refs), BATCH):
                out |= self._keyed(conn, refs[i : i + BATCH])
        return out

    def ref_keys(self, ref: bytes) -> tuple[HeadRecord | None, list[KeyRecord]]:
        h, k = self._heads, self._keys
        with self._read() as conn:  # one snapshot: the head and the keys a shred would see
            row = conn.execute(sa.select(h).where(h.c.ref == ref)).first()
            keys = [self._key(r) for r in conn.execute(sa.select(k).where(k.c.ref == ref))]
        return (self._head(row) if row is not None else None), keys

    def refs_keys(
        self, refs: Sequence[bytes]
    ) -> dict[bytes, tuple[HeadRecord | None, list[KeyRecord]]]:
        h, k = self._heads, self._keys
        out: dict[bytes, tuple[HeadRecord | None, list[KeyRecord]]] = {}
        unique = sorted(set(refs))
        with self._read() as conn:
            for i in range(0, len(unique), BATCH):
                chunk = unique[i : i + BATCH]
                heads = {
                    bytes(r.ref): self._head(r)
                    for r in conn.execute(sa.select(h).where(among(h.c.ref, chunk, self._dialect)))
                }
                keys: dict[bytes, list[KeyRecord]] = {}
                for r in conn.execute(sa.select(k).where(among(k.c.ref, chunk, self._dialect))):
                    keys.setdefault(bytes(r.ref), []).append(self._key(r))
                for ref in chunk:
                    out[ref] = (heads.get(ref), keys.get(ref, []))
        return out

    # -- authenticating heads (upgrade-store, verify_heads) -------------------------------------

    def heads_after(
        self, after: bytes | None, limit: int, *, unsealed: bool = False
    ) -> list[tuple[HeadRecord, KeyRecord | None]]:
        """Up to ``limit`` heads with refs after ``after`` in ref order (only those without a
        MAC when ``unsealed``), each with its current key where it says active."""
        h = self._heads
        query = sa.select(h).order_by(h.c.ref).limit(limit)
        if after is not None:
            query = query.where(h.c.ref > after)
        if unsealed:
            query = query.where(h.c.mac.is_(None))
        with self._read() as conn:
            heads = [self._head(r) for r in conn.execute(query)]
            keys = self._current_keys(conn, [hd for hd in heads if hd.state == State.ACTIVE])
        return [(hd, keys.get(hd.ref)) for hd in heads]

    def seal_heads(
        self, updates: Sequence[tuple[HeadRecord, bytes]], now: float
    ) -> tuple[int, int]:
        """Store the MAC of each head that still has none and is still as in ``updates``. A
        shredded head whose ref has no key row at all (a never-seen subject fenced by a library
        of schema 1) gets its version-0 tombstone in the same transaction. Returns (MACs
        stored, tombstones added)."""
        h, k = self._heads, self._keys

        def run(conn: Connection) -> tuple[int, int]:
            sealed = added = 0
            for head, mac in updates:
                res = conn.execute(
                    sa.update(h)
                    .where(
                        h.c.ref == head.ref,
                        h.c.mac.is_(None),
                        h.c.key_id == head.key_id,
                        h.c.state == head.state,
                        h.c.current_version == head.current_version,
                    )
                    .values(mac=mac),
                    execution_options={"preserve_rowcount": True},
                )
                sealed += res.rowcount == 1
            shredded = [hd.ref for hd, _ in updates if hd.state == State.SHREDDED]
            if shredded:
                with_keys = {
                    bytes(r)
                    for r in conn.execute(
                        sa.select(k.c.ref).where(among(k.c.ref, shredded, self._dialect)).distinct()
                    ).scalars()
                }
                for hd, _ in updates:
                    if hd.state == State.SHREDDED and hd.ref not in with_keys:
                        added += self._insert_ignore(
                            conn, k, _fence_tombstone(hd.key_id, hd.ref, now)
                        )
            return sealed, added

        return self._write(run)

    def unfenced_key_refs(self) -> dict[bytes, str]:
        """Refs of subject key rows outside what a head allows, each with why: ``"headless"``
        (no head, and a destroyed key), ``"orphan"`` (no head, live keys only) or
        ``"restored"`` (a live key under a head that does not say active)."""
        k, h = self._keys, self._heads
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k.c.ref, k.c.state, h.c.ref.is_(None))
                .outerjoin(h, h.c.ref == k.c.ref)
                .where(
                    k.c.kind == KeyKind.SUBJECT,
                    k.c.ref.is_not(None),
                    sa.or_(
                        h.c.ref.is_(None),
                        sa.and_(h.c.state != State.ACTIVE, k.c.state == State.LIVE),
                    ),
                )
                .distinct()
            ).all()
        out: dict[bytes, str] = {}
        for ref, state, headless in rows:
            if not headless:
                out[bytes(ref)] = "restored"
            elif state == State.DESTROYED or out.get(bytes(ref)) != "headless":
                out[bytes(ref)] = "headless" if state == State.DESTROYED else "orphan"
        return out


_HEAD_COLUMNS = ("ref", "key_id", "state", "current_version", "created_at", "mac")
"""The columns of a new subject head row, in the order :meth:`SqlSubjects._create_batch` gives
their values."""

_KEY_COLUMNS = (
    "key_id",
    "version",
    "kind",
    "label",
    "ref",
    "epoch_id",
    "wrapped",
    "commitment",
    "state",
    "created_at",
)
"""The columns of a new key row (those of ``SqlStoreBase._key_values``), in that order."""


def _fence_tombstone(key_id: bytes, ref: bytes, now: float) -> dict[str, Any]:
    """The key row that fences a subject shredded before it had a key: version 0 (never a
    value's), destroyed from the start."""
    return {
        "key_id": key_id,
        "version": 0,
        "kind": KeyKind.SUBJECT,
        "ref": ref,
        "state": State.DESTROYED,
        "created_at": now,
        "destroyed_at": now,
    }
