"""Owns the SQL key store's side of the invalidation channel (DESIGN.md, lifecycle rule 5):
appending rows with gap-free seqs under the counter row's lock (and, on PostgreSQL, the
``NOTIFY`` of the last seq), reading them, and starting the LISTEN thread of ``_listen``. Must not
decide what a row means nor touch keys or heads: a writer appends its rows last in its own
transaction, and the key ring polls the channel and acts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError
from ._listen import Listener, listen_connect_args, notify_channel
from ._protocol import Listening
from ._records import Invalidation
from ._schema import INVALIDATION_SEQ
from ._sql_base import SqlStoreBase, describe_driver_error, parse_url, safe_url

__all__ = ["SqlChannel"]


class SqlChannel(SqlStoreBase):
    """The invalidation channel's rows and its PostgreSQL listener."""

    def _invalidate_many(
        self,
        conn: Connection,
        kind: str,
        refs: Sequence[bytes | None],
        now: float,
        period: bytes | None = None,
    ) -> int:
        """Append a row per ref to the invalidation channel in ``conn``'s transaction, seqs in
        the refs' order; returns the last seq.

        The seqs are taken under the lock of the ``invalidation_seq`` row of ``meta``, held
        until the transaction ends: transactions that write the channel commit in seq order, so
        a reader that saw seq n has seen every row below it. On PostgreSQL the transaction also
        sends one ``NOTIFY`` with the last seq alone (delivered at commit)."""
        m, inv = self._meta, self._invalidations
        locked = sa.select(m.c.value).where(m.c.name == INVALIDATION_SEQ).with_for_update()
        counter = conn.execute(locked).scalar()
        if counter is None:  # a store of schema 3 records it at creation: a deleted row
            self._insert_ignore(conn, m, {"name": INVALIDATION_SEQ, "value": "0"})
            counter = conn.execute(locked).scalar()
        # The highest seq stored, read with a lock (InnoDB's REPEATABLE READ would otherwise
        # answer from this transaction's older snapshot): a counter that was altered or lost
        # can never hand out a seq twice.
        top = conn.execute(
            sa.select(inv.c.seq).order_by(inv.c.seq.desc()).limit(1).with_for_update()
        ).scalar()
        stored = str(counter) if counter is not None else ""
        first = max(int(stored) if stored.isdigit() else 0, top or 0) + 1
        seq = first + len(refs) - 1
        conn.execute(sa.update(m).where(m.c.name == INVALIDATION_SEQ).values(value=str(seq)))
        conn.execute(
            sa.insert(inv),
            [
                {"seq": first + i, "kind": kind, "ref": ref, "period": period, "at": now}
                for i, ref in enumerate(refs)
            ],
        )
        if self._dialect == "postgresql":
            installation = (
                sa.select(m.c.value).where(m.c.name == "installation_id").scalar_subquery()
            )
            conn.execute(
                sa.select(
                    sa.func.pg_notify(sa.literal(notify_channel("")) + installation, str(seq))
                )
            )
        return seq

    def invalidate(self, kind: str, ref: bytes | None, period: bytes | None, now: float) -> int:
        """Append one row to the invalidation channel in a transaction of its own."""
        return self._write(
            functools.partial(self._invalidate_many, kind=kind, refs=[ref], now=now, period=period)
        )

    def invalidations(self, since: int, limit: int) -> list[Invalidation]:
        """Up to ``limit`` rows of the channel with ``seq >= since``, in seq order."""
        inv = self._invalidations
        with self._read() as conn:
            rows = conn.execute(
                sa.select(inv).where(inv.c.seq >= since).order_by(inv.c.seq).limit(limit)
            ).all()
        return [_invalidation(r) for r in rows]

    def latest_invalidation(self) -> Invalidation | None:
        """The channel's latest row; None while it is empty."""
        inv = self._invalidations
        with self._read() as conn:
            row = conn.execute(sa.select(inv).order_by(inv.c.seq.desc()).limit(1)).first()
        return None if row is None else _invalidation(row)

    def listen(
        self,
        installation_id: str,
        on_notify: Callable[[bool], None],
        *,
        url: str | None = None,
    ) -> Listening | None:
        """Start a thread that LISTENs on this installation's channel over a connection of its
        own (outside the pool; ``url``: a direct DSN when the store's URL goes through a
        pooler) and calls ``on_notify`` at each notification and after each reconnection;
        None where there is nothing to listen to (not PostgreSQL, or psycopg missing)."""
        if self._dialect != "postgresql":
            if url is not None:
                raise ConfigurationError(
                    "listen_url (CCVAULT_LISTEN_URL) is set, but the key store is not on "
                    f"PostgreSQL ({self.location}): only PostgreSQL pushes invalidations"
                )
            return None
        target = self.engine.url if url is None else parse_url(url)
        if target.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"listen_url (CCVAULT_LISTEN_URL) {safe_url(target)} is not a PostgreSQL URL"
            )
        args = listen_connect_args(target)
        if args is None:
            return None
        listener = Listener(
            args,
            notify_channel(installation_id),
            on_notify,
            # an async engine is read from SQLAlchemy's greenlets only: the listener thread
            # then only marks the poll due, and the next use of a cached key runs it
            can_poll=not self.engine.dialect.is_async,
            where=safe_url(target),
            describe=functools.partial(describe_driver_error, u=target),
        )
        listener.start()
        return listener


def _invalidation(row: Any) -> Invalidation:
    return Invalidation(
        seq=int(row.seq),
        kind=row.kind,
        ref=None if row.ref is None else bytes(row.ref),
        period=None if row.period is None else bytes(row.period),
        at=row.at,
    )
