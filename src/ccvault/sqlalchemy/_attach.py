"""``vault.attach(engine)``: the one call that makes an engine encrypt and decrypt."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session

from ..errors import ConfigurationError
from . import _inspect, _read, _write
from ._plan import plan_for
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
    from ..vault import Vault

__all__ = ["attach", "attached_vault", "detach"]

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


def check_tables() -> None:
    """Raise ConfigurationError for any table with encrypted columns that cannot work: two
    columns with one context label, a subject column missing, encrypted, or filled in by the
    database (autoincrement, identity, server default)."""
    for table in list(encrypted_tables):
        plan_for(table)


class _Attachment:
    """What an attached engine's listeners use: the vault and the attach options."""

    __slots__ = ("on_error", "shred_hook", "strict", "vault")

    def __init__(self, vault: Vault, strict: bool, on_error: OnError, shred_hook: Any) -> None:
        self.vault = vault
        self.strict = strict
        self.on_error = on_error
        self.shred_hook = shred_hook


_ATTACHMENT = "_ccvault_attachment"  # on the Engine: the _Attachment, None once detached


def attach(vault: Vault, engine: Any, *, strict: bool = False, on_error: OnError = "raise") -> None:
    """Encrypt every write and decrypt every read of encrypted columns on ``engine``.

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
    check_tables()
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
    hook = functools.partial(_clear_blind_indexes, sync)
    setattr(sync, _ATTACHMENT, _Attachment(vault, strict, on_error, hook))
    sync._ccvault_vault = vault  # type: ignore[attr-defined]
    setattr(sync.dialect, VAULT, vault)
    setattr(sync.dialect, ATTACHED, True)
    vault._after_shred.append(hook)


def detach(vault: Vault, engine: Any) -> None:
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
    with contextlib.suppress(ValueError):
        vault._after_shred.remove(current.shred_hook)


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
        # Detached: values of encrypted columns are refused by their bind step.
        return clause, multiparams, params
    return _write.before_execute(current.vault, conn, clause, multiparams, params, options)


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
        current.vault,
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


def _clear_blind_indexes(engine: Engine, vault: Vault, subject: object) -> list[str]:
    """After a shred: NULL the customer's blind-index values in every searchable table. Returns
    the context labels of the columns swept."""
    value = vault.subject_type.coerce(subject)
    swept: list[str] = []
    for table in list(searchable_tables):
        plan = plan_for(table)
        if plan is None:
            continue
        keys = [c.index_key for c in plan.columns if c.index_key is not None]
        stmt = (
            sa.update(table).where(plan.subject == value).values({table.c[k]: None for k in keys})
        )
        try:
            with engine.begin() as conn:
                conn.execute(stmt)
        except sa.exc.SQLAlchemyError:
            # A table this engine's database does not have (another app's model): skip it.
            log.debug("blind-index sweep skipped a table", extra={"table": table.name})
            continue
        swept.extend(c.label for c in plan.columns if c.index_key is not None)
    return swept


def attached_vault(engine: Any) -> Vault | None:
    sync = getattr(engine, "sync_engine", engine)
    vault: Vault | None = getattr(sync, "_ccvault_vault", None)
    return vault
