"""A whole v1 installation frozen in tests/vectors/store_v1 must keep opening, forever."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from ccvault import NO_SUBJECT, ErasureReceipt, SubjectShreddedError, Vault
from ccvault.kms import LocalKms

STORE = Path(__file__).parent / "vectors" / "store_v1"


@pytest.fixture
def frozen(tmp_path: Path) -> Vault:
    for name in ("master.key", "keys.db"):
        shutil.copy(STORE / name, tmp_path / name)
    os.chmod(tmp_path / "master.key", 0o600)  # git does not keep file modes
    return Vault(LocalKms.from_file(tmp_path / "master.key"), f"sqlite:///{tmp_path / 'keys.db'}")


def test_frozen_installation_opens(frozen: Vault) -> None:
    doc = json.loads((STORE / "values.json").read_text())
    shredded = set(doc["shredded"])
    with frozen:
        for row in doc["values"]:
            blob = bytes.fromhex(row["ciphertext"])
            subject = uuid.UUID(row["subject"]) if row["subject"] else NO_SUBJECT
            if row["subject"] in shredded:
                with pytest.raises(SubjectShreddedError):
                    frozen.decrypt(blob, context=row["context"])
                continue
            got = frozen.decrypt(blob, context=row["context"], subject=subject)
            assert got == row["plaintext"].encode()
        receipt = ErasureReceipt.model_validate(doc["receipt"])
        assert receipt.verify(frozen.receipt_public_key)
        assert frozen.shred(uuid.UUID(doc["shredded"][0])) == receipt
