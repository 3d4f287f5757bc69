"""Shred latency by erasure-ledger sink, the issue's "S3 reported separately": the same shred on a
PostgreSQL key store with no ledger, the SQL ledger (another schema of the same PostgreSQL
database), a JSONL ledger (a local file, flock and fsync) and an S3 ledger (moto's S3 server
over HTTP on loopback, ``PutObject`` with ``If-None-Match: *``).

Each sink gets a key store of its own (a store that records a ledger refuses a shred without
one) holding ``SUBJECTS`` subjects with keys (``vault.warm``), and one vault shreds ``SAMPLES``
distinct subjects drawn at random from it; every call is timed (``time.perf_counter``), queue row
and all (a shred with a ledger also seals its subject for the completion). Reported as the
median with the interquartile range. moto is not AWS: its S3 answers on loopback with no
network, no replication and no Object Lock cost, so the S3 figure is the client's and the
protocol's share, a floor for a real bucket. ``python -m benchmarks --only ledger``.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks._config import Config, Results, missing
from benchmarks._measure import percentile
from benchmarks.bench_orm import _pg_url, pg_unreachable
from benchmarks.bench_shred import _schemas
from ccvault import Vault
from ccvault.kms import LocalKms

ROOT = Path(__file__).resolve().parent.parent
SINKS = ("none", "sql", "jsonl", "s3")


@contextmanager
def _s3(cfg: Config) -> Iterator[str]:
    """A bucket on moto's S3 server, as a ledger URL; the dummy credentials set meanwhile."""
    import os

    sys.path.insert(0, str(ROOT / "tests"))  # the server helpers the tests use
    from aws_server import REGION, aws_environment, moto_kms

    saved = {k: os.environ.get(k) for k in aws_environment()}
    os.environ.update(aws_environment())
    try:
        with moto_kms() as server:
            bucket = f"ledger-{uuid.uuid4().hex[:12]}"
            server.client(service="s3").create_bucket(Bucket=bucket)
            yield f"s3://{bucket}/ccvault/ledger?region={REGION}&endpoint_url={server.endpoint_url}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _measure(
    cfg: Config, store: str, ledger: str | None, subjects: int, samples: int
) -> list[float]:
    """Milliseconds of ``samples`` shreds of distinct subjects of a store of ``subjects``."""
    kms = LocalKms.ephemeral()
    options: dict[str, Any] = {"listen_url": "off", "subject_type": "uuid"}
    if ledger is not None:
        options |= {"ledger": ledger, "create": True}
    population = [uuid.uuid4() for _ in range(subjects)]
    with Vault(kms, store, **options) as vault:
        for i in range(0, subjects, 500):
            vault.warm(population[i : i + 500])
        rng = random.Random(13)
        times = []
        for subject in rng.sample(population, samples):
            start = time.perf_counter()
            vault.shred(subject)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def run(cfg: Config) -> Results:
    out: Results = {}
    subjects, samples = (1_000, 31) if cfg.quick else (5_000, 101)
    out["ledger_bench_subjects"] = subjects
    out["ledger_bench_samples"] = samples
    base = _pg_url()
    names = [f"shred_ms_p50_ledger_{sink}_postgres" for sink in SINKS]
    unreachable = pg_unreachable(base)
    if unreachable is not None:
        for name in names:
            missing(out, name, unreachable)
        return out
    with ExitStack() as stack:
        stores = stack.enter_context(_schemas(base, *SINKS))
        sql_ledger = stack.enter_context(_schemas(base, "ledger"))[0]
        ledgers: dict[str, str | None] = {
            "none": None,
            "sql": sql_ledger,
            "jsonl": f"file://{cfg.workdir / f'ledger-{uuid.uuid4().hex[:8]}.jsonl'}",
        }
        try:
            ledgers["s3"] = stack.enter_context(_s3(cfg))
        except Exception as exc:  # moto missing or failing: report, do not abort the run
            missing(out, names[-1], f"moto's S3 server not available: {type(exc).__name__}")
        for sink, store, name in zip(SINKS, stores, names, strict=True):
            if sink not in ledgers:
                continue
            cfg.log(f"ledger: {sink}, {samples} shreds of {subjects:,} subjects")
            times = _measure(cfg, store, ledgers[sink], subjects, samples)
            out[name] = round(percentile(times, 0.5), 2)
            out[f"{name}_spread"] = [
                round(percentile(times, 0.25), 2),
                round(percentile(times, 0.75), 2),
            ]
    return out
