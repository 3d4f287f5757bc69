"""Helpers for testing applications that use ccvault (and ccvault itself).

* ``FrozenClock`` replaces ``time.time``/``time.monotonic`` where ccvault accepts a ``clock``, so
  tests move time forward instead of sleeping.
* ``ephemeral_vault`` gives a vault whose master key lives only in memory.
* ``CountingKms`` counts the calls made to a KMS backend.
* ``FaultyKms`` injects latency, throttling, outages and hangs in front of any backend, on an
  injectable clock.
* ``KmsContract`` is the behaviour every KMS backend must show; subclass it in a test module and
  implement ``make_kms`` to run it against your backend.

This package imports no test framework: the contract uses plain ``assert``.
"""

from ._basics import CountingKms, FrozenClock, ephemeral_vault
from ._contract import KmsContract
from ._faults import FaultyKms

__all__ = ["CountingKms", "FaultyKms", "FrozenClock", "KmsContract", "ephemeral_vault"]
