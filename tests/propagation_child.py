"""The children of tests/test_propagation.py: a warm reader, writer or watcher in a process of
its own, on a real clock, that reports when a shred (or a restore) reached it.

Each child opens a vault (``cache_ttl`` 60 s, so only the invalidation channel can make it stop
serving a key), warms the subject's key, waits for its listener where it has one, says
``("ready", pid)`` on its pipe, and then uses the cached key every millisecond:

* ``read``: decrypts a value of the subject until ``SubjectShreddedError``, then sends
  ``("refused", time.monotonic())`` (CLOCK_MONOTONIC: comparable between processes on Linux);
* ``write``: encrypts for the subject until ``SubjectShreddedError``, then sends
  ``("refused", time.monotonic(), [every value it wrote])``;
* ``watch``: decrypts a value of a live subject, sends ``("seen", seq)`` each time its poll
  learns a new row, and ``("restored", time.monotonic(), keys cached)`` from its store-restored
  hook (the keys it still caches when the hook runs: the poll dropped them all before).

A child that sees nothing within ``timeout`` seconds sends ``("timeout",)``. The tests start
:func:`run` in processes forked from a server that imported everything first (``forkserver``).
"""

from __future__ import annotations

import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from ccvault import SubjectShreddedError, Vault
from ccvault.kms import LocalKms

CTX = "customers.phone"


def run(
    role: str,
    key_path: str,
    url: str,
    subject: str,
    blob_hex: str,
    pipe: Connection,
    options: dict[str, Any],
    timeout: float = 10.0,
) -> None:
    vault = Vault(LocalKms.from_file(key_path), url, cache_ttl=60.0, **options)
    try:
        _run(vault, role, uuid.UUID(subject), bytes.fromhex(blob_hex), pipe, timeout)
    finally:
        vault.close()
        pipe.close()


def _run(
    vault: Vault, role: str, subject: uuid.UUID, blob: bytes, pipe: Connection, timeout: float
) -> None:
    ring = vault._ring
    vault.decrypt(blob, context=CTX)
    vault.encrypt(subject, b"warm", context=CTX)  # the write key is cached too
    listener = ring.invalidations._listener
    deadline = time.monotonic() + 10
    while listener is not None and listener.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.002)
    if role == "watch":
        ring.store_restored.add(
            lambda: pipe.send(("restored", time.monotonic(), len(ring._read_keys)))
        )
    pipe.send(("ready", vault.installation_id))
    written: list[bytes] = []
    seen = ring.invalidations.last_seq
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if role == "write":
                written.append(vault.encrypt(subject, b"+1 555 0199", context=CTX))
            else:
                vault.decrypt(blob, context=CTX)
        except SubjectShreddedError:
            pipe.send(("refused", time.monotonic(), written))
            return
        if role == "watch":
            if ring.invalidations.last_seq != seen:
                seen = ring.invalidations.last_seq
                pipe.send(("seen", seen))
            if pipe.poll():  # the parent says stop
                return
        time.sleep(0.001)
    pipe.send(("timeout",))
