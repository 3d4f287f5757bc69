"""The PostgreSQL LISTEN/NOTIFY accelerator of the invalidation channel, in one process.

Each vault on PostgreSQL runs a listener thread on a connection of its own (outside the pool).
A shred sends NOTIFY with its seq in its transaction; the listener polls at once (or, for an
async key store, makes the next use of a cached key poll). These tests give the installation a
propagation bound of 30 s, so that only the notification can explain a refusal within a second.
The poll stays the guarantee: tests/test_propagation.py kills the listener's connection in
another process and measures the fallback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from ccvault import ConfigurationError, SubjectShreddedError, Vault
from ccvault.keystore._listen import APPLICATION_NAME
from ccvault.kms import LocalKms
from conftest import PG_URL

CTX = "customers.phone"
SLOW = 30.0  # the installation's bound: no poll runs on its own during a test


@pytest.fixture
def admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _listener_pids(admin: sa.Engine, vault: Vault) -> list[int]:
    with admin.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :app "
                    "AND query LIKE :listen"
                ),
                {
                    "app": APPLICATION_NAME,
                    "listen": f'LISTEN "ccvault_inv_{vault.installation_id}"',
                },
            ).scalars()
        )


def _until(what: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``what()`` holds; fails after ``timeout``."""
    t0 = time.monotonic()
    while not what():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - t0


def _refused(vault: Vault, blob: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            vault.decrypt(blob, context=CTX)
        except SubjectShreddedError:
            return True
        return False

    return check


def _installation(kms: LocalKms, url: str) -> None:
    Vault(kms, url, propagation_interval=SLOW, listen_url="off").close()


def test_a_notification_makes_the_poll_immediate(kms: LocalKms, pg_url: str) -> None:
    _installation(kms, pg_url)
    customer = uuid.uuid4()
    with (
        Vault(kms, pg_url, propagation_interval=SLOW) as shredder,
        Vault(kms, pg_url, propagation_interval=SLOW) as reader,
    ):
        blob = reader.encrypt(customer, b"+1 555 0100", context=CTX)
        assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"
        assert reader._ring.invalidations.listening
        _until(lambda: reader._ring.invalidations._listener.connections == 1, 5)  # type: ignore[union-attr]
        t0 = time.monotonic()
        shredder.shred(customer)
        shred_s = time.monotonic() - t0
        delay = _until(_refused(reader, blob), 1.0)
        print(f"\nNOTIFY: refused {delay * 1e3:.1f} ms after shred() ({shred_s * 1e3:.1f} ms)")
        with pytest.raises(SubjectShreddedError):
            reader.encrypt(customer, b"x", context=CTX)


def test_a_readonly_vault_listens_and_close_stops_the_listener(
    kms: LocalKms, pg_url: str, admin: sa.Engine
) -> None:
    _installation(kms, pg_url)
    vault = Vault(kms, pg_url, readonly=True)
    _until(lambda: len(_listener_pids(admin, vault)) == 1, 5)
    listener = vault._ring.invalidations._listener
    assert listener is not None
    assert listener.running
    vault.close()
    assert not listener.running
    _until(lambda: _listener_pids(admin, vault) == [], 5)
    vault.close()  # twice: harmless


def test_a_vault_dropped_without_close_stops_its_listener(kms: LocalKms, pg_url: str) -> None:
    _installation(kms, pg_url)
    vault = Vault(kms, pg_url)
    listener = vault._ring.invalidations._listener
    assert listener is not None
    _until(lambda: listener.connections == 1, 5)
    del vault
    # Collected (the listener's thread may hold the vault's channel for the length of a poll:
    # collect again until it lets go), the vault stops its listener.
    _until(lambda: gc.collect() >= 0 and not listener.running, 5)


def test_listen_off_and_bad_listen_urls(kms: LocalKms, pg_url: str) -> None:
    _installation(kms, pg_url)
    with Vault(kms, pg_url, listen_url="off") as vault:
        assert not vault._ring.invalidations.listening
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        Vault(kms, pg_url, listen_url="mysql+pymysql://root@127.0.0.1/test")
    with pytest.raises(ConfigurationError, match="no SQLAlchemy URL"):
        Vault(kms, pg_url, listen_url="host=127.0.0.1 dbname=test")


def test_an_unreachable_listen_url_warns_once_without_its_password(
    kms: LocalKms, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _installation(kms, pg_url)
    caplog.set_level(logging.INFO, logger="ccvault")
    secret = "s3cr3t-listen-pw"
    url = f"postgresql+psycopg://postgres:{secret}@127.0.0.1:1/test"
    with Vault(kms, pg_url, listen_url=url) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        _until(lambda: any("lost its connection" in r.getMessage() for r in caplog.records), 5)
        time.sleep(0.5)  # a few more attempts: still one warning
        assert vault.decrypt(blob, context=CTX) == b"x"  # the poll works without it
    lost = [r for r in caplog.records if "lost its connection" in r.getMessage()]
    assert len(lost) == 1
    assert "127.0.0.1:1" in lost[0].getMessage()
    assert not [r for r in caplog.records if secret in r.getMessage()]


def test_a_reconnected_listener_catches_up_from_its_last_seq(
    kms: LocalKms,
    pg_url: str,
    admin: sa.Engine,
    listen_role: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The listener's connection is killed and may not come back while a shred commits: no
    notification reaches the vault (the 30 s poll is far off); once the listener reconnects it
    catches up from its last seq without any notification."""
    _installation(kms, pg_url)
    listen_url = sa.make_url(PG_URL).set(username=listen_role).render_as_string(False)
    customer = uuid.uuid4()
    caplog.set_level(logging.INFO, logger="ccvault")
    with (
        Vault(kms, pg_url, propagation_interval=SLOW, listen_url="off") as shredder,
        Vault(kms, pg_url, propagation_interval=SLOW, listen_url=listen_url) as reader,
    ):
        blob = reader.encrypt(customer, b"+1 555 0100", context=CTX)
        reader.decrypt(blob, context=CTX)
        listener = reader._ring.invalidations._listener
        assert listener is not None
        _until(lambda: len(_listener_pids(admin, reader)) == 1, 5)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {listen_role} NOLOGIN")
            for pid in _listener_pids(admin, reader):
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        _until(lambda: any("lost its connection" in r.getMessage() for r in caplog.records), 5)
        shredder.shred(customer)
        time.sleep(0.5)
        assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"  # nothing told it yet
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {listen_role} LOGIN")
        waited = _until(_refused(reader, blob), 8.0)
        print(f"\nlistener back: refused {waited:.2f} s after its role could log in again")
        assert listener.connections == 2
        assert any("connected again" in r.getMessage() for r in caplog.records)


def test_an_async_key_store_listens_and_the_next_use_polls(kms: LocalKms, pg_url: str) -> None:
    """An async key store is read from SQLAlchemy's greenlets only: its listener (psycopg, in a
    thread) marks the poll due, and the next use of a cached key runs it."""
    _installation(kms, pg_url)
    async_url = pg_url.replace("postgresql+psycopg://", "postgresql+psycopg_async://")
    customer = uuid.uuid4()

    async def main() -> float:
        reader = await Vault.open_async(kms, async_url, propagation_interval=SLOW)
        try:
            listener = reader._ring.invalidations._listener
            assert listener is not None
            assert listener._can_poll is False
            blob = await reader.run(reader.encrypt, customer, b"x", context=CTX)
            assert await reader.run(reader.decrypt, blob, context=CTX) == b"x"
            while listener.connections < 1:
                await asyncio.sleep(0.005)
            polls = reader._ring.invalidations.polls
            done = threading.Event()

            def shred() -> None:
                with Vault(kms, pg_url, propagation_interval=SLOW, listen_url="off") as other:
                    other.shred(customer)
                done.set()

            threading.Thread(target=shred).start()
            while not done.is_set():
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                try:
                    await reader.run(reader.decrypt, blob, context=CTX)
                except SubjectShreddedError:
                    assert reader._ring.invalidations.polls == polls + 1
                    return time.monotonic() - t0
                await asyncio.sleep(0.005)
            pytest.fail("the async vault still decrypts a second after the shred")
        finally:
            await reader.aclose()

    delay = asyncio.run(main())
    print(f"\nasync key store, NOTIFY: refused {delay * 1e3:.1f} ms after shred() returned")
