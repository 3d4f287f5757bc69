"""``vault.shred_many`` of 10,000 subjects on PostgreSQL with the SQL erasure ledger on the same
server (another schema), beside the baseline of the same run: ``vault.shred`` called once per
subject (issue 13 item 6; target: shred_many of 10,000 in at most 20 s).

One key store (with the ledger from its creation) gets two populations of subjects with keys
(``vault.warm``, 500 per round trip): the baseline's and the candidate's, so both shred from a
store of the same size. The baseline runs first: a fresh vault shreds its subjects one
``vault.shred`` at a time — all 10,000 in a full run (measured, not extrapolated); ``--quick``
times a sample and extrapolates it, and says so. Then a fresh vault runs ``shred_many`` on the
other population, timed once from the call to its return. No application tables are attached:
both time the key store and the ledger, not a sweep.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter

from benchmarks._config import Config, Results, missing
from benchmarks.bench_orm import _pg_url, pg_unreachable
from benchmarks.bench_shred import _schemas
from ccvault import Vault
from ccvault.kms import LocalKms

FULL = 10_000
QUICK = 2_000  # --quick: subjects per population
QUICK_SAMPLE = 200  # --quick: sequential shreds timed, then extrapolated

FIGURES = (
    "shred_many_s_10k_postgres_ledger",
    "shred_sequential_s_10k_postgres_ledger",
    "shred_many_speedup_vs_sequential",
)


def run(cfg: Config) -> Results:
    out: Results = {}
    base = _pg_url()
    unreachable = pg_unreachable(base)
    if unreachable is not None:
        for name in FIGURES:
            missing(out, name, unreachable)
        return out
    n = QUICK if cfg.quick else FULL
    inner = LocalKms.ephemeral()
    with _schemas(base, "many_keys", "many_ledger") as (url, ledger):
        with Vault(
            inner, url, ledger=ledger, create=True, cache_max_entries=1_000, listen_url="off"
        ) as populator:
            baseline = [uuid.uuid4() for _ in range(n)]
            candidate = [uuid.uuid4() for _ in range(n)]
            t0 = time.monotonic()
            populator.warm(baseline + candidate)
            cfg.log(f"shred_many: {2 * n:,} subjects populated in {time.monotonic() - t0:.1f} s")

        # the baseline: one vault.shred per subject (all of them, or a sample with --quick)
        timed = baseline[:QUICK_SAMPLE] if cfg.quick else baseline
        single: list[float] = []
        with Vault(inner, url, ledger=ledger, listen_url="off") as vault:
            t0 = time.perf_counter()
            for subject in timed:
                t1 = time.perf_counter()
                receipt = vault.shred(subject)
                single.append(time.perf_counter() - t1)
                if not receipt.destroyed_keys:
                    raise RuntimeError("shred destroyed no key: the subject was not populated")
            sequential_s = time.perf_counter() - t0
        cfg.log(f"shred_many: {len(timed):,} sequential shreds in {sequential_s:.1f} s")

        # the candidate: one shred_many call
        with Vault(inner, url, ledger=ledger, listen_url="off") as vault:
            t0 = time.perf_counter()
            results = vault.shred_many(candidate)
            many_s = time.perf_counter() - t0
            outcomes = Counter(r.outcome for r in results)
            if outcomes != {"shredded": n} or not all(
                r.receipt and r.receipt.destroyed_keys for r in results
            ):
                raise RuntimeError(f"shred_many did not shred every subject: {dict(outcomes)}")
            if not vault.verify_erasures().ok:
                raise RuntimeError("the ledger and the key store disagree after shred_many")
        cfg.log(f"shred_many: {n:,} subjects in one shred_many call in {many_s:.1f} s")

    if cfg.quick:
        sequential_s = statistics.median(single) * n
    out["shred_many_s_10k_postgres_ledger"] = round(many_s, 2)
    out["shred_many_ms_per_subject_postgres_ledger"] = round(many_s / n * 1e3, 3)
    out["shred_sequential_s_10k_postgres_ledger"] = round(sequential_s, 1)
    out["shred_sequential_ms_p50_postgres_ledger"] = round(statistics.median(single) * 1e3, 3)
    out["shred_many_speedup_vs_sequential"] = round(sequential_s / many_s, 1)
    out["shred_many_subjects"] = n
    where = (
        "key store and SQL ledger: two schemas of one PostgreSQL database on this machine; "
        f"{2 * n:,} subjects with keys, fresh vaults"
    )
    out["shred_many_s_10k_postgres_ledger_note"] = (
        f"{where}; one shred_many call of {n:,} subjects, timed once (500 per key-store "
        "transaction and ledger append)"
    )
    if cfg.quick:
        out["shred_many_s_10k_postgres_ledger_note"] += f"; --quick: {n:,} subjects, not 10,000"
        out["shred_sequential_s_10k_postgres_ledger_note"] = (
            f"EXTRAPOLATED: --quick timed {len(timed):,} sequential vault.shred calls; the "
            f"figure is their median x {n:,}"
        )
    else:
        out["shred_sequential_s_10k_postgres_ledger_note"] = (
            f"{where}; {n:,} sequential vault.shred calls, all timed (not extrapolated), run "
            "just before shred_many on the other population"
        )
    return out
