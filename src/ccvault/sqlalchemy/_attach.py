"""``vault.attach(engine)``: the one call that makes an engine encrypt and decrypt."""

from __future__ import annotations

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
from ._types import ATTACHED, VAULT, encrypted_tables, searchable_tables

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["attach"]

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


def attach(vault: Vault, engine: Any, *, strict: bool = False) -> None:
    """Encrypt every write and decrypt every read of encrypted columns on ``engine``.

    ``engine`` is an :class:`~sqlalchemy.engine.Engine` or an ``AsyncEngine``. ``strict=True``
    makes reads of shredded values raise SubjectShreddedError instead of returning SHREDDED.
    Every table with encrypted columns defined so far is checked first (ConfigurationError for
    duplicate context labels or a subject the database generates); models defined later are
    checked when SQLAlchemy configures their mappers, Core tables at their first statement.
    """
    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise ConfigurationError("attach() takes an SQLAlchemy Engine or AsyncEngine")
    current = getattr(sync, "_ccvault_vault", None)
    if current is vault:
        return
    if current is not None:
        raise ConfigurationError("this engine is already attached to another vault")
    check_tables()
    _install_orm_listeners()
    event.listen(
        sync, "before_execute", functools.partial(_write.before_execute, vault), retval=True
    )
    event.listen(sync, "before_cursor_execute", _inspect.before_cursor_execute, retval=True)
    event.listen(
        sync, "after_cursor_execute", functools.partial(_read.after_cursor_execute, vault, strict)
    )
    sync._ccvault_vault = vault  # type: ignore[attr-defined]
    setattr(sync.dialect, VAULT, vault)
    setattr(sync.dialect, ATTACHED, True)
    vault._after_shred.append(functools.partial(_clear_blind_indexes, sync))


def _clear_blind_indexes(engine: Engine, vault: Vault, subject: object) -> None:
    """After a shred: NULL the customer's blind-index values in every searchable table."""
    value = vault.subject_type.coerce(subject)
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


def attached_vault(engine: Any) -> Vault | None:
    sync = getattr(engine, "sync_engine", engine)
    vault: Vault | None = getattr(sync, "_ccvault_vault", None)
    return vault
