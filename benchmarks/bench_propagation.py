"""Shred propagation delay to a warm reader in another process: the poll and PostgreSQL's NOTIFY.

A reader process (forked from a server that imported ccvault first) holds one subject's keys in
its cache (``cache_ttl`` 60 s) and decrypts the subject's value every millisecond. This process
shreds the subject and takes the time ``shred()`` returned; the reader takes the time of its
first ``SubjectShreddedError``; the figure is the difference (CLOCK_MONOTONIC, shared by the two
processes on Linux), over one sample per subject, the reader staying up between samples (each
shred comes a random 0.05-0.85 s after the reader is warm, so that it falls anywhere in the
reader's poll period):

* ``poll`` — SQLite key store, and PostgreSQL with the listener off: the installation's bound is
  1 s, the reader polls every 0.8 s, so the delay falls anywhere up to it (uniform: p50 near
  0.4 s); the maximum is what the bound promises against;
* ``notify`` — PostgreSQL, installation bound 30 s: only the listener's notification can explain
  a refusal within the second, so this is NOTIFY's delay alone.

Reported as the median with the interquartile range and the maximum. ``python -m benchmarks
--only propagation``.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import sqlalchemy as sa

from benchmarks._config import Config, Results, missing
from benchmarks._measure import percentile
from benchmarks.bench_orm import _pg_url
from ccvault import SubjectShreddedError, Vault
from ccvault.kms import LocalKms

CTX = "customers.phone"
TIMEOUT_S = 40.0


def reader(key_path: str, url: str, options: dict[str, Any], pipe: Connection) -> None:
    """The warm reader: for each (subject, value) it is sent, warm the key, say ready, decrypt
    until refused, and send the time of the refusal."""
    vault = Vault(LocalKms.from_file(key_path), url, cache_ttl=60.0, **options)
    try:
        listener = vault._ring.invalidations._listener
        while listener is not None and listener.connections < 1:
            time.sleep(0.002)
        while True:
            job = pipe.recv()
            if job is None:
                return
            blob = bytes.fromhex(job)
            vault.decrypt(blob, context=CTX)
            pipe.send("ready")
            end = time.monotonic() + TIMEOUT_S
            refused = None
            while refused is None and time.monotonic() < end:
                try:
                    vault.decrypt(blob, context=CTX)
                except SubjectShreddedError:
                    refused = time.monotonic()
                    break
                time.sleep(0.001)
            pipe.send(refused)
    finally:
        vault.close()
        pipe.close()


def _measure(cfg: Config, url: str, samples: int, *, bound: float, listen: bool) -> list[float]:
    """Delays in milliseconds from shred() returning to the reader's refusal."""
    key_path = str(cfg.workdir / f"propagation-{uuid.uuid4().hex[:8]}.key")
    kms = LocalKms.from_file(key_path, create=True)
    Vault(kms, url, propagation_interval=bound, listen_url="off").close()
    options: dict[str, Any] = {"propagation_interval": bound}
    if not listen:
        options["listen_url"] = "off"
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ccvault", "ccvault.vault", "sqlalchemy", __name__])
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=reader, args=(key_path, url, options, theirs))
    child.start()
    theirs.close()
    delays: list[float] = []
    rng = random.Random(5)  # when each shred comes, not keys
    try:
        with Vault(kms, url, listen_url="off") as shredder:
            for _ in range(samples):
                subject = uuid.uuid4()
                ours.send(shredder.encrypt(subject, b"+1 555 0100", context=CTX).hex())
                if not ours.poll(TIMEOUT_S) or ours.recv() != "ready":
                    raise RuntimeError("the reader did not get ready")
                time.sleep(rng.uniform(0.05, 0.85))
                shredder.shred(subject)
                returned = time.monotonic()
                if not ours.poll(TIMEOUT_S):
                    raise RuntimeError("the reader did not answer")
                refused = ours.recv()
                if refused is None:
                    raise RuntimeError(f"the reader still decrypted after {TIMEOUT_S} s")
                delays.append(max(0.0, refused - returned) * 1e3)
        ours.send(None)
    finally:
        child.join(30)
        if child.exitcode is None:
            child.kill()
        ours.close()
    return delays


def _put(out: Results, name: str, delays: list[float]) -> None:
    out[name] = round(percentile(delays, 0.5), 1)
    out[f"{name}_spread"] = [round(percentile(delays, 0.25), 1), round(percentile(delays, 0.75), 1)]
    out[name.replace("_p50_", "_max_")] = round(max(delays), 1)


def run(cfg: Config) -> Results:
    out: Results = {}
    samples = 5 if cfg.quick else 20
    out["propagation_samples"] = samples
    cfg.log(f"propagation: sqlite, poll, {samples} samples")
    _put(
        out,
        "propagation_poll_ms_p50_sqlite",
        _measure(
            cfg, f"sqlite:///{cfg.workdir / 'propagation.db'}", samples, bound=1.0, listen=False
        ),
    )
    admin = sa.create_engine(_pg_url(), isolation_level="AUTOCOMMIT")
    schema = f"ccvbench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # any failure to connect: "not measured here"
        reason = f"PostgreSQL not reachable at {admin.url!r}: {type(exc).__name__}"
        for name in ("propagation_poll_ms_p50_postgres", "propagation_notify_ms_p50_postgres"):
            missing(out, name, reason)
        admin.dispose()
        return out
    try:
        for kind, bound, listen in (("poll", 1.0, False), ("notify", 30.0, True)):
            url = (
                sa.make_url(_pg_url())
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
            with admin.connect() as conn:
                for table in (
                    "invalidations",
                    "subject_heads",
                    "keys",
                    "epoch_wraps",
                    "epochs",
                    "meta",
                ):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.ccvault_{table}")
            cfg.log(f"propagation: postgres, {kind}, {samples} samples")
            _put(
                out,
                f"propagation_{kind}_ms_p50_postgres",
                _measure(cfg, url, samples, bound=bound, listen=listen),
            )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    return out
