"""Shred latency against the size of the key store: a SQLite file (WAL), and PostgreSQL with the
erasure ledger (SQL) on the same server.

PostgreSQL is measured first, with a population budget of its own (half of
``shred_populate_budget_s``, not cut by what the run has left), so that its 1,000,000 figure is
measured in a full run too; the SQLite population takes the time left after it.

One SQLite key store grows in batches through ``vault.warm`` (which creates each subject's key) to
10,000 subjects, is measured, then grows to 1,000,000 (``--quick``: a smaller population) and is
measured again. A run stops growing after a time budget and reports the population it reached in
``shred_ms_p50_1m_population``: the figure is never extrapolated.

On PostgreSQL (``CCVAULT_BENCH_PG``, else ``CCVAULT_TEST_PG``, else the local test server; the
psycopg 3 driver) the key store, the ledger and the application's table are three schemas of one
database. Every subject has a customer row holding a value sealed under its key. 10,000 subjects
are made by ``vault.warm`` and ``vault.encrypt`` and measured without a ledger, then with the
ledger (each shred appends its receipt to the ledger inside its key-store transaction:
DESIGN.md lifecycle rule 3); then the store grows to 1,000,000 subjects by ``COPY`` of rows that
the library's own functions make (:class:`_Copy`, 80-95 µs a subject on the 2-core machine
of docs/performance.md, where ``vault.warm`` took 510 µs on average to reach 730,000 subjects,
slower as the store grew) and the ledger figure is measured again
(``shred_ms_p50_large_postgres_ledger_population``: the population reached within its budget).
A check proves the copied rows the library's on a sample before the measurement
(:func:`_check_copied`), and that the shredded subjects' values read SHREDDED after it.

Each measurement shreds subjects drawn at random from the whole population, with a fresh vault
(empty caches) so that only the key store's size changes between the two figures. Beside every
shred the same vault's engine runs a one-row UPDATE transaction on a random subject head: the
floor any write on that key store pays. Latencies are reported as the median (p50) with the
interquartile range [p25, p75] as the spread. Freshly populated PostgreSQL tables are vacuumed
and analysed before they are measured, as autovacuum would have left them.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from benchmarks._config import CONTEXT, VALUE, Config, Results, missing
from benchmarks._measure import percentile
from benchmarks.bench_orm import _pg_url, pg_unreachable
from ccvault import SHREDDED, Vault
from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import random_bytes
from ccvault.keyring import context_bytes
from ccvault.keystore import KeyKind, State
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
    # PostgreSQL first, with a population budget of its own: its 1,000,000 figure is measured
    # even when the benchmarks before this one spent the run's budget (the SQLite population,
    # by vault.warm and several times slower, takes what is left after it).
    _postgres(cfg, out)
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
    population = _grow(cfg, populator.warm, population, budget, keep, candidates, rng, "")
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
    return out


def _grow(
    cfg: Config,
    add: Callable[[list[uuid.UUID]], object],
    population: int,
    budget: float,
    keep: int,
    candidates: list[uuid.UUID],
    rng: random.Random,
    label: str,
) -> int:
    """Add subjects in batches (``add``: ``vault.warm``, or :class:`_Copy`'s) towards the large
    population until ``budget`` seconds are spent, keeping ``keep`` shred candidates of every
    batch so that they are spread over the whole key store; returns the population reached."""
    target = cfg.shred_large_population
    deadline = time.monotonic() + budget
    while population < target and time.monotonic() < deadline:
        batch = [uuid.uuid4() for _ in range(min(BATCH, target - population))]
        add(batch)
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
    "keystore_write_txn_ms_p50_large_postgres",
)
CHUNK = 1_000
"""Subjects warmed, then encrypted for, at a time (the populating vault's cache holds them)."""
SHAPE_SAMPLE = 200
KEYSTORE_TABLES = ("ccvault_subject_heads", "ccvault_keys")
"""The tables a new subject adds rows to (the default prefix)."""

_CUSTOMERS = sa.Table(
    "bench_customers",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("subject", sa.Uuid, nullable=False, index=True),
    sa.Column("phone", sa.LargeBinary, nullable=False),
)
"""The application's rows: one customer per subject, its 100-byte value sealed under the
subject's key (``vault.encrypt``, context ``customers.phone``), in a schema of its own."""


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


def _copy(engine: sa.Engine, tables: Sequence[tuple[str, Sequence[str], list[Any]]]) -> None:
    """``COPY ... FROM STDIN`` of rows into tables, in one transaction (psycopg 3)."""
    from psycopg import sql

    raw = engine.raw_connection()
    try:
        with raw.driver_connection.cursor() as cur:
            for name, columns, rows in tables:
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
                with cur.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _vacuum(engine: sa.Engine, *tables: str) -> None:
    """``VACUUM (ANALYZE)`` of freshly populated tables, as autovacuum would have left a store
    that grew over months: no measurement runs beside the autovacuum of a million new rows."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(tables)}")


class _App:
    """The application table (:data:`_CUSTOMERS`) in its own schema."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        _CUSTOMERS.create(self.engine)

    def add(self, rows: list[tuple[uuid.UUID, uuid.UUID, bytes]]) -> None:
        _copy(self.engine, [(_CUSTOMERS.name, ("id", "subject", "phone"), rows)])

    def values(self, subjects: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        c = _CUSTOMERS.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.subject, c.phone).where(c.subject.in_(subjects)))
            return {subject: bytes(phone) for subject, phone in rows}

    def vacuum(self) -> None:
        _vacuum(self.engine, _CUSTOMERS.name)


def _warm_with_rows(vault: Vault, app: _App, subjects: Sequence[uuid.UUID]) -> None:
    """Subjects through the library's own path: ``vault.warm`` creates their keys (heads, key
    rows: ``create_subject_keys``), ``vault.encrypt`` seals each customer's value."""
    for i in range(0, len(subjects), CHUNK):
        chunk = subjects[i : i + CHUNK]
        vault.warm(chunk)
        app.add([(uuid.uuid4(), s, vault.encrypt(s, VALUE, context=CONTEXT)) for s in chunk])


class _Copy:
    """Adds subjects to a PostgreSQL key store with ``COPY``, in rows that the library's own
    functions make, as ``vault.warm`` makes them for a new subject:

    - the ref: ``vault.subject_ref``;
    - the key row: the key ring's ``new_record`` (a random 16-byte key id, version 1, a random
      key wrapped under the active epoch with its commitment and bound ids), as the store's
      ``_key_values`` lays it out;
    - the subject head: ``create_subject_keys``'s row (ref, key id, ``active``, version 1,
      created at, MAC by the ring's head sealer);
    - the customer row: its value sealed as ``vault.encrypt`` seals it, under the key that the
      ring's ``value_key`` unwraps from the new key row (so every wrap is opened once by the
      read path's own function before it is stored).

    Heads and key rows go in one transaction per batch, the customers in another. Only the
    transport differs from ``vault.warm`` (one ``COPY`` per table and batch instead of
    ``INSERT``s of 500 rows under row locks); :func:`_check_copied` proves the rows the
    library's own on a sample, and the measured shreds destroy them."""

    def __init__(self, vault: Vault, app: _App) -> None:
        ring: Any = vault._ring  # type: ignore[attr-defined]
        store: Any = vault._store  # type: ignore[attr-defined]
        self._ref = vault.subject_ref
        self._new_record = ring._epochs.new_record
        self._seal_head = ring.heads.seal
        self._value_key = ring.value_key
        self._key_values = store._key_values
        self._engine: sa.Engine = store.engine
        self._heads: str = store._heads.name
        self._keys: str = store._keys.name
        self._context = fmt.context_lp(context_bytes(CONTEXT))
        self._app = app

    def add(self, subjects: Sequence[uuid.UUID]) -> None:
        now = time.time()
        heads, keys, customers = [], [], []
        for subject in subjects:
            ref = self._ref(subject)
            rec = self._new_record(KeyKind.SUBJECT, random_bytes(16), 1, ref=ref)[0]
            mac = self._seal_head(ref, rec.key_id, State.ACTIVE, rec.version)
            heads.append((ref, rec.key_id, State.ACTIVE, rec.version, now, mac))
            keys.append(self._key_values(rec))
            sealed = self._value_key(rec).seal(VALUE, self._context)
            customers.append((uuid.uuid4(), subject, sealed))
        head_columns = ("ref", "key_id", "state", "current_version", "created_at", "mac")
        key_columns = tuple(keys[0])
        _copy(
            self._engine,
            [
                (self._heads, head_columns, heads),
                (self._keys, key_columns, [tuple(k[c] for c in key_columns) for k in keys]),
            ],
        )
        self._app.add(customers)

    def vacuum(self) -> None:
        _vacuum(self._engine, *KEYSTORE_TABLES)


_CONSTANT = {"state", "current_version", "version", "kind", "label", "epoch_id", "uses_reserved"}
"""Columns whose value a new subject's rows share (others: random or a time)."""


def _shapes(engine: sa.Engine, refs: Sequence[bytes]) -> dict[str, set[tuple[object, ...]]]:
    """Per key-store table, the distinct shapes of the rows of ``refs``: every column's value
    where it is one of :data:`_CONSTANT`, else NULL or its type and length."""

    def shape(column: str, value: object) -> object:
        if column in _CONSTANT:
            return value.hex() if isinstance(value, bytes) else value
        if value is None:
            return None
        return (type(value).__name__, len(value) if isinstance(value, bytes | str) else None)

    out: dict[str, set[tuple[object, ...]]] = {}
    with engine.connect() as conn:
        for table in KEYSTORE_TABLES:
            query = sa.text(f"SELECT * FROM {table} WHERE ref IN :refs").bindparams(
                sa.bindparam("refs", expanding=True)
            )
            rows = conn.execute(query, {"refs": list(refs)}).mappings().all()
            if len(rows) != len(refs):
                raise RuntimeError(f"{table}: {len(rows)} rows for {len(refs)} subjects")
            out[table] = {tuple((c, shape(c, v)) for c, v in sorted(r.items())) for r in rows}
    return out


def _check_copied(
    inner: LocalKms,
    url: str,
    ledger: str,
    app: _App,
    copied: Sequence[uuid.UUID],
    warmed: Sequence[uuid.UUID],
) -> str:
    """Prove the copied rows the library's: the same shape as rows ``vault.warm`` wrote, and
    read back through a fresh vault (each customer's value decrypts for its subject: the key
    row unwraps, the head's MAC holds and names it; ``vault.warm`` finds every key usable)."""
    with Vault(inner, url, ledger=ledger, listen_url="off") as vault:
        engine: sa.Engine = vault._store.engine  # type: ignore[attr-defined]
        copied_shapes = _shapes(engine, [vault.subject_ref(s) for s in copied])
        warmed_shapes = _shapes(engine, [vault.subject_ref(s) for s in warmed])
        if copied_shapes != warmed_shapes or any(len(v) != 1 for v in warmed_shapes.values()):
            raise RuntimeError(f"copied rows differ: {copied_shapes} vs {warmed_shapes}")
        values = app.values(copied)
        opened = vault.decrypt_many([(values[s], CONTEXT, s) for s in copied])
        if opened != [VALUE] * len(copied):
            raise RuntimeError("a copied subject's value did not decrypt to what was sealed")
        if vault.warm(copied) != len(copied):
            raise RuntimeError("vault.warm found a copied subject's key unusable")
    return (
        f"{len(copied)} copied subjects: key-store rows of the same shape as {len(warmed)} "
        "written by vault.warm; their values decrypt through a fresh vault"
    )


def _check_shredded(
    inner: LocalKms,
    url: str,
    ledger: str,
    app: _App,
    shredded: Sequence[uuid.UUID],
    kept: Sequence[uuid.UUID],
) -> None:
    """After the measurement: the shredded subjects' values read SHREDDED, the others' open."""
    values = app.values([*shredded, *kept])
    with Vault(inner, url, ledger=ledger, listen_url="off") as vault:
        opened = vault.decrypt_many(
            [(values[s], CONTEXT, s) for s in [*shredded, *kept]], errors="return"
        )
    if opened != [SHREDDED] * len(shredded) + [VALUE] * len(kept):
        raise RuntimeError("a shredded value opened, or a kept one did not")


def _postgres(cfg: Config, out: Results) -> None:
    """Shred latency on PostgreSQL, without and with the SQL ledger on the same server: 10,000
    subjects made by ``vault.warm``, then grown towards 1,000,000 with :class:`_Copy`."""
    base = _pg_url()
    unreachable = pg_unreachable(base)
    if unreachable is None and sa.make_url(base).get_driver_name() != "psycopg":
        unreachable = "the PostgreSQL population needs the psycopg (3) driver: COPY"
    if unreachable is not None:
        for name in PG_FIGURES:
            missing(out, name, unreachable)
        return
    n = cfg.shred_samples
    inner = LocalKms.ephemeral()
    rng = random.Random(13)
    with _schemas(base, "shred_keys", "shred_ledger", "shred_app") as (url, ledger, app_url):
        app = _App(app_url)
        populator = Vault(inner, url, cache_max_entries=CHUNK, listen_url="off")
        first = [uuid.uuid4() for _ in range(SMALL)]
        t0 = time.monotonic()
        _warm_with_rows(populator, app, first)
        warm_s = time.monotonic() - t0
        populator.close()
        keystore = sa.create_engine(url)
        _vacuum(keystore, *KEYSTORE_TABLES)
        keystore.dispose()
        app.vacuum()
        out["shred_postgres_populate_us_per_subject_warm"] = round(warm_s / SMALL * 1e6, 1)
        cfg.log(f"shred: postgres, 10k populated by vault.warm in {warm_s:.1f} s")
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
            "each shred appends its receipt to the ledger inside its key-store transaction; "
            "each subject has a customer row (a third schema)"
        )
        population = SMALL
        candidates = rest[: n + 1]
        warmed = rest[n + 1 : n + 1 + SHAPE_SAMPLE]
        # Its own budget, not cut by what the run has left (see run()).
        budget = cfg.shred_populate_budget_s / 2
        keep = max(1, math.ceil(2 * n * BATCH / max(cfg.shred_large_population, BATCH)))
        grower = Vault(inner, url, ledger=ledger, cache_max_entries=1_000, listen_url="off")
        copier = _Copy(grower, app)
        t0 = time.monotonic()
        population = _grow(cfg, copier.add, population, budget, keep, candidates, rng, "postgres ")
        grow_s = time.monotonic() - t0
        copier.vacuum()
        app.vacuum()
        grower.close()
        cfg.log(f"shred: postgres, {population:,} subjects, vacuumed {time.monotonic() - t0:.0f} s")
        copied = candidates[n + 1 :]
        out["shred_postgres_population_check"] = (
            _check_copied(inner, url, ledger, app, copied, warmed)
            if copied
            else "no subject was copied: nothing to check"
        )
        rng.shuffle(candidates)
        victims, kept = candidates[:n], candidates[n:]
        shreds, floor = _measure(inner, url, victims, kept, ledger=ledger)
        _check_shredded(inner, url, ledger, app, victims, kept)
        _p50(out, "shred_ms_p50_large_postgres_ledger", shreds)
        _p50(out, "keystore_write_txn_ms_p50_large_postgres", floor)
        out["shred_ms_p50_large_postgres_ledger_population"] = population
        out["shred_postgres_populate_s"] = round(grow_s, 1)
        out["shred_postgres_populate_us_per_subject"] = round(
            grow_s / max(population - SMALL, 1) * 1e6, 1
        )
        copied_victims = len(set(victims) & set(copied))
        note = (
            f"{SMALL:,} subjects made by vault.warm, the rest by COPY of rows made by the "
            f"library's own functions (benchmarks/bench_shred.py, _Copy); {copied_victims} of "
            f"the {n} shredded subjects were copied ones"
        )
        if population < 1_000_000:
            note += (
                f"; measured on {population:,} subjects, not 1,000,000: "
                + (
                    "--quick mode uses a smaller population"
                    if cfg.quick and population >= cfg.shred_large_population
                    else f"the PostgreSQL population stopped when its time budget ({budget:.0f} s) "
                    "ran out"
                )
                + "; not extrapolated"
            )
        out["shred_ms_p50_large_postgres_ledger_note"] = note
        app.engine.dispose()
    cfg.log(f"shred: postgres measured ({population:,} subjects with the ledger)")
