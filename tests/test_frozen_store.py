"""A whole v1 installation frozen in tests/vectors/store_v1 must keep opening, forever: after the
explicit ``upgrade-store`` step, never without it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from ccvault import NO_SUBJECT, ConfigurationError, ErasureReceipt, SubjectShreddedError, Vault
from ccvault.keystore._schema import SCHEMA_VERSION
from ccvault.kms import LocalKms
from ccvault.vault import StoreUpgrade

STORE = Path(__file__).parent / "vectors" / "store_v1"
DOC = json.loads((STORE / "values.json").read_text())
SHREDDED = uuid.UUID(DOC["shredded"][0])


def _copy(tmp_path: Path) -> tuple[LocalKms, str]:
    for name in ("master.key", "keys.db"):
        shutil.copy(STORE / name, tmp_path / name)
    os.chmod(tmp_path / "master.key", 0o600)  # git does not keep file modes
    return LocalKms.from_file(tmp_path / "master.key"), f"sqlite:///{tmp_path / 'keys.db'}"


def _meta(url: str) -> dict[str, str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return dict(db.execute("SELECT name, value FROM ccvault_meta").fetchall())


@pytest.fixture
def frozen(tmp_path: Path) -> Vault:
    kms, url = _copy(tmp_path)
    assert Vault.upgrade_store(kms, url) == StoreUpgrade(1, SCHEMA_VERSION, 2, 0)
    return Vault(kms, url)


def test_frozen_installation_opens_after_the_upgrade(frozen: Vault) -> None:
    shredded = set(DOC["shredded"])
    with frozen:
        assert frozen.verify_heads().ok
        for row in DOC["values"]:
            blob = bytes.fromhex(row["ciphertext"])
            subject = uuid.UUID(row["subject"]) if row["subject"] else NO_SUBJECT
            if row["subject"] in shredded:
                with pytest.raises(SubjectShreddedError):
                    frozen.decrypt(blob, context=row["context"])
                continue
            got = frozen.decrypt(blob, context=row["context"], subject=subject)
            assert got == row["plaintext"].encode()
        receipt = ErasureReceipt.model_validate(DOC["receipt"])
        assert receipt.verify(frozen.receipt_public_key)
        assert frozen.is_shredded(SHREDDED)
        with pytest.raises(SubjectShreddedError):
            frozen.encrypt(SHREDDED, b"new data for an erased customer", context="customers.phone")
        assert frozen.shred(SHREDDED) == receipt


@pytest.mark.parametrize("readonly", [False, True])
def test_the_v1_store_is_refused_without_the_upgrade(tmp_path: Path, readonly: bool) -> None:
    kms, url = _copy(tmp_path)
    with pytest.raises(ConfigurationError, match=r"schema version 1, older .* upgrade-store"):
        Vault(kms, url, readonly=readonly)
    with pytest.raises(ConfigurationError, match=r"schema version 1, older .* upgrade-store"):
        Vault.from_settings(kms_url=f"local://{tmp_path / 'master.key'}", keystore_url=url)
    assert _meta(url)["schema_version"] == "1"  # refused without changing anything
    with sqlite3.connect(tmp_path / "keys.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(ccvault_subject_heads)")}
        assert "mac" not in columns
        assert db.execute("SELECT count(*) FROM ccvault_keys WHERE kind = 'head'").fetchone() == (
            0,
        )


def test_the_upgrade_is_idempotent(tmp_path: Path) -> None:
    kms, url = _copy(tmp_path)
    assert Vault.upgrade_store(kms, url).heads_authenticated == 2
    assert Vault.upgrade_store(kms, url) == StoreUpgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0, 0)
    assert _meta(url)["schema_version"] == str(SCHEMA_VERSION)
    with Vault(kms, url) as vault:
        assert vault.is_shredded(SHREDDED)
