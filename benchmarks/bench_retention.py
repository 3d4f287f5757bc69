"""``vault.enforce_retention()`` expiring one retention period that holds 1,000,000 encrypted
values on PostgreSQL, and another with 10,000 held subjects (issue 14, "Figures": seconds, and
the data table's rows touched — target 0 rows, under 1 s).

Setup, not timed: a key store with the SQL erasure ledger (two schemas of one database), 20,000
customers with keys (``vault.warm``), two ``chats`` periods (granularity day, keep 1 day) made
as the write path makes them, and an application table ``calls`` in a third schema holding
1,000,000 suite-2 values of each period (50 per customer; the values are built here with
``derive_period_key`` and AES-256-GCM under the period's header, the encrypt path being another
slice of the issue) filled with Core ``executemany``, then indexed and analysed. The second
scenario's 10,000 holds are written straight into the key store's ``ccvault_holds`` (placing
them through ``vault.hold()`` would be 10,000 ledger appends, minutes of setup; enforcement
reads the same rows).

Timed: one ``enforce_retention()`` call of a fresh vault, its clock at the period's expiry,
from the call to its return. Rows touched: ``pg_stat_user_tables`` of ``calls`` read before and
after — inserts, updates, deletes, sequential and index scans and the tuples they read — once
the vault is closed (its server processes exit and flush their statistics) and a control query
on a sentinel table is seen in the statistics.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from benchmarks._config import Config, Results, missing
from benchmarks.bench_orm import _pg_url, pg_unreachable
from benchmarks.bench_shred import _schemas
from ccvault import Vault
from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import Aead
from ccvault.kms import LocalKms
from ccvault.retention import RetentionPolicy, expires_at, period_of
from ccvault.testing import FrozenClock

FULL_VALUES = 1_000_000  # per period
QUICK_VALUES = 50_000
CUSTOMERS = 20_000
QUICK_CUSTOMERS = 2_000
HELD = 10_000
QUICK_HELD = 1_000
_FILL_BATCH = 20_000  # rows per executemany
_T0 = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
_POLICY = RetentionPolicy.from_dict(
    {"categories": {"chats": {"keep_for": "P1D", "granularity": "day"}}}
)
_CONTEXT = b"calls.transcript"
_TEXT = b"Agent: how can I help? Customer: my parcel 4471 has not arrived. " * 2

_STATS = (
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_del",
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
)

FIGURES = (
    "retention_expire_1m_s",
    "retention_expire_1m_data_rows_touched",
    "retention_expire_1m_held_10k_s",
    "retention_expire_1m_held_10k_data_rows_touched",
)


def run(cfg: Config) -> Results:
    out: Results = {}
    base = _pg_url()
    unreachable = pg_unreachable(base)
    if unreachable is not None:
        for name in FIGURES:
            missing(out, name, unreachable)
        return out
    values = QUICK_VALUES if cfg.quick else FULL_VALUES
    customers = QUICK_CUSTOMERS if cfg.quick else CUSTOMERS
    held = QUICK_HELD if cfg.quick else HELD
    kms = LocalKms.ephemeral()
    clock = FrozenClock(_T0.timestamp())
    with _schemas(base, "ret_keys", "ret_ledger", "ret_app") as (keys, ledger_db, app_url):
        # the vault's connections are named: the statistics are read once they are all gone
        keys_url, ledger = (_named(u) for u in (keys, ledger_db))
        options: dict[str, Any] = {
            "ledger": ledger,
            "clock": clock,
            "retention_policy": _POLICY,
            "listen_url": "off",
        }
        app = sa.create_engine(app_url)
        calls, sentinel = _tables(app)
        with Vault(kms, keys_url, create=True, cache_max_entries=1_000, **options) as vault:
            subjects = [uuid.uuid4() for _ in range(customers)]
            t0 = time.monotonic()
            vault.warm(subjects)
            took = time.monotonic() - t0
            cfg.log(f"retention: {customers:,} customers with keys in {took:.1f} s")
            held_refs = vault.subject_refs(subjects[:held])
            periods = []
            for day in range(2):
                clock.advance(86_400 if day else 0)
                periods.append(vault._periods.for_write(_POLICY.category("chats"), None))
            t0 = time.monotonic()
            for n, period in enumerate(periods):
                _fill(vault, app, calls, subjects, period, values, first_id=n * values)
            cfg.log(f"retention: {2 * values:,} values inserted in {time.monotonic() - t0:.1f} s")
        with app.begin() as conn:
            conn.exec_driver_sql("CREATE INDEX calls_customer_ix ON calls (customer)")
            conn.exec_driver_sql("ANALYZE calls")
        runs = []
        for n, period in enumerate(periods):
            if n == 1:
                _place_holds(keys_url, held_refs, clock())
            when = expires_at(period_of(_POLICY.category("chats"), _at(period.label)))
            clock.advance(max(0.0, when.timestamp() - clock()))
            before = _stats(app, sentinel)
            with Vault(kms, keys_url, **options) as vault:
                t0 = time.perf_counter()
                report = vault.enforce_retention()
                took = time.perf_counter() - t0
                if report.destroyed != {"chats": (period.label,)}:
                    raise RuntimeError(f"enforcement did not destroy {period.label}: {report}")
                if report.held_subjects != (held if n else 0):
                    raise RuntimeError(f"held subjects preserved: {report.held_subjects}")
                check = vault.verify_erasures()
                # the holds written straight into the key store are not in the ledger
                if check.counts != {**check.counts, "not_applied": 0, "pending": 0} or (
                    check.counts["missing_from_ledger"] != (held if n else 0)
                ):
                    raise RuntimeError(f"the ledger and the key store disagree: {check.counts}")
            after = _stats(app, sentinel)
            delta = {k: after[k] - before[k] for k in _STATS}
            runs.append((took, delta, report.held_keys))
            cfg.log(f"retention: period {n + 1} expired in {took:.3f} s, data table {delta}")
        app.dispose()
    (plain_s, plain_delta, _), (held_s, held_delta, held_keys) = runs
    out["retention_expire_1m_s"] = round(plain_s, 3)
    out["retention_expire_1m_data_rows_touched"] = _touched(plain_delta)
    out["retention_expire_1m_held_10k_s"] = round(held_s, 3)
    out["retention_expire_1m_held_10k_data_rows_touched"] = _touched(held_delta)
    out["retention_expire_held_keys_made"] = held_keys
    out["retention_expire_data_table_stats"] = {"plain": plain_delta, "held": held_delta}
    where = (
        f"PostgreSQL: key store, SQL ledger and the application table in three schemas of one "
        f"database; {values:,} suite-2 values in the expired period ({2 * values:,} in the "
        f"table), {customers:,} customers; one enforce_retention() call of a fresh vault"
    )
    out["retention_expire_1m_s_note"] = where
    out["retention_expire_1m_held_10k_s_note"] = (
        f"{where}; {held:,} customers held (rows of ccvault_holds written directly), so "
        f"{held_keys:,} held keys made before the period was destroyed"
    )
    touched = (
        "rows of the application table inserted, updated, deleted or read by a sequential or "
        "index scan during the call (pg_stat_user_tables, read after the vault closed and a "
        "control query was seen), and the scans themselves"
    )
    out["retention_expire_1m_data_rows_touched_note"] = touched
    out["retention_expire_1m_held_10k_data_rows_touched_note"] = touched
    if cfg.quick:
        for name in ("retention_expire_1m_s", "retention_expire_1m_held_10k_s"):
            out[f"{name}_note"] += f"; --quick: {values:,} values, {held:,} held, not 1M / 10k"
    return out


def _at(label: str) -> datetime:
    return datetime.fromisoformat(label.rpartition("/")[2]).replace(tzinfo=timezone.utc)


def _tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table]:
    md = sa.MetaData()
    calls = sa.Table(
        "calls",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("customer", sa.Uuid, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("transcript", sa.LargeBinary, nullable=False),
    )
    sentinel = sa.Table("sentinel", md, sa.Column("id", sa.Integer, primary_key=True))
    md.create_all(engine)
    return calls, sentinel


def _fill(
    vault: Vault,
    app: sa.Engine,
    calls: sa.Table,
    subjects: list[uuid.UUID],
    period: Any,
    values: int,
    *,
    first_id: int,
) -> None:
    """``values`` suite-2 values of ``period``, spread evenly over ``subjects``: each customer's
    value key derived from its subject key and the period secret, as the read path will."""
    refs = vault.subject_refs(subjects)
    keys = vault._store.live_subject_keys(refs)
    sealers = []
    for subject, ref in zip(subjects, refs, strict=True):
        [rec] = keys[ref]
        key = vault._epochs.unwrap_record(rec).reveal()
        material = fmt.derive_period_key(
            key, period.secret.reveal(), rec.key_id, rec.version, period.period_id
        )
        header = fmt.build_header(
            fmt.SUITE_AES256GCM_PERIOD, rec.key_id, rec.version, period.period_id
        )
        sealers.append((subject, ref, header, Aead(material)))
    started = _at(period.label) + timedelta(hours=9)
    rows: list[dict[str, Any]] = []
    with app.begin() as conn:
        for i in range(values):
            subject, ref, header, aead = sealers[i % len(sealers)]
            rows.append(
                {
                    "id": first_id + i,
                    "customer": subject,
                    "started_at": started,
                    "transcript": fmt.seal_value(aead, header, _TEXT, _CONTEXT, ref),
                }
            )
            if len(rows) == _FILL_BATCH:
                conn.execute(sa.insert(calls), rows)
                rows = []
        if rows:
            conn.execute(sa.insert(calls), rows)


def _place_holds(keys_url: str, refs: list[bytes], now: float) -> None:
    """Active holds on the subjects of ``refs``, written straight into the key store's table."""
    engine = sa.create_engine(keys_url)
    holds = sa.table(
        "ccvault_holds",
        *(sa.column(c) for c in ("hold_id", "ref", "legal_case", "placed_by", "placed_at")),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(holds),
            [
                {
                    "hold_id": uuid.uuid4().hex,
                    "ref": ref,
                    "legal_case": "BENCH-1",
                    "placed_by": "bench",
                    "placed_at": now,
                }
                for ref in refs
            ],
        )
    engine.dispose()


_APP_NAME = "ccvault_bench_retention"


def _named(url: str) -> str:
    return (
        sa.make_url(url)
        .update_query_dict({"application_name": _APP_NAME})
        .render_as_string(hide_password=False)
    )


def _stats(app: sa.Engine, sentinel: sa.Table) -> dict[str, int]:
    """The statistics of ``calls`` once every connection of the vaults has ended (a server
    process flushes its statistics as it exits) and a control query on ``sentinel`` is seen in
    them."""
    deadline = time.monotonic() + 30
    with app.connect() as conn:
        while conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": _APP_NAME},
        ).scalar():
            if time.monotonic() > deadline:
                raise RuntimeError("the vault's connections did not end")
            time.sleep(0.05)
            conn.rollback()
    with app.connect() as conn:
        seen = _sentinel_scans(conn)
        conn.execute(sa.select(sa.func.count()).select_from(sentinel))
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        conn.commit()
    with app.connect() as conn:
        while True:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            if _sentinel_scans(conn) > seen:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the control query never reached pg_stat_user_tables")
            time.sleep(0.2)
        row = conn.execute(
            sa.text(
                f"SELECT {', '.join(_STATS)} FROM pg_stat_user_tables "
                "WHERE relname = 'calls' AND schemaname = current_schema()"
            )
        ).one()
    return {k: int(v or 0) for k, v in zip(_STATS, row, strict=True)}


def _sentinel_scans(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.text(
                "SELECT seq_scan FROM pg_stat_user_tables "
                "WHERE relname = 'sentinel' AND schemaname = current_schema()"
            )
        ).scalar()
        or 0
    )


def _touched(delta: dict[str, int]) -> int:
    """Rows of the data table written or read, and scans of it, during the call."""
    return sum(delta.values())
