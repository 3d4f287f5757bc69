"""Owns the SQL key store's epochs: their rows and KMS wraps, retiring and destroying them, the
epoch rows' lock by which a key insert and an epoch's destruction see each other, and the
rotation's rows: the re-wrap marker, live and quarantined keys by epoch, re-wrapping and
quarantining key rows (each only if still as found). Must not wrap or unwrap anything nor judge
a key readable (the key ring's rotation does, with the KMS), nor touch subject heads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import KeyStoreError
from ..kms._protocol import WrappedKey
from ._protocol import EpochNotUsableError
from ._records import EpochRecord, KeyRecord, State
from ._sql_base import SqlStoreBase

__all__ = ["SqlEpochs"]

_REWRAP_PENDING = "rewrap_pending"  # ccvault_meta: the epoch whose rotation has keys to re-wrap
# ccvault_meta, one row per epoch destroyed with quarantined keys under it (operator decision)
_UNREADABLE_ACCEPTED = "unreadable_accepted:"


class SqlEpochs(SqlStoreBase):
    """Epoch rows, their wraps, and the rotation's re-wrap and quarantine of key rows."""

    def _epoch_rows(self, conn: Connection, where: Any) -> list[EpochRecord]:
        e, w = self._epochs, self._wraps
        rows = conn.execute(sa.select(e).where(where).order_by(e.c.seq)).all()
        if not rows:
            return []
        wraps: dict[bytes, list[WrappedKey]] = {}
        ids = [r.epoch_id for r in rows]
        for wr in conn.execute(sa.select(w).where(w.c.epoch_id.in_(ids))).all():
            wraps.setdefault(bytes(wr.epoch_id), []).append(
                WrappedKey(wr.kms_id, wr.root_id, bytes(wr.wrapped))
            )
        return [
            EpochRecord(
                bytes(r.epoch_id),
                r.seq,
                r.state,
                bytes(r.commitment),
                r.created_at,
                r.retired_at,
                tuple(sorted(wraps.get(bytes(r.epoch_id), []), key=lambda x: x.kms_id)),
            )
            for r in rows
        ]

    def active_epoch(self) -> EpochRecord | None:
        with self._read() as conn:
            rows = self._epoch_rows(conn, self._epochs.c.state == State.ACTIVE)
        return rows[-1] if rows else None

    def get_epoch(self, epoch_id: bytes) -> EpochRecord | None:
        with self._read() as conn:
            rows = self._epoch_rows(conn, self._epochs.c.epoch_id == epoch_id)
        return rows[0] if rows else None

    def epochs(self) -> list[EpochRecord]:
        with self._read() as conn:
            return self._epoch_rows(conn, sa.true())

    def add_epoch(
        self,
        epoch_id: bytes,
        seq: int,
        commitment: bytes,
        wraps: Sequence[WrappedKey],
        now: float,
        *,
        rewrap_pending: bool = False,
    ) -> EpochRecord:
        e, m = self._epochs, self._meta

        def run(conn: Connection) -> EpochRecord:
            inserted = self._insert_ignore(
                conn,
                e,
                {
                    "epoch_id": epoch_id,
                    "seq": seq,
                    "state": State.ACTIVE,
                    "commitment": commitment,
                    "created_at": now,
                },
            )
            if inserted:
                for wk in wraps:
                    conn.execute(
                        sa.insert(self._wraps).values(
                            epoch_id=epoch_id, kms_id=wk.kms_id, root_id=wk.root_id, wrapped=wk.blob
                        )
                    )
                conn.execute(
                    sa.update(e)
                    .where(e.c.state == State.ACTIVE, e.c.seq < seq)
                    .values(state=State.RETIRED, retired_at=now)
                )
                if rewrap_pending:
                    conn.execute(sa.delete(m).where(m.c.name == _REWRAP_PENDING))
                    conn.execute(sa.insert(m).values(name=_REWRAP_PENDING, value=str(seq)))
            rows = self._epoch_rows(conn, e.c.seq == seq)
            if not rows:
                raise KeyStoreError("epoch sequence conflict")
            return rows[0]

        return self._write(run)

    def destroy_epoch(
        self, epoch_id: bytes, now: float, *, accept_unreadable: bool = False
    ) -> bool:
        e, k, m = self._epochs, self._keys, self._meta

        def run(conn: Connection) -> bool:
            # The epoch's row first, exclusively: a key insert under this epoch holds it shared
            # (_check_epochs) until it commits, so the count below sees every such key, and an
            # insert that comes later sees the epoch destroyed.
            conn.execute(sa.select(e.c.state).where(e.c.epoch_id == epoch_id).with_for_update())
            counts: dict[str, int] = dict(
                conn.execute(
                    sa.select(k.c.state, sa.func.count())
                    .where(
                        k.c.epoch_id == epoch_id,
                        k.c.state.in_([State.LIVE, State.QUARANTINED]),
                    )
                    .group_by(k.c.state)
                ).all()
            )
            quarantined = counts.get(State.QUARANTINED, 0)
            if counts.get(State.LIVE, 0) or (quarantined and not accept_unreadable):
                return False
            res = conn.execute(
                sa.update(e)
                .where(e.c.epoch_id == epoch_id, e.c.state == State.RETIRED)
                .values(state=State.DESTROYED, destroyed_at=now),
                execution_options={"preserve_rowcount": True},
            )
            if res.rowcount != 1:
                return False
            if quarantined:
                seq = conn.execute(sa.select(e.c.seq).where(e.c.epoch_id == epoch_id)).scalar()
                record = {"epoch_seq": seq, "quarantined_keys": quarantined, "accepted_at": now}
                self._insert_ignore(
                    conn,
                    m,
                    {"name": _UNREADABLE_ACCEPTED + epoch_id.hex(), "value": json.dumps(record)},
                )
            return True

        return self._write(run)

    def add_epoch_wraps(self, epoch_id: bytes, wraps: Sequence[WrappedKey]) -> None:
        def run(conn: Connection) -> None:
            for wk in wraps:
                self._insert_ignore(
                    conn,
                    self._wraps,
                    {
                        "epoch_id": epoch_id,
                        "kms_id": wk.kms_id,
                        "root_id": wk.root_id,
                        "wrapped": wk.blob,
                    },
                )

        self._write(run)

    def _check_epochs(self, conn: Connection, records: Sequence[KeyRecord]) -> None:
        """Refuse new keys wrapped under an epoch that is destroyed (or unknown): a process whose
        cached active epoch was retired and then destroyed would otherwise store keys no one can
        unwrap. The epoch rows stay locked (shared) until the caller's transaction ends, so that
        :meth:`destroy_epoch`, which locks them exclusively, sees the new keys."""
        e = self._epochs
        ids = {r.epoch_id for r in records if r.epoch_id is not None}
        if not ids:
            return
        rows = conn.execute(
            sa.select(e.c.epoch_id, e.c.state)
            .where(e.c.epoch_id.in_(sorted(ids)))
            .order_by(e.c.epoch_id)
            .with_for_update(read=True)
        ).all()
        usable = {bytes(r.epoch_id) for r in rows if r.state in (State.ACTIVE, State.RETIRED)}
        if ids - usable:
            raise EpochNotUsableError

    # -- rotation ------------------------------------------------------------------------------

    def rewrap_pending(self) -> int | None:
        m = self._meta
        with self._read() as conn:
            value = conn.execute(sa.select(m.c.value).where(m.c.name == _REWRAP_PENDING)).scalar()
        return int(value) if value is not None else None

    def rewrap_done(self, seq: int) -> None:
        m = self._meta
        self._write(
            lambda conn: conn.execute(
                sa.delete(m).where(m.c.name == _REWRAP_PENDING, m.c.value == str(seq))
            )
        )

    def live_keys_by_epoch(self) -> dict[bytes, int]:
        k = self._keys
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k.c.epoch_id, sa.func.count())
                .where(k.c.state == State.LIVE, k.c.epoch_id.is_not(None))
                .group_by(k.c.epoch_id)
            ).all()
        return {bytes(epoch_id): count for epoch_id, count in rows}

    def keys_before_epoch(self, seq: int, limit: int) -> list[KeyRecord]:
        k, e = self._keys, self._epochs
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k)
                .outerjoin(e, e.c.epoch_id == k.c.epoch_id)
                # an epoch id that names no epoch (or none at all) is a broken row: returned too,
                # so that the rotation quarantines it
                .where(k.c.state == State.LIVE, sa.or_(e.c.seq < seq, e.c.epoch_id.is_(None)))
                .order_by(k.c.key_id, k.c.version)
                .limit(limit)
            ).all()
        return [self._key(r) for r in rows]

    def quarantine_keys(self, records: Sequence[KeyRecord]) -> list[KeyRecord]:
        k = self._keys

        def run(conn: Connection) -> list[KeyRecord]:
            # Only the row as it was found unreadable: a row re-wrapped or repaired meanwhile is
            # judged again by the next rotation.
            return [
                rec
                for rec in records
                if self._update_live_key(
                    conn,
                    rec,
                    {"state": State.QUARANTINED},
                    k.c.epoch_id.is_not_distinct_from(rec.epoch_id),
                    k.c.wrapped.is_not_distinct_from(rec.wrapped),
                    k.c.commitment.is_not_distinct_from(rec.commitment),
                )
            ]

        return self._write(run)

    def quarantined_keys_by_epoch(self) -> dict[bytes | None, int]:
        k = self._keys
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k.c.epoch_id, sa.func.count())
                .where(k.c.state == State.QUARANTINED)
                .group_by(k.c.epoch_id)
            ).all()
        return {None if eid is None else bytes(eid): count for eid, count in rows}

    def rewrap(self, updates: Sequence[tuple[KeyRecord, bytes, bytes]], epoch_id: bytes) -> int:
        k = self._keys

        def run(conn: Connection) -> int:
            return sum(
                self._update_live_key(
                    conn,
                    old,
                    {"epoch_id": epoch_id, "wrapped": wrapped, "commitment": commitment},
                    k.c.epoch_id == old.epoch_id,
                )
                for old, wrapped, commitment in updates
            )

        return self._write(run)

    def _update_live_key(
        self, conn: Connection, rec: KeyRecord, values: dict[str, Any], *unchanged: Any
    ) -> bool:
        """Update ``rec``'s row if it is still live and ``unchanged`` holds; True if it did."""
        k = self._keys
        res = conn.execute(
            sa.update(k)
            .where(k.c.key_id == rec.key_id, k.c.version == rec.version, k.c.state == State.LIVE)
            .where(*unchanged)
            .values(**values),
            execution_options={"preserve_rowcount": True},
        )
        return bool(res.rowcount == 1)
