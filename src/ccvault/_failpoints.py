"""Owns the named failpoints of the crash-safety tests: :func:`failpoint` ends the process on the
spot (``os._exit(137)``, what SIGKILL leaves: no cleanup, no rollback, no atexit) when the
environment variable ``CCVAULT_FAILPOINT`` names that point. Must not do anything else: it never
changes what the code around a point does, and costs one cached lookup when the variable is
unset. A test hook, never a setting: it must never be set in production (docs/erasure.md,
'Crash safety').

The variable is read, and checked against :data:`FAILPOINTS`, at the first call in a process; a
name that is not one of them raises :class:`~ccvault.errors.ConfigurationError` naming the known
ones, so a misspelt point fails loudly instead of never firing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Final, NoReturn

from .errors import ConfigurationError

__all__ = ["EXIT_STATUS", "FAILPOINTS", "VARIABLE", "armed", "failpoint", "reread"]

VARIABLE: Final = "CCVAULT_FAILPOINT"
EXIT_STATUS: Final = 137  # 128 + SIGKILL: what a killed process reports

FAILPOINTS: Final = (
    # the shred (ccvault/erasure/_link.py, _shred.py), in the order it passes them
    "before-intent",  # in the key-store transaction, keys destroyed, before the ledger append
    "after-intent",  # the ledger took the receipt; the key-store transaction not committed
    "after-keystore-commit",  # the key store committed; nothing evicted, no hook run
    "after-sweep-1",  # the after-shred hooks (the blind-index sweep) ran
    # the completion phase (placed when it lands)
    "after-ledger-append",  # the completion entry is in the ledger, not yet in the key store
    "after-completion",  # the completion committed
    # the JSONL ledger (ccvault/erasure/_ledger_file.py)
    "mid-JSONL-line",  # half of an appended line written, flushed and fsynced
)
"""Every failpoint, by name."""


@functools.cache
def _armed() -> str | None:
    name = os.environ.get(VARIABLE) or None
    if name is not None and name not in FAILPOINTS:
        raise ConfigurationError(
            f"{VARIABLE} names no failpoint (a test hook; never set it in production): the "
            f"known ones are {', '.join(FAILPOINTS)}"
        )
    return name


def reread() -> None:
    """Read :data:`VARIABLE` again at the next call (tests that change it in-process)."""
    _armed.cache_clear()


def armed(name: str) -> bool:
    """Whether this process ends at failpoint ``name`` (for a point that must prepare its crash,
    like the torn JSONL line, before :func:`failpoint`)."""
    return _armed() == name


def failpoint(name: str) -> None:
    """End the process with status :data:`EXIT_STATUS` when :data:`VARIABLE` is ``name``."""
    if _armed() == name:
        _exit()


def _exit() -> NoReturn:
    # What was logged and printed before the point is the test's evidence: flush it. Nothing
    # else runs (no transaction is rolled back or committed, no file closed).
    for logger in (logging.getLogger("ccvault"), logging.getLogger()):
        for handler in logger.handlers:
            with contextlib.suppress(Exception):  # a broken handler must not keep it alive
                handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing to flush
            stream.flush()
    os._exit(EXIT_STATUS)
