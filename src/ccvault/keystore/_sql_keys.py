"""Owns the SQL key store's key rows as read and written one key at a time: keys by
(key id, version), each with its subject's head in one snapshot, the latest version of a
long-lived key, the period rows of a retention category, inserting a key under a usable
epoch, nonce-budget reservations and destroying a long-lived key's old versions. Must not
create subject keys nor destroy them (``_sql_subjects`` does, under the subject heads' locks)
and never holds a key in clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import KeyStoreError
from ._records import HeadRecord, KeyKind, KeyRecord, State
from ._sql_base import BATCH, among
from ._sql_epochs import SqlEpochs

__all__ = ["SqlKeys", "destroyed_values"]


def destroyed_values(now: float) -> dict[str, Any]:
    """The values of a key row whose material is destroyed: a tombstone."""
    return {
        "wrapped": None,
        "commitment": None,
        "epoch_id": None,
        "state": State.DESTROYED,
        "destroyed_at": now,
    }


class SqlKeys(SqlEpochs):
    """Key rows: reads, single inserts, use reservations, old versions destroyed."""

    def get_keys(self, refs: Iterable[tuple[bytes, int]]) -> dict[tuple[bytes, int], KeyRecord]:
        wanted = list(dict.fromkeys(refs))
        k = self._keys
        out: dict[tuple[bytes, int], KeyRecord] = {}
        with self._read() as conn:
            for i in range(0, len(wanted), BATCH):
                chunk = wanted[i : i + BATCH]
                ids = list({kid for kid, _ in chunk})
                for row in conn.execute(
                    sa.select(k).where(among(k.c.key_id, ids, self._dialect))
                ).all():
                    rec = self._key(row)
                    out[(rec.key_id, rec.version)] = rec
        return {ref: out[ref] for ref in wanted if ref in out}

    def value_keys(
        self, refs: Iterable[tuple[bytes, int]]
    ) -> dict[tuple[bytes, int], tuple[KeyRecord, HeadRecord | None]]:
        """:meth:`get_keys`, each key with the head of its ref (None: a vault-wide key, or a
        subject key whose ref has no head), read by one join in the same snapshot."""
        wanted = list(dict.fromkeys(refs))
        k, h = self._keys, self._heads
        head_cols = [c.label(f"head_{c.name}") for c in h.c if c.name != "receipt"]
        out: dict[tuple[bytes, int], tuple[KeyRecord, HeadRecord | None]] = {}
        with self._read() as conn:
            for i in range(0, len(wanted), BATCH):
                ids = list({kid for kid, _ in wanted[i : i + BATCH]})
                rows = conn.execute(
                    sa.select(k, *head_cols)
                    .outerjoin(h, h.c.ref == k.c.ref)
                    .where(among(k.c.key_id, ids, self._dialect))
                ).all()
                for row in rows:
                    rec = self._key(row)
                    head = self._head(row, "head_") if row.head_ref is not None else None
                    out[(rec.key_id, rec.version)] = (rec, head)
        return {ref: out[ref] for ref in wanted if ref in out}

    def latest_key(self, kind: str, label: str) -> KeyRecord | None:
        k = self._keys
        with self._read() as conn:
            row = conn.execute(
                sa.select(k)
                .where(k.c.kind == kind, k.c.label == label)
                .order_by(k.c.version.desc())
                .limit(1)
            ).first()
        return self._key(row) if row is not None else None

    def period_keys(self, category: str) -> list[KeyRecord]:
        """Every period row of ``category`` (label ``<category>/…``), live or tombstoned, in
        label order. A range on the label rather than LIKE (``_`` is a wildcard there), then
        the exact prefix checked here: on MariaDB's case-insensitive collations the range also
        holds another case's labels."""
        k = self._keys
        prefix = f"{category}/"
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k)
                .where(
                    k.c.kind == KeyKind.PERIOD,
                    k.c.label >= prefix,
                    k.c.label < f"{category}0",  # "0" follows "/"
                )
                .order_by(k.c.label, k.c.version)
            ).all()
        records = [self._key(row) for row in rows]
        return [r for r in records if r.label is not None and r.label.startswith(prefix)]

    def insert_key_if_absent(self, record: KeyRecord) -> KeyRecord:
        k = self._keys

        def run(conn: Connection) -> KeyRecord:
            self._check_epochs(conn, [record])
            self._insert_ignore(conn, k, self._key_values(record))
            row = conn.execute(
                sa.select(k).where(
                    k.c.kind == record.kind,
                    k.c.label == record.label,
                    k.c.version == record.version,
                )
            ).first()
            if row is None:
                raise KeyStoreError("a key could not be stored")
            return self._key(row)

        return self._write(run)

    def reserve_uses(self, key_id: bytes, version: int, count: int, budget: int) -> bool:
        """Atomically add ``count`` to a live key's reserved uses unless that passes ``budget``."""
        k = self._keys

        def run(conn: Connection) -> bool:
            res = conn.execute(
                sa.update(k)
                .where(
                    k.c.key_id == key_id,
                    k.c.version == version,
                    k.c.state == State.LIVE,
                    k.c.uses_reserved + count <= budget,
                )
                .values(uses_reserved=k.c.uses_reserved + count),
                execution_options={"preserve_rowcount": True},
            )
            return bool(res.rowcount == 1)

        return self._write(run)

    def destroy_key_versions(self, kind: str, label: str, below: int, now: float) -> int:
        k = self._keys

        def run(conn: Connection) -> int:
            result = conn.execute(
                sa.update(k)
                .where(
                    k.c.kind == kind,
                    k.c.label == label,
                    k.c.version < below,
                    k.c.state == State.LIVE,
                )
                .values(destroyed_values(now)),
                execution_options={"preserve_rowcount": True},
            )
            return int(result.rowcount)

        return self._write(run)
