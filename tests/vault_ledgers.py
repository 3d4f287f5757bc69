"""Helpers for the tests of the vault's ledger (tests/test_ledger_wire.py, test_ledger_restore.py):
the key store's rows as a comparable dump, a snapshot and restore of the key store as an
operator takes them (SQLite's backup API, pg_dump and psql, a table copy on MariaDB), the
ledger's entries as the vault wrote them, and ledgers that can be cut off and brought back.

    from vault_ledgers import dump_store, snapshot, restore, entries, Blockable
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from admin_cli import sqlite_backup
from ccvault import Vault
from ccvault.erasure import JournalEntry, ledger_from_url
from ccvault.keystore._schema import build_metadata
from conftest import PG_URL, _server_db

TABLES = [t.name for t in build_metadata().sorted_tables]
KEYSTORE_TABLES = sorted(TABLES)


def dump_store(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every key-store table, sorted: equal dumps, unchanged store."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: sorted(
                    (tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t}")),
                    key=repr,
                )
                for t in KEYSTORE_TABLES
            }
    finally:
        engine.dispose()


def applied_seq(url: str) -> int | None:
    """The key store's ``ledger_applied_seq`` as committed (None: no ledger ever configured)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT value FROM ccvault_meta WHERE name = 'ledger_applied_seq'")
            ).scalar()
    finally:
        engine.dispose()
    return None if value is None else int(value)


def but_new_queue_keys(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> dict[str, list[tuple[Any, ...]]]:
    """``after`` less the erasure-queue key rows (kind ``queue``) that ``before`` lacks and that
    are live: a shred seals its subject under the day's version, created before the shred's
    transaction, so a shred that destroys nothing may still have added that key (and only it)."""
    known = set(before["ccvault_keys"])
    added = [r for r in after["ccvault_keys"] if r not in known]
    assert all(r[2] == "queue" and r[8] == "live" for r in added), added
    return {**after, "ccvault_keys": [r for r in after["ccvault_keys"] if r in known]}


def _pg_parts(url: str) -> tuple[str, str]:
    """(libpq connection string of the test server, the test's schema) of a _server_db URL."""
    u = sa.make_url(url)
    schema = str(u.query["options"]).removeprefix("-csearch_path=")
    base = sa.make_url(PG_URL)
    dsn = f"host={base.host} port={base.port or 5432} user={base.username} dbname={base.database}"
    return dsn, schema


def snapshot(url: str, where: Path) -> None:
    """A backup of the key store: SQLite's online backup API; ``pg_dump`` of the key-store
    tables (data only) on PostgreSQL; a copy of each table on MariaDB."""
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        sqlite_backup(Path(sa.make_url(url).database or ""), where / "snapshot.db")
    elif backend == "postgresql":
        dsn, schema = _pg_parts(url)
        tables = [arg for t in TABLES for arg in ("-t", f"{schema}.{t}")]
        subprocess.run(
            ["pg_dump", "--data-only", "--no-owner", *tables, "-f", str(where / "dump.sql"), dsn],
            check=True,
            capture_output=True,
        )
    else:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for table in TABLES:
                conn.exec_driver_sql(f"CREATE TABLE snap_{table} AS SELECT * FROM {table}")
        engine.dispose()


def restore(url: str, where: Path) -> None:
    """Put the snapshot back over the key store, in one transaction (PostgreSQL: ``psql``
    runs the dump after emptying the tables, ``--single-transaction``)."""
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        sqlite_backup(where / "snapshot.db", Path(sa.make_url(url).database or ""))
    elif backend == "postgresql":
        dsn, schema = _pg_parts(url)
        script = where / "restore.sql"
        emptied = ", ".join(f"{schema}.{t}" for t in TABLES)
        script.write_text(f"TRUNCATE {emptied};\n" + (where / "dump.sql").read_text())
        subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-f",
                str(script),
                dsn,
            ],
            check=True,
            capture_output=True,
        )
    else:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for table in reversed(TABLES):
                conn.exec_driver_sql(f"DELETE FROM {table}")
            for table in TABLES:
                conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM snap_{table}")
        engine.dispose()


def entries(url: str, installation_id: str) -> list[JournalEntry]:
    """The ledger's entries as stored, parsed (no verification: the tests check that apart)."""
    sink = ledger_from_url(url)
    try:
        return [
            JournalEntry.model_validate_json(item.data or b"")
            for item in sink.read(installation_id)
        ]
    finally:
        sink.close()


def kinds(url: str, installation_id: str) -> list[str]:
    short = {
        "ccvault-journal-genesis/v1": "genesis",
        "ccvault-erasure-receipt/v1": "receipt",
        "ccvault-journal-repair/v1": "repair",
        "ccvault-erasure-completion/v1": "completion",
        "ccvault-hold/v1": "hold",
        "ccvault-hold-release/v1": "release",
        "ccvault-hold-override/v1": "override",
    }
    return [short.get(e.kind, e.kind) for e in entries(url, installation_id)]


class Blockable:
    """A ledger that a test can make unreachable and bring back: a JSONL file or a SQLite file
    whose folder is renamed away, or a PostgreSQL schema whose login role is refused."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.dir = tmp_path / "ledger"
        self.dir.mkdir()
        self.role: str | None = None
        self.admin: sa.Engine | None = None
        self._db: Iterator[str] | None = None
        if kind == "jsonl":
            self.url = f"file://{self.dir / 'ledger.jsonl'}"
        elif kind == "sqlite":
            self.url = f"sqlite:///{self.dir / 'ledger.db'}"
        else:
            self._db = _server_db("postgresql")
            url = next(self._db)
            _, schema = _pg_parts(url)
            self.role = f"ccv_ledger_{uuid.uuid4().hex[:10]}"
            self.admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE ROLE {self.role} LOGIN")
                conn.exec_driver_sql(f"GRANT ALL ON SCHEMA {schema} TO {self.role}")
            self.url = sa.make_url(url).set(username=self.role).render_as_string(False)

    def block(self, vault: Vault | None = None) -> None:
        if self.kind == "postgresql":
            assert self.admin is not None
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"ALTER ROLE {self.role} NOLOGIN")
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                    ),
                    {"r": self.role},
                )
            return
        if self.kind == "sqlite" and vault is not None:
            vault._link._sink.engine.dispose()  # type: ignore[union-attr]
        self.dir.rename(self.dir.with_name("ledger-away"))

    def unblock(self) -> None:
        if self.kind == "postgresql":
            assert self.admin is not None
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"ALTER ROLE {self.role} LOGIN")
            return
        self.dir.with_name("ledger-away").rename(self.dir)

    def close(self) -> None:
        if self.admin is not None:
            with self.admin.connect() as conn:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                    ),
                    {"r": self.role},
                )
            if self._db is not None:
                self._db.close()  # drops the schema and what the role owns in it
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {self.role}")
            self.admin.dispose()
        away = self.dir.with_name("ledger-away")
        if away.exists():
            shutil.rmtree(away)


@pytest.fixture(params=["jsonl", "sqlite", "postgresql"])
def blockable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blockable]:
    ledger = Blockable(request.param, tmp_path)
    try:
        yield ledger
    finally:
        ledger.close()


def copy_ledger_file(url: str, to: Path) -> None:
    """A copy of a file ledger (JSONL, or SQLite through its backup API)."""
    if url.startswith("file://"):
        shutil.copy(url[len("file://") :], to)
    else:
        sqlite_backup(Path(sa.make_url(url).database or ""), to)


def put_back_ledger_file(url: str, copy: Path) -> None:
    if url.startswith("file://"):
        shutil.copy(copy, url[len("file://") :])
    else:
        sqlite_backup(copy, Path(sa.make_url(url).database or ""))


assert os.sep == "/"  # the URLs above are POSIX paths
