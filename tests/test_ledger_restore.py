"""Restores never resurrect, and the ledger's sequence holds under several processes (DESIGN.md,
lifecycle rule 3; issue 13 item 2), with real processes on SQLite, PostgreSQL and MariaDB, the
key store's ledger a SQL database on the same server (SQLite: a file of its own).

* The key store is snapshotted (SQLite's backup API; ``pg_dump`` of the key-store tables; a
  table copy on MariaDB), 100 customers are shredded, the snapshot is restored: a vault already
  running in another process, its caches warm, refuses every one of the 100 from then on (it
  notices the restore, replays the ledger, and never serves a value it had seen shredded); a
  freshly opened vault replays the ledger's 100 receipts before it serves a read, and holds the
  ledger's own receipts, not new ones.
* Shreds from several processes at once leave a gap-free ledger whose every receipt the key
  store applied, and ``ledger_applied_seq`` equal to the ledger's head at rest.
* A process killed after the ledger took its entry and before the key store committed leaves
  the ledger ahead: the next open applies the entry with the ledger's receipt.

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ledger_child
from ccvault import ErasureReceipt, SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from conftest import BACKENDS, _server_db
from vault_ledgers import entries, restore, snapshot

CTX = ledger_child.CTX
CUSTOMERS = 100


@pytest.fixture(scope="module")
def forkserver() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ccvault", "ccvault.vault", "sqlalchemy", "ledger_child"])
    return ctx


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(key-store URL, ledger URL): two databases of one server, or two SQLite files."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}", f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    keys, ledger = _server_db(request.param), _server_db(request.param)
    try:
        yield next(keys), next(ledger)
    finally:
        keys.close()
        ledger.close()


class Child:
    def __init__(
        self, ctx: Any, role: str, key_path: str, url: str, ledger: str, payload: list[str]
    ) -> None:
        self.pipe, theirs = ctx.Pipe()
        self.process = ctx.Process(
            target=ledger_child.run, args=(role, key_path, url, ledger, payload, theirs)
        )
        self.process.start()
        theirs.close()

    def expect(self, kind: str, timeout: float = 60.0) -> tuple[Any, ...]:
        if not self.pipe.poll(timeout):
            pytest.fail(f"the child sent nothing within {timeout} s (waiting for {kind!r})")
        message: tuple[Any, ...] = self.pipe.recv()
        assert message[0] == kind, message
        return message

    def send(self, what: str) -> None:
        self.pipe.send(what)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.pipe.close()
        self.process.join(30)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)


def _installation(tmp_path: Path, url: str, ledger: str) -> tuple[LocalKms, str]:
    key_path = str(tmp_path / "master.key")
    kms = LocalKms.from_file(key_path, create=True)
    Vault(kms, url, ledger=ledger, create=True, listen_url="off").close()
    return kms, key_path


def _applied(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT value FROM ccvault_meta WHERE name = 'ledger_applied_seq'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_a_restore_resurrects_no_one_in_a_running_or_a_fresh_vault(
    forkserver: Any, stores: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, ledger = stores
    kms, key_path = _installation(tmp_path, url, ledger)
    customers = [uuid.uuid4() for _ in range(CUSTOMERS)]
    kept_customer = uuid.uuid4()
    with Vault(kms, url, ledger=ledger, listen_url="off") as vault:
        blobs = [vault.encrypt(c, f"+1 555 {n:04d}".encode(), context=CTX)
                 for n, c in enumerate(customers)]  # fmt: skip
        kept = vault.encrypt(kept_customer, b"kept", context=CTX)
    snapshot(url, tmp_path)
    reader = Child(forkserver, "read", key_path, url, ledger, [b.hex() for b in blobs])
    try:
        reader.expect("ready")
        t0 = time.monotonic()
        with Vault(kms, url, ledger=ledger, listen_url="off") as vault:
            receipts = [vault.shred(c) for c in customers]
        shred_s = time.monotonic() - t0
        reader.expect("all-refused")
        restore(url, tmp_path)  # the 100 customers' keys are live again in the key store
        restored_at = time.monotonic()
        _, noticed = reader.expect("restored")
        time.sleep(1.0)  # the reader goes on reading every value
        reader.send("stop")
        _, resurrected, batches = reader.expect("report")
    finally:
        reader.stop()
    backend = sa.make_url(url).get_backend_name()
    print(
        f"\nrestore ({backend}): 100 ledger-first shreds in {shred_s:.2f} s; the running reader "
        f"noticed the restore and replayed the ledger {max(noticed - restored_at, 0) * 1e3:.0f} "
        f"ms after it committed, then read {batches} batches of 100: {resurrected} resurrected"
    )
    assert resurrected == 0
    assert batches > 0
    assert _applied(url) == CUSTOMERS  # the running vault's replay
    # A fresh vault on the same restore, made again: it replays before it serves a read.
    restore(url, tmp_path)
    assert _applied(url) == 0
    caplog.set_level(logging.WARNING, logger="ccvault")
    with Vault(kms, url, ledger=ledger, listen_url="off") as fresh:
        assert f"{CUSTOMERS} entries replayed ({CUSTOMERS} subjects shredded again)" in caplog.text
        for blob in blobs:
            with pytest.raises(SubjectShreddedError):
                fresh.decrypt(blob, context=CTX)
        assert fresh.decrypt(kept, context=CTX) == b"kept"
        assert [fresh.erasure_receipt(c) for c in customers] == receipts
        assert fresh.verify_erasures().ok
        assert fresh.verify_heads().ok
    assert _applied(url) == CUSTOMERS


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_concurrent_shreds_from_several_processes_keep_the_ledger_gap_free(
    forkserver: Any, backend: str, tmp_path: Path
) -> None:
    keys, ledgers = _server_db(backend), _server_db(backend)
    url, ledger = next(keys), next(ledgers)
    try:
        kms, key_path = _installation(tmp_path, url, ledger)
        groups = [[str(uuid.uuid4()) for _ in range(40)] for _ in range(3)]
        children = [Child(forkserver, "shred", key_path, url, ledger, g) for g in groups]
        try:
            for child in children:
                child.expect("ready")
            t0 = time.monotonic()
            for child in children:
                child.send("go")
            made = [
                ErasureReceipt.model_validate_json(r)
                for child in children
                for r in child.expect("receipts", timeout=120)[1]
            ]
            took = time.monotonic() - t0
        finally:
            for child in children:
                child.stop()
        print(f"\n{backend}: 3 processes shredded 120 customers at once in {took:.2f} s")
        with Vault(kms, url, ledger=ledger, listen_url="off") as vault:
            check = vault.verify_erasures()
            assert check.ok, check.lines()
            stored = entries(ledger, vault.installation_id)
            assert [e.seq for e in stored] == list(range(121))  # gap-free
            in_ledger = [ErasureReceipt.model_validate(e.record) for e in stored[1:]]
            assert sorted(r.receipt_id for r in in_ledger) == sorted(r.receipt_id for r in made)
            for receipt in made:
                status = vault.erasure_status(receipt.receipt_id)
                assert status is not None
                assert status.in_ledger
                assert status.phase == "destroyed"
            assert (check.ledger_head_seq, check.store_applied_seq) == (120, 120)
        assert _applied(url) == 120
    finally:
        keys.close()
        ledgers.close()


def test_a_process_killed_after_the_ledger_append_is_applied_at_the_next_open(
    forkserver: Any, stores: tuple[str, str], tmp_path: Path
) -> None:
    url, ledger = stores
    kms, key_path = _installation(tmp_path, url, ledger)
    customer = uuid.uuid4()
    with Vault(kms, url, ledger=ledger, listen_url="off") as vault:
        blob = vault.encrypt(customer, b"x", context=CTX)
        installation = vault.installation_id
    crash = Child(forkserver, "crash", key_path, url, ledger, [str(customer)])
    crash.process.join(60)
    assert crash.process.exitcode == 137
    crash.stop()
    assert [e.seq for e in entries(ledger, installation)] == [0, 1]  # the ledger took it
    assert _applied(url) == 0  # the key store did not commit
    in_ledger = ErasureReceipt.model_validate(entries(ledger, installation)[1].record)
    with Vault(kms, url, ledger=ledger, listen_url="off") as vault:
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)
        assert vault.erasure_receipt(customer) == in_ledger
        assert vault.shred(customer) == in_ledger
    assert _applied(url) == 1
