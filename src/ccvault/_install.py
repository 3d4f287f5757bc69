"""Owns opening an installation: the key store's installation record and schema version, the
refusal of newer and (outside an upgrade) older stores, and the embedded development default.
Must not create keys or epochs: the vault's parts do, once the store is known to be usable.
"""

from __future__ import annotations

import contextvars
import math
from pathlib import Path
from typing import Final

from sqlalchemy.engine import Engine

from .crypto._subject import SubjectType
from .errors import ConfigurationError, KeyStoreError
from .keystore._protocol import KeyStore
from .keystore._schema import INVALIDATION_SEQ, PROPAGATION_BOUND, SCHEMA_VERSION
from .keystore._sql import SqlKeyStore
from .kms._protocol import Kms

__all__ = [
    "UPGRADING",
    "check_propagation",
    "check_schema",
    "embedded_kms",
    "existing_installation",
    "installation_facts",
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


def installation_facts(propagation_interval: float) -> dict[str, str]:
    """The ``ccvault_meta`` rows a new installation (or ``upgrade-store``) records beside its id:
    the propagation bound (this process's interval) and the invalidation channel's counter."""
    return {PROPAGATION_BOUND: repr(float(propagation_interval)), INVALIDATION_SEQ: "0"}


def check_propagation(store: KeyStore, interval: float, *, upgrading: bool) -> float:
    """The installation's propagation bound (seconds), recorded at its creation; a process that
    would poll less often than that is refused. While upgrading a store that records none yet,
    ``interval`` (the upgrade records it)."""
    value = store.meta(PROPAGATION_BOUND).get(PROPAGATION_BOUND)
    where = _where(store)
    if value is None:
        if upgrading:
            return interval
        raise ConfigurationError(
            f"the key store at {where} records no propagation bound (ccvault_meta."
            f"{PROPAGATION_BOUND}): the row was deleted; `ccvault upgrade-store` records it again"
        )
    try:
        bound = float(value)
    except ValueError:
        bound = math.nan
    if not math.isfinite(bound) or bound <= 0:
        raise ConfigurationError(
            f"the key store at {where} records a propagation bound that is not a positive "
            f"number of seconds (ccvault_meta.{PROPAGATION_BOUND} = {value[:20]!r})"
        )
    if interval > bound:
        raise ConfigurationError(
            f"propagation_interval (CCVAULT_PROPAGATION_INTERVAL_SECONDS) is {interval:g} s, "
            f"longer than the installation's propagation bound of {bound:g} s recorded in the "
            f"key store at {where}: every process must poll at least that often, or the bound "
            "receipts state would not hold. Configure at most "
            f"{bound:g} s (docs/design.md, 'Caches and the shred propagation bound')"
        )
    return bound


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
