"""The KMS backend protocol: wrap and unwrap epoch keys under a root key that never leaves the KMS.

A backend is any object with these few methods. The protocol is built for per-epoch roots from the
start: every wrap names the root that made it (``WrappedKey.root_id``), each epoch records it, and
a backend states whether it can create and destroy roots (``supports_root_lifecycle``); the erasure
horizon of shredded data in old backups needs a root that can be destroyed.

Errors a backend raises: :class:`~ccvault.errors.DecryptionError` when the wrapped bytes or their
context do not authenticate, :class:`~ccvault.errors.KmsError` when the KMS refuses (unknown,
disabled or destroyed root, access denied), :class:`~ccvault.errors.KmsUnavailableError` when it
cannot be reached in time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from .._repr import safe_repr
from .._secret import SecretKey
from ..crypto._encoding import lp

__all__ = ["Kms", "RootState", "WrappedKey", "canonical_context"]


class RootState(str, enum.Enum):
    """Lifecycle state of a root key in its KMS."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    PENDING_DELETION = "pending_deletion"
    DESTROYED = "destroyed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A key wrapped by one KMS: which KMS, which root, and the opaque bytes."""

    kms_id: str
    root_id: str
    blob: bytes

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"WrappedKey(kms_id={self.kms_id!r}, root_id={self.root_id!r}, "
            f"blob=<{len(self.blob)} bytes>)"
        )


@runtime_checkable
class Kms(Protocol):
    """What ccvault needs from a key-management service."""

    @property
    def kms_id(self) -> str:
        """A stable name for this KMS (recorded beside every key it wraps; never a secret)."""
        ...

    @property
    def supports_root_lifecycle(self) -> bool:
        """Whether :meth:`new_root` and :meth:`destroy_root` work on this backend."""
        ...

    @property
    def root_destruction_delay(self) -> timedelta:
        """The longest time, after :meth:`destroy_root` returns, during which the root can still
        be brought back (AWS KMS: the pending-deletion window, in which ``CancelKeyDeletion``
        restores it; a backend that destroys at once: zero). Erasure receipts add it to their
        projected horizon, so it must never be understated."""
        ...

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        """Wrap ``key`` under ``root_id`` (the current root when None), bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        """Unwrap a key wrapped by this KMS with the same context."""
        ...

    def current_root(self) -> str:
        """The root that :meth:`wrap` uses by default."""
        ...

    def new_root(self) -> str:
        """Create a new root and make it current; return its id (admin operation)."""
        ...

    def destroy_root(self, root_id: str) -> None:
        """Destroy a root so that nothing it wrapped can be unwrapped again (admin operation)."""
        ...

    def root_state(self, root_id: str) -> RootState: ...


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The context as unambiguous bytes: sorted keys, each key and value length-prefixed."""
    parts: list[bytes] = []
    for key in sorted(context):
        parts.append(key.encode("utf-8"))
        parts.append(context[key].encode("utf-8"))
    return lp(*parts)
