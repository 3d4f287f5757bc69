"""Owns the SQL key store's statements on retention rows (DESIGN.md, lifecycle rules 7 and 8):
reading period rows by label range (an enforcement's candidates) or by id and label (locked,
in the enforcement's journal transaction), the live subject keys of held subjects, inserting
held keys under a usable epoch, tombstoning expired periods and the held keys of released
subjects, and the ``expiry`` rows of the invalidation channel. Must not decide what is due or
held, nor hold a key in clear: the erasure package's enforcer does, and wraps what it inserts.

Every statement here reads ``ccvault_keys`` alone, through its indexes: (kind, label, version)
for period rows, (key id, version) for ids, ``ref`` for subject and held keys. No data table is
ever read: expiring a period is a key deletion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ._records import InvalidationKind, KeyKind, KeyRecord, State
from ._sql_base import BATCH, among
from ._sql_erasure import SqlErasure
from ._sql_keys import destroyed_values

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

__all__ = ["PeriodSql", "SqlPeriods"]

_REFS_PER_ROW_LIMIT = 100
"""Above this many subjects whose held keys a transaction destroys, it publishes one ``expiry``
row naming every subject instead of one per subject (a poll reads at most 1,000 rows)."""


@dataclass(frozen=True)
class PeriodSql:
    """The statements (:class:`~ccvault.keystore._sql_journal.PeriodRows`), each in the
    connection it is given."""

    keys: sa.Table
    check_epochs: Callable[[Connection, Sequence[KeyRecord]], None]
    invalidate_many: Callable[..., int]
    insert_new_rows: Callable[..., int | None]
    key_of: Callable[[Any], KeyRecord]
    values_of: Callable[[KeyRecord], dict[str, Any]]
    dialect: str

    def _ref_in(self, refs: list[bytes]) -> sa.ColumnElement[bool]:
        """``ref IN (refs)``; on PostgreSQL ``ref = ANY(:refs)``, one array parameter."""
        return among(self.keys.c.ref, refs, self.dialect)

    def _kind_is(self, kind: str) -> sa.ColumnElement[bool]:
        """``kind = <kind>`` for a statement that selects its rows by ``ref``. On SQLite the
        column is wrapped in an expression no index has (``kind || ''``): given ``kind = ?``
        its planner (without ANALYZE statistics) picks the (kind, label, version) index and
        scans every key of that kind instead of probing the ref index."""
        column = self.keys.c.kind
        if self.dialect == "sqlite":
            return (column + "") == kind
        return column == kind

    def period_rows(
        self, conn: Connection, key_ids: Sequence[bytes], labels: Sequence[str], *, lock: bool
    ) -> list[KeyRecord]:
        k = self.keys
        out: dict[tuple[bytes, int], KeyRecord] = {}
        for column, wanted in (
            (k.c.key_id, sorted(set(key_ids))),
            (k.c.label, sorted(set(labels))),
        ):
            for i in range(0, len(wanted), BATCH):
                query = sa.select(k).where(
                    k.c.kind == KeyKind.PERIOD, column.in_(wanted[i : i + BATCH])
                )
                if lock:
                    query = query.order_by(k.c.key_id).with_for_update()
                for row in conn.execute(query).all():
                    rec = self.key_of(row)
                    out[(rec.key_id, rec.version)] = rec
        return sorted(out.values(), key=lambda r: (r.label or "", r.key_id))

    def live_periods(self, conn: Connection, category: str, through: str) -> list[KeyRecord]:
        k = self.keys
        rows = conn.execute(
            sa.select(k)
            .where(
                k.c.kind == KeyKind.PERIOD,
                k.c.label >= f"{category}/",
                k.c.label <= through,
                k.c.state == State.LIVE,
            )
            .order_by(k.c.label)
        ).all()
        return [self.key_of(r) for r in rows]

    def labels_outside(self, conn: Connection, categories: Sequence[str]) -> list[str]:
        k = self.keys
        query = sa.select(k.c.label).where(k.c.kind == KeyKind.PERIOD, k.c.state == State.LIVE)
        for name in categories:  # [name + "/", name + "0"): the labels of that category
            query = query.where(sa.not_(sa.and_(k.c.label >= f"{name}/", k.c.label < f"{name}0")))
        return sorted(str(label) for label in conn.execute(query).scalars() if label is not None)

    def live_subject_keys(
        self, conn: Connection, refs: Sequence[bytes]
    ) -> dict[bytes, list[KeyRecord]]:
        k = self.keys
        wanted = sorted(set(refs))
        out: dict[bytes, list[KeyRecord]] = {}
        # PostgreSQL: one statement, the refs as one array parameter (``ref = ANY(...)``), not
        # a statement of 500 parameters per 500 refs: a third of the client's time per ref.
        step = max(len(wanted), 1) if self.dialect == "postgresql" else BATCH
        for i in range(0, len(wanted), step):
            rows = conn.execute(
                sa.select(k)
                .where(
                    self._ref_in(wanted[i : i + step]),
                    self._kind_is(KeyKind.SUBJECT),
                    k.c.state == State.LIVE,
                )
                .order_by(k.c.ref, k.c.version)
            ).all()
            for row in rows:
                rec = self.key_of(row)
                assert rec.ref is not None
                out.setdefault(rec.ref, []).append(rec)
        return out

    def last_expired(self, conn: Connection) -> dict[str, str]:
        k = self.keys
        out: dict[str, str] = {}
        rows = conn.execute(
            sa.select(k.c.label).where(k.c.kind == KeyKind.PERIOD, k.c.state == State.DESTROYED)
        ).scalars()
        for label in rows:
            category, _, day = (label or "").rpartition("/")
            if category and day > out.get(category, ""):
                out[category] = day
        return {c: f"{c}/{day}" for c, day in sorted(out.items())}

    def held_keys_by_ref(self, conn: Connection) -> dict[bytes, int]:
        k = self.keys
        rows = conn.execute(
            sa.select(k.c.ref, sa.func.count())
            .where(k.c.kind == KeyKind.HELD, k.c.state == State.LIVE, k.c.ref.is_not(None))
            .group_by(k.c.ref)
        ).all()
        return {bytes(ref): int(n) for ref, n in rows}

    def add_held_keys(self, conn: Connection, records: Sequence[KeyRecord]) -> None:
        if not records:
            return
        if any(r.kind != KeyKind.HELD or r.ref is None for r in records):
            raise ValueError("not a held key")
        self.check_epochs(conn, records)
        # One statement (COPY on PostgreSQL); a held key already there (a replay) is skipped.
        self.insert_new_rows(conn, self.keys, [self.values_of(r) for r in records], ignore=True)

    def expire_periods(self, conn: Connection, period_ids: Sequence[bytes], now: float) -> None:
        k = self.keys
        ids = sorted(set(period_ids))
        for i in range(0, len(ids), BATCH):
            conn.execute(
                sa.update(k)
                .where(
                    k.c.kind == KeyKind.PERIOD,
                    k.c.key_id.in_(ids[i : i + BATCH]),
                    k.c.state == State.LIVE,
                )
                .values(destroyed_values(now))
            )

    def destroy_held_keys(self, conn: Connection, refs: Sequence[bytes], now: float) -> int:
        k = self.keys
        wanted = sorted(set(refs))
        done = 0
        for i in range(0, len(wanted), BATCH):
            result = conn.execute(
                sa.update(k)
                .where(
                    k.c.ref.in_(wanted[i : i + BATCH]),
                    self._kind_is(KeyKind.HELD),
                    k.c.state == State.LIVE,
                )
                .values(destroyed_values(now)),
                execution_options={"preserve_rowcount": True},
            )
            done += int(result.rowcount)
        return done

    def publish_expiry(
        self, conn: Connection, period_ids: Sequence[bytes], refs: Sequence[bytes], now: float
    ) -> None:
        for period_id in sorted(set(period_ids)):
            self.invalidate_many(
                conn, kind=InvalidationKind.EXPIRY, refs=[None], now=now, period=period_id
            )
        subjects = sorted(set(refs))
        if len(subjects) > _REFS_PER_ROW_LIMIT:
            self.invalidate_many(conn, kind=InvalidationKind.EXPIRY, refs=[None], now=now)
        elif subjects:
            self.invalidate_many(conn, kind=InvalidationKind.EXPIRY, refs=subjects, now=now)


class SqlPeriods(SqlErasure):
    """Retention rows: the enforcement's candidates (read here) and its statements in the
    journal transaction (given to it as :class:`PeriodSql`)."""

    def __init__(self, bind: Engine | AsyncEngine | str, *, prefix: str = "ccvault_") -> None:
        super().__init__(bind, prefix=prefix)
        self._period_sql = PeriodSql(
            keys=self._keys,
            check_epochs=self._check_epochs,
            invalidate_many=self._invalidate_many,
            insert_new_rows=self._insert_new_rows,
            key_of=self._key,
            values_of=self._key_values,
            dialect=self._dialect,
        )
        self._jt = dataclasses.replace(self._jt, periods=self._period_sql)

    def live_periods(self, category: str, through: str) -> list[KeyRecord]:
        with self._read() as conn:
            return self._period_sql.live_periods(conn, category, through)

    def period_rows(self, *, labels: Sequence[str]) -> list[KeyRecord]:
        with self._read() as conn:
            return self._period_sql.period_rows(conn, (), labels, lock=False)

    def period_labels_outside(self, categories: Sequence[str]) -> list[str]:
        with self._read() as conn:
            return self._period_sql.labels_outside(conn, categories)

    def live_subject_keys(self, refs: Sequence[bytes]) -> dict[bytes, list[KeyRecord]]:
        with self._read() as conn:
            return self._period_sql.live_subject_keys(conn, refs)

    def held_keys_by_ref(self) -> dict[bytes, int]:
        with self._read() as conn:
            return self._period_sql.held_keys_by_ref(conn)
