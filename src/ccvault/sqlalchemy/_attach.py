"""``vault.attach(engine)``: the one call that makes an engine encrypt and decrypt."""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session

from ..errors import ConfigurationError
from . import _read, _write
from ._types import ATTACHED

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["attach"]

_orm_lock = threading.Lock()
_orm_installed = False


def _install_orm_listeners() -> None:
    global _orm_installed
    with _orm_lock:
        if _orm_installed:
            return
        event.listen(Mapper, "before_update", _write.before_update)
        event.listen(Session, "after_flush", _write.after_flush)
        _orm_installed = True


def attach(vault: Vault, engine: Any, *, strict: bool = False) -> None:
    """Encrypt every write and decrypt every read of encrypted columns on ``engine``.

    ``engine`` is an :class:`~sqlalchemy.engine.Engine` or an ``AsyncEngine``. ``strict=True``
    makes reads of shredded values raise SubjectShreddedError instead of returning SHREDDED.
    """
    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise ConfigurationError("attach() takes an SQLAlchemy Engine or AsyncEngine")
    current = getattr(sync, "_ccvault_vault", None)
    if current is vault:
        return
    if current is not None:
        raise ConfigurationError("this engine is already attached to another vault")
    _install_orm_listeners()
    event.listen(
        sync, "before_execute", functools.partial(_write.before_execute, vault), retval=True
    )
    event.listen(
        sync, "after_cursor_execute", functools.partial(_read.after_cursor_execute, vault, strict)
    )
    sync._ccvault_vault = vault  # type: ignore[attr-defined]
    setattr(sync.dialect, ATTACHED, True)


def attached_vault(engine: Any) -> Vault | None:
    sync = getattr(engine, "sync_engine", engine)
    vault: Vault | None = getattr(sync, "_ccvault_vault", None)
    return vault
