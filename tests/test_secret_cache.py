"""Key-material container and the bounded TTL cache."""

from __future__ import annotations

import copy
import pickle

import pytest

from ccvault._secret import SecretKey
from ccvault.keystore import TtlCache
from ccvault.testing import FrozenClock


def test_secret_key_hides_material() -> None:
    k = SecretKey(b"\x42" * 32)
    assert "42" not in repr(k)
    assert "B" * 4 not in repr(k)
    assert repr(k) == str(k) == "SecretKey(<256-bit, redacted>)"
    assert k == SecretKey(b"\x42" * 32)
    assert k != SecretKey(b"\x43" * 32)
    with pytest.raises(TypeError):
        hash(k)
    for attempt in (lambda: pickle.dumps(k), lambda: copy.copy(k), lambda: copy.deepcopy(k)):
        with pytest.raises(TypeError):
            attempt()
    with pytest.raises(TypeError):
        SecretKey("text")  # type: ignore[arg-type]


def test_cache_expires_by_age_with_injected_clock() -> None:
    clock = FrozenClock(1000.0)
    cache: TtlCache[str, int] = TtlCache(10, 60, clock)
    cache.put("a", 1)
    clock.advance(59.9)
    assert cache.get("a") == 1
    clock.advance(0.1)
    assert cache.get("a") is None
    assert len(cache) == 0


def _three_entries() -> tuple[TtlCache[str, int], FrozenClock]:
    """A full cache of 3 with a 60 s age: "old" put 30 s before "a" and "b"."""
    clock = FrozenClock(1000.0)
    cache: TtlCache[str, int] = TtlCache(3, 60, clock)
    cache.put("old", 0)
    clock.advance(30)
    cache.put("a", 1)
    cache.put("b", 2)
    return cache, clock


def test_cache_get_many_is_get_of_each_key() -> None:
    cache, clock = _three_entries()
    clock.advance(30)  # "old" has reached max_age, "a" and "b" have not
    assert cache.get_many(["a", "missing", "old", "b", "a"]) == [1, None, None, 2, 1]
    assert len(cache) == 2  # the expired entry is dropped, as get() drops it
    cache.put("c", 3)
    cache.get_many(["a"])  # a hit counts as a use: "b" is now the least recent
    cache.put("d", 4)
    assert cache.get("b") is None
    assert cache.get_many(["a", "c", "d"]) == [1, 3, 4]


def test_cache_getter_reads_the_clock_once_and_counts_hits_as_uses() -> None:
    cache, clock = _three_entries()
    lookup = cache.getter()  # the clock is read now: 30 s after "old" was put
    clock.advance(30)
    assert [lookup(k) for k in ("a", "b", "old", "missing")] == [1, 2, 0, None]
    later = cache.getter()  # 60 s after "old": expired for this batch, as get() would say
    assert later("old") is None
    assert later("a") == 1  # a hit counts as a use: "b" is now the least recent
    cache.put("c", 3)
    cache.put("d", 4)
    assert cache.get("b") is None
    assert cache.get("a") == 1


def test_cache_is_bounded_lru() -> None:
    cache: TtlCache[int, int] = TtlCache(3, 60, FrozenClock())
    for i in range(3):
        cache.put(i, i)
    cache.get(0)  # 0 is now most recent
    cache.put(3, 3)
    assert cache.get(1) is None
    assert cache.get(0) == 0
    assert len(cache) == 3
    cache.discard_where(lambda k, _v: k == 0)
    assert cache.get(0) is None
    with pytest.raises(ValueError, match="max_entries"):
        TtlCache(0, 1)
    with pytest.raises(ValueError, match="max_age"):
        TtlCache(1, 0)


def test_put_many_leaves_what_one_put_after_another_leaves() -> None:
    """``put_many`` (one lock, one clock reading): the same entries, in the same LRU order and
    with the same evictions past ``max_entries``, as a put of each in turn; an existing key is
    refreshed and moved to the end; the entries take the one clock reading as their age."""
    clock = FrozenClock(1000.0)
    items = [("b", 20), ("x", 1), ("y", 2), ("b", 21), ("z", 3)]
    one, many = TtlCache[str, int](4, 60, clock), TtlCache[str, int](4, 60, clock)
    for cache in (one, many):
        cache.put("a", 0)
        cache.put("b", 10)
    for key, value in items:
        one.put(key, value)
    many.put_many(iter(items))
    assert list(many._data.items()) == list(one._data.items())
    assert list(many._data) == ["x", "y", "b", "z"]  # "a" evicted; "b" refreshed, moved
    assert many.get("b") == 21
    clock.advance(59.9)
    assert many.get("z") == 3
    clock.advance(0.1)
    assert many.get("z") is None  # aged from the one clock reading of the call
    many.put_many([])
    assert len(many) == 3
