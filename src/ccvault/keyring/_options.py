"""Owns the settings every part of the key hierarchy reads, and the installation's identity.
Must not hold keys, caches or connections: the parts own those, the facade owns this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ..crypto._subject import SubjectType
from ..errors import ConfigurationError
from ..retention import RetentionPolicy

__all__ = ["Installation", "Progress", "VaultOptions"]

Progress = Callable[[int, int], None]
"""Called after each batch of a long operation with (items done so far, total expected): keys
for the admin operations, subjects for ``shred_many``."""


@dataclass(slots=True)
class VaultOptions:
    """The vault's settings, checked once by the facade (``check_vault_options``) and shared by
    its parts, which read them at the moment they use them. ``Vault.cache_ttl`` and the other
    public attributes read and write these fields: a value assigned after construction applies
    where the parts read it (epoch-key freshness, receipts, the destroy horizon), not to the
    maximum age of caches already built."""

    cache_ttl: float
    kms_grace_period: float
    cache_max_entries: int
    epoch_rotation_period: timedelta
    backup_retention: timedelta
    per_epoch_roots: bool
    nonce_budget: int
    readonly: bool
    now: Callable[[], float]  # wall clock: receipts, epoch dates
    monotonic: Callable[[], float]  # cache ages, backoff, the invalidation poll
    propagation_interval: float = 1.0  # seconds between polls of the invalidation channel
    listen_url: str | None = None  # LISTEN connection's URL (None: the key store's; "off": none)
    # seconds between the polls that also run the store probes (the erasure ledger's check of
    # the key store's applied seq: a store restored under an idle process)
    ledger_check_interval: float = 60.0
    # the retention categories (None: no policy; retention= is refused)
    retention_policy: RetentionPolicy | None = None
    # how long a recorded policy change that may expire data earlier (a shorter keep_for, a
    # category dropped or back) waits before it takes effect (DESIGN.md, lifecycle rule 8)
    policy_grace: timedelta = timedelta(days=7)

    def writable(self, what: str) -> None:
        """Raise :class:`ConfigurationError` when the vault was opened read-only."""
        if self.readonly:
            raise ConfigurationError(
                f"the vault is read-only (opened with readonly=True): it does not {what}"
            )


@dataclass(frozen=True, slots=True)
class Installation:
    """Who the key store belongs to: its id (hex, as stored, and as bytes for associated data),
    the subject type recorded at its creation, and its propagation bound (seconds: no process
    polls the invalidation channel less often; receipts state it)."""

    id: str
    raw: bytes
    subject_type: SubjectType
    propagation_bound: float
