"""One fresh process of the KMS benchmark: ``python -m benchmarks._kms_worker write|read|naive``.

Reads its KMS from ``--kms-url`` (``kms_from_url``, as ``Vault.from_settings`` does: credentials
from the environment), wraps it in ``CountingKms`` and prints one JSON line: KMS calls by method
and the seconds from the vault's construction to its last value (interpreter start excluded).

* ``write``: a vault encrypts ``--rows`` values for ``--customers`` customers (row i belongs to
  customer i mod customers) and stores the blobs in ``--data``;
* ``read``: a vault reads every blob of ``--data`` back and checks it;
* ``naive``: the per-row envelope a KMS-per-value design pays: every value gets a fresh data key
  that the KMS wraps (and, read back, unwraps), with no vault at all; ``--rows`` of them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

from ccvault import Vault
from ccvault._secret import SecretKey
from ccvault._settings import kms_from_url
from ccvault.crypto._primitives import Aead
from ccvault.testing import CountingKms

CONTEXT = "interactions.transcript"
VALUE = b"caller asked to move the appointment to Tuesday; confirmed by e-mail. " * 2


def _write(kms: CountingKms, keystore: str, rows: int, customers: int, data: Path) -> float:
    people = [uuid.uuid4() for _ in range(customers)]
    t0 = time.perf_counter()
    with Vault(kms, keystore) as vault:
        blobs = [
            (
                str(people[i % customers]),
                vault.encrypt(people[i % customers], VALUE, context=CONTEXT),
            )
            for i in range(rows)
        ]
    elapsed = time.perf_counter() - t0
    data.write_text(json.dumps([(s, b.hex()) for s, b in blobs]))
    return elapsed


def _read(kms: CountingKms, keystore: str, data: Path) -> float:
    rows = [(uuid.UUID(s), bytes.fromhex(b)) for s, b in json.loads(data.read_text())]
    t0 = time.perf_counter()
    with Vault(kms, keystore) as vault:
        vault.warm(dict.fromkeys(s for s, _ in rows))
        for subject, blob in rows:
            if vault.decrypt(blob, context=CONTEXT, subject=subject) != VALUE:
                raise RuntimeError("read back a wrong value")
    return time.perf_counter() - t0


def _naive(kms: CountingKms, rows: int) -> float:
    """Write and read ``rows`` values, each under its own KMS-wrapped data key."""
    context = {"purpose": "naive-envelope"}
    t0 = time.perf_counter()
    for _ in range(rows):
        key = SecretKey(os.urandom(32))
        wrapped = kms.wrap(key, context=context)
        nonce = os.urandom(12)
        sealed = Aead(key.reveal()).seal(nonce, VALUE, b"")
        opened = Aead(kms.unwrap(wrapped, context=context).reveal()).open(nonce, sealed, b"")
        if opened != VALUE:
            raise RuntimeError("naive envelope returned a wrong value")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["write", "read", "naive"])
    p.add_argument("--kms-url", required=True)
    p.add_argument("--keystore", default="")
    p.add_argument("--data", type=Path)
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--customers", type=int, default=0)
    args = p.parse_args()
    kms = CountingKms(kms_from_url(args.kms_url))
    if args.mode == "write":
        seconds = _write(kms, args.keystore, args.rows, args.customers, args.data)
    elif args.mode == "read":
        seconds = _read(kms, args.keystore, args.data)
    else:
        seconds = _naive(kms, args.rows)
    print(json.dumps({"seconds": seconds, "kms": dict(kms.calls)}))


if __name__ == "__main__":
    main()
