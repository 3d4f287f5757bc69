"""A whole installation with retention frozen in tests/vectors/store_v5 (key-store schema 5):
a recorded policy, suite-2 values in live, expired and expired-but-held periods, a shredded
customer's suite-2 value, suite-1 and vault-wide values, a JSONL ledger with the enforcement's
report. It must keep opening and reading the same outcomes, forever (issue 14, "Frozen
vectors"; made by tests/vectors/make_vectors.py ``store5``)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ccvault import EXPIRED, NO_SUBJECT, SHREDDED, RetentionExpiredError, Vault
from ccvault.kms import LocalKms
from ccvault.retention import load_policy
from ccvault.testing import FrozenClock

STORE = Path(__file__).parent / "vectors" / "store_v5"
DOC: dict[str, Any] = json.loads((STORE / "values.json").read_text())
OUTCOMES = {"EXPIRED": EXPIRED, "SHREDDED": SHREDDED}


def _open(tmp_path: Path, clock: FrozenClock | None = None) -> Vault:
    for name in ("master.key", "keys.db", "ledger.jsonl", "policy.toml"):
        if not (tmp_path / name).exists():
            shutil.copy(STORE / name, tmp_path / name)
    os.chmod(tmp_path / "master.key", 0o600)
    return Vault(
        LocalKms.from_file(tmp_path / "master.key"),
        f"sqlite:///{tmp_path / 'keys.db'}",
        ledger=f"file://{tmp_path / 'ledger.jsonl'}",
        clock=clock,
        listen_url="off",
        retention_policy=load_policy(tmp_path / "policy.toml"),
    )


def _items() -> list[tuple[bytes, str, object]]:
    return [
        (
            bytes.fromhex(v["ciphertext"]),
            v["context"],
            NO_SUBJECT if v["subject"] is None else uuid.UUID(v["subject"]),
        )
        for v in DOC["values"]
    ]


def _expected() -> list[object]:
    return [OUTCOMES.get(v["outcome"], v["plaintext"].encode()) for v in DOC["values"]]


def test_the_frozen_retention_store_reads_what_it_was_frozen_with(tmp_path: Path) -> None:
    with _open(tmp_path) as vault:  # the real clock: reads never consult it
        assert vault.decrypt_many(_items()) == _expected()
        expired = next(v for v in DOC["values"] if v["outcome"] == "EXPIRED")
        with pytest.raises(RetentionExpiredError):
            vault.decrypt(
                bytes.fromhex(expired["ciphertext"]),
                context=expired["context"],
                subject=uuid.UUID(expired["subject"]),
            )
        recorded = vault.recorded_retention_policy()
        assert recorded is not None
        assert recorded.policy_digest == vault.retention_policy.digest()  # type: ignore[union-attr]
        assert [h.hold_id for h in vault.holds() if h.active] == [DOC["hold_id"]]
        assert vault.verify_erasures().ok


def test_the_frozen_retention_store_keeps_enforcing(tmp_path: Path) -> None:
    clock = FrozenClock(datetime(2025, 9, 1, tzinfo=timezone.utc).timestamp())
    with _open(tmp_path, clock) as vault:
        report = vault.enforce_retention()
        assert report.destroyed == {
            "chats": ("chats/2025-05-02",),
            "transcripts": ("transcripts/2025-05-01",),
        }
        out = vault.decrypt_many(_items())
        by_text = {v["plaintext"]: got for v, got in zip(DOC["values"], out, strict=True)}
        assert by_text["alice in May"] is EXPIRED
        assert by_text["dave on 2 May"] is EXPIRED
        assert by_text["bob in January"] == b"bob in January"  # still held
        assert by_text["+1 555 0100"] == b"+1 555 0100"
        assert vault.verify_erasures().ok
