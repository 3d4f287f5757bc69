"""The child of tests/adversarial/test_sigkill.py: shred subjects, and die by SIGKILL where told.

    python sigkill_child.py <master key file> <key-store URL> <subject uuid>...

``CCVAULT_TEST_KILL_AT`` says where this process kills itself (``os.kill(os.getpid(), SIGKILL)``:
no cleanup, no atexit, no flush — what a power cut or the OOM killer leaves):

* ``execute:N`` — at the N-th SQL statement the vault sends after it opened;
* ``commit:N`` — at the N-th COMMIT, before the database has it;
* ``stored:N`` — right after the N-th shred committed in the key store, before the vault
  evicts the subject's keys and returns the receipt;
* ``seconds:S`` — after S seconds of shredding, wherever it is;
* empty — no kill: shred everything and exit 0.

The hook lives here only, in a test-only script: ccvault has no such hook. Prints one line per
finished shred (``shredded <uuid>``) and ``done`` at the end. The test starts :func:`run` in a
process forked from a server that imported everything first (``forkserver``), with the kill
point as an argument: the same code, without a second of imports per run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from typing import Any

import sqlalchemy as sa

from ccvault import Vault
from ccvault.kms import LocalKms


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(vault: Vault, spec: str) -> None:
    what, _, value = spec.partition(":")
    if what == "seconds":
        threading.Timer(float(value), _die).start()
        return
    target = int(value)
    count = 0

    def tick(*_args: Any) -> None:
        nonlocal count
        count += 1
        if count == target:
            _die()

    if what == "execute":
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", tick)
    elif what == "commit":
        sa.event.listen(sa.engine.Engine, "commit", tick)
    elif what == "stored":
        store = vault._store
        shred = store.shred

        def shred_then_tick(*args: Any, **kwargs: Any) -> Any:
            result = shred(*args, **kwargs)
            tick()
            return result

        store.shred = shred_then_tick  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown CCVAULT_TEST_KILL_AT {spec!r}")


def run(key_path: str, url: str, subjects: list[str], kill_at: str) -> None:
    """Open a vault, arm the kill, shred ``subjects`` in order."""
    vault = Vault(LocalKms.from_file(key_path), url)
    if kill_at:
        _arm(vault, kill_at)
    for s in subjects:
        vault.shred(uuid.UUID(s))
        print("shredded", s, flush=True)
    vault.close()
    print("done", flush=True)


if __name__ == "__main__":
    key_path, url, *subjects = sys.argv[1:]
    run(key_path, url, subjects, os.environ.get("CCVAULT_TEST_KILL_AT", ""))
