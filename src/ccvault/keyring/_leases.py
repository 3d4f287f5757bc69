"""Owns the vault-wide keys' nonce budget: blocks of uses reserved in the key store per context
label, and the move to a new key version when one is spent. Must not cache subject keys nor
read values: it hands out the key that seals the next vault-wide value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from .._repr import safe_repr
from ..crypto._format import ValueKey
from ..crypto._primitives import random_bytes
from ..errors import KeyStoreError
from ..keystore._protocol import KeyStore
from ..keystore._records import KeyKind, KeyRecord
from ._epochs import Epochs
from ._options import VaultOptions

__all__ = ["USE_BLOCK", "VAULTWIDE_NONCE_BUDGET", "VaultwideKeys"]

VAULTWIDE_NONCE_BUDGET: Final = 2**31
"""Values sealed under one vault-wide key version before the next version takes over (random
96-bit nonces: collision probability below 2**-35). See docs/design.md, "Nonce budget"."""

USE_BLOCK: Final = 4096
"""Uses of a vault-wide key version a process reserves at a time."""


class _Lease:
    """A block of a vault-wide key version's nonce budget reserved by this process."""

    __slots__ = ("key", "remaining")

    def __init__(self, key: ValueKey, remaining: int) -> None:
        self.key = key
        self.remaining = remaining

    @safe_repr
    def __repr__(self) -> str:
        return f"_Lease({self.key!r}, remaining={self.remaining})"


class VaultwideKeys:
    """The key of each context label's vault-wide values, leased ``USE_BLOCK`` uses at a time.
    ``value_key`` turns a key row into a cached value key (the key ring's)."""

    def __init__(
        self,
        store: KeyStore,
        epochs: Epochs,
        options: VaultOptions,
        value_key: Callable[[KeyRecord], ValueKey],
    ) -> None:
        self._store = store
        self._epochs = epochs
        self._options = options
        self._value_key = value_key
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def key(self, context: str) -> ValueKey:
        """The key that seals the next vault-wide value of ``context`` (one use of its budget)."""
        with self._lock:
            lease = self._leases.get(context)
            if lease is None or lease.remaining <= 0:
                lease = self._lease(context)
                self._leases[context] = lease
            lease.remaining -= 1
            return lease.key

    def clear(self) -> None:
        """Forget every lease (the unused uses of each block are lost)."""
        self._leases.clear()

    def _lease(self, context: str) -> _Lease:
        """Reserve a block of nonce budget on the context's current vault-wide key version,
        moving to a new version when the current one has spent its budget."""
        self._options.writable("reserve vault-wide key uses (encrypt with NO_SUBJECT)")
        store_new_key = self._epochs.store_new_key
        rec = self._store.latest_key(KeyKind.VAULTWIDE, context)
        for _ in range(8):
            if rec is None or not rec.is_live:
                version = rec.version + 1 if rec is not None else 1
                key_id = rec.key_id if rec is not None else random_bytes(16)
                rec = store_new_key(KeyKind.VAULTWIDE, key_id, version, label=context)
            budget = self._options.nonce_budget
            if self._store.reserve_uses(rec.key_id, rec.version, USE_BLOCK, budget):
                return _Lease(self._value_key(rec), USE_BLOCK)
            rec = store_new_key(KeyKind.VAULTWIDE, rec.key_id, rec.version + 1, label=context)
        raise KeyStoreError("could not reserve nonce budget for a vault-wide key")
