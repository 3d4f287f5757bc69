"""Owns the mechanics of the key ring's hook registries: add, remove, and a snapshot to iterate
in the order added, thread-safe. Must not run hooks nor know what they do: their owners do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Hooks"]

H = TypeVar("H", bound=Callable[..., Any])


class Hooks(Generic[H]):
    """A registry of hooks (``add``/``remove``, as SQLAlchemy's event registry); iterating gives
    a snapshot, in the order they were added."""

    __slots__ = ("_hooks", "_lock")

    def __init__(self) -> None:
        self._hooks: list[H] = []
        self._lock = threading.Lock()

    def add(self, hook: H) -> None:
        with self._lock:
            self._hooks.append(hook)

    def remove(self, hook: H) -> None:
        """Remove ``hook``; one that is not registered is ignored."""
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)

    def __iter__(self) -> Iterator[H]:
        with self._lock:
            return iter(list(self._hooks))

    def __len__(self) -> int:
        return len(self._hooks)
