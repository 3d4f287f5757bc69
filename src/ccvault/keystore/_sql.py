"""The key store on SQLAlchemy Core: SQLite, PostgreSQL and MariaDB/MySQL.

Races are settled by the database:

* key creation inserts the subject head with ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL,
  SQLite) or ``INSERT IGNORE`` (MariaDB/MySQL) and then reads it back with a locking read
  (``SELECT ... FOR UPDATE``; on SQLite every write transaction is ``BEGIN IMMEDIATE``), so the
  winner's key is the only key and InnoDB under REPEATABLE READ still sees the winner;
* shred takes the same row lock, so a creation that loses to a shred sees ``shredded`` and fails;
* deadlocks and serialisation failures are retried a bounded number of times.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from ..crypto._primitives import random_bytes
from ..errors import KeyStoreError, SubjectShreddedError
from ..kms._protocol import WrappedKey
from ._protocol import ReceiptFactory
from ._records import EpochRecord, HeadRecord, KeyKind, KeyRecord, State
from ._schema import build_metadata

__all__ = ["SqlKeyStore"]

T = TypeVar("T")
_BATCH = 500
_RETRIES = 12


class SqlKeyStore:
    """Key store tables in any database SQLAlchemy reaches (an engine or a URL)."""

    def __init__(self, bind: Engine | str, *, prefix: str = "ccvault_", create: bool = True) -> None:
        self.engine = _make_engine(bind) if isinstance(bind, str) else bind
        self._owns_engine = isinstance(bind, str)
        self._dialect = self.engine.dialect.name
        _install_sqlite_hooks(self.engine)
        md = build_metadata(prefix)
        t = md.tables
        self._meta = t[f"{prefix}meta"]
        self._epochs = t[f"{prefix}epochs"]
        self._wraps = t[f"{prefix}epoch_wraps"]
        self._keys = t[f"{prefix}keys"]
        self._heads = t[f"{prefix}subject_heads"]
        if create:
            try:
                md.create_all(self.engine, checkfirst=True)
            except sa.exc.SQLAlchemyError as exc:
                # Two processes creating the tables at once: the loser re-checks.
                try:
                    md.create_all(self.engine, checkfirst=True)
                except sa.exc.SQLAlchemyError:
                    raise KeyStoreError("cannot create the key store tables") from exc

    def __repr__(self) -> str:
        return f"SqlKeyStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise KeyStoreError("the key store could not be read") from exc

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction, retrying deadlocks and serialisation failures."""
        for attempt in range(_RETRIES):
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(ccvault_write=True)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.DBAPIError as exc:
                if attempt + 1 < _RETRIES and _is_transient(exc):
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

    def ensure_installation(self, installation_id: str, subject_type: str) -> tuple[str, str]:
        def run(conn: Connection) -> tuple[str, str]:
            for name, value in (("installation_id", installation_id), ("subject_type", subject_type),
                                ("schema_version", "1")):
                if conn.execute(sa.select(self._meta.c.value).where(self._meta.c.name == name)).first() is None:
                    self._insert_ignore(conn, self._meta, {"name": name, "value": value})
            rows = dict(conn.execute(sa.select(self._meta.c.name, self._meta.c.value)).all())
            return rows["installation_id"], rows["subject_type"]

        return self._write(run)

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
                bytes(r.epoch_id), r.seq, r.state, bytes(r.commitment), r.created_at,
                r.retired_at, tuple(sorted(wraps.get(bytes(r.epoch_id), []), key=lambda x: x.kms_id)),
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
        self, epoch_id: bytes, seq: int, commitment: bytes, wraps: Sequence[WrappedKey], now: float
    ) -> EpochRecord:
        e = self._epochs

        def run(conn: Connection) -> EpochRecord:
            inserted = self._insert_ignore(conn, e, {
                "epoch_id": epoch_id, "seq": seq, "state": State.ACTIVE,
                "commitment": commitment, "created_at": now,
            })
            if inserted:
                for wk in wraps:
                    conn.execute(sa.insert(self._wraps).values(
                        epoch_id=epoch_id, kms_id=wk.kms_id, root_id=wk.root_id, wrapped=wk.blob))
                conn.execute(
                    sa.update(e).where(e.c.state == State.ACTIVE, e.c.seq < seq)
                    .values(state=State.RETIRED, retired_at=now)
                )
            rows = self._epoch_rows(conn, e.c.seq == seq)
            if not rows:
                raise KeyStoreError("epoch sequence conflict")
            return rows[0]

        return self._write(run)

    # -- keys ----------------------------------------------------------------------------------

    @staticmethod
    def _key(row: Any) -> KeyRecord:
        return KeyRecord(
            key_id=bytes(row.key_id), version=row.version, kind=row.kind, label=row.label,
            ref=bytes(row.ref) if row.ref is not None else None,
            epoch_id=bytes(row.epoch_id) if row.epoch_id is not None else None,
            wrapped=bytes(row.wrapped) if row.wrapped is not None else None,
            commitment=bytes(row.commitment) if row.commitment is not None else None,
            state=row.state, created_at=row.created_at,
        )

    def _key_values(self, r: KeyRecord) -> dict[str, Any]:
        return {
            "key_id": r.key_id, "version": r.version, "kind": r.kind, "label": r.label,
            "ref": r.ref, "epoch_id": r.epoch_id, "wrapped": r.wrapped,
            "commitment": r.commitment, "state": r.state, "created_at": r.created_at,
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

    def latest_key(self, kind: str, label: str) -> KeyRecord | None:
        k = self._keys
        with self._read() as conn:
            row = conn.execute(
                sa.select(k).where(k.c.kind == kind, k.c.label == label)
                .order_by(k.c.version.desc()).limit(1)
            ).first()
        return self._key(row) if row is not None else None

    def insert_key_if_absent(self, record: KeyRecord) -> KeyRecord:
        k = self._keys

        def run(conn: Connection) -> KeyRecord:
            self._insert_ignore(conn, k, self._key_values(record))
            row = conn.execute(
                sa.select(k).where(k.c.kind == record.kind, k.c.label == record.label,
                                   k.c.version == record.version)
            ).first()
            if row is None:
                raise KeyStoreError("a key could not be stored")
            return self._key(row)

        return self._write(run)

    # -- subjects ------------------------------------------------------------------------------

    @staticmethod
    def _head(row: Any) -> HeadRecord:
        return HeadRecord(
            ref=bytes(row.ref), key_id=bytes(row.key_id), state=row.state,
            current_version=row.current_version, created_at=row.created_at,
            shredded_at=row.shredded_at, receipt=row.receipt,
        )

    def subject_head(self, ref: bytes) -> HeadRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(self._heads).where(self._heads.c.ref == ref)).first()
        return self._head(row) if row is not None else None

    def subject_key(self, ref: bytes) -> tuple[HeadRecord, KeyRecord | None] | None:
        h, k = self._heads, self._keys
        with self._read() as conn:
            row = conn.execute(sa.select(h).where(h.c.ref == ref)).first()
            if row is None:
                return None
            head = self._head(row)
            krow = conn.execute(
                sa.select(k).where(k.c.key_id == head.key_id, k.c.version == head.current_version)
            ).first()
        return head, (self._key(krow) if krow is not None else None)

    def _locked_head(self, conn: Connection, ref: bytes) -> HeadRecord | None:
        row = conn.execute(
            sa.select(self._heads).where(self._heads.c.ref == ref).with_for_update()
        ).first()
        return self._head(row) if row is not None else None

    def create_subject_key(self, candidate: KeyRecord, now: float) -> KeyRecord:
        if candidate.ref is None or candidate.kind != KeyKind.SUBJECT:
            raise ValueError("not a subject key")
        ref = candidate.ref
        k = self._keys

        def run(conn: Connection) -> KeyRecord:
            head = self._locked_head(conn, ref)
            if head is None:
                inserted = self._insert_ignore(conn, self._heads, {
                    "ref": ref, "key_id": candidate.key_id, "state": State.ACTIVE,
                    "current_version": candidate.version, "created_at": now,
                })
                if inserted:
                    conn.execute(sa.insert(k).values(**self._key_values(candidate)))
                    return candidate
                head = self._locked_head(conn, ref)
                if head is None:
                    raise KeyStoreError("subject head vanished")
            if head.state != State.ACTIVE:
                raise SubjectShreddedError
            row = conn.execute(
                sa.select(k).where(k.c.key_id == head.key_id, k.c.version == head.current_version)
            ).first()
            if row is None:
                raise KeyStoreError("subject head without a key")
            return self._key(row)

        return self._write(run)

    def shred(self, ref: bytes, now: float, make_receipt: ReceiptFactory) -> tuple[str, bool]:
        h, k = self._heads, self._keys

        def run(conn: Connection) -> tuple[str, bool]:
            head = self._locked_head(conn, ref)
            if head is None:
                # Never seen: fence it anyway, so that no key is ever created for it.
                self._insert_ignore(conn, h, {
                    "ref": ref, "key_id": random_bytes(16), "state": State.ACTIVE,
                    "current_version": 0, "created_at": now,
                })
                head = self._locked_head(conn, ref)
                if head is None:
                    raise KeyStoreError("subject head vanished")
            if head.state == State.SHREDDED and head.receipt is not None:
                return head.receipt, False
            keys = [self._key(r) for r in conn.execute(sa.select(k).where(k.c.ref == ref)).all()]
            receipt = make_receipt(head if head.current_version else None, keys)
            conn.execute(
                sa.update(k).where(k.c.ref == ref).values(
                    wrapped=None, commitment=None, epoch_id=None,
                    state=State.DESTROYED, destroyed_at=now)
            )
            conn.execute(
                sa.update(h).where(h.c.ref == ref).values(
                    state=State.SHREDDED, shredded_at=now, receipt=receipt)
            )
            return receipt, True

        return self._write(run)

    # -- rotation ------------------------------------------------------------------------------

    def keys_outside_epoch(self, epoch_id: bytes, limit: int) -> list[KeyRecord]:
        k = self._keys
        with self._read() as conn:
            rows = conn.execute(
                sa.select(k).where(k.c.state == State.LIVE, k.c.epoch_id != epoch_id)
                .order_by(k.c.key_id, k.c.version).limit(limit)
            ).all()
        return [self._key(r) for r in rows]

    def rewrap(self, updates: Sequence[tuple[KeyRecord, bytes, bytes]], epoch_id: bytes) -> int:
        k = self._keys

        def run(conn: Connection) -> int:
            done = 0
            for old, wrapped, commitment in updates:
                res = conn.execute(
                    sa.update(k).where(
                        k.c.key_id == old.key_id, k.c.version == old.version,
                        k.c.state == State.LIVE, k.c.epoch_id == old.epoch_id,
                    ).values(epoch_id=epoch_id, wrapped=wrapped, commitment=commitment),
                    execution_options={"preserve_rowcount": True},
                )
                done += res.rowcount
            return done

        return self._write(run)


def _make_engine(url: str) -> Engine:
    u = sa.make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    return sa.create_engine(u, **kwargs)


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
        cur.execute("PRAGMA synchronous=NORMAL")
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
