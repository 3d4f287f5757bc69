"""The key store on SQLAlchemy Core: SQLite, PostgreSQL and MariaDB/MySQL.

Races are settled by the database:

* key creation inserts the subject head with ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL,
  SQLite) or ``INSERT IGNORE`` (MariaDB/MySQL) and then reads it back with a locking read
  (``SELECT ... FOR UPDATE``; on SQLite every write transaction is ``BEGIN IMMEDIATE``), so the
  winner's key is the only key and InnoDB under REPEATABLE READ still sees the winner;
* shred takes the same row lock, so a creation that loses to a shred sees ``shredded`` and fails;
* a row of the invalidation channel takes its seq under one counter row's lock held until its
  transaction commits, so seqs commit in order and a poll ``WHERE seq > last`` skips none;
* deadlocks and serialisation failures are retried a bounded number of times.

:class:`SqlKeyStore` is the one public class. It composes the store's parts, each a module with
one concern and a class the next builds on: ``_sql_base`` (engine, connections, transactions,
retries) <- ``_sql_epochs`` (epochs, rotation's rows) <- ``_sql_keys`` (key rows) and
``_sql_channel`` (the invalidation channel) <- ``_sql_subjects`` (heads, fences, the shred's
body) <- ``_sql_erasure`` (shreds with the journal, the journal's tables) <- ``_sql_periods``
(retention: period rows, held keys, expiries). This module owns the
installation record, the meta rows and the schema: creation, ``upgrade-store``'s upgrade and the
schema version. Must not add statements of the parts here: a new concern gets its own module.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .._repr import safe_repr
from ..errors import ConfigurationError, KeyStoreError
from ._schema import SCHEMA_VERSION
from ._sql_base import describe_driver_error, is_transient_error, mask_url, open_engine, safe_url
from ._sql_periods import SqlPeriods

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

__all__ = [
    "SqlKeyStore",
    "describe_driver_error",
    "is_transient_error",
    "mask_url",
    "open_engine",
    "safe_url",
]


class SqlKeyStore(SqlPeriods):
    """Key store tables in any database SQLAlchemy reaches (an engine or a URL)."""

    def __init__(
        self, bind: Engine | AsyncEngine | str, *, prefix: str = "ccvault_", create: bool = True
    ) -> None:
        super().__init__(bind, prefix=prefix)
        if create:
            self._connect().close()  # an unreachable server is reported at once, with its cause
            # A store of another schema version is never changed here: the vault refuses it, and
            # only `ccvault upgrade-store` (upgrade_schema) brings an older one up to date.
            if self.schema_version() in (None, SCHEMA_VERSION):
                self._create_tables()

    def _create_tables(self) -> None:
        self._ddl("create", lambda: self._md.create_all(self.engine, checkfirst=True))

    @safe_repr
    def __repr__(self) -> str:
        return f"SqlKeyStore({self.location!r})"

    # -- installation --------------------------------------------------------------------------

    def ensure_installation(
        self, installation_id: str, subject_type: str, facts: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        def run(conn: Connection) -> tuple[str, str]:
            m = self._meta
            fresh = (
                conn.execute(sa.select(m.c.value).where(m.c.name == "installation_id")).first()
                is None
            )
            for name, value in (
                ("installation_id", installation_id),
                ("subject_type", subject_type),
                # Only a new installation is created at this library's version: an existing
                # store without the row predates schema versions (version 1).
                *((("schema_version", str(SCHEMA_VERSION)),) if fresh else ()),
                *((facts or {}).items() if fresh else ()),
            ):
                if (
                    conn.execute(
                        sa.select(self._meta.c.value).where(self._meta.c.name == name)
                    ).first()
                    is None
                ):
                    self._insert_ignore(conn, self._meta, {"name": name, "value": value})
            # A locking read: under InnoDB REPEATABLE READ a plain SELECT reuses the snapshot of
            # the first SELECT above and misses the rows of a concurrent installer whose insert
            # made ours a no-op.
            rows = dict(
                conn.execute(
                    sa.select(self._meta.c.name, self._meta.c.value).with_for_update()
                ).all()
            )
            if "installation_id" not in rows or "subject_type" not in rows:
                raise KeyStoreError("the key store has no installation record")
            return rows["installation_id"], rows["subject_type"]

        return self._write(run)

    def put_meta_if_absent(self, name: str, value: str) -> bool:
        return self._write(
            lambda conn: self._insert_ignore(conn, self._meta, {"name": name, "value": value})
        )

    def meta(self, prefix: str) -> dict[str, str]:
        m = self._meta
        with self._read() as conn:
            rows = conn.execute(
                sa.select(m.c.name, m.c.value).where(m.c.name.startswith(prefix, autoescape=True))
            ).all()
        return {name: value for name, value in rows}

    def schema_version(self) -> int | None:
        """The stored ``schema_version`` (1 for an installation that predates the row); None
        when the store holds no installation. Creates nothing."""
        m = self._meta
        with self._read() as conn:
            if not sa.inspect(conn).has_table(m.name):
                return None
            rows = dict(
                conn.execute(
                    sa.select(m.c.name, m.c.value).where(
                        m.c.name.in_(["installation_id", "schema_version"])
                    )
                ).all()
            )
        if "installation_id" not in rows:
            return None
        value = rows.get("schema_version", "1")
        if not value.isdigit():
            raise ConfigurationError(
                f"the key store at {self.location} records a schema version that is not a "
                f"number ({m.name}.schema_version = {value[:20]!r})"
            )
        return int(value)

    def upgrade_schema(self) -> None:
        """Create the tables and add the columns this library's schema has and the store lacks.

        Idempotent, and safe to run from two processes at once: each statement is its own
        transaction (MariaDB/MySQL commit DDL anyway), and a statement that loses a race to
        another process's is retried after looking again. ``schema_version`` is left alone:
        the caller sets it once the rows are upgraded too."""

        def run() -> None:
            self._md.create_all(self.engine, checkfirst=True)
            for table in self._md.sorted_tables:
                self._add_missing_columns(table)

        self._ddl("upgrade", run)

    def _add_missing_columns(self, table: sa.Table) -> None:
        with self._read() as conn:
            present = {c["name"].lower() for c in sa.inspect(conn).get_columns(table.name)}
        dialect = self.engine.dialect
        for column in table.columns:
            if column.name.lower() in present:
                continue
            ddl = (
                f"ALTER TABLE {dialect.identifier_preparer.format_table(table)} ADD COLUMN "
                f"{sa.schema.CreateColumn(column).compile(dialect=dialect)}"
            )
            self._write(functools.partial(_run_ddl, ddl=ddl))

    def set_schema_version(self, version: int) -> None:
        """Record ``version`` unless the store records it or a newer one already."""
        m = self._meta
        older = [str(v) for v in range(1, version)]

        def run(conn: Connection) -> None:
            if not self._insert_ignore(conn, m, {"name": "schema_version", "value": str(version)}):
                conn.execute(
                    sa.update(m)
                    .where(m.c.name == "schema_version", m.c.value.in_(older))
                    .values(value=str(version))
                )

        self._write(run)

    def installation(self) -> tuple[str, str] | None:
        """The stored (installation id, subject type), or None for an empty store; creates
        nothing (not even the SQLite file)."""
        u = self.engine.url
        if (
            u.get_backend_name() == "sqlite"
            and not u.query.get("uri")  # a file: URI is sqlite3's to resolve
            and not Path(u.database or "").is_file()
        ):
            return None
        with self._read() as conn:
            if not sa.inspect(conn).has_table(self._meta.name):
                return None
            rows = dict(conn.execute(sa.select(self._meta.c.name, self._meta.c.value)).all())
        if "installation_id" not in rows or "subject_type" not in rows:
            return None
        return rows["installation_id"], rows["subject_type"]


def _run_ddl(conn: Connection, *, ddl: str) -> None:
    conn.exec_driver_sql(ddl)
