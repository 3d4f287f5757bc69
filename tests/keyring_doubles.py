"""Test doubles around the key ring: a settable clock, a key store that counts subject-key
reads, and a write-key cache that runs a shred in the middle of a fill."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ccvault.keystore import SqlKeyStore
from ccvault.keystore._cache import TtlCache


class Clock:
    """A monotonic clock the test moves by hand (``clock.t += 5``)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class CountingStore:
    """The real store, counting reads of subject keys."""

    def __init__(self, inner: SqlKeyStore) -> None:
        self._inner = inner
        self.reads = 0

    def subject_keys(self, *args: Any) -> Any:
        self.reads += 1
        return self._inner.subject_keys(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def shred_during_fill(ring: Any, shred: Callable[[], object]) -> list[bool]:
    """Replace ``ring``'s write-key cache with one that calls ``shred()`` once, right after a
    by-subject fill read its entries' expiries and before the fill takes the cache lock.
    Returns the armed flag: empty once the shred ran."""
    armed = [True]

    class ShredAfterExpiries(TtlCache[bytes, Any]):
        def expiries(self, keys: Any) -> Any:
            found = super().expiries(keys)
            if armed:
                armed.clear()
                shred()
            return found

    old = ring._write_keys
    ring._write_keys = ShredAfterExpiries(old.max_entries, old.max_age, old._clock)
    return armed
