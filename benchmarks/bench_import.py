"""An import of new customers through the single-value API (issue 15, item 5): 200,000 customers
who have no key yet, one 16-byte phone value each, sealed three ways on the same key store, each
way with customers of its own (every customer's key is created by the way timed):

* ``encrypt_many``: one ``vault.encrypt_many`` call of every customer's value (keys created 2,000
  per key-store transaction);
* ``warm_encrypt``: the documented ``warm`` batching: per 5,000 customers, ``vault.warm`` of
  their ids then ``vault.encrypt`` of each value (5,000 keeps the keys inside the vault's key
  cache, 100,000 entries by default);
* ``encrypt``: ``vault.encrypt`` of each value alone, one key-store read and one key-creation
  transaction per customer. It is timed on a sample (``ENCRYPT_SAMPLE`` customers; 300 with
  ``--quick``): the figure is its time per customer, and the 200,000 import at that rate is
  **not** reported (not measured, never extrapolated).

Each way is timed once, from its first call to its last return, by a fresh vault (empty caches,
its epoch key unwrapped before the clock starts). ``--quick`` imports 5,000 customers, not
200,000. The key store is a SQLite file (WAL, ``synchronous=FULL``: one fsync per key-store
transaction), then prefixed tables in the PostgreSQL test database (``CCVAULT_BENCH_PG``, see
bench_orm). No application table: the figures are the key store's and the crypto's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks._config import Config, Results, missing
from benchmarks.bench_orm import _keystore, _pg_url, pg_unreachable

FULL = 200_000
QUICK = 5_000
ENCRYPT_SAMPLE = 5_000
QUICK_ENCRYPT_SAMPLE = 300
WARM_CHUNK = 5_000
CONTEXT = "customers.phone"
DBS = ("sqlite", "postgres")
WAYS = ("encrypt_many", "warm_encrypt", "encrypt")


def _names(db: str) -> list[str]:
    return [
        f"import_200k_encrypt_many_s_{db}",
        f"import_200k_warm_encrypt_s_{db}",
        f"import_200k_encrypt_s_{db}",
        f"import_us_per_customer_encrypt_many_{db}",
        f"import_us_per_customer_warm_encrypt_{db}",
        f"import_us_per_customer_encrypt_{db}",
    ]


def _phone(i: int) -> bytes:
    return f"+44 20 {7000 + i // 10_000:04d} {i % 10_000:04d}".encode()


def _ways(vault: Any) -> dict[str, Callable[[list[uuid.UUID]], list[bytes]]]:
    def many(customers: list[uuid.UUID]) -> list[bytes]:
        items = [(c, _phone(i)) for i, c in enumerate(customers)]
        return list(vault.encrypt_many(items, context=CONTEXT))

    def warm_encrypt(customers: list[uuid.UUID]) -> list[bytes]:
        out = []
        for start in range(0, len(customers), WARM_CHUNK):
            chunk = customers[start : start + WARM_CHUNK]
            vault.warm(chunk)
            for i, c in enumerate(chunk, start):
                out.append(vault.encrypt(c, _phone(i), context=CONTEXT))
        return out

    def one_by_one(customers: list[uuid.UUID]) -> list[bytes]:
        return [vault.encrypt(c, _phone(i), context=CONTEXT) for i, c in enumerate(customers)]

    return {"encrypt_many": many, "warm_encrypt": warm_encrypt, "encrypt": one_by_one}


def _backend(cfg: Config, out: Results, db: str, url: str) -> None:
    from ccvault import Vault
    from ccvault.kms import LocalKms

    n = QUICK if cfg.quick else FULL
    sample = QUICK_ENCRYPT_SAMPLE if cfg.quick else ENCRYPT_SAMPLE
    kms = LocalKms.ephemeral()
    suffix = uuid.uuid4().hex[:8]
    keystore: Any
    if db == "sqlite":  # a file of its own (bench_orm's key-store file belongs to its own KMS)
        keystore, drop = f"sqlite:///{cfg.workdir / f'import-keys-{suffix}.db'}", lambda: None
    else:
        keystore, drop = _keystore(db, cfg, url, f"bench_imp_{suffix}_")
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        with Vault(kms, keystore) as setup:  # the installation, its epoch and long-lived keys
            setup.warm([uuid.uuid4()])
        for way in WAYS:
            customers = [uuid.uuid4() for _ in range(sample if way == "encrypt" else n)]
            with Vault(kms, keystore) as vault:
                vault.warm([uuid.uuid4()])  # the epoch key unwrapped, off the clock
                run = _ways(vault)[way]
                t0 = time.perf_counter()
                blobs = run(customers)
                seconds[way] = time.perf_counter() - t0
                counts[way] = len(customers)
                last = len(customers) - 1
                check = [(blobs[i], CONTEXT, customers[i]) for i in (0, last)]
                opened = vault.decrypt_many(check)
                if len(blobs) != len(customers) or opened != [_phone(0), _phone(last)]:
                    raise RuntimeError(f"import: {way} did not seal every value")
            took = f"{len(customers):,} new customers in {seconds[way]:.1f} s"
            cfg.log(f"import: {db}, {way}: {took}")
    finally:
        if not isinstance(keystore, str):
            keystore.close()
        drop()

    where = (
        "SQLite key store (a file: WAL, synchronous=FULL)"
        if db == "sqlite"
        else "PostgreSQL key store (prefixed tables in the test database)"
    )
    for way in WAYS:
        out[f"import_us_per_customer_{way}_{db}"] = round(seconds[way] / counts[way] * 1e6, 1)
        out[f"import_us_per_customer_{way}_{db}_customers"] = counts[way]
    for way in ("encrypt_many", "warm_encrypt"):
        name = f"import_200k_{way}_s_{db}"
        out[name] = round(seconds[way], 2)
        out[f"{name}_note"] = f"{where}; {counts[way]:,} new customers, timed once" + (
            f"; --quick: {counts[way]:,} customers, not 200,000" if cfg.quick else ""
        )
    name = f"import_200k_encrypt_s_{db}"
    out[name] = None
    out[f"{name}_note"] = (
        f"not measured: vault.encrypt of each new customer alone was timed on a sample of "
        f"{counts['encrypt']:,} customers (import_us_per_customer_encrypt_{db}), not on 200,000, "
        "and is not extrapolated"
    )
    out[f"import_us_per_customer_encrypt_{db}_note"] = (
        f"{where}; SAMPLE: {counts['encrypt']:,} new customers, each vault.encrypt alone (one "
        "key-store read and one key-creation transaction per customer), timed once"
    )


def run(cfg: Config) -> Results:
    out: Results = {"import_customers": QUICK if cfg.quick else FULL}
    cfg.log("import: sqlite")
    _backend(cfg, out, "sqlite", "")
    url = _pg_url()
    reason = pg_unreachable(url)
    if reason is not None:
        for name in _names("postgres"):
            missing(out, name, reason)
        return out
    cfg.log("import: postgres")
    _backend(cfg, out, "postgres", url)
    return out
