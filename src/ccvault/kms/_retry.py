"""Bounded retries with jittered exponential backoff, shared by the KMS backends.

A backend translates each exception of its SDK into a ccvault error; a
:class:`~ccvault.errors.KmsUnavailableError` (throttling, 5xx, timeout, connection refused) is
retried, anything else (access denied, disabled key, integrity failure) is raised at once. After
the last attempt the unavailable error is raised: callers fail closed.

The AWS backend leaves retrying to botocore's "standard" mode, which implements the same policy;
this module serves the backends whose SDK does not retry (hvac) and the fault-injection wrapper in
:mod:`ccvault.testing`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import CcvaultError, KmsUnavailableError

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")

_jitter = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` calls at most; before attempt n+1 sleep uniform(0, min(cap, base·2ⁿ))."""

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("max_attempts must be ≥ 1 and delays must not be negative")

    def delay(self, attempt: int) -> float:
        """The jittered pause after the ``attempt``-th failure (0-based), "full jitter"."""
        return _jitter.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))


def call_with_retries(
    op: Callable[[], T],
    *,
    translate: Callable[[Exception], CcvaultError | None],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``op``; retry it while ``translate`` maps its failure to KmsUnavailableError.

    ``translate`` returns the ccvault error to raise for an SDK exception, or None to let the
    exception through unchanged (a programming error); ccvault errors raised by ``op`` pass
    through as they are, except KmsUnavailableError, which is retried. The SDK exception is not
    chained, neither as ``__cause__`` nor as ``__context__``: its text can echo request data and
    its traceback's frames hold request arguments, and ccvault's messages carry identifiers only.
    """
    last: KmsUnavailableError | None = None
    for attempt in range(policy.max_attempts):
        error: CcvaultError | None = None
        translated = False
        try:
            return op()
        except Exception as exc:
            if isinstance(exc, CcvaultError):
                error = exc
            else:
                error = translate(exc)
                if error is None:
                    raise
                translated = True
        # Raised here, outside the except block: raising inside it would keep the SDK exception
        # (request URL, server message, frames holding request data) as ``__context__``.
        if not isinstance(error, KmsUnavailableError):
            if translated:
                raise error from None
            raise error
        last = error
        if attempt + 1 < policy.max_attempts:
            sleep(policy.delay(attempt))
    assert last is not None
    raise KmsUnavailableError(f"{last} (gave up after {policy.max_attempts} attempts)") from None
