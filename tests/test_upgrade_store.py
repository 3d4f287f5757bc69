"""Key-store schema versions (DESIGN.md, lifecycle rule 1) and the upgrades from schemas 1 to 4.

A store newer than the library is refused; an older one is refused too, read-write and
read-only, until ``ccvault upgrade-store`` / ``Vault.upgrade_store`` brings it up: explicitly,
idempotently, resumably after a crash, and safely from two processes at once. A store "of
schema 1" here is a fresh store taken back to what a library of schema 1 leaves: no
``subject_heads.mac`` column, no head-MAC key, no version-0 tombstones, ``schema_version = 1``
(the frozen SQLite store of a real schema-1 library is tests/test_frozen_store.py). A store "of
schema 2" is one without the invalidation channel (schema 3): no ``ccvault_invalidations``
table, no propagation bound or channel counter in ``ccvault_meta``, ``schema_version = 2``;
"of schema 3" one without the erasure queue (schema 4), "of schema 4" one without the legal
holds (schema 5).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from admin_cli import configure, run
from ccvault import (
    NO_SUBJECT,
    ConfigurationError,
    KeyStoreError,
    SubjectShreddedError,
    Vault,
)
from ccvault.cli import main
from ccvault.keystore._schema import SCHEMA_VERSION, build_metadata
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms
from ccvault.vault import StoreUpgrade

CTX = "customers.phone"
_MD = build_metadata()
HEADS, KEYS, META = (_MD.tables[f"ccvault_{t}"] for t in ("subject_heads", "keys", "meta"))
SCHEMA_3_META = ("propagation_bound_seconds", "invalidation_seq")
SCHEMA_3_TABLES = ("ccvault_invalidations", "ccvault_ledger_outbox", "ccvault_erasures")


def _as_schema_4(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(META).where(META.c.name == "schema_version").values(value="4"))
        with engine.begin() as conn:  # DDL on its own (MariaDB commits it anyway)
            conn.exec_driver_sql("DROP TABLE ccvault_holds")
    finally:
        engine.dispose()


def _as_schema_3(url: str) -> None:
    _as_schema_4(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(META).where(META.c.name == "schema_version").values(value="3"))
        with engine.begin() as conn:  # DDL on its own (MariaDB commits it anyway)
            conn.exec_driver_sql("DROP TABLE ccvault_erasure_queue")
    finally:
        engine.dispose()


def _as_schema_2(url: str) -> None:
    _as_schema_3(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(META).where(META.c.name.in_(SCHEMA_3_META)))
            conn.execute(sa.update(META).where(META.c.name == "schema_version").values(value="2"))
        for table in SCHEMA_3_TABLES:
            with engine.begin() as conn:  # DDL on its own (MariaDB commits it anyway)
                conn.exec_driver_sql(f"DROP TABLE {table}")
    finally:
        engine.dispose()


def _as_schema_1(url: str) -> None:
    _as_schema_2(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(KEYS).where(sa.or_(KEYS.c.kind == "head", KEYS.c.version == 0)))
            conn.execute(sa.update(META).where(META.c.name == "schema_version").values(value="1"))
        with engine.begin() as conn:  # DDL on its own (MariaDB commits it anyway)
            conn.exec_driver_sql("ALTER TABLE ccvault_subject_heads DROP COLUMN mac")
    finally:
        engine.dispose()


def _schema(url: str) -> tuple[str | None, bool]:
    """(the stored schema_version, whether subject_heads has the mac column)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.execute(
                sa.select(META.c.value).where(META.c.name == "schema_version")
            ).scalar()
            columns = {c["name"] for c in sa.inspect(conn).get_columns("ccvault_subject_heads")}
    finally:
        engine.dispose()
    return version, "mac" in columns


def _channel(url: str) -> tuple[bool, dict[str, str], list[tuple[int, str]]]:
    """(whether the invalidation table exists, the schema-3 meta rows, its (seq, kind) rows)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            present = sa.inspect(conn).has_table("ccvault_invalidations")
            meta = dict(
                conn.execute(
                    sa.select(META.c.name, META.c.value).where(META.c.name.in_(SCHEMA_3_META))
                ).all()
            )
            rows = (
                [
                    (r.seq, r.kind)
                    for r in conn.execute(sa.text("SELECT seq, kind FROM ccvault_invalidations"))
                ]
                if present
                else []
            )
    finally:
        engine.dispose()
    return present, meta, sorted(rows)


def _has_tables(url: str, names: tuple[str, ...]) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {n for n in names if sa.inspect(conn).has_table(n)}
    finally:
        engine.dispose()


def _set_version(url: str, value: str | None) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if value is None:
                conn.execute(sa.delete(META).where(META.c.name == "schema_version"))
            else:
                conn.execute(
                    sa.update(META).where(META.c.name == "schema_version").values(value=value)
                )
    finally:
        engine.dispose()


def _refused(kms: LocalKms, url: str, match: str) -> None:
    for readonly in (False, True):
        with pytest.raises(ConfigurationError, match=match):
            Vault(kms, url, readonly=readonly)


def test_a_new_installation_is_created_at_the_current_schema(db_url: str) -> None:
    with Vault(LocalKms.ephemeral(), db_url, propagation_interval=0.5):
        pass
    assert _schema(db_url) == (str(SCHEMA_VERSION), True)
    assert _channel(db_url) == (
        True,
        {"propagation_bound_seconds": "0.5", "invalidation_seq": "0"},
        [],
    )


def test_a_store_older_than_schema_versions_is_schema_1(db_url: str) -> None:
    """A store without the schema_version row predates it: version 1, never the library's."""
    kms = LocalKms.ephemeral()
    with Vault(kms, db_url):
        pass
    _as_schema_1(db_url)
    _set_version(db_url, None)
    _refused(kms, db_url, r"schema version 1, older .* `ccvault upgrade-store`")
    assert _schema(db_url) == (None, False)  # refused without writing anything
    assert Vault.upgrade_store(kms, db_url).from_version == 1
    assert _schema(db_url) == (str(SCHEMA_VERSION), True)


@pytest.mark.parametrize("stored", ["6", "99", "two"])
def test_a_newer_or_unknown_schema_is_refused(db_url: str, stored: str) -> None:
    kms = LocalKms.ephemeral()
    with Vault(kms, db_url):
        pass
    _set_version(db_url, stored)
    match = r"schema version 6\w*, newer" if stored.isdigit() else "not a number"
    if stored == "99":
        match = "schema version 99, newer than this ccvault knows .* never downgraded"
    _refused(kms, db_url, match)
    with pytest.raises(ConfigurationError, match=match):
        Vault.upgrade_store(kms, db_url)
    assert _schema(db_url) == (stored, True)


def test_the_upgrade_from_schema_1(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    kms = LocalKms.ephemeral()
    alice, bob, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url) as old:
        kept = old.encrypt(alice, b"+1 555 0100", context=CTX)
        erased = old.encrypt(bob, b"+1 555 0199", context=CTX)
        wide = old.encrypt(NO_SUBJECT, b"welcome", context="ivr.prompts")
        receipts = [old.shred(bob), old.shred(never)]
        never_ref = old.subject_ref(never)
    _as_schema_1(db_url)
    _refused(kms, db_url, r"schema version 1, older than this ccvault's \(5\): run `ccvault")
    assert _schema(db_url) == ("1", False)  # a refused open changes nothing
    with pytest.raises(ConfigurationError, match="not read-only"):
        Vault.upgrade_store(kms, db_url, readonly=True)
    with pytest.raises(TypeError):
        Vault.upgrade_store(kms)

    caplog.set_level(logging.WARNING, logger="ccvault")
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(1, SCHEMA_VERSION, 3, 1)
    assert _schema(db_url) == (str(SCHEMA_VERSION), True)
    assert _channel(db_url)[:2] == (
        True,
        {"propagation_bound_seconds": "1.0", "invalidation_seq": "0"},
    )
    with Vault(kms, db_url) as vault:
        assert vault.verify_heads().ok
        assert vault.decrypt(kept, context=CTX, subject=alice) == b"+1 555 0100"
        assert vault.decrypt(wide, context="ivr.prompts") == b"welcome"
        for subject in (bob, never):
            assert vault.is_shredded(subject)
            with pytest.raises(SubjectShreddedError):
                vault.encrypt(subject, b"x", context=CTX)
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(erased, context=CTX)
        assert [vault.shred(bob), vault.shred(never)] == receipts
        assert vault.encrypt(uuid.uuid4(), b"new customer", context=CTX)
        assert vault.encrypt(alice, b"more", context=CTX)
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        tombstone = conn.execute(sa.select(KEYS).where(KEYS.c.ref == never_ref)).one()
    engine.dispose()
    assert (tombstone.version, tombstone.state, tombstone.wrapped) == (0, "destroyed", None)
    # Idempotent: a second run finds nothing to do, and says nothing.
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_interrupted_upgrade_resumes(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kms = LocalKms.ephemeral()
    subjects = [uuid.uuid4() for _ in range(520)]  # two batches of heads
    with Vault(kms, db_url) as old:
        assert old.warm(subjects) == 520
        blob = old.encrypt(subjects[-1], b"last", context=CTX)
        old.shred(subjects[0])
    _as_schema_1(db_url)
    real = SqlKeyStore.seal_heads
    calls: list[int] = []

    def crash_in_the_second_batch(self: SqlKeyStore, *args: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyStoreError("the key store could not be written")  # a lost connection
        return real(self, *args)

    monkeypatch.setattr(SqlKeyStore, "seal_heads", crash_in_the_second_batch)
    with pytest.raises(KeyStoreError):
        Vault.upgrade_store(kms, db_url)
    monkeypatch.setattr(SqlKeyStore, "seal_heads", real)
    assert _schema(db_url) == ("1", True)  # the column is there; the version is not raised yet
    _refused(kms, db_url, "older")
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(1, SCHEMA_VERSION, 20, 0)
    with Vault(kms, db_url) as vault:
        assert vault.verify_heads().ok
        assert vault.decrypt(blob, context=CTX) == b"last"
        assert vault.is_shredded(subjects[0])
        assert vault.warm(subjects) == 519


def test_two_upgrades_at_once(db_url: str) -> None:
    """Two processes run upgrade-store at the same moment: both finish, every head is
    authenticated once, and the DDL of one does not break the other's."""
    kms = LocalKms.ephemeral()
    subjects = [uuid.uuid4() for _ in range(300)]
    with Vault(kms, db_url) as old:
        old.warm(subjects)
        old.shred(subjects[0])
    _as_schema_1(db_url)
    start = threading.Barrier(2)

    def upgrade() -> StoreUpgrade:
        start.wait(10)
        return Vault.upgrade_store(kms, db_url)

    with ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(upgrade) for _ in range(2)]]
    assert {(r.from_version, r.to_version) for r in results} <= {(1, 5), (5, 5)}
    assert sum(r.heads_authenticated for r in results) == 300
    assert _schema(db_url) == (str(SCHEMA_VERSION), True)
    with Vault(kms, db_url) as vault:
        assert vault.verify_heads().ok
        assert vault.warm(subjects) == 299


def test_heads_an_older_process_writes_after_the_upgrade(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A process still running the older library creates heads without a MAC: they fail
    closed (the subject reads as shredded) until upgrade-store runs again."""
    kms = LocalKms.ephemeral()
    late = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        blob = vault.encrypt(late, b"from an old process", context=CTX)
        ref = vault.subject_ref(late)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.update(HEADS).where(HEADS.c.ref == ref).values(mac=None))
    engine.dispose()
    caplog.set_level(logging.WARNING, logger="ccvault")
    with Vault(kms, db_url) as vault:
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)
        assert vault.verify_heads().counts["unauthenticated"] == 1
    upgrade = Vault.upgrade_store(kms, db_url)
    assert upgrade == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 1, 0)
    assert any("had no MAC" in r.getMessage() for r in caplog.records)
    with Vault(kms, db_url) as vault:
        assert vault.decrypt(blob, context=CTX) == b"from an old process"


def test_cli_upgrade_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kms, url = configure(tmp_path, monkeypatch)
    assert main(["upgrade-store"]) == 1  # an empty store: never a new installation
    assert "no ccvault installation" in capsys.readouterr().err
    assert not (tmp_path / "k.db").exists()
    with Vault(kms, url) as vault:
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    _as_schema_1(url)
    for command in ("status", "rotate-epoch", "verify-heads"):
        assert main([command]) == 1
        assert "`ccvault upgrade-store`" in capsys.readouterr().err
    assert main(["upgrade-store"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "schema_version_before": 1,
        "schema_version": SCHEMA_VERSION,
        "heads_authenticated": 1,
        "tombstones_added": 0,
    }
    assert "ccvault upgrade-store: authenticated 1/1 subject heads" in err
    assert run(capsys, "upgrade-store")["heads_authenticated"] == 0
    assert run(capsys, "verify-heads")["ok"] is True
    assert run(capsys, "status")["active_epoch"] == 1


def test_the_upgrade_from_schema_2(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Schema 2 to 3 adds the invalidation channel and records the propagation bound; a
    store of schema 2 is refused until then, read-write and read-only, unchanged."""
    kms = LocalKms.ephemeral()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url) as old:
        kept = old.encrypt(alice, b"+1 555 0100", context=CTX)
        erased = old.encrypt(bob, b"+1 555 0199", context=CTX)
        receipt = old.shred(bob)
    _as_schema_2(db_url)
    _refused(kms, db_url, r"schema version 2, older than this ccvault's \(5\): run `ccvault")
    assert not _has_tables(db_url, SCHEMA_3_TABLES)
    assert _schema(db_url) == ("2", True)
    assert _channel(db_url) == (False, {}, [])  # a refused open changes nothing
    caplog.set_level(logging.WARNING, logger="ccvault")
    assert Vault.upgrade_store(kms, db_url, propagation_interval=2.0) == StoreUpgrade(
        2, SCHEMA_VERSION, 0, 0
    )
    assert _channel(db_url) == (
        True,
        {"propagation_bound_seconds": "2.0", "invalidation_seq": "0"},
        [],
    )
    assert _has_tables(db_url, SCHEMA_3_TABLES) == set(SCHEMA_3_TABLES)
    with Vault(kms, db_url) as vault:
        assert vault.erasure_status(receipt.receipt_id).phase == "legacy"  # type: ignore[union-attr]
        assert vault.propagation_bound == 2.0
        assert vault.decrypt(kept, context=CTX, subject=alice) == b"+1 555 0100"
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(erased, context=CTX)
        assert vault.shred(bob) == receipt
        assert vault.shred(alice).propagation_bound_seconds == 2.0
    assert _channel(db_url)[2] == [(1, "shred")]
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0, 0)
    assert _channel(db_url)[1]["propagation_bound_seconds"] == "2.0"  # never overwritten
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_upgrades_from_schema_2_at_once(db_url: str) -> None:
    kms = LocalKms.ephemeral()
    with Vault(kms, db_url) as old:
        old.warm([uuid.uuid4() for _ in range(10)])
    _as_schema_2(db_url)
    start = threading.Barrier(2)

    def upgrade(interval: float) -> StoreUpgrade:
        start.wait(10)
        return Vault.upgrade_store(kms, db_url, propagation_interval=interval)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(upgrade, interval) for interval in (1.0, 2.0)]
        outcomes = [f.exception(timeout=120) or f.result() for f in futures]
    present, meta, _ = _channel(db_url)
    assert present
    assert meta["propagation_bound_seconds"] in ("1.0", "2.0")  # one of them, recorded once
    # Whichever upgrade recorded its bound first wins. When the 1 s one did, the 2 s one then
    # finds a store whose bound is shorter than its interval and refuses to open, as any
    # process configured with a larger bound does; the 1 s one always succeeds.
    first, second = outcomes
    assert isinstance(first, StoreUpgrade)
    if isinstance(second, BaseException):
        assert isinstance(second, ConfigurationError), second
        assert "longer than the installation's propagation bound" in str(second)
        assert meta["propagation_bound_seconds"] == "1.0"
    results = [r for r in outcomes if isinstance(r, StoreUpgrade)]
    assert {(r.from_version, r.to_version) for r in results} <= {(2, 5), (5, 5)}
    with Vault(kms, db_url) as vault:
        assert vault.propagation_bound == float(meta["propagation_bound_seconds"])
        vault.shred(uuid.uuid4())
    assert _channel(db_url)[2] == [(1, "shred")]


def test_the_upgrade_from_schema_3(db_url: str) -> None:
    """Schema 3 to 4 adds the queue of erasures awaiting completion (empty: the shreds made
    before it have no queued subject)."""
    kms = LocalKms.ephemeral()
    subject = uuid.uuid4()
    with Vault(kms, db_url) as old:
        blob = old.encrypt(subject, b"+1 555 0100", context=CTX)
        receipt = old.shred(uuid.uuid4())
    _as_schema_3(db_url)
    _refused(kms, db_url, r"schema version 3, older than this ccvault's \(5\): run `ccvault")
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(3, SCHEMA_VERSION, 0, 0)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).has_table("ccvault_erasure_queue")
    finally:
        engine.dispose()
    with Vault(kms, db_url) as new:
        assert new.decrypt(blob, context=CTX) == b"+1 555 0100"
        status = new.erasure_status(receipt.receipt_id)
        assert status is not None
        assert status.phase == "legacy"


def test_the_upgrade_from_schema_4(db_url: str) -> None:
    """Schema 4 to 5 adds the legal holds (empty: no hold predates it)."""
    kms = LocalKms.ephemeral()
    subject = uuid.uuid4()
    with Vault(kms, db_url) as old:
        blob = old.encrypt(subject, b"+1 555 0100", context=CTX)
    _as_schema_4(db_url)
    _refused(kms, db_url, r"schema version 4, older than this ccvault's \(5\): run `ccvault")
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(4, SCHEMA_VERSION, 0, 0)
    assert Vault.upgrade_store(kms, db_url) == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0, 0)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).has_table("ccvault_holds")
    finally:
        engine.dispose()
    with Vault(kms, db_url) as new:
        assert new.decrypt(blob, context=CTX) == b"+1 555 0100"
        assert new.holds() == []
