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
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from .._repr import safe_repr
from ..crypto._primitives import random_bytes
from ..errors import ConfigurationError, KeyStoreError
from ..kms._protocol import WrappedKey
from ._listen import Listener, listen_connect_args, notify_channel
from ._protocol import (
    EpochNotUsableError,
    HeadSealer,
    JournalTxn,
    Listening,
    ReceiptFactory,
    RefReceiptFactory,
    ShredGuard,
    ShredJournal,
    ShredManyJournal,
)
from ._records import (
    EpochRecord,
    ErasureRow,
    HeadRecord,
    HoldRow,
    Invalidation,
    InvalidationKind,
    KeyKind,
    KeyRecord,
    OutboxEntry,
    QueuedErasure,
    State,
)
from ._schema import INVALIDATION_SEQ, SCHEMA_VERSION, build_metadata
from ._sql_journal import (
    JournalTables,
    SqlJournalTxn,
    erasure_row,
    erasure_rows,
    journal_step,
    queue_erasures,
    read_applied,
    read_holds,
    read_outbox,
    read_queue,
    read_shredded_receipts,
    write_erasures,
)

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

T = TypeVar("T")
_BATCH = 500
_RETRIES = 12
_REWRAP_PENDING = "rewrap_pending"  # ccvault_meta: the epoch whose rotation has keys to re-wrap
# ccvault_meta, one row per epoch destroyed with quarantined keys under it (operator decision)
_UNREADABLE_ACCEPTED = "unreadable_accepted:"


def _destroyed(now: float) -> dict[str, Any]:
    """The values of a key row whose material is destroyed: a tombstone."""
    return {
        "wrapped": None,
        "commitment": None,
        "epoch_id": None,
        "state": State.DESTROYED,
        "destroyed_at": now,
    }


class SqlKeyStore:
    """Key store tables in any database SQLAlchemy reaches (an engine or a URL)."""

    def __init__(
        self, bind: Engine | AsyncEngine | str, *, prefix: str = "ccvault_", create: bool = True
    ) -> None:
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
            url = _parse_url(bind)
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                raise ConfigurationError(
                    "an in-memory SQLite key store would be lost with its connection: use a file"
                )
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
        self._jt = JournalTables(
            meta=self._meta,
            outbox=t[f"{prefix}ledger_outbox"],
            erasures=t[f"{prefix}erasures"],
            queue=t[f"{prefix}erasure_queue"],
            heads=self._heads,
            holds=t[f"{prefix}holds"],
            insert_ignore=self._insert_ignore,
            insert_ignore_many=self._insert_ignore_many,
            shred_in=self._shred_in,
        )
        if create:
            self._connect().close()  # an unreachable server is reported at once, with its cause
            # A store of another schema version is never changed here: the vault refuses it, and
            # only `ccvault upgrade-store` (upgrade_schema) brings an older one up to date.
            if self.schema_version() in (None, SCHEMA_VERSION):
                self._create_tables()

    def _create_tables(self) -> None:
        self._ddl("create", lambda: self._md.create_all(self.engine, checkfirst=True))

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

    @safe_repr
    def __repr__(self) -> str:
        return f"SqlKeyStore({self.location!r})"

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

    # -- epochs --------------------------------------------------------------------------------

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

    # -- keys ----------------------------------------------------------------------------------

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

    def get_keys(self, refs: Iterable[tuple[bytes, int]]) -> dict[tuple[bytes, int], KeyRecord]:
        wanted = list(dict.fromkeys(refs))
        k = self._keys
        out: dict[tuple[bytes, int], KeyRecord] = {}
        with self._read() as conn:
            for i in range(0, len(wanted), _BATCH):
                chunk = wanted[i : i + _BATCH]
                ids = list({kid for kid, _ in chunk})
                for row in conn.execute(sa.select(k).where(k.c.key_id.in_(ids))).all():
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
            for i in range(0, len(wanted), _BATCH):
                ids = list({kid for kid, _ in wanted[i : i + _BATCH]})
                rows = conn.execute(
                    sa.select(k, *head_cols)
                    .outerjoin(h, h.c.ref == k.c.ref)
                    .where(k.c.key_id.in_(ids))
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

    # -- subjects ------------------------------------------------------------------------------

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
        for i in range(0, len(ordered), _BATCH):
            rows = conn.execute(
                sa.select(h)
                .where(h.c.ref.in_(ordered[i : i + _BATCH]))
                .order_by(h.c.ref)
                .with_for_update()
            ).all()
            found.update((bytes(r.ref), self._head(r)) for r in rows)
        return found

    def shred(
        self,
        ref: bytes,
        now: float,
        make_receipt: ReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredJournal | None = None,
        *,
        guard: ShredGuard | None = None,
    ) -> tuple[str, bool]:
        def run(conn: Connection) -> tuple[str, bool]:
            step = None
            if journal is not None or guard is not None:
                # the ledger lock first, then holds, then the head (one lock order)
                txn = SqlJournalTxn(conn, self._jt, create=False)
                if guard is not None and guard(txn, [ref]):
                    raise KeyStoreError("a shred guard may refuse a single shred only by raising")
                if journal is not None:
                    step = journal_step(txn, journal)
            return self._shred_in(conn, ref, now, make_receipt, seal_head, step)

        return self._write(run)

    def shred_many(
        self,
        refs: Sequence[bytes],
        now: float,
        make_receipt: RefReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredManyJournal,
        *,
        guard: ShredGuard | None = None,
    ) -> list[tuple[str, bool] | None]:
        if len(set(refs)) != len(refs):
            raise ValueError("shred_many takes distinct refs")

        def run(conn: Connection) -> list[tuple[str, bool] | None]:
            txn = SqlJournalTxn(conn, self._jt, create=False)  # the ledger lock first
            skip = set(guard(txn, refs)) if guard is not None else set()
            todo = [ref for ref in refs if ref not in skip]

            def aligned(out: Sequence[tuple[str, bool]]) -> list[tuple[str, bool] | None]:
                done = dict(zip(todo, out, strict=True))
                return [done.get(ref) for ref in refs]

            out = self._shred_many_in(
                conn, todo, now, make_receipt, seal_head, lambda o: journal(txn, aligned(o))
            )
            return aligned(out)

        return self._write(run)

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
            for i in range(0, len(todo), _BATCH):
                chunk = todo[i : i + _BATCH]
                for row in conn.execute(sa.select(k).where(k.c.ref.in_(chunk))).all():
                    keys[bytes(row.ref)].append(self._key(row))
                conn.execute(sa.update(k).where(k.c.ref.in_(chunk)).values(_destroyed(now)))
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

    # -- the erasure journal's side (DESIGN.md, lifecycle rule 3) --------------------------------

    def journal_transaction(self, fn: Callable[[JournalTxn], T], *, create: bool = False) -> T:
        return self._write(lambda conn: fn(SqlJournalTxn(conn, self._jt, create=create)))

    def ledger_applied(self) -> int | None:
        with self._read() as conn:
            return read_applied(conn, self._jt)

    def outbox(self) -> list[OutboxEntry]:
        with self._read() as conn:
            return read_outbox(conn, self._jt)

    def erasure(self, receipt_id: str) -> ErasureRow | None:
        with self._read() as conn:
            return erasure_row(conn, self._jt, receipt_id)

    def erasure_rows(self, receipt_ids: Sequence[str]) -> dict[str, ErasureRow]:
        with self._read() as conn:
            return erasure_rows(conn, self._jt, receipt_ids)

    def record_erasures(self, rows: Sequence[ErasureRow]) -> None:
        for i in range(0, len(rows), _BATCH):
            self._write(functools.partial(write_erasures, t=self._jt, rows=rows[i : i + _BATCH]))

    def shredded_receipts(self, after: bytes | None, limit: int) -> list[tuple[bytes, str]]:
        with self._read() as conn:
            return read_shredded_receipts(conn, self._jt, after, limit)

    def holds(
        self, refs: Sequence[bytes] | None = None, *, unreleased: bool = False
    ) -> list[HoldRow]:
        with self._read() as conn:
            return read_holds(conn, self._jt, refs=refs, unreleased=unreleased)

    def queue_erasure(self, row: QueuedErasure) -> None:
        self._write(functools.partial(queue_erasures, t=self._jt, rows=[row]))

    def queued_erasures(self, due_by: float, after: str | None, limit: int) -> list[QueuedErasure]:
        with self._read() as conn:
            return read_queue(conn, self._jt, due_by, after, limit)

    def queue_waiting(self, due_by: float) -> tuple[int, float | None]:
        q = self._jt.queue
        with self._read() as conn:
            count, first = conn.execute(
                sa.select(sa.func.count(), sa.func.min(q.c.due)).where(q.c.due > due_by)
            ).one()
        return int(count), None if first is None else float(first)

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
                .values(_destroyed(now)),
                execution_options={"preserve_rowcount": True},
            )
            return int(result.rowcount)

        return self._write(run)

    # -- the invalidation channel ----------------------------------------------------------------

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
        target = self.engine.url if url is None else _parse_url(url)
        if target.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"listen_url (CCVAULT_LISTEN_URL) {_safe_url(target)} is not a PostgreSQL URL"
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
            where=_safe_url(target),
            describe=functools.partial(_driver_error, u=target),
        )
        listener.start()
        return listener

    # -- batches of subjects -------------------------------------------------------------------

    def subject_keys(
        self, refs: Sequence[bytes]
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        h = self._heads
        out: dict[bytes, tuple[HeadRecord, KeyRecord | None]] = {}
        with self._read() as conn:
            for i in range(0, len(refs), _BATCH):
                heads = [
                    self._head(r)
                    for r in conn.execute(sa.select(h).where(h.c.ref.in_(refs[i : i + _BATCH])))
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
        rows = conn.execute(sa.select(k).where(k.c.key_id.in_([kid for kid, _ in wanted])))
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
        """Create heads and first keys for subjects that have none, in one transaction per batch.

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
        for i in range(0, len(ordered), _BATCH):
            batch = ordered[i : i + _BATCH]
            out.update(
                self._write(
                    functools.partial(self._create_batch, batch=batch, now=now, seal_head=seal_head)
                )
            )
        return out

    def _create_batch(
        self, conn: Connection, *, batch: Sequence[KeyRecord], now: float, seal_head: HeadSealer
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        h, k = self._heads, self._keys
        refs = [c.ref for c in batch]
        self._check_epochs(conn, batch)

        def locked_heads() -> dict[bytes, HeadRecord]:
            rows = conn.execute(
                sa.select(h).where(h.c.ref.in_(refs)).order_by(h.c.ref).with_for_update()
            )
            return {hd.ref: hd for hd in map(self._head, rows)}

        heads = locked_heads()
        missing = [c for c in batch if c.ref not in heads]
        if missing:
            fenced = self._keyed(conn, [c.ref for c in missing if c.ref is not None])
            missing = [c for c in missing if c.ref not in fenced]
            if missing:
                self._insert_ignore_many(
                    conn,
                    h,
                    [
                        {
                            "ref": c.ref,
                            "key_id": c.key_id,
                            "state": State.ACTIVE,
                            "current_version": c.version,
                            "created_at": now,
                            "mac": seal_head(c.ref or b"", c.key_id, State.ACTIVE, c.version),
                        }
                        for c in missing
                    ],
                )
            # Read again even when nothing was inserted: the key rows of a ref fenced above may
            # be those of a writer that created its head after our first read (READ COMMITTED).
            heads = locked_heads()
            won = [c for c in missing if c.ref in heads and heads[c.ref].key_id == c.key_id]
            if won:
                conn.execute(sa.insert(k), [self._key_values(c) for c in won])
        keys = self._current_keys(conn, [hd for hd in heads.values() if hd.state == State.ACTIVE])
        return {ref: (hd, keys.get(ref)) for ref, hd in heads.items()}

    def _keyed(self, conn: Connection, refs: Sequence[bytes]) -> set[bytes]:
        """The refs among ``refs`` that have subject key rows (live or tombstones)."""
        k = self._keys
        if not refs:
            return set()
        rows = conn.execute(
            sa.select(k.c.ref).where(k.c.ref.in_(refs), k.c.kind == KeyKind.SUBJECT).distinct()
        ).scalars()
        return {bytes(r) for r in rows}

    def keyed_refs(self, refs: Sequence[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        with self._read() as conn:
            for i in range(0, len(refs), _BATCH):
                out |= self._keyed(conn, refs[i : i + _BATCH])
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
            for i in range(0, len(unique), _BATCH):
                chunk = unique[i : i + _BATCH]
                heads = {
                    bytes(r.ref): self._head(r)
                    for r in conn.execute(sa.select(h).where(h.c.ref.in_(chunk)))
                }
                keys: dict[bytes, list[KeyRecord]] = {}
                for r in conn.execute(sa.select(k).where(k.c.ref.in_(chunk))):
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
                        sa.select(k.c.ref).where(k.c.ref.in_(shredded)).distinct()
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

    def _insert_ignore_many(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        stmt: Any
        if self._dialect == "postgresql":
            stmt = pg_insert(table).on_conflict_do_nothing()
        elif self._dialect == "sqlite":
            stmt = sqlite_insert(table).on_conflict_do_nothing()
        elif self._dialect in ("mysql", "mariadb"):
            stmt = sa.insert(table).prefix_with("IGNORE")
        else:
            for row in rows:
                self._insert_ignore(conn, table, row)
            return
        conn.execute(stmt, rows)

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


def _invalidation(row: Any) -> Invalidation:
    return Invalidation(
        seq=int(row.seq),
        kind=row.kind,
        ref=None if row.ref is None else bytes(row.ref),
        period=None if row.period is None else bytes(row.period),
        at=row.at,
    )


def _run_ddl(conn: Connection, *, ddl: str) -> None:
    conn.exec_driver_sql(ddl)


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


def _parse_url(url: str, what: str = "key store") -> sa.URL:
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
    u = _parse_url(url, what)
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


def _install_sqlite_hooks(engine: Engine) -> None:
    """WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write transactions on SQLite."""
    if engine.dialect.name != "sqlite" or getattr(engine, "_ccvault_hooked", False):
        return

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
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
