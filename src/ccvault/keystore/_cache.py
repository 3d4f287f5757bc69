"""A bounded, thread-safe cache with a maximum age per entry and an injectable clock."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from .._repr import safe_repr

__all__ = ["Clock", "TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Clock = Callable[[], float]


class TtlCache(Generic[K, V]):
    """Least-recently-used eviction past ``max_entries``; entries older than ``max_age`` expire.

    ``clock`` returns seconds (monotonic by default); tests pass a frozen clock instead of sleeping.
    """

    __slots__ = ("_clock", "_data", "_lock", "max_age", "max_entries")

    def __init__(self, max_entries: int, max_age: float, clock: Clock = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"TtlCache(entries={len(self._data)}, max_entries={self.max_entries}, "
            f"max_age={self.max_age})"
        )

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float | None = None) -> V | None:
        """The unexpired entry of ``key``, or None; ``now``: a reading of this cache's clock the
        caller has just taken (one reading instead of two)."""
        # No lock on the hit path: dict.get and move_to_end are single C calls, atomic under
        # the GIL; writers (put, pop, discard_where) take the lock among themselves.
        item = self._data.get(key)
        if item is None:
            return None
        if (self._clock() if now is None else now) - item[0] >= self.max_age:
            with self._lock:
                self._data.pop(key, None)
            return None
        # try/except, not contextlib.suppress (two Python calls per hit): this is on every key and
        # subject-ref lookup of the column types' read and write paths.
        try:  # noqa: SIM105
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread in between
            pass
        return item[1]

    def get_many(self, keys: Iterable[K]) -> list[V | None]:
        """:meth:`get` of each key, in order, with one clock reading for the whole batch."""
        lookup = self.getter()
        return [lookup(key) for key in keys]

    def getter(self) -> Callable[[K], V | None]:
        """A :meth:`get` for one batch of lookups: one clock reading for all of them, and no
        method call per lookup beyond the returned function (the column types' read loop calls
        it once per key of a batch of rows). Expired entries read as missing and are dropped,
        as :meth:`get` drops them."""
        data = self._data
        get = data.get
        move_to_end = data.move_to_end
        now = self._clock()
        max_age = self.max_age
        lock = self._lock

        def lookup(key: K) -> V | None:
            item = get(key)
            if item is None:
                return None
            if now - item[0] >= max_age:
                with lock:
                    data.pop(key, None)
                return None
            try:  # noqa: SIM105
                move_to_end(key)
            except KeyError:  # evicted by another thread in between
                pass
            return item[1]

        return lookup

    def peek(self, key: K) -> tuple[float, V] | None:
        """(age in seconds, value) of an unexpired entry, for callers with their own freshness
        rule inside ``max_age`` (the vault's epoch keys and their KMS grace period)."""
        item = self._data.get(key)
        if item is None:
            return None
        age = self._clock() - item[0]
        if age >= self.max_age:
            with self._lock:
                self._data.pop(key, None)
            return None
        return age, item[1]

    def expiries(self, keys: Iterable[K]) -> list[tuple[float, V] | None]:
        """(expiry, value) of each key's unexpired entry, or None, with one clock reading: when
        the entry expires on this cache's clock (for a map kept beside the cache that must not
        outlive its entries). Nothing is refreshed or dropped."""
        get = self._data.get
        now = self._clock()
        max_age = self.max_age
        out: list[tuple[float, V] | None] = []
        append = out.append
        for key in keys:
            item = get(key)
            if item is None or now - item[0] >= max_age:
                append(None)
            else:
                append((item[0] + max_age, item[1]))
        return out

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = (self._clock(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        """:meth:`put` of each (key, value), in order, with one lock and one clock reading;
        the least recently used entries past ``max_entries`` are dropped once, at the end (the
        same entries as one put after another would leave)."""
        with self._lock:
            data = self._data
            now = self._clock()
            move_to_end = data.move_to_end
            for key, value in items:
                data[key] = (now, value)
                move_to_end(key)
            while len(data) > self.max_entries:
                data.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def discard_where(self, predicate: Callable[[K, V], bool]) -> None:
        with self._lock:
            for key in [k for k, (_, v) in list(self._data.items()) if predicate(k, v)]:
                del self._data[key]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
