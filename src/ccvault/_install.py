"""Owns opening an installation: the key store's installation record and schema version, the
refusal of newer and (outside an upgrade) older stores, and the embedded development default.
Must not create keys or epochs: the vault's parts do, once the store is known to be usable.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Final

from sqlalchemy.engine import Engine

from .crypto._subject import SubjectType
from .errors import ConfigurationError, KeyStoreError
from .keystore._protocol import KeyStore
from .keystore._schema import SCHEMA_VERSION
from .keystore._sql import SqlKeyStore
from .kms._protocol import Kms

__all__ = [
    "UPGRADING",
    "check_schema",
    "embedded_kms",
    "existing_installation",
    "is_async_engine",
    "parse_installation",
]

UPGRADING: Final = contextvars.ContextVar("ccvault_upgrading_store", default=False)
"""Set by :meth:`Vault.upgrade_store` only: a vault built meanwhile opens an older store."""


def is_async_engine(obj: object) -> bool:
    """An SQLAlchemy AsyncEngine, recognised without importing the asyncio extension (which needs
    greenlet, an optional dependency)."""
    return isinstance(getattr(obj, "sync_engine", None), Engine)


def _where(store: KeyStore) -> str:
    return store.location if isinstance(store, SqlKeyStore) else repr(store)


def existing_installation(store: KeyStore) -> tuple[str, str]:
    """The store's (installation id, subject type); an empty store is a ConfigurationError."""
    found = store.installation()
    if found is None:
        raise ConfigurationError(f"no ccvault installation at {_where(store)}")
    return found


def parse_installation(installation: str, subject_type: str) -> tuple[bytes, SubjectType]:
    """The stored installation id as bytes and the stored subject type, or a KeyStoreError when
    the installation record does not parse (a damaged or tampered ``ccvault_meta`` row)."""
    try:
        return bytes.fromhex(installation), SubjectType.parse(subject_type)
    except ValueError:
        pass
    raise KeyStoreError(
        "the key store's installation record (ccvault_meta rows installation_id and "
        "subject_type) does not parse: it is damaged or was tampered with"
    )


def check_schema(store: KeyStore, *, upgrading: bool) -> None:
    """Refuse a store of a newer schema, and one of an older schema unless upgrading it
    (only ``ccvault upgrade-store`` ever raises the version)."""
    version = store.schema_version()
    if version is None or version == SCHEMA_VERSION:
        return
    where = _where(store)
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the key store at {where} has schema version {version}, newer than this ccvault "
            f"knows ({SCHEMA_VERSION}): a newer ccvault upgraded it; run that version (a store "
            "is never downgraded)"
        )
    if not upgrading:
        raise ConfigurationError(
            f"the key store at {where} has schema version {version}, older than this ccvault's "
            f"({SCHEMA_VERSION}): run `ccvault upgrade-store` (Vault.upgrade_store) once, then "
            "open it (docs/operations.md, 'Upgrading the key store')"
        )


def embedded_kms(home: Path, *, create: bool = True) -> Kms:
    """The embedded development default's KMS: a local master key file under ``home``."""
    from .kms._local import LocalKms

    if create:
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {str(home)!r} as the ccvault home (CCVAULT_HOME): {exc.strerror}"
            ) from None
    return LocalKms.from_file(home / "master.key", create=create)
