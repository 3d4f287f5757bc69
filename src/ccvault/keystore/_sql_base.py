"""The SQL key store's plumbing: engines (and the URLs and driver errors shown for them),
connections, one snapshot per read, write transactions retried on deadlocks and serialisation
failures, DDL retried against concurrent creators, insert-unless-present in each dialect, and key
and head rows read as records. Must not decide anything about keys, subjects, epochs or the
journal: the store's parts (``_sql_epochs``, ``_sql_keys``, ``_sql_subjects``, ``_sql_channel``,
``_sql_erasure``) build on :class:`SqlStoreBase`, and ``_sql`` composes them into
:class:`SqlKeyStore`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigurationError, KeyStoreError
from ._records import HeadRecord, KeyRecord
from ._schema import build_metadata

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

__all__ = [
    "BATCH",
    "SqlStoreBase",
    "among",
    "describe_driver_error",
    "is_transient_error",
    "mask_url",
    "open_engine",
    "parse_url",
    "safe_url",
]

T = TypeVar("T")
BATCH = 500  # rows per statement where a statement takes a list of keys


class _Bytes(sa.types.TypeDecorator[bytes]):
    """Binary values bound as they are: the driver's own bytea dumper, in binary format. (Through
    ``LargeBinary``'s bind step each element is wrapped in the DBAPI's ``Binary``, and psycopg
    dumps an array of those as text, escaping every element.)"""

    impl = sa.LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


class _Values(list[Any]):
    """The values of one :func:`among`: psycopg dumps them as a binary array (registered by
    :func:`_binary_arrays`; a plain list it dumps as text, escaping every element). Any other
    driver takes it as the list it is."""

    __slots__ = ()


class _ByteaArray(sa.types.TypeDecorator[list[Any]]):
    impl = postgresql.ARRAY(_Bytes())
    cache_ok = True

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        return _Values


_BYTEA_ARRAY = _ByteaArray()


@functools.cache
def _binary_arrays() -> None:
    """psycopg (3) dumps :class:`_Values` in the binary format (this type only: nothing else
    psycopg dumps changes). Connections opened before this keep the text format (the same
    values, escaped): a connection copies psycopg's adapters when it opens."""
    try:
        import psycopg
        from psycopg.types.array import ListBinaryDumper
    except ImportError:  # pragma: no cover - another driver
        return
    psycopg.adapters.register_dumper(_Values, ListBinaryDumper)


def among(column: Any, values: Sequence[bytes | None], dialect: str) -> sa.ColumnElement[bool]:
    """``column IN (values)`` for a binary column; on PostgreSQL ``column = ANY(:values)``, one
    array parameter instead of one per value: the statement's text is the same for any number
    of values, so neither SQLAlchemy nor the driver renders and parses hundreds of placeholders
    each time (psycopg parses a long statement anew at every execution), and the server plans
    it as the same index probes."""
    if dialect == "postgresql":  # the array type's bind step makes the one copy (_Values)
        return column == sa.any_(sa.bindparam(None, values, type_=_BYTEA_ARRAY))  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


_RETRIES = 12


class SqlStoreBase:
    """The engine, the tables and the transactions of a SQL key store."""

    def __init__(self, bind: Engine | AsyncEngine | str, *, prefix: str = "ccvault_") -> None:
        if not isinstance(bind, Engine | str):
            # An AsyncEngine: under asyncio the store runs on the async driver through the
            # engine's sync facade. Called from inside SQLAlchemy's greenlet (AsyncSession,
            # Vault.run) it never blocks the event loop.
            sync = getattr(bind, "sync_engine", None)
            if not isinstance(sync, Engine):
                raise ConfigurationError("a key store binds to an Engine, AsyncEngine or URL")
            bind = sync
        if isinstance(bind, Engine) and bind.dialect.name == "sqlite":
            # SQLite needs connection settings of our own (BEGIN IMMEDIATE, WAL, FULL sync):
            # open our own engine on the same file rather than change the application's.
            bind = bind.url.render_as_string(hide_password=False)
        if isinstance(bind, str):
            url = parse_url(bind)
            backend = url.get_backend_name()
            if backend == "sqlite" and url.database in (None, "", ":memory:"):
                raise ConfigurationError(
                    "an in-memory SQLite key store would be lost with its connection: use a file"
                )
        else:
            backend = bind.dialect.name
        if backend == "postgresql":  # before any connection: each copies psycopg's adapters
            _binary_arrays()
        self.engine = _make_engine(bind) if isinstance(bind, str) else bind
        self._owns_engine = isinstance(bind, str)
        self._dialect = self.engine.dialect.name
        _install_sqlite_hooks(self.engine)
        md = build_metadata(prefix)
        self._md = md
        t = md.tables
        self._meta = t[f"{prefix}meta"]
        self._epochs = t[f"{prefix}epochs"]
        self._wraps = t[f"{prefix}epoch_wraps"]
        self._keys = t[f"{prefix}keys"]
        self._heads = t[f"{prefix}subject_heads"]
        self._invalidations = t[f"{prefix}invalidations"]
        # PostgreSQL: whether this process has looked for the planner statistics of the heads
        # and keys tables (SqlSubjects.create_subject_keys, once)
        self._statistics_checked = False

    def _ddl(self, verb: str, run: Callable[[], None]) -> None:
        """Run DDL, retried. Processes creating the tables at once: a loser waits a little and
        re-checks. One re-check is not enough on MariaDB/MySQL, where DDL is not transactional
        and another process may still be half-way through its CREATE TABLE statements."""
        for attempt in range(_RETRIES):
            try:
                run()
                return
            except (sa.exc.SQLAlchemyError, KeyStoreError) as exc:
                if attempt + 1 == _RETRIES:
                    raise KeyStoreError(
                        f"cannot {verb} the key store tables at {self.location}: "
                        f"{_driver_error(exc.__cause__ or exc, self.engine.url)}"
                    ) from exc
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # noqa: S311

    @property
    def location(self) -> str:
        """The key store's URL with its password (and secret-looking parameters) hidden."""
        return _safe_url(self.engine.url)

    def _connect(self) -> Connection:
        """A connection, or a KeyStoreError that says where and why the server did not answer."""
        refused: str | None = None
        try:
            return self.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise KeyStoreError(
                f"{self._cannot_connect()}: {_driver_error(exc, self.engine.url)}"
            ) from exc
        except (ValueError, TypeError, UnicodeError) as exc:
            # The driver refused a connection setting before talking to the server (PyMySQL
            # cannot encode a password outside Latin-1): its message and arguments may hold the
            # password, so neither is kept, and the error is raised outside this block.
            refused = type(exc).__name__
        raise KeyStoreError(
            f"{self._cannot_connect()}: the driver refused the connection settings "
            f"({refused}; a password it cannot encode?)"
        )

    def _cannot_connect(self) -> str:
        u = self.engine.url
        port = u.port or _DEFAULT_PORTS.get(u.get_backend_name())
        where = ", ".join(
            f"{what} {value}"
            for what, value in (("host", u.host), ("port", port), ("database", u.database))
            if value
        )
        return f"cannot connect to the key store ({where}; {self.location})"

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._connect() as conn:
                if self._dialect == "postgresql":
                    # One snapshot per read. Under PostgreSQL's default READ COMMITTED each
                    # statement sees the commits before it, so a subject head read just before a
                    # shred commits and its key read just after pair an active head with a
                    # destroyed key. (SQLite WAL reads and InnoDB REPEATABLE READ already use one
                    # snapshot per transaction.)
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise KeyStoreError("the key store could not be read") from exc

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction, retrying deadlocks and serialisation failures."""
        for attempt in range(_RETRIES):
            try:
                with self._connect() as conn:
                    conn = conn.execution_options(ccvault_write=True)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.SQLAlchemyError as exc:
                if (
                    attempt + 1 < _RETRIES
                    and isinstance(exc, sa.exc.DBAPIError)
                    and _is_transient(exc)
                ):
                    time.sleep(random.uniform(0.002, 0.02) * (attempt + 1))  # noqa: S311
                    continue
                raise KeyStoreError("the key store could not be written") from exc
        raise KeyStoreError("the key store could not be written")  # pragma: no cover

    def _insert_ignore(self, conn: Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """Insert unless a unique key exists; True if this call inserted the row."""
        stmt: Any
        if self._dialect == "postgresql":
            stmt = pg_insert(table).values(**values).on_conflict_do_nothing()
        elif self._dialect == "sqlite":
            stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing()
        elif self._dialect in ("mysql", "mariadb"):
            stmt = sa.insert(table).values(**values).prefix_with("IGNORE")
        else:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(table).values(**values))
                return True
            except sa.exc.IntegrityError:
                return False
        result = conn.execute(stmt, execution_options={"preserve_rowcount": True})
        return bool(result.rowcount == 1)

    def _insert_ignore_many(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        self._insert_ignore_counted(conn, table, rows)

    def _insert_ignore_counted(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> int | None:
        """Insert each row unless a unique key exists (one executemany); how many rows were
        inserted, or None where the driver does not count the rows of an executemany."""
        stmt: Any
        if self._dialect == "postgresql":
            stmt = pg_insert(table).on_conflict_do_nothing()
        elif self._dialect == "sqlite":
            stmt = sqlite_insert(table).on_conflict_do_nothing()
        elif self._dialect in ("mysql", "mariadb"):
            stmt = sa.insert(table).prefix_with("IGNORE")
        else:
            return sum(self._insert_ignore(conn, table, row) for row in rows)
        result = conn.execute(stmt, rows, execution_options={"preserve_rowcount": True})
        dialect = self.engine.dialect
        counted = (
            dialect.supports_sane_multi_rowcount
            if len(rows) > 1
            else dialect.supports_sane_rowcount
        )
        return int(result.rowcount) if counted and result.rowcount >= 0 else None

    def _insert_new_rows(
        self,
        conn: Connection,
        table: sa.Table,
        rows: Sequence[Any],
        *,
        ignore: bool,
        columns: Sequence[str] | None = None,
    ) -> int | None:
        """Insert many new rows in ``conn``'s transaction; with ``ignore``, rows whose unique
        key exists are skipped (:meth:`_insert_ignore_counted`). Returns how many rows were
        inserted, or None where the driver does not say. ``rows`` are dicts by column name, or
        with ``columns`` tuples of those columns' values, in that order.

        On PostgreSQL through psycopg 3 the rows go in one ``COPY`` (a third of an executemany's
        time per row, client and server); with ``ignore`` inside a savepoint: a row whose key
        exists fails the whole COPY, rolled back to the savepoint, and the rows are inserted
        again by an insert-ignore (another writer got there first: rare). On SQLite the tuples
        go to the driver's executemany as they are, none of SQLAlchemy's work per row and per
        value (every column here is a type the driver stores as given)."""
        if not rows:
            return 0
        if columns is None:
            columns = list(rows[0])
            # tuples: the sqlite3 module's executemany takes no lists
            tuples: Sequence[Sequence[Any]] = [tuple(row[name] for name in columns) for row in rows]
        else:
            tuples = rows
        if self._copies():
            try:
                if not ignore:
                    self._copy(conn, table, columns, tuples)
                    return len(tuples)
                with conn.begin_nested():
                    self._copy(conn, table, columns, tuples)
                return len(tuples)
            except self.engine.dialect.loaded_dbapi.IntegrityError:
                if not ignore:
                    raise
        elif self._dialect == "sqlite":
            return self._sqlite_insert(conn, table, columns, tuples, ignore=ignore)
        dicts = [dict(zip(columns, row, strict=True)) for row in tuples]
        if not ignore:
            conn.execute(sa.insert(table), dicts)
            return len(dicts)
        return self._insert_ignore_counted(conn, table, dicts)

    def _sqlite_insert(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        ignore: bool,
    ) -> int:
        """One executemany of ``rows`` (tuples of ``columns``) on SQLite, skipping rows whose
        unique key exists with ``ignore``; how many rows were inserted (SQLite counts the rows
        of an executemany, a skipped one as none)."""
        prep = self.engine.dialect.identifier_preparer
        names = ", ".join(prep.quote(name) for name in columns)
        marks = ", ".join("?" * len(columns))
        conflict = " ON CONFLICT DO NOTHING" if ignore else ""
        # identifiers of ccvault's own schema, quoted by the dialect; every value bound
        table_name = prep.format_table(table)
        statement = f"INSERT INTO {table_name} ({names}) VALUES ({marks}){conflict}"  # noqa: S608
        result = conn.exec_driver_sql(
            statement, list(rows), execution_options={"preserve_rowcount": True}
        )
        return len(rows) if not ignore else int(result.rowcount)

    def _copies(self) -> bool:
        """Whether new rows go in by ``COPY`` (PostgreSQL through psycopg 3, not its asyncio
        form, whose connection SQLAlchemy wraps)."""
        dialect = self.engine.dialect
        return (
            dialect.name == "postgresql"
            and dialect.driver == "psycopg"
            and not getattr(dialect, "is_async", False)  # psycopg's async dialect is "psycopg" too
        )

    def _copy(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        prep = self.engine.dialect.identifier_preparer
        names = ", ".join(prep.quote(name) for name in columns)
        statement = f"COPY {prep.format_table(table)} ({names}) FROM STDIN"
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)
        finally:
            cursor.close()

    # -- rows as records --------------------------------------------------------------------

    @staticmethod
    def _key(row: Any) -> KeyRecord:
        return KeyRecord(
            key_id=bytes(row.key_id),
            version=row.version,
            kind=row.kind,
            label=row.label,
            ref=bytes(row.ref) if row.ref is not None else None,
            epoch_id=bytes(row.epoch_id) if row.epoch_id is not None else None,
            wrapped=bytes(row.wrapped) if row.wrapped is not None else None,
            commitment=bytes(row.commitment) if row.commitment is not None else None,
            state=row.state,
            created_at=row.created_at,
        )

    def _key_values(self, r: KeyRecord) -> dict[str, Any]:
        return {
            "key_id": r.key_id,
            "version": r.version,
            "kind": r.kind,
            "label": r.label,
            "ref": r.ref,
            "epoch_id": r.epoch_id,
            "wrapped": r.wrapped,
            "commitment": r.commitment,
            "state": r.state,
            "created_at": r.created_at,
        }

    @staticmethod
    def _head(row: Any, prefix: str = "") -> HeadRecord:
        """The head in ``row``, whose columns are named ``prefix`` + the head's column names."""
        m = row._mapping
        mac = m[prefix + "mac"]
        return HeadRecord(
            ref=bytes(m[prefix + "ref"]),
            key_id=bytes(m[prefix + "key_id"]),
            state=m[prefix + "state"],
            current_version=m[prefix + "current_version"],
            created_at=m[prefix + "created_at"],
            shredded_at=m[prefix + "shredded_at"],
            receipt=m.get(prefix + "receipt"),
            mac=bytes(mac) if mac is not None else None,
        )


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
# The driver modules ccvault's extras install, by module name.
_EXTRAS = {
    "psycopg": "postgres",
    "pymysql": "mysql",
    "aiosqlite": "asyncio",
    "asyncmy": "asyncio",
    "greenlet": "asyncio",
}
_SECRET_QUERY = ("password", "passwd", "secret", "token", "key")


def parse_url(url: str, what: str = "key store") -> sa.URL:
    try:
        return sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        raise ConfigurationError(
            f"the {what} URL is no SQLAlchemy URL (dialect+driver://user:password@host:port/db)"
        ) from None


def _safe_url(u: sa.URL) -> str:
    """``u`` with its password and secret-looking query parameters (and values holding a
    userinfo) masked."""
    masked = {
        name: "***"
        if any(word in name.lower() for word in _SECRET_QUERY) or "@" in str(value)
        else value
        for name, value in u.query.items()
    }
    return u.set(query=masked).render_as_string(hide_password=True)


def mask_url(url: str) -> str:
    """A key-store URL as reprs and messages may show it: parsed by SQLAlchemy, as the engine
    will read it, then rendered with the password (and secret-looking parameters) masked. A URL
    that SQLAlchemy cannot parse is not shown at all."""
    try:
        return _safe_url(sa.make_url(url))
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return "<a URL that SQLAlchemy cannot parse>"


def _driver_error(exc: BaseException, u: sa.URL) -> str:
    """The driver's error class and message (not SQLAlchemy's, which quotes the statement and its
    parameters), on one line, without the password."""
    orig = getattr(exc, "orig", None) or exc
    message = " ".join(str(orig).split())
    if u.password:
        password = str(u.password)
        for form in (password, quote(password, safe=""), quote_plus(password, safe="")):
            message = message.replace(form, "***")
    if len(message) > 300:
        message = message[:297] + "..."
    kind = type(orig)
    module = kind.__module__.split(".")[0]
    return f"{kind.__name__ if module == 'builtins' else f'{module}.{kind.__name__}'}: {message}"


def _make_engine(url: str, what: str = "key store") -> Engine:
    u = parse_url(url, what)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    try:
        if u.get_dialect().is_async:
            from sqlalchemy.ext.asyncio import create_async_engine  # the asyncio extra

            return create_async_engine(u, **kwargs).sync_engine
        return sa.create_engine(u, **kwargs)
    except sa.exc.NoSuchModuleError:
        raise ConfigurationError(
            f"the {what} URL {_safe_url(u)} names an unknown database or driver"
        ) from None
    except ImportError as exc:
        module = (exc.name or "").split(".")[0]
        extra = _EXTRAS.get(module)
        install = f"pip install 'ccvault[{extra}]'" if extra else f"install {module or 'it'}"
        raise ConfigurationError(
            f"the {what} URL {_safe_url(u)} needs the {module or u.drivername!r} driver, "
            f"which is not installed: {install}"
        ) from exc
    except sa.exc.ArgumentError:  # the dialect's own check (a host in a SQLite URL...)
        raise ConfigurationError(
            f"the {what} URL {_safe_url(u)} is not one its database dialect takes"
        ) from None
    except (ValueError, TypeError):  # its message may quote the URL: neither kept nor chained
        pass
    raise ConfigurationError(
        f"the {what} URL {_safe_url(u)} has a query parameter its database driver cannot "
        "take (a number that is no number?)"
    )


SQLITE_BUSY_MS = 30000
"""How long a SQLite connection waits for another's lock, and for the switch to WAL."""


def _to_wal(cur: Any) -> None:
    """Switch the database to WAL, waiting up to ``SQLITE_BUSY_MS`` for others' locks.

    The switch takes an exclusive lock. When another connection holds a write lock, or is
    switching too (two processes opening a new database), SQLite answers "database is locked"
    at once instead of calling the busy handler, which could deadlock there. Retried until the
    busy timeout; a database already in WAL answers without a lock."""
    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
            return
        except Exception as exc:  # sqlite3's or aiosqlite's OperationalError
            if "database is locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))  # noqa: S311
        pause = min(pause * 2, 0.1)


def _install_sqlite_hooks(engine: Engine) -> None:
    """WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions on SQLite."""
    if engine.dialect.name != "sqlite" or getattr(engine, "_ccvault_hooked", False):
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        if engine.url.database not in (None, "", ":memory:"):
            _to_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")  # a committed shred survives a power cut
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("ccvault_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    engine._ccvault_hooked = True  # type: ignore[attr-defined]


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01"):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (1213, 1205):
        return True
    return "database is locked" in str(orig)


# -- shared with the SQL ledger (erasure/_ledger_sql.py), which opens a database of its own ----


def open_engine(url: str, *, what: str) -> Engine:
    """An engine for ``url`` set up as the key store sets up its own: pre-ping, and on SQLite
    WAL, a busy timeout, FULL sync and ``BEGIN IMMEDIATE`` for connections with the execution
    option ``ccvault_write=True``. A bad URL or a missing driver is a ConfigurationError naming
    ``what`` ("ledger"...) and the URL with its password masked."""
    engine = _make_engine(url, what)
    _install_sqlite_hooks(engine)
    return engine


def safe_url(u: sa.URL) -> str:
    """``u`` as messages may show it (password and secret-looking parameters masked)."""
    return _safe_url(u)


def describe_driver_error(exc: BaseException, u: sa.URL) -> str:
    """The driver's error class and message on one line, without the statement, its parameters
    or the password."""
    return _driver_error(exc, u)


def is_transient_error(exc: BaseException) -> bool:
    """A deadlock, serialisation failure, lock wait timeout or busy SQLite: worth a retry."""
    return isinstance(exc, sa.exc.DBAPIError) and _is_transient(exc)
