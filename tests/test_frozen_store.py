"""Whole installations frozen in tests/vectors must keep opening, forever: after the explicit
``upgrade-store`` step, never without it. ``store_v1`` was written by a library of key-store
schema 1, ``store_v2`` by one of schema 2 (ccvault at commit 0a22d8e), ``store_v3`` by one of
schema 3 (ccvault at commit 0fbfd34), ``store_v4`` by one of schema 4 (ccvault at commit
1fca118)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from ccvault import NO_SUBJECT, ConfigurationError, ErasureReceipt, SubjectShreddedError, Vault
from ccvault.keystore._schema import SCHEMA_VERSION
from ccvault.kms import LocalKms
from ccvault.vault import StoreUpgrade

VECTORS = Path(__file__).parent / "vectors"
# schema version -> (folder, subject heads a first upgrade authenticates)
FROZEN = {1: ("store_v1", 2), 2: ("store_v2", 0), 3: ("store_v3", 0), 4: ("store_v4", 0)}


def _doc(version: int) -> Any:
    return json.loads((VECTORS / FROZEN[version][0] / "values.json").read_text())


def _copy(tmp_path: Path, version: int) -> tuple[LocalKms, str]:
    for name in ("master.key", "keys.db"):
        shutil.copy(VECTORS / FROZEN[version][0] / name, tmp_path / name)
    os.chmod(tmp_path / "master.key", 0o600)  # git does not keep file modes
    return LocalKms.from_file(tmp_path / "master.key"), f"sqlite:///{tmp_path / 'keys.db'}"


def _meta(url: str) -> dict[str, str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return dict(db.execute("SELECT name, value FROM ccvault_meta").fetchall())


def _tables(url: str) -> set[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _invalidations(url: str) -> list[tuple[int, str]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT seq, kind FROM ccvault_invalidations ORDER BY seq").fetchall()


@pytest.mark.parametrize("version", sorted(FROZEN))
def test_frozen_installation_opens_after_the_upgrade(tmp_path: Path, version: int) -> None:
    doc = _doc(version)
    kms, url = _copy(tmp_path, version)
    upgrade = Vault.upgrade_store(kms, url)
    assert upgrade == StoreUpgrade(version, SCHEMA_VERSION, FROZEN[version][1], 0)
    assert _meta(url)["propagation_bound_seconds"] == "1.0"  # the upgrading vault's interval
    shredded_subjects = set(doc["shredded"])
    shredded = uuid.UUID(doc["shredded"][0])
    with Vault(kms, url) as frozen:
        assert frozen.propagation_bound == 1.0
        assert frozen.verify_heads().ok
        for row in doc["values"]:
            blob = bytes.fromhex(row["ciphertext"])
            subject = uuid.UUID(row["subject"]) if row["subject"] else NO_SUBJECT
            if row["subject"] in shredded_subjects:
                with pytest.raises(SubjectShreddedError):
                    frozen.decrypt(blob, context=row["context"])
                continue
            got = frozen.decrypt(blob, context=row["context"], subject=subject)
            assert got == row["plaintext"].encode()
        receipt = ErasureReceipt.model_validate(doc["receipt"])
        assert receipt.verify(frozen.receipt_public_key)
        assert frozen.is_shredded(shredded)
        with pytest.raises(SubjectShreddedError):
            frozen.encrypt(shredded, b"new data for an erased customer", context="customers.phone")
        channel = _invalidations(url)  # schema 3 wrote its own shred's row; 1 and 2 had none
        assert channel == ([(1, "shred")] if version >= 3 else [])
        assert frozen.shred(shredded) == receipt
        assert _invalidations(url) == channel  # a repeated shred changes nothing
        status = frozen.erasure_status(receipt.receipt_id)  # the upgrade recorded it: legacy
        assert status is not None
        assert (status.phase, status.in_ledger) == ("legacy", False)
        alice = uuid.UUID(int=0xA11CE)
        assert frozen.shred(alice).propagation_bound_seconds == 1.0
        assert _invalidations(url) == [*channel, (len(channel) + 1, "shred")]


@pytest.mark.parametrize("version", sorted(FROZEN))
@pytest.mark.parametrize("readonly", [False, True])
def test_a_frozen_store_is_refused_without_the_upgrade(
    tmp_path: Path, version: int, readonly: bool
) -> None:
    kms, url = _copy(tmp_path, version)
    before = _tables(url), _meta(url)
    older = (
        rf"schema version {version}, older than this ccvault's \({SCHEMA_VERSION}\).*upgrade-store"
    )
    with pytest.raises(ConfigurationError, match=older):
        Vault(kms, url, readonly=readonly)
    with pytest.raises(ConfigurationError, match=older):
        Vault.from_settings(kms_url=f"local://{tmp_path / 'master.key'}", keystore_url=url)
    assert (_tables(url), _meta(url)) == before  # refused without changing anything
    assert _meta(url).get("schema_version", "1") == str(version)
    schema3 = {"ccvault_invalidations", "ccvault_ledger_outbox", "ccvault_erasures"}
    assert (schema3 <= _tables(url)) == (version >= 3)
    assert not (schema3 - _tables(url)) or not (schema3 & _tables(url))  # all or none
    assert ("ccvault_erasure_queue" in _tables(url)) == (version >= 4)
    assert "ccvault_holds" not in _tables(url)  # schema 5
    with sqlite3.connect(tmp_path / "keys.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(ccvault_subject_heads)")}
        assert ("mac" in columns) == (version >= 2)
        heads = db.execute("SELECT count(*) FROM ccvault_keys WHERE kind = 'head'").fetchone()
        assert heads == (int(version >= 2),)


@pytest.mark.parametrize("version", sorted(FROZEN))
def test_the_upgrade_is_idempotent(tmp_path: Path, version: int) -> None:
    kms, url = _copy(tmp_path, version)
    assert Vault.upgrade_store(kms, url).heads_authenticated == FROZEN[version][1]
    assert Vault.upgrade_store(kms, url) == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0, 0)
    assert _meta(url)["schema_version"] == str(SCHEMA_VERSION)
    with Vault(kms, url) as vault:
        assert vault.is_shredded(uuid.UUID(_doc(version)["shredded"][0]))


def test_the_upgrade_records_the_upgrading_vaults_propagation_interval(tmp_path: Path) -> None:
    """upgrade-store records the bound the upgrading process is configured with; a process
    configured with a longer interval is refused afterwards, a shorter one opens."""
    kms, url = _copy(tmp_path, 2)
    Vault.upgrade_store(kms, url, propagation_interval=2.5)
    assert _meta(url)["propagation_bound_seconds"] == "2.5"
    Vault.upgrade_store(kms, url, propagation_interval=0.5)  # recorded already: kept
    assert _meta(url)["propagation_bound_seconds"] == "2.5"
    with pytest.raises(ConfigurationError, match=r"3 s, longer than .* bound of 2\.5 s"):
        Vault(kms, url, propagation_interval=3)
    with Vault(kms, url, propagation_interval=1.0) as vault:
        assert (vault.propagation_interval, vault.propagation_bound) == (1.0, 2.5)
