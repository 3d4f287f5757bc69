"""A frozen clock, an in-memory vault and a call-counting KMS wrapper."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from .._repr import safe_repr
from .._secret import SecretKey
from ..kms._local import LocalKms
from ..kms._multi import kms_by_id, unwrap_epoch_key, wrap_epoch_key
from ..kms._protocol import Kms, RootState, WrappedKey
from ..vault import Vault

__all__ = ["CountingKms", "FrozenClock", "KmsWrapper", "ephemeral_vault"]

T = TypeVar("T")


class FrozenClock:
    """A clock that only moves when told to. Thread-safe; call it to read the time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += seconds

    @safe_repr
    def __repr__(self) -> str:
        return f"FrozenClock({self._now})"


def ephemeral_vault(keystore: str, **kwargs: Any) -> Vault:
    """A vault with an in-memory LocalKms: everything it encrypts is lost with the process."""
    return Vault(LocalKms.ephemeral(), keystore, **kwargs)


class KmsWrapper:
    """Base of the testing wrappers: every Kms call goes through :meth:`_call`."""

    def __init__(self, inner: Kms) -> None:
        self.inner = inner

    @property
    def kms_id(self) -> str:
        return self.inner.kms_id

    @property
    def supports_root_lifecycle(self) -> bool:
        return self.inner.supports_root_lifecycle

    @property
    def root_destruction_delay(self) -> timedelta:
        return self.inner.root_destruction_delay

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        return self._call("wrap", lambda: self.inner.wrap(key, context=context, root_id=root_id))

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        return self._call("unwrap", lambda: self.inner.unwrap(wrapped, context=context))

    def current_root(self) -> str:
        return self._call("current_root", self.inner.current_root)

    def new_root(self) -> str:
        return self._call("new_root", self.inner.new_root)

    def destroy_root(self, root_id: str) -> None:
        self._call("destroy_root", lambda: self.inner.destroy_root(root_id))

    def root_state(self, root_id: str) -> RootState:
        return self._call("root_state", lambda: self.inner.root_state(root_id))

    # A wrapped MultiKms keeps one wrap per member (ccvault.kms._multi.EpochKeyring).

    def wrap_all(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> list[WrappedKey]:
        return self._call(
            "wrap", lambda: wrap_epoch_key(self.inner, key, context=context, root_id=root_id)
        )

    def unwrap_agreeing(
        self,
        wraps: Sequence[WrappedKey],
        *,
        context: Mapping[str, str],
        verify: Callable[[SecretKey], bool],
    ) -> SecretKey:
        return self._call(
            "unwrap",
            lambda: unwrap_epoch_key(self.inner, wraps, context=context, verify=verify),
        )

    def backends(self) -> dict[str, Kms]:
        inner = kms_by_id(self.inner)
        # A single backend is reached through this wrapper; a MultiKms' members directly.
        return {self.kms_id: self} if len(inner) == 1 else inner

    def _call(self, name: str, op: Callable[[], T]) -> T:
        return op()


class CountingKms(KmsWrapper):
    """Wraps any :class:`~ccvault.kms.Kms` and counts the calls made to it, per method."""

    def __init__(self, inner: Kms) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    @safe_repr
    def __repr__(self) -> str:
        return f"CountingKms({self.inner!r}, calls={dict(self.calls)})"

    def _call(self, name: str, op: Callable[[], T]) -> T:
        with self._lock:
            self.calls[name] += 1
        return op()
