"""Cold read: what a fresh process pays in KMS calls and key-store statements to read 10,000 rows.

A writing vault encrypts 10,000 values for 2,000 customers (5 each) into a SQLite key store. Then,
in each repeat, a fresh vault (empty caches, as in a new process) on the same key store and the
same KMS reads all 10,000 values back. Counted:

* KMS calls (wrap + unwrap, through ``ccvault.testing.CountingKms``) of the reading vault, from
  its construction to its last decrypt;
* SQL statements the reading vault sends to the key store during the read, counted with an
  SQLAlchemy ``before_cursor_execute`` listener on its engine (``BEGIN`` included; commits and
  rollbacks the driver issues itself are not statements and are not counted; the invalidation
  channel's polls are counted, shown as ``POLL`` in the note, each with its ``BEGIN``).

Through ``vault.decrypt`` each cold key is read on its own (one key-store read per customer), so
the statement count grows with the number of customers; ``..._decrypt_many`` is the same read as
one ``vault.decrypt_many`` call, which loads the keys of the whole batch together (one query per
500 cold keys); ``..._after_warm`` shows the ``vault.decrypt`` read after
``vault.warm(customers)``, which loads keys 500 at a time, and ``..._orm`` the same 10,000 rows
read with an ORM select from a table of ``Encrypted`` columns, where the read hook loads the keys
of each batch of rows together.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks._config import CONTEXT, Config, Results, missing, put
from benchmarks._measure import Summary, no_gc
from ccvault import Vault
from ccvault.kms import LocalKms
from ccvault.testing import CountingKms

ROWS = 10_000
CUSTOMERS = 2_000


def _engine(vault: Vault) -> sa.Engine:
    engine = vault._store.engine  # type: ignore[attr-defined]  # SqlKeyStore's engine
    if not isinstance(engine, sa.Engine):
        raise TypeError("expected a SQL key store")
    return engine


def _cold_read(
    inner: LocalKms,
    url: str,
    rows: list[tuple[uuid.UUID, bytes, bytes]],
    how: Literal["decrypt", "warm", "decrypt_many"],
) -> dict[str, Any]:
    """One cold read of ``rows`` by a fresh vault: ``vault.decrypt`` of each row, the same after
    ``vault.warm(customers)``, or one ``vault.decrypt_many`` of them all."""
    kms = CountingKms(inner)
    vault = Vault(kms, url)
    construct_calls = kms.calls["wrap"] + kms.calls["unwrap"]
    statements: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements[_kind(statement)] += 1

    engine = _engine(vault)
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with no_gc():
            t0 = time.perf_counter()
            if how == "decrypt_many":
                values = vault.decrypt_many([(blob, CONTEXT, subject) for subject, blob, _ in rows])
                if values != [expected for _, _, expected in rows]:
                    raise RuntimeError("cold decrypt_many returned wrong values")
            else:
                if how == "warm":
                    vault.warm(dict.fromkeys(subject for subject, _, _ in rows))
                for subject, blob, expected in rows:
                    if vault.decrypt(blob, context=CONTEXT, subject=subject) != expected:
                        raise RuntimeError("cold read returned a wrong value")
            elapsed = time.perf_counter() - t0
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
        vault.close()
    return {
        "kms": kms.calls["wrap"] + kms.calls["unwrap"],
        "kms_construct": construct_calls,
        "kms_by_method": dict(kms.calls),
        "statements": sum(statements.values()),
        "by_kind": dict(statements),
        "ms": elapsed * 1e3,
    }


def _kind(statement: str) -> str:
    """A statement's first keyword; ``POLL`` for the invalidation channel's poll (its SELECT of
    ``ccvault_invalidations``, at most one per 0.8 s of key use, whatever is read)."""
    if "ccvault_invalidations" in statement:
        return "POLL"
    return statement.split(None, 1)[0].upper()


def _orm_cold(cfg: Config, out: Results, inner: LocalKms) -> None:
    """The same 10,000 rows of 2,000 customers, written and read back through the ORM."""
    from ccvault.sqlalchemy import Encrypted

    class Base(DeclarativeBase):
        pass

    class Interaction(Base):
        __tablename__ = "bench_cold_interactions"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        customer_id: Mapped[uuid.UUID] = mapped_column(index=True)
        transcript: Mapped[str] = mapped_column(Encrypted(sa.String(255), subject="customer_id"))

    app_url = f"sqlite:///{cfg.workdir / 'cold-app.db'}"
    keys_url = f"sqlite:///{cfg.workdir / 'cold-orm-keys.db'}"
    customers = [uuid.uuid4() for _ in range(CUSTOMERS)]
    expected = {}
    engine = sa.create_engine(app_url)
    Base.metadata.create_all(engine)
    with Vault(inner, keys_url) as writer:
        writer.attach(engine)
        with Session(engine) as session:
            for i in range(ROWS):
                row = Interaction(
                    id=uuid.uuid4(),
                    customer_id=customers[i % CUSTOMERS],
                    transcript=f"call {i:05d}: asked about the invoice",
                )
                expected[row.id] = row.transcript
                session.add(row)
            session.commit()
    engine.dispose()

    samples: list[dict[str, Any]] = []
    for _ in range(cfg.repeats):
        kms = CountingKms(inner)
        reader = Vault(kms, keys_url)
        statements: Counter[str] = Counter()

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements[_kind(statement)] += 1  # noqa: B023 - runs in the loop

        store_engine = _engine(reader)
        sa.event.listen(store_engine, "before_cursor_execute", count)
        engine = sa.create_engine(app_url)
        reader.attach(engine)
        try:
            with no_gc(), Session(engine) as session:
                t0 = time.perf_counter()
                found = session.scalars(sa.select(Interaction)).all()
                elapsed = time.perf_counter() - t0
                if len(found) != ROWS or any(r.transcript != expected[r.id] for r in found):
                    raise RuntimeError("cold ORM read returned wrong values")
        finally:
            sa.event.remove(store_engine, "before_cursor_execute", count)
            reader.close()
            engine.dispose()
        samples.append(
            {
                "kms": kms.calls["wrap"] + kms.calls["unwrap"],
                "statements": sum(statements.values()),
                "by_kind": dict(statements),
                "ms": elapsed * 1e3,
            }
        )
    put(out, "kms_calls_cold_10k_rows_orm", Summary.of([r["kms"] for r in samples]))
    put(
        out, "keystore_roundtrips_cold_10k_rows_orm", Summary.of([r["statements"] for r in samples])
    )
    put(out, "cold_read_10k_rows_orm_ms", Summary.of([r["ms"] for r in samples]))
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(samples[0]["by_kind"].items()))
    out["keystore_roundtrips_cold_10k_rows_orm_note"] = (
        f"{kinds}; session.scalars(select(Interaction)).all() on a fresh engine and vault, "
        "construction not counted"
    )


def run(cfg: Config) -> Results:
    out: Results = {}
    inner = LocalKms.ephemeral()
    url = f"sqlite:///{cfg.workdir / 'cold.db'}"
    customers = [uuid.uuid4() for _ in range(CUSTOMERS)]
    cfg.log(f"cold: writing {ROWS} values for {CUSTOMERS} customers")
    with Vault(inner, url) as writer:
        writer.warm(customers)
        rows = []
        for i in range(ROWS):
            subject = customers[i % CUSTOMERS]
            value = f"row {i:05d} of customer {subject}".encode()
            rows.append((subject, writer.encrypt(subject, value, context=CONTEXT), value))

    cold, warmed, many = [], [], []
    for _ in range(cfg.repeats):  # interleaved: a slow moment of the machine hits all three
        cold.append(_cold_read(inner, url, rows, "decrypt"))
        warmed.append(_cold_read(inner, url, rows, "warm"))
        many.append(_cold_read(inner, url, rows, "decrypt_many"))
    cfg.log(f"cold: {cfg.repeats} cold reads, warmed reads and decrypt_many reads")

    put(out, "kms_calls_cold_10k_rows", Summary.of([r["kms"] for r in cold]))
    put(out, "keystore_roundtrips_cold_10k_rows", Summary.of([r["statements"] for r in cold]))
    put(out, "cold_read_10k_rows_ms", Summary.of([r["ms"] for r in cold]))
    put(
        out,
        "keystore_roundtrips_cold_10k_rows_decrypt_many",
        Summary.of([r["statements"] for r in many]),
    )
    put(out, "kms_calls_cold_10k_rows_decrypt_many", Summary.of([r["kms"] for r in many]))
    put(out, "cold_read_10k_rows_decrypt_many_ms", Summary.of([r["ms"] for r in many]))
    put(
        out,
        "keystore_roundtrips_cold_10k_rows_after_warm",
        Summary.of([r["statements"] for r in warmed]),
    )
    out["kms_calls_cold_10k_rows_note"] = (
        f"construction {cold[0]['kms_construct']}, by method {cold[0]['kms_by_method']}; "
        "LocalKms.ephemeral() behind ccvault.testing.CountingKms"
    )
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(cold[0]["by_kind"].items()))
    out["keystore_roundtrips_cold_10k_rows_note"] = (
        f"{kinds}; vault.decrypt reads each cold key on its own (one key-store read per "
        "customer), construction not counted"
    )
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(many[0]["by_kind"].items()))
    out["keystore_roundtrips_cold_10k_rows_decrypt_many_note"] = (
        f"{kinds}; one vault.decrypt_many of the 10,000 (blob, context, subject) items, "
        "construction not counted"
    )
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(warmed[0]["by_kind"].items()))
    out["keystore_roundtrips_cold_10k_rows_after_warm_note"] = f"{kinds}; warm() included"
    out["cold_rows"] = ROWS
    out["cold_customers"] = CUSTOMERS
    try:
        import ccvault.sqlalchemy  # noqa: F401
    except ImportError as exc:
        for name in ("kms_calls_cold_10k_rows_orm", "keystore_roundtrips_cold_10k_rows_orm"):
            missing(out, name, f"ccvault.sqlalchemy cannot be imported ({exc})")
    else:
        _orm_cold(cfg, out, inner)
        cfg.log(f"cold: {cfg.repeats} cold ORM reads")
    return out
