"""Shared fixtures: key stores on SQLite, PostgreSQL and MariaDB, local KMS, vaults.

PostgreSQL and MariaDB are the real servers this machine kind runs on 127.0.0.1. Without one, its
tests skip with the reason; with ``CI=true`` they fail instead, because CI must exercise them.
Each test gets its own schema (PostgreSQL) or database (MariaDB), dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from ccvault import Vault
from ccvault.kms import LocalKms

CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("CCVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("CCVAULT_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")
BACKENDS = ["sqlite", "postgresql", "mariadb"]


def _required(what: str, why: str, hint: str) -> NoReturn:
    """A server or package a test needs is missing: skip with the reason, fail when CI=true."""
    if CI:
        pytest.fail(f"CI=true requires {what}: {why}")
    pytest.skip(f"{what}: {why}; {hint}")


def _unavailable(what: str, exc: BaseException) -> NoReturn:
    _required(what, f"not reachable ({type(exc).__name__}: {exc})", "start it or set its URL")


def _server_db(backend: str) -> Iterator[str]:
    name = f"ccv_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f"CREATE SCHEMA {name}")
        except sa.exc.OperationalError as exc:
            admin.dispose()
            _unavailable("PostgreSQL on 127.0.0.1:5432", exc)
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
            admin.dispose()
    else:
        admin = sa.create_engine(MARIADB_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE {name}")
        except sa.exc.OperationalError as exc:
            admin.dispose()
            _unavailable("MariaDB on 127.0.0.1:3306", exc)
        url = sa.make_url(MARIADB_URL).set(database=name)
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f"DROP DATABASE {name}")
            admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        yield from _server_db(request.param)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database URL on PostgreSQL only (LISTEN/NOTIFY)."""
    yield from _server_db("postgresql")


@pytest.fixture
def listen_role() -> Iterator[str]:
    """A PostgreSQL login role of its own, for a listener's ``listen_url``: a test may forbid it
    to log in (``ALTER ROLE … NOLOGIN``) to keep a killed listener from reconnecting."""
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    role = f"ccv_listen_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _unavailable("PostgreSQL on 127.0.0.1:5432", exc)
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                ),
                {"r": role},
            )
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def run_sql(url: str, *statements: Any) -> None:
    """Run ``statements`` in one transaction behind ccvault's back (what an insider, or a
    restore of single rows, does to the key store)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "master.key"


@pytest.fixture
def kms(key_path: Path) -> LocalKms:
    return LocalKms.from_file(key_path, create=True)


@pytest.fixture
def vault(kms: LocalKms, db_url: str) -> Iterator[Vault]:
    v = Vault(kms, db_url, subject_type="uuid")
    yield v
    v.close()


@pytest.fixture
def svault(kms: LocalKms, sqlite_url: str) -> Iterator[Vault]:
    """A vault on SQLite only, for tests about crypto rather than the database."""
    v = Vault(kms, sqlite_url, subject_type="uuid")
    yield v
    v.close()


@pytest.fixture
def vault_settings(monkeypatch: pytest.MonkeyPatch, key_path: Path, db_url: str) -> None:
    """CCVAULT_* for the vault of the `vault` fixture (same master key, same key store): the
    ccvault commands of a test open the same installation."""
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{key_path}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", db_url)


@pytest.fixture
def app(vault: Vault, db_url: str) -> Iterator[sa.Engine]:
    """An application database with the test models (tests/sqla_models.py), attached to `vault`.
    On SQLite it is a file of its own beside the key store; on the servers, the same schema."""
    from sqla_models import Base

    url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    vault.attach(engine)
    yield engine
    engine.dispose()


# -- real KMS servers on loopback (session-scoped: each test uses its own key) -----------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        _required("moto[server] and boto3", f"{exc.name} is not installed", "pip install -e .[dev]")
    from aws_server import moto_kms

    with moto_kms() as server:
        yield server


@pytest.fixture(scope="session")
def bao() -> Iterator[Any]:
    """An OpenBao dev server (tests/bao_server.py) with Transit enabled."""
    try:
        from bao_server import bao_dev_server, require_bao
    except ImportError as exc:
        _required("hvac", f"{exc.name} is not installed", "pip install -e .[dev]")
    binary = require_bao()  # skips, or fails when CI=true, without the binary
    try:
        with bao_dev_server(binary) as server:
            yield server
    except (RuntimeError, TimeoutError) as exc:  # pragma: no cover - a broken installation
        _required("an OpenBao dev server", f"it did not start: {exc}", "check the bao binary")
