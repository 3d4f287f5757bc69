"""``vault.attach(engine)``: the one call that makes an engine encrypt and decrypt."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.util import await_only

from ..erasure import EnginePreview, PreviewColumn, SkippedTable, TablePreview
from ..errors import ConfigurationError, ErasureIncompleteError
from ..keystore._sql import mask_url
from . import _inspect, _read, _write
from ._datamap import warn_unindexed_subjects
from ._plan import ColumnPlan, TablePlan, check_subject_column, check_subject_type, plan_for
from ._subjects import SubjectsMatch, subject_match, subjects_match
from ._types import (
    ATTACHED,
    ON_ERROR,
    VAULT,
    Encrypted,
    OnError,
    encrypted_tables,
    searchable_tables,
)

if TYPE_CHECKING:
    from ..keyring import KeyRing
    from ..vault import Vault

__all__ = [
    "attach",
    "attached_on_error",
    "attached_vault",
    "columns_in_database",
    "detach",
    "preview_shred",
    "readable_columns",
]

log = logging.getLogger("ccvault")

_orm_lock = threading.Lock()
_orm_installed = False


def _install_orm_listeners() -> None:
    global _orm_installed
    with _orm_lock:
        if _orm_installed:
            return
        event.listen(Mapper, "before_update", _write.before_update)
        event.listen(Mapper, "mapper_configured", _check_mapper)
        event.listen(Session, "after_flush", _write.after_flush)
        _orm_installed = True


def _check_mapper(mapper: Mapper[Any], _class: type[Any]) -> None:
    """Models mapped after attach() are checked when SQLAlchemy configures them."""
    for table in mapper.tables:
        plan_for(table)
    warn_unindexed_subjects(mapper.tables)


def check_tables(vault: Vault | None = None) -> None:
    """Raise ConfigurationError for any table with encrypted columns that cannot work: two
    columns with one context label, a subject column missing, encrypted, or filled in by the
    database (autoincrement, identity, server default), a retention_from column that is not a
    client-set DateTime (or naive without retention_tz=), and with ``vault`` and its retention
    policy, a retention category that policy does not have. A vault without a policy attaches
    (it reads retention-bound columns, which needs no policy) and refuses their writes, naming
    the column, at the write."""
    checked = vault is not None and vault.retention_policy is not None
    for table in list(encrypted_tables):
        plan = plan_for(table)
        if plan is not None and plan.retained and checked:
            assert vault is not None
            _write.check_categories(plan, vault._periods)


class _Attachment:
    """What an attached engine's listeners use: the vault, its key ring (the read and write
    hooks' one interface to keys) and the attach options."""

    __slots__ = (
        "collations_checked",
        "on_error",
        "periods",
        "ring",
        "shred_hook",
        "strict",
        "vault",
    )

    def __init__(
        self, vault: Vault, ring: KeyRing, strict: bool, on_error: OnError, shred_hook: Any
    ) -> None:
        self.vault = vault
        self.ring = ring
        self.periods = vault._periods  # retention periods for the write hook
        self.strict = strict
        self.on_error = on_error
        self.shred_hook = shred_hook
        self.collations_checked = False  # str subject columns' MariaDB/MySQL collations


_ATTACHMENT = "_ccvault_attachment"  # on the Engine: the _Attachment, None once detached


def attach(
    vault: Vault,
    ring: KeyRing,
    engine: Any,
    *,
    strict: bool = False,
    on_error: OnError = "raise",
) -> None:
    """Encrypt every write and decrypt every read of encrypted columns on ``engine`` with
    ``vault``, whose ``ring`` the read and write hooks use.

    ``engine`` is an :class:`~sqlalchemy.engine.Engine` or an ``AsyncEngine``. ``strict=True``
    makes reads of shredded values raise SubjectShreddedError instead of returning SHREDDED.
    ``on_error="sentinel"`` makes a value that fails to decrypt read as UNREADABLE (logged with
    its table, column and primary key) instead of raising DecryptionError; a column's own
    ``Encrypted(..., on_error=)`` overrides it.
    Every table with encrypted columns defined so far is checked first (ConfigurationError for
    duplicate context labels or a subject the database generates); models defined later are
    checked when SQLAlchemy configures their mappers, Core tables at their first statement.
    """
    sync = _sync(engine, "attach")
    if on_error not in ON_ERROR:
        raise ConfigurationError('attach(on_error=) is "raise" or "sentinel"')
    current: _Attachment | None = getattr(sync, _ATTACHMENT, None)
    if current is not None:
        if current.vault is not vault:
            raise ConfigurationError(
                "this engine is already attached to another vault: vault.detach(engine) first"
            )
        if (current.strict, current.on_error) != (strict, on_error):
            raise ConfigurationError(
                "this engine is already attached with other options: detach it first"
            )
        return
    check_tables(vault)
    warn_unindexed_subjects(list(searchable_tables))
    _install_orm_listeners()
    if not hasattr(sync, _ATTACHMENT):
        # Installed once per engine; they serve whichever vault is attached now, and refuse
        # encrypted columns while none is (after detach()), so no ciphertext is ever returned
        # as data by processors SQLAlchemy cached while the engine was attached.
        event.listen(sync, "before_execute", functools.partial(_before_execute, sync), retval=True)
        # Statements that would compute on ciphertext (ORDER BY, DISTINCT, max(), ...) are
        # refused before they reach the database, attached or not.
        event.listen(sync, "before_cursor_execute", _inspect.before_cursor_execute, retval=True)
        event.listen(sync, "after_cursor_execute", functools.partial(_after_cursor_execute, sync))
    hook = functools.partial(_clear_blind_indexes, sync, vault)
    attachment = _Attachment(vault, ring, strict, on_error, hook)
    setattr(sync, _ATTACHMENT, attachment)
    sync._ccvault_vault = vault  # type: ignore[attr-defined]
    setattr(sync.dialect, VAULT, vault)
    setattr(sync.dialect, ATTACHED, True)
    ring.after_shred.add(
        hook,
        preview=functools.partial(preview_shred, sync, vault),
        many=functools.partial(_clear_blind_indexes_many, sync, vault),
    )
    if not sync.dialect.is_async:  # an async engine's are checked at its first sweep
        attachment.collations_checked = True
        _warn_non_binary_collations(sync, vault)


def detach(vault: Vault, ring: KeyRing, engine: Any) -> None:
    """Undo :func:`attach`: ``engine`` no longer encrypts or decrypts with ``vault`` (and then
    refuses to read or write encrypted columns) and ``vault``'s shreds no longer sweep its
    tables. Another vault may attach it afterwards. Detaching an engine that is not attached
    does nothing; one attached to another vault is a ConfigurationError."""
    sync = _sync(engine, "detach")
    current: _Attachment | None = getattr(sync, _ATTACHMENT, None)
    if current is None:
        return
    if current.vault is not vault:
        raise ConfigurationError("this engine is attached to another vault")
    setattr(sync, _ATTACHMENT, None)
    sync._ccvault_vault = None  # type: ignore[attr-defined]
    setattr(sync.dialect, VAULT, None)
    ring.after_shred.remove(current.shred_hook)


def _sync(engine: Any, what: str) -> Engine:
    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise ConfigurationError(f"{what}() takes an SQLAlchemy Engine or AsyncEngine")
    return sync


def _before_execute(
    sync: Engine, conn: Any, clause: Any, multiparams: Any, params: Any, options: Any
) -> tuple[Any, Any, Any]:
    current: _Attachment | None = getattr(sync, _ATTACHMENT)
    if current is None:
        # Detached: values of encrypted columns are refused by their bind step, and a statement
        # the hook prepared (which has none) is refused here.
        _write.refuse_prepared(clause)
        return clause, multiparams, params
    return _write.before_execute(
        current.ring, conn, clause, multiparams, params, options, current.periods
    )


def _after_cursor_execute(
    sync: Engine,
    conn: Any,
    cursor: Any,
    statement: Any,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    current: _Attachment | None = getattr(sync, _ATTACHMENT)
    if current is None:
        _refuse_detached_read(context)
        return
    _read.after_cursor_execute(
        current.ring,
        current.strict,
        current.on_error,
        conn,
        cursor,
        statement,
        parameters,
        context,
        executemany,
    )


def _refuse_detached_read(context: Any) -> None:
    compiled = getattr(context, "compiled", None)
    columns = getattr(compiled, "_result_columns", None) or ()
    if any(isinstance(c.type, Encrypted) for c in columns):
        raise ConfigurationError(
            "an Encrypted column was read on an engine detached from its vault: "
            "call vault.attach(engine)"
        )


# The blind-index sweep after a shred tries each table SWEEP_ATTEMPTS times, pausing
# SWEEP_BACKOFF seconds before the 2nd and 3rd tries; each try also waits for the database's own
# lock timeout (SQLite's `timeout`, InnoDB's innodb_lock_wait_timeout, PostgreSQL's lock_timeout).
SWEEP_ATTEMPTS = 3
SWEEP_BACKOFF = (0.2, 1.0)
_sleep = time.sleep  # tests replace it: they never wait for time to pass
_CHUNK = 500  # primary keys per UPDATE ... WHERE pk IN (...)


class _CannotSweep(Exception):
    """A table whose rows of the subject cannot be told apart from other subjects' rows."""


def _clear_blind_indexes(engine: Engine, vault: Vault, subject: object) -> list[tuple[str, str]]:
    """After a shred: NULL the subject's blind-index values in every searchable table of this
    engine's database. Returns (table, context label) of each column swept. A table the database
    does not have is skipped; one that still fails after SWEEP_ATTEMPTS tries is named in the
    ErasureIncompleteError raised once every table was tried."""
    return _clear_blind_indexes_many(engine, vault, [subject])


def _clear_blind_indexes_many(
    engine: Engine, vault: Vault, subjects: Sequence[object]
) -> list[tuple[str, str]]:
    """:func:`_clear_blind_indexes` of a ``shred_many`` batch: one transaction per table for all
    of ``subjects`` (``UPDATE ... WHERE subject IN (...)``, 500 values per statement; for
    ``str`` subjects the candidates, then exactly the stored values whose ref is one of theirs).
    A table that fails is not cleared for any of them."""
    current: _Attachment | None = getattr(engine, _ATTACHMENT, None)
    if current is not None and not current.collations_checked:
        current.collations_checked = True
        _warn_non_binary_collations(engine, vault)
    match = subjects_match(vault, subjects)
    swept: list[tuple[str, str]] = []
    failed: dict[str, tuple[str, list[str]]] = {}
    for table in list(searchable_tables):
        try:
            plan = plan_for(table)
            if plan is None:
                continue
            check_subject_type(plan, vault.subject_type)
        except ConfigurationError:
            continue  # never written through this vault: nothing of the subject to sweep
        done, why, labels = _sweep_table(engine, plan, match)
        swept += [(table.fullname, label) for label in done]
        if why is not None:
            failed[table.fullname] = (why, labels)
    if failed:
        raise ErasureIncompleteError(
            "blind indexes not cleared in "
            + ", ".join(f"table {name} ({why})" for name, (why, _) in failed.items()),
            tables=list(failed),
            columns=[label for _, labels in failed.values() for label in labels],
            swept=[label for _, label in swept],
        )
    return swept


def _sweep_table(
    engine: Engine, plan: TablePlan, match: SubjectsMatch
) -> tuple[list[str], str | None, list[str]]:
    """Sweep one table, retried. Returns the labels swept, and when it failed, why (error type
    and database code, never the statement's values) and the labels not swept. Columns the
    database does not have (another app's table of the same name, a migration not yet run) hold
    no blind index: they are neither swept nor failed, as a table it does not have."""
    columns = [c for c in plan.columns if c.index_key is not None]
    why = ""
    pause = False
    for attempt in range(SWEEP_ATTEMPTS):
        if pause:
            _pause(engine, SWEEP_BACKOFF[min(attempt, len(SWEEP_BACKOFF)) - 1])
        pause = True
        try:
            with engine.begin() as conn:
                _sweep(conn, plan, columns, match)
            return [c.label for c in columns], None, []
        except _CannotSweep as exc:
            return [], str(exc), [c.label for c in columns]
        except sa.exc.SQLAlchemyError as exc:
            why = _db_reason(exc)
        if attempt == 0:
            present = columns_in_database(engine, plan.table)
            if present is None or plan.subject.name not in present:
                log.debug("blind-index sweep skipped a table", extra={"table": plan.table.name})
                return [], None, []
            there = [
                c
                for c in columns
                if c.index_key is not None and plan.table.c[c.index_key].name in present
            ]
            if not there:
                return [], None, []
            pause = len(there) == len(columns)  # with fewer columns: again at once
            columns = there
    log.warning(
        "blind-index sweep of table %s failed %d times (%s)", plan.table.name, SWEEP_ATTEMPTS, why
    )
    return [], f"{why}, {SWEEP_ATTEMPTS} attempts", [c.label for c in columns]


def _sweep(
    conn: sa.Connection, plan: TablePlan, columns: list[ColumnPlan], match: SubjectsMatch
) -> None:
    table = plan.table
    nulls = {table.c[c.index_key]: None for c in columns if c.index_key is not None}
    if match.exact:
        # int and uuid subjects: the database's equality is exact.
        for values in match.chunks():
            conn.execute(sa.update(table).where(plan.subject.in_(values)).values(nulls))
        return
    # str subjects: the database may compare case-, accent- or trailing-space-insensitively
    # (MariaDB's default collations) and never normalises Unicode. Its comparison only selects
    # candidates (locked); Python keeps exactly the stored values whose ref is a subject's.
    pk = list(table.primary_key.columns)
    candidates = [
        row
        for values in match.chunks()
        for row in conn.execute(
            sa.select(*pk, plan.subject).where(plan.subject.in_(values)).with_for_update()
        ).all()
    ]
    if not candidates:
        return
    owned = {v: match.owns(v) for v in {row[-1] for row in candidates}}
    mine = [row for row in candidates if owned[row[-1]]]
    if not mine:
        return
    stored = sorted({row[-1] for row in mine})
    if not pk:
        if len(mine) != len(candidates):
            raise _CannotSweep(
                "it has no primary key, and its subject column's comparison does not tell this "
                "subject's rows from other subjects' rows: add a primary key"
            )
        for i in range(0, len(stored), _CHUNK):
            chunk = stored[i : i + _CHUNK]
            conn.execute(sa.update(table).where(plan.subject.in_(chunk)).values(nulls))
        return
    key = pk[0] if len(pk) == 1 else sa.tuple_(*pk)
    for i in range(0, len(mine), _CHUNK):
        rows = mine[i : i + _CHUNK]
        ids = [row[0] if len(pk) == 1 else tuple(row[:-1]) for row in rows]
        # unchanged since it was read
        values = sorted({row[-1] for row in rows})
        conn.execute(
            sa.update(table).where(key.in_(ids)).where(plan.subject.in_(values)).values(nulls)
        )


def preview_shred(engine: Engine, vault: Vault, subject: object) -> EnginePreview:
    """The dry run of a shred on this engine's database (``shred(subject, dry_run=True)``): per
    table with encrypted columns, the subject's rows — matched as :func:`_sweep` matches them —,
    the encrypted columns that would read as SHREDDED and the blind-index columns the sweep
    would set to NULL. Tables are skipped as the sweep skips them. Runs SELECTs only (no lock),
    one connection per table; a table it cannot read is named in ``not_counted``."""
    match = subject_match(vault, subject)
    tables: list[TablePreview] = []
    skipped: list[SkippedTable] = []
    failed: list[SkippedTable] = []
    for table in sorted(list(encrypted_tables), key=lambda t: t.fullname):
        try:
            plan = plan_for(table)
        except ConfigurationError:
            reason = "attach() refuses its encrypted columns: never written through this vault"
            skipped.append(SkippedTable(table=table.fullname, reason=reason))
            continue
        if plan is None:
            continue
        try:
            with engine.connect() as conn:
                present = readable_columns(vault, conn, table, plan.subject)
                rows = match.count(conn, plan.subject) if not isinstance(present, str) else 0
        except sa.exc.SQLAlchemyError as exc:
            failed.append(SkippedTable(table=table.fullname, reason=_db_reason(exc)))
            continue
        if isinstance(present, str):
            skipped.append(SkippedTable(table=table.fullname, reason=present))
            continue
        columns = [
            PreviewColumn(
                column=c.column.name,
                label=c.label,
                blind_index=(
                    table.c[c.index_key].name
                    if c.index_key is not None and table.c[c.index_key].name in present
                    else None
                ),
            )
            for c in plan.columns
            if c.column.name in present
        ]
        tables.append(
            TablePreview(
                table=table.fullname,
                subject_column=plan.subject.name,
                rows=rows,
                columns=tuple(columns),
            )
        )
    return EnginePreview(
        database=mask_url(engine.url.render_as_string(hide_password=False)),
        tables=tuple(tables),
        skipped=tuple(skipped),
        not_counted=tuple(failed),
    )


def _pause(engine: Engine, seconds: float) -> None:
    if engine.dialect.is_async:
        with contextlib.suppress(sa.exc.MissingGreenlet):
            await_only(asyncio.sleep(seconds))  # under vault.run(): never block the event loop
            return
    _sleep(seconds)


def columns_in_database(bind: Engine | sa.Connection, table: sa.Table) -> set[str] | None:
    """The names of ``table``'s columns in the database, None when it has no such table (and
    every column of the model when the database cannot say). Through a connection of its own
    when ``bind`` is an Engine."""
    try:
        if isinstance(bind, sa.Connection):
            return _columns_through(bind, table)
        with bind.connect() as conn:
            return _columns_through(conn, table)
    except sa.exc.SQLAlchemyError:
        return {c.name for c in table.columns}


def readable_columns(
    vault: Vault, conn: sa.Connection, table: sa.Table, subject: sa.Column[Any]
) -> set[str] | str:
    """The names of ``table``'s columns in the database, or why no subject's rows can be read
    from it by ``subject``: a subject column not of the installation's subject type (never
    written through this vault), a table or a subject column the database does not have."""
    try:
        check_subject_column(subject, vault.subject_type)
    except ConfigurationError:
        return (
            f"its subject column {subject.name} is not of the installation's subject type "
            f"({vault.subject_type.spec}): never written through this vault"
        )
    present = columns_in_database(conn, table)
    if present is None:
        return "the database has no such table"
    if subject.name not in present:
        return f"the database's table has no column {subject.name}"
    return present


def _columns_through(conn: sa.Connection, table: sa.Table) -> set[str] | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    return {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}


def _db_reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The error's type and the database's code for it: never its text, which may quote the
    statement's parameters (the subject)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    code = (
        getattr(orig, "sqlstate", None)  # psycopg
        or getattr(orig, "sqlite_errorname", None)  # sqlite3
        or getattr(orig, "pgcode", None)
    )
    if code is None and orig.args and isinstance(orig.args[0], int):
        code = orig.args[0]  # PyMySQL / mysqlclient error number
    name = type(orig).__name__
    return f"{name} {code}" if code is not None else name


# MariaDB/MySQL collations that compare exactly: binary strings, and the NO PAD binary ones
# (utf8mb4_bin and friends are PAD SPACE: 'alice' = 'alice ').
_EXACT_COLLATION = re.compile(r"(?:^binary$|_nopad_bin$|_0900_bin$)")


def _warn_non_binary_collations(engine: Engine, vault: Vault) -> None:
    """Log a WARNING for each str subject column whose MariaDB/MySQL collation is not exact."""
    if vault.subject_type.spec != "str" or engine.dialect.name not in ("mysql", "mariadb"):
        return
    wanted: dict[str | None, set[tuple[str, str]]] = {}
    for table in list(encrypted_tables):
        try:
            plan = plan_for(table)
        except ConfigurationError:
            continue
        if plan is not None and isinstance(plan.subject.type, sa.String):
            wanted.setdefault(table.schema, set()).add((table.name, plan.subject.name))
    found: list[tuple[str, str, str]] = []
    try:
        with engine.connect() as conn:
            for schema, columns in wanted.items():
                rows = conn.execute(
                    sa.text(
                        "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME "
                        "FROM information_schema.COLUMNS "
                        "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE())"
                    ),
                    {"schema": schema},
                )
                found += [
                    (t, c, collation)
                    for t, c, collation in rows
                    if (t, c) in columns and collation and not _EXACT_COLLATION.search(collation)
                ]
    except sa.exc.SQLAlchemyError as exc:
        log.debug("subject column collations not checked (%s)", _db_reason(exc))
        return
    for table_name, column, collation in sorted(found):
        log.warning(
            "%s.%s, a subject column, has collation %s: the database compares subjects "
            "ignoring case or trailing spaces ('Alice' = 'alice' = 'alice '), where ccvault "
            "sees distinct subjects. Shreds sweep exactly; the application's own queries on "
            "this column do not. Prefer a binary NO PAD collation (utf8mb4_nopad_bin on "
            "MariaDB, utf8mb4_0900_bin on MySQL): "
            "docs/sqlalchemy.md, 'How subjects are compared'.",
            table_name,
            column,
            collation,
        )


def attached_on_error(bind: Any) -> OnError:
    """The ``on_error`` of the vault attached to ``bind``'s engine (an Engine or Connection),
    ``"raise"`` when none is attached."""
    sync = getattr(bind, "engine", bind)
    current: _Attachment | None = getattr(getattr(sync, "sync_engine", sync), _ATTACHMENT, None)
    return "raise" if current is None else current.on_error


def attached_vault(engine: Any) -> Vault | None:
    sync = getattr(engine, "sync_engine", engine)
    vault: Vault | None = getattr(sync, "_ccvault_vault", None)
    return vault
