"""The children of tests/test_ledger_restore.py, each a vault with a ledger in a process of its
own, on a real clock:

* ``read``: decrypts a batch of values (one per customer) until told to stop, with
  ``cache_ttl`` 60 s (only the invalidation channel and the ledger replay can stop it serving a
  key it cached). Says ``("ready",)`` once warm, ``("all-refused", t)`` once every value reads
  SHREDDED, ``("restored", t)`` from a store-restored hook registered after the vault's own
  (so after the ledger replay), and at ``stop`` ``("report", resurrected, batches)``:
  ``resurrected`` counts reads of a value that returned plaintext after the same value had read
  SHREDDED once (never allowed), ``batches`` the batches read after the restore;
* ``shred``: waits for ``go``, shreds its customers, sends ``("receipts", [json, …])``;
* ``crash``: shreds one customer with the ledger append followed by ``os._exit(137)`` (a crash
  after the ledger took the entry and before the key store committed).
"""

from __future__ import annotations

import os
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from ccvault import SHREDDED, Vault
from ccvault.kms import LocalKms

CTX = "customers.phone"


def run(
    role: str,
    key_path: str,
    url: str,
    ledger: str,
    payload: list[str],
    pipe: Connection,
) -> None:
    vault = Vault(LocalKms.from_file(key_path), url, ledger=ledger, cache_ttl=60.0)
    try:
        if role == "read":
            _read(vault, [bytes.fromhex(b) for b in payload], pipe)
        elif role == "shred":
            _shred(vault, [uuid.UUID(s) for s in payload], pipe)
        else:
            _crash(vault, uuid.UUID(payload[0]))
    finally:
        vault.close()
        pipe.close()


def _read(vault: Vault, blobs: list[bytes], pipe: Connection) -> None:
    items = [(b, CTX) for b in blobs]
    restored: list[float] = []
    vault._ring.store_restored.add(lambda: restored.append(time.monotonic()))
    vault.decrypt_many(items)  # warm: every key cached
    pipe.send(("ready",))
    refused = [False] * len(blobs)
    resurrected = batches = 0
    announced = said_restored = False
    while True:
        for i, out in enumerate(vault.decrypt_many(items)):
            if out is SHREDDED:
                refused[i] = True
            elif refused[i]:
                resurrected += 1
        if restored:
            batches += 1
            if not said_restored:
                said_restored = True
                pipe.send(("restored", restored[0]))
        if all(refused) and not announced:
            announced = True
            pipe.send(("all-refused", time.monotonic()))
        if pipe.poll():
            pipe.recv()
            pipe.send(("report", resurrected, batches))
            return
        time.sleep(0.002)


def _shred(vault: Vault, customers: list[uuid.UUID], pipe: Connection) -> None:
    pipe.send(("ready",))
    pipe.recv()  # go
    receipts = [vault.shred(c).model_dump_json() for c in customers]
    pipe.send(("receipts", receipts))


def _crash(vault: Vault, customer: uuid.UUID) -> None:
    journal: Any = vault._link._journal
    real = journal.append_after

    def append_then_die(after: int, records: Any) -> Any:
        real(after, records)
        os._exit(137)

    journal.append_after = append_then_die
    vault.shred(customer)
