"""A fault-injection wrapper for any KMS backend: latency, throttling, outage and hang.

Faults are injected *before* the wrapped backend is called and go through the same bounded,
jittered retries the real backends use, so a short throttle is absorbed and a long one surfaces as
:class:`~ccvault.errors.KmsUnavailableError`. Time passes on the injected clock: give it a
:class:`FrozenClock` (the one the vault under test uses) and a hang costs no wall time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from .._repr import safe_repr
from ..errors import KmsUnavailableError
from ..kms._protocol import Kms
from ..kms._retry import RetryPolicy, call_with_retries
from ._basics import FrozenClock, KmsWrapper

__all__ = ["FaultyKms"]

T = TypeVar("T")


class FaultyKms(KmsWrapper):
    """Wraps a :class:`~ccvault.kms.Kms`; faults are switched on and off by the test.

    ``timeout`` is the per-call deadline a hang runs into; ``calls`` counts the attempts that
    reached the fault layer, per method (retries included), and ``delegated`` the calls that
    reached the wrapped backend.
    """

    def __init__(
        self,
        inner: Kms,
        *,
        clock: FrozenClock | None = None,
        timeout: float = 5.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(inner)
        self.clock = clock
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.calls: Counter[str] = Counter()
        self.delegated: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._latency = 0.0
        self._throttled = 0
        self._mode: str | None = None

    @safe_repr
    def __repr__(self) -> str:
        return f"FaultyKms({self.inner!r}, mode={self._mode}, throttled={self._throttled})"

    # -- switches --------------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Every call takes ``seconds`` (a call slower than ``timeout`` times out)."""
        self._latency = float(seconds)

    def throttle(self, failures: int) -> None:
        """The next ``failures`` attempts are throttled (retried with backoff)."""
        with self._lock:
            self._throttled = failures

    def outage(self) -> None:
        """Every call fails at once, as with connection refused or HTTP 503."""
        self._mode = "outage"

    def hang(self) -> None:
        """Every call waits until the timeout and then fails."""
        self._mode = "hang"

    def heal(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._mode, self._latency, self._throttled = None, 0.0, 0

    # -- internals -------------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            time.sleep(seconds)

    def _attempt(self, name: str, op: Callable[[], T]) -> T:
        with self._lock:
            self.calls[name] += 1
            mode, latency = self._mode, self._latency
            throttled = self._throttled > 0
            if throttled:
                self._throttled -= 1
        if mode == "outage":
            raise KmsUnavailableError("the KMS is unreachable (injected outage)")
        if mode == "hang" or latency >= self.timeout:
            self._wait(self.timeout)
            raise KmsUnavailableError("the KMS call timed out (injected hang)")
        if throttled:
            raise KmsUnavailableError("the KMS throttled the call (injected)")
        if latency:
            self._wait(latency)
        with self._lock:
            self.delegated[name] += 1
        try:
            return op()
        except Exception as exc:
            raise _FromInner(exc) from None

    def _call(self, name: str, op: Callable[[], T]) -> T:
        try:
            return call_with_retries(
                lambda: self._attempt(name, op),
                translate=lambda exc: None,
                policy=self.policy,
                sleep=self._wait,
            )
        except _FromInner as wrapped:
            # The wrapped backend's own errors pass through as they are: it already retried.
            raise wrapped.error from None


class _FromInner(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error
