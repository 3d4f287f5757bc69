"""Owns the SQL ledger sink: tables ``ccvault_ledger_entries`` and ``ccvault_ledger_heads`` in any
database SQLAlchemy reaches. Must not touch the key store's tables nor judge the entries it holds.

Gap-free sequence: an append locks the installation's head row (``SELECT … FOR UPDATE``; on
SQLite the write transaction is ``BEGIN IMMEDIATE``), checks that the head is the entry before
the first new one, inserts the entries and moves the head, all in one transaction.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from .._repr import safe_repr
from ..errors import ConfigurationError, LedgerIntegrityError, LedgerUnavailableError
from ..keystore._sql import describe_driver_error, is_transient_error, open_engine, safe_url
from ._ledger import StoredEntry, TornWrite, check_batch

__all__ = ["SqlLedger"]

T = TypeVar("T")
_RETRIES = 12
_PAGE = 1000
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def _all(conn: Connection, *, query: sa.Select[Any]) -> list[Any]:
    return list(conn.execute(query).all())


class _Conflict(Exception):
    """Another writer holds the sequence number an append needed (rolls the transaction back)."""


class _BeyondHead(Exception):
    """An entry exists after the recorded head (the heads table was edited or restored)."""


class SqlLedger:
    """A ledger in a SQL database (an engine or a URL), one sequence per installation.

    The tables live wherever the URL points: a database of their own, or beside other tables
    with their own ``prefix``. Grant the application's role ``SELECT`` and ``INSERT`` on the
    entries table and ``SELECT, INSERT, UPDATE`` on the heads table, never ``DELETE``.
    """

    def __init__(
        self, bind: Engine | str, *, prefix: str = "ccvault_ledger_", create: bool = True
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError("a ledger table prefix is lower-case letters, digits and _")
        if isinstance(bind, Engine) and bind.dialect.name == "sqlite":
            # Our own engine on the same file: BEGIN IMMEDIATE, WAL and FULL sync are ours to set.
            bind = bind.url.render_as_string(hide_password=False)
        if isinstance(bind, str):
            self.engine = open_engine(bind, what="ledger")
        elif isinstance(bind, Engine):
            self.engine = bind
        else:
            raise ConfigurationError("a SQL ledger binds to an Engine or a URL")
        self._owns_engine = isinstance(bind, str)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database in (
            None,
            "",
            ":memory:",
        ):
            self.close()
            raise ConfigurationError("an in-memory SQLite ledger would vanish with it: use a file")
        md = sa.MetaData()
        blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
        self._entries = sa.Table(
            f"{prefix}entries",
            md,
            sa.Column("installation_id", sa.String(64), primary_key=True),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("data", blob, nullable=False),
        )
        self._heads = sa.Table(
            f"{prefix}heads",
            md,
            sa.Column("installation_id", sa.String(64), primary_key=True),
            sa.Column("head_seq", sa.BigInteger, nullable=False),
        )
        self._md = md
        if create:
            self._run(lambda conn: None, write=False, verb="reached")  # unreachable: at once
            self._create_tables()

    @safe_repr
    def __repr__(self) -> str:
        return f"SqlLedger({self.location!r})"

    @property
    def location(self) -> str:
        return safe_url(self.engine.url)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def _create_tables(self) -> None:
        # Processes creating the tables at once: the loser waits and re-checks (MariaDB's DDL is
        # not transactional, so one re-check may meet a half-made table).
        for attempt in range(_RETRIES):
            try:
                self._md.create_all(self.engine, checkfirst=True)
                return
            except sa.exc.SQLAlchemyError as exc:
                if attempt + 1 == _RETRIES:
                    raise self._unavailable("set up", exc) from exc
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # noqa: S311

    def _unavailable(self, verb: str, exc: BaseException) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"the ledger at {self.location} could not be {verb}: "
            f"{describe_driver_error(exc, self.engine.url)}",
            location=self.location,
        )

    def _run(self, fn: Callable[[Connection], T], *, write: bool, verb: str = "read") -> T:
        """``fn`` in one transaction, retried on deadlocks and serialisation failures."""
        for attempt in range(_RETRIES):
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn = conn.execution_options(ccvault_write=True)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.SQLAlchemyError as exc:
                if attempt + 1 < _RETRIES and is_transient_error(exc):
                    time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))  # noqa: S311
                    continue
                raise self._unavailable(verb, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the LedgerSink protocol ------------------------------------------------------------------

    def head(self, installation_id: str) -> StoredEntry | None:
        e, h = self._entries, self._heads

        def fn(conn: Connection) -> StoredEntry | None:
            seq = conn.execute(
                sa.select(h.c.head_seq).where(h.c.installation_id == installation_id)
            ).scalar()
            if seq is None:
                return None
            data = conn.execute(
                sa.select(e.c.data).where(e.c.installation_id == installation_id, e.c.seq == seq)
            ).scalar()
            return StoredEntry(int(seq), None if data is None else bytes(data), f"seq {seq}")

        return self._run(fn, write=False)

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        e = self._entries
        last, remaining = after, limit
        while remaining is None or remaining > 0:
            n = _PAGE if remaining is None else min(_PAGE, remaining)
            query = (
                sa.select(e.c.seq, e.c.data)
                .where(e.c.installation_id == installation_id, e.c.seq > last)
                .order_by(e.c.seq)
                .limit(n)
            )
            rows = self._run(partial(_all, query=query), write=False)
            for seq, data in rows:
                yield StoredEntry(int(seq), bytes(data), f"seq {seq}")
            if len(rows) < n:
                return
            last = int(rows[-1][0])
            remaining = None if remaining is None else remaining - len(rows)

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        check_batch(first_seq, entries)
        e, h = self._entries, self._heads
        last = first_seq + len(entries) - 1

        def fn(conn: Connection) -> int:
            current = conn.execute(
                sa.select(h.c.head_seq)
                .where(h.c.installation_id == installation_id)
                .with_for_update()
            ).scalar()
            if (-1 if current is None else current) != first_seq - 1:
                raise _Conflict
            try:
                if current is None:
                    conn.execute(
                        sa.insert(h).values(installation_id=installation_id, head_seq=last)
                    )
                else:
                    conn.execute(
                        sa.update(h)
                        .where(h.c.installation_id == installation_id)
                        .values(head_seq=last)
                    )
            except sa.exc.IntegrityError as exc:  # another writer made the head row first
                raise _Conflict from exc
            rows = [
                {"installation_id": installation_id, "seq": first_seq + i, "data": data}
                for i, data in enumerate(entries)
            ]
            try:
                conn.execute(sa.insert(e), rows)
            except sa.exc.IntegrityError as exc:
                raise _BeyondHead from exc
            return len(entries)

        try:
            return self._run(fn, write=True, verb="written")
        except _Conflict:
            return 0
        except _BeyondHead:
            raise LedgerIntegrityError(
                f"the ledger at {self.location} holds entries after the head it records "
                f"(seq {first_seq - 1}) for installation {installation_id}: its heads table was "
                "edited or restored apart from its entries",
                seq=first_seq,
            ) from None

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        """None: a transaction is never half-written."""
        return []
