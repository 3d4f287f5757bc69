"""ORM workload for the peer: 20,000 rows with 4 encrypted columns, of which 2 searchable.

ccvault has no ORM column types yet, so its ``orm_*`` figures are null; this measures the peer
users pick today, sqlalchemy-utils, against the same table in plaintext, in the same run:

* searchable columns (``phone``, ``email``): ``StringEncryptedType(String, key, AesEngine)``,
  sqlalchemy-utils' deterministic engine, the one its documentation says to use for lookups;
* other columns (``name``, ``note``): ``StringEncryptedType(String, key, AesGcmEngine)``.

Each repeat inserts all rows through an ORM session (``add_all`` + ``commit``) into an emptied
table, then selects them all back with a fresh session; plaintext and encrypted tables alternate
in order. PostgreSQL is reached at ``CCVAULT_BENCH_PG`` (else ``CCVAULT_TEST_PG``, else the local
test server); if it cannot be reached its figures are null with the error as the note.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks import _peers
from benchmarks._config import Config, Results, missing, put
from benchmarks._measure import Summary, no_gc

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_url() -> str:
    return os.environ.get("CCVAULT_BENCH_PG") or os.environ.get("CCVAULT_TEST_PG") or DEFAULT_PG


def _models(suffix: str, key: str) -> tuple[type[Any], type[Any], sa.MetaData]:
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesEngine, AesGcmEngine

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = f"bench_plain_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer: Mapped[str] = mapped_column(sa.String(36))
        phone: Mapped[str] = mapped_column(sa.String(255), index=True)
        email: Mapped[str] = mapped_column(sa.String(255), index=True)
        name: Mapped[str] = mapped_column(sa.String(255))
        note: Mapped[str] = mapped_column(sa.String(255))

    def searchable() -> Any:
        return StringEncryptedType(sa.String(255), key, AesEngine, "pkcs5")

    def sealed() -> Any:
        return StringEncryptedType(sa.String(255), key, AesGcmEngine)

    class Encrypted(Base):
        __tablename__ = f"bench_sqlau_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer: Mapped[str] = mapped_column(sa.String(36))
        phone: Mapped[str] = mapped_column(searchable(), index=True)
        email: Mapped[str] = mapped_column(searchable(), index=True)
        name: Mapped[str] = mapped_column(sealed())
        note: Mapped[str] = mapped_column(sealed())

    return Plain, Encrypted, Base.metadata


def _rows(n: int) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        customer = str(uuid.UUID(int=i + 1))
        rows.append(
            {
                "customer": customer,
                "phone": f"+44 20 7946 {i % 10_000:04d}",
                "email": f"customer{i}@example.com",
                "name": f"Customer Number {i}",
                "note": f"called about order {i:06d}; prefers e-mail; account in good standing",
            }
        )
    return rows


def _time_insert(engine: sa.Engine, model: type[Any], rows: list[dict[str, str]]) -> float:
    with Session(engine) as session:
        session.execute(sa.delete(model))
        session.commit()
    with no_gc(), Session(engine) as session:
        t0 = time.perf_counter()
        session.add_all([model(**row) for row in rows])
        session.commit()
        return time.perf_counter() - t0


def _time_select(engine: sa.Engine, model: type[Any], expected: int) -> float:
    with no_gc(), Session(engine) as session:
        t0 = time.perf_counter()
        found = session.scalars(sa.select(model)).all()
        elapsed = time.perf_counter() - t0
    if len(found) != expected or not found[-1].note.startswith("called about"):
        raise RuntimeError("select did not return the rows")
    return elapsed


def _backend(cfg: Config, out: Results, label: str, engine: sa.Engine) -> None:
    Plain, Encrypted, metadata = _models(uuid.uuid4().hex[:8], os.urandom(32).hex())
    rows = _rows(cfg.orm_rows)
    metadata.create_all(engine)
    try:
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(cfg.repeats):
            order = (Plain, Encrypted) if r % 2 == 0 else (Encrypted, Plain)
            for model in order:
                kind = "plain" if model is Plain else "peer"
                times.setdefault(("insert", kind), []).append(_time_insert(engine, model, rows))
                times.setdefault(("select", kind), []).append(
                    _time_select(engine, model, len(rows))
                )
    finally:
        metadata.drop_all(engine)
    for op in ("insert", "select"):
        peer, plain = times[(op, "peer")], times[(op, "plain")]
        ratio = Summary.of([p / b for p, b in zip(peer, plain, strict=True)])
        put(out, f"peer_sqlalchemy_utils_{op}_ratio_{label}", ratio)
    put(out, f"plaintext_select_ms_{label}", Summary.of(times[("select", "plain")]).scaled(1e3))
    put(
        out,
        f"peer_sqlalchemy_utils_select_ms_{label}",
        Summary.of(times[("select", "peer")]).scaled(1e3),
    )
    put(out, f"plaintext_insert_ms_{label}", Summary.of(times[("insert", "plain")]).scaled(1e3))
    put(
        out,
        f"peer_sqlalchemy_utils_insert_ms_{label}",
        Summary.of(times[("insert", "peer")]).scaled(1e3),
    )
    version = ".".join(str(v) for v in engine.dialect.server_version_info or ())
    driver = engine.dialect.driver
    out[f"orm_{label}_driver"] = f"{engine.dialect.name}+{driver} ({_driver_version(driver)})"
    out[f"orm_{label}_server_version"] = version


def _driver_version(driver: str) -> str:
    if driver == "pysqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    return f"{driver} {_peers.version(driver) or '?'}"


FIGURES = (
    "peer_sqlalchemy_utils_select_ratio_postgres",
    "peer_sqlalchemy_utils_insert_ratio_postgres",
    "peer_sqlalchemy_utils_select_ratio_sqlite",
    "peer_sqlalchemy_utils_insert_ratio_sqlite",
    "plaintext_select_ms_postgres",
    "plaintext_select_ms_sqlite",
)


def run(cfg: Config) -> Results:
    out: Results = {}
    if _peers.version("sqlalchemy-utils") is None:
        for name in FIGURES:
            missing(out, name, "sqlalchemy-utils is not installed")
        return out
    out["orm_rows"] = cfg.orm_rows
    out["orm_columns"] = "4 encrypted: phone, email (AesEngine, searchable), name, note (AesGcm)"
    sqlite_engine = sa.create_engine(f"sqlite:///{cfg.workdir / 'orm.db'}")
    cfg.log(f"orm: sqlite, {cfg.orm_rows} rows")
    _backend(cfg, out, "sqlite", sqlite_engine)
    sqlite_engine.dispose()

    pg_engine = sa.create_engine(_pg_url())
    try:
        with pg_engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect: "not measured here"
        reason = f"PostgreSQL not reachable at {pg_engine.url!r}: {type(exc).__name__}"
        for name in FIGURES:
            if name.endswith("_postgres"):
                missing(out, name, reason)
    else:
        cfg.log(f"orm: postgres, {cfg.orm_rows} rows")
        _backend(cfg, out, "postgres", pg_engine)
    finally:
        pg_engine.dispose()
    return out
