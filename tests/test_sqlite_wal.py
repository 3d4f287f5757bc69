"""The switch of a SQLite key store or ledger database to WAL waits for other connections.

Switching to WAL takes an exclusive lock. SQLite answers "database is locked" at once, without
calling the busy handler, when another connection holds a write lock on a database still in
rollback mode, or is switching it too: two processes opening a new key store at the same moment
(CI saw it in test_races). The switch is retried for as long as the busy timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.util import greenlet_spawn

from ccvault.keystore import _sql_base
from ccvault.keystore._sql_base import open_engine

DRIVERS = ["sqlite"]
try:
    import aiosqlite  # noqa: F401

    DRIVERS.append("sqlite+aiosqlite")
except ImportError:  # pragma: no cover - the asyncio extra is part of the dev install
    pass


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A database in rollback-journal mode with a connection holding its write lock."""
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    yield path, conn
    conn.close()


def _mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.mark.parametrize("driver", DRIVERS)
def test_switch_waits_for_a_write_lock(
    writer: tuple[Path, sqlite3.Connection], driver: str
) -> None:
    path, conn = writer
    # Without a retry, the switch fails at once on this lock, busy timeout or not.
    probe = sqlite3.connect(path, isolation_level=None, timeout=5)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        probe.execute("PRAGMA journal_mode=WAL")
    probe.close()

    release = threading.Timer(0.3, conn.commit)
    release.start()
    engine = open_engine(f"{driver}:///{path}", what="key store")

    def count() -> int:
        with engine.connect() as c:
            return int(c.exec_driver_sql("SELECT count(*) FROM t").scalar_one())

    try:
        started = time.monotonic()
        if engine.dialect.is_async:  # the sync facade of an async engine runs in its greenlet
            assert asyncio.run(greenlet_spawn(count)) == 1
        else:
            assert count() == 1
        assert time.monotonic() - started >= 0.2  # it waited for the commit
    finally:
        release.join()
        engine.dispose()
    assert _mode(path) == "wal"


def test_switch_gives_up_after_the_busy_timeout(
    writer: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _conn = writer
    monkeypatch.setattr(_sql_base, "SQLITE_BUSY_MS", 300)
    engine = open_engine(f"sqlite:///{path}", what="key store")
    try:
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            engine.connect()
        assert 0.25 <= time.monotonic() - started < 5
    finally:
        engine.dispose()
    assert _mode(path) == "delete"


def test_a_database_in_wal_opens_while_another_writes(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    engine = open_engine(f"sqlite:///{path}", what="key store")
    try:
        started = time.monotonic()
        with engine.connect() as c:  # reads the last committed state, no wait
            assert c.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        assert time.monotonic() - started < 1
    finally:
        engine.dispose()
        conn.close()
