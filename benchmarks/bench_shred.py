"""Shred latency against the size of the key store: a SQLite file (WAL), and PostgreSQL with the
erasure ledger (SQL) on the same server.

One key store grows in batches through ``vault.warm`` (which creates each subject's key) to
10,000 subjects, is measured, then grows to 1,000,000 (``--quick``: a smaller population) and is
measured again. A run stops growing after a time budget and reports the population it reached in
``shred_ms_p50_1m_population``: the figure is never extrapolated.

On PostgreSQL (``CCVAULT_BENCH_PG``, else ``CCVAULT_TEST_PG``, else the local test server) the key
store and the ledger are two schemas of one database: 10,000 subjects are measured without a
ledger, then with the ledger (each shred appends its receipt to the ledger inside its key-store
transaction: DESIGN.md lifecycle rule 3), then the store grows within its own time budget and the
ledger figure is measured again (``shred_ms_p50_large_postgres_ledger_population``).

Each measurement shreds subjects drawn at random from the whole population, with a fresh vault
(empty caches) so that only the key store's size changes between the two figures. Beside every
shred the same vault's engine runs a one-row UPDATE transaction on a random subject head: the
floor any write on that key store pays. Latencies are reported as the median (p50) with the
interquartile range [p25, p75] as the spread.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from benchmarks._config import Config, Results, missing
from benchmarks._measure import percentile
from benchmarks.bench_orm import _pg_url, pg_unreachable
from ccvault import Vault
from ccvault.kms import LocalKms

SMALL = 10_000
RESERVE_S = 30.0
BATCH = 10_000


def _p50(out: Results, name: str, samples: list[float]) -> None:
    out[name] = round(percentile(samples, 0.5), 3)
    out[f"{name}_spread"] = [
        round(percentile(samples, 0.25), 3),
        round(percentile(samples, 0.75), 3),
    ]


def _measure(
    inner: LocalKms,
    url: str,
    victims: list[uuid.UUID],
    live: list[uuid.UUID],
    *,
    warm: list[uuid.UUID] | None = None,
    ledger: str | None = None,
) -> tuple[list[float], list[float]]:
    """Shred each victim; returns shred and baseline-transaction latencies in milliseconds."""
    shreds: list[float] = []
    floor: list[float] = []
    with Vault(inner, url, cache_ttl=86_400, ledger=ledger, listen_url="off") as vault:
        if warm:
            vault.warm(warm)
        engine: sa.Engine = vault._store.engine  # type: ignore[attr-defined]
        heads = sa.table("ccvault_subject_heads", sa.column("ref"), sa.column("created_at"))
        bump = (
            sa.update(heads)
            .where(heads.c.ref == sa.bindparam("r"))
            .values(created_at=heads.c.created_at)
        )
        rng = random.Random(7)  # picks rows, not keys
        for victim in victims:
            ref = vault.subject_ref(rng.choice(live))
            t0 = time.perf_counter()
            with engine.connect() as conn:
                conn = conn.execution_options(ccvault_write=True)  # BEGIN IMMEDIATE, as shred
                with conn.begin():
                    conn.execute(bump, {"r": ref})
            t1 = time.perf_counter()
            receipt = vault.shred(victim)
            t2 = time.perf_counter()
            if not receipt.destroyed_keys:
                raise RuntimeError("shred destroyed no key: the subject was not populated")
            floor.append((t1 - t0) * 1e3)
            shreds.append((t2 - t1) * 1e3)
    return shreds, floor


def run(cfg: Config) -> Results:
    out: Results = {}
    inner = LocalKms.ephemeral()
    url = f"sqlite:///{cfg.workdir / 'shred.db'}"
    rng = random.Random(11)
    n = cfg.shred_samples

    populator = Vault(inner, url, cache_max_entries=1_000)
    first = [uuid.uuid4() for _ in range(SMALL)]
    t0 = time.monotonic()
    populator.warm(first)
    per_subject = (time.monotonic() - t0) / SMALL
    population = SMALL

    # 10k: cold caches, then a vault holding every subject's key (shred also clears its caches).
    rng.shuffle(first)
    cold_victims, warm_victims, rest = first[:n], first[n : 2 * n], first[2 * n :]
    shreds, floor = _measure(inner, url, cold_victims, rest)
    _p50(out, "shred_ms_p50_10k", shreds)
    _p50(out, "keystore_write_txn_ms_p50_10k", floor)
    shreds, _ = _measure(inner, url, warm_victims, rest, warm=first)
    _p50(out, "shred_ms_p50_10k_warm_cache", shreds)
    out["shred_ms_p50_10k_warm_cache_note"] = (
        "the shredding vault first warmed all 10,000 subjects; compare with shred_ms_p50_10k "
        "(fresh vault): a full cache should cost a shred nothing, since it evicts exactly the "
        "keys its receipt lists"
    )
    cfg.log(f"shred: 10k measured ({per_subject * 1e6:.0f} µs per subject to populate)")

    # Grow to the large population within the time budget, remembering the same number of shred
    # candidates from every batch so that they are spread over the whole key store.
    target = cfg.shred_large_population
    keep = math.ceil(4 * n * BATCH / target) + 1
    candidates = rest[:keep]
    # Stop at the population budget or when the run's time budget is nearly spent, whichever
    # comes first (RESERVE_S keeps time for the measurement and the report).
    budget = max(0.0, min(cfg.shred_populate_budget_s, cfg.remaining_s() - RESERVE_S))
    population = _grow(cfg, populator, population, budget, keep, candidates, rng, "")
    populator.close()
    grow_s = time.monotonic() - t0
    if len(candidates) <= n:  # a budget cut short: top up from the first batch
        candidates += rest[keep : keep + n + 1 - len(candidates)]
    rng.shuffle(candidates)
    shreds, floor = _measure(inner, url, candidates[:n], candidates[n:])
    _p50(out, "shred_ms_p50_1m", shreds)
    _p50(out, "keystore_write_txn_ms_p50_1m", floor)
    out["shred_ms_p50_1m_population"] = population
    if population < 1_000_000:
        why = (
            "--quick mode uses a smaller population"
            if cfg.quick and population >= target
            else f"the population stopped at {population:,} when its time budget "
            f"({budget:.0f} s of the run's {cfg.budget_s:.0f} s) ran out"
        )
        out["shred_ms_p50_1m_note"] = (
            f"measured on {population:,} subjects, not 1,000,000: {why}; not extrapolated"
        )
    out["shred_samples"] = n
    out["shred_populate_s"] = round(grow_s, 1)
    out["shred_populate_us_per_subject"] = round(grow_s / population * 1e6, 1)
    out["shred_spread_kind"] = "IQR [p25, p75] of the samples"
    cfg.log(f"shred: {population:,} subjects measured")
    _postgres(cfg, out)
    return out


def _grow(
    cfg: Config,
    vault: Vault,
    population: int,
    budget: float,
    keep: int,
    candidates: list[uuid.UUID],
    rng: random.Random,
    label: str,
) -> int:
    """Add subjects (keys made by ``vault.warm``) in batches towards the large population until
    ``budget`` seconds are spent, keeping ``keep`` shred candidates of every batch so that they
    are spread over the whole key store; returns the population reached."""
    target = cfg.shred_large_population
    deadline = time.monotonic() + budget
    while population < target and time.monotonic() < deadline:
        batch = [uuid.uuid4() for _ in range(min(BATCH, target - population))]
        vault.warm(batch)
        candidates.extend(rng.sample(batch, min(keep, len(batch))))
        population += len(batch)
        if population % 100_000 == 0:
            cfg.log(f"shred: {label}population {population:,}")
    return population


PG_FIGURES = (
    "shred_ms_p50_10k_postgres",
    "shred_ms_p50_10k_postgres_ledger",
    "shred_ms_p50_large_postgres_ledger",
    "keystore_write_txn_ms_p50_10k_postgres",
)


@contextmanager
def _schemas(base: str, *names: str) -> Iterator[list[str]]:
    """Schemas of their own on the PostgreSQL server, as URLs; dropped afterwards."""
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    made = [f"bench_{name}_{uuid.uuid4().hex[:8]}" for name in names]
    try:
        with admin.connect() as conn:
            for schema in made:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        yield [
            sa.make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
            for schema in made
        ]
    finally:
        with admin.connect() as conn:
            for schema in made:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


def _postgres(cfg: Config, out: Results) -> None:
    """Shred latency on PostgreSQL, without and with the SQL ledger on the same server."""
    base = _pg_url()
    unreachable = pg_unreachable(base)
    if unreachable is not None:
        for name in PG_FIGURES:
            missing(out, name, unreachable)
        return
    n = cfg.shred_samples
    inner = LocalKms.ephemeral()
    rng = random.Random(13)
    with _schemas(base, "shred_keys", "shred_ledger") as (url, ledger):
        populator = Vault(inner, url, cache_max_entries=1_000, listen_url="off")
        first = [uuid.uuid4() for _ in range(SMALL)]
        t0 = time.monotonic()
        populator.warm(first)
        populator.close()
        cfg.log(f"shred: postgres, 10k populated in {time.monotonic() - t0:.1f} s")
        rng.shuffle(first)
        plain, with_ledger, rest = first[:n], first[n : 2 * n], first[2 * n :]
        shreds, floor = _measure(inner, url, plain, rest)
        _p50(out, "shred_ms_p50_10k_postgres", shreds)
        _p50(out, "keystore_write_txn_ms_p50_10k_postgres", floor)
        # The ledger from here on (its first open imports the receipts above: a genesis batch).
        shreds, _ = _measure(inner, url, with_ledger, rest, ledger=ledger)
        _p50(out, "shred_ms_p50_10k_postgres_ledger", shreds)
        out["shred_ms_p50_10k_postgres_ledger_note"] = (
            "key store and SQL ledger: two schemas of one PostgreSQL database on this machine; "
            "each shred appends its receipt to the ledger inside its key-store transaction"
        )
        population = SMALL
        candidates = rest[: n + 1]
        budget = max(0.0, min(cfg.shred_populate_budget_s / 2, cfg.remaining_s() - RESERVE_S))
        keep = max(1, math.ceil(2 * n * BATCH / max(cfg.shred_large_population, BATCH)))
        grower = Vault(inner, url, ledger=ledger, cache_max_entries=1_000, listen_url="off")
        t0 = time.monotonic()
        population = _grow(cfg, grower, population, budget, keep, candidates, rng, "postgres ")
        grower.close()
        grow_s = time.monotonic() - t0
        rng.shuffle(candidates)
        shreds, _ = _measure(inner, url, candidates[:n], candidates[n:], ledger=ledger)
        _p50(out, "shred_ms_p50_large_postgres_ledger", shreds)
        out["shred_ms_p50_large_postgres_ledger_population"] = population
        out["shred_postgres_populate_us_per_subject"] = round(
            grow_s / max(population - SMALL, 1) * 1e6, 1
        )
        if population < 1_000_000:
            out["shred_ms_p50_large_postgres_ledger_note"] = (
                f"measured on {population:,} subjects, not 1,000,000: the PostgreSQL population "
                f"stopped when its time budget ({budget:.0f} s) ran out or reached --quick's "
                "target; not extrapolated"
            )
    cfg.log(f"shred: postgres measured ({population:,} subjects with the ledger)")
