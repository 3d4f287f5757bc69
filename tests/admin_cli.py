"""Helpers for tests of the admin commands: a configured environment, a run that parses the JSON,
and an online SQLite backup as a backup job takes it."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ccvault.cli import main
from ccvault.kms import LocalKms


def configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: str
) -> tuple[LocalKms, str]:
    """Only these ``CCVAULT_*`` settings: a new key file and a SQLite key store under
    ``tmp_path``; returns the KMS and the key-store URL."""
    for name in list(os.environ):
        if name.upper().startswith("CCVAULT_"):
            monkeypatch.delenv(name)
    kms = LocalKms.generate(tmp_path / "m.key")
    url = f"sqlite:///{tmp_path / 'k.db'}"
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'm.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", url)
    for name, value in settings.items():
        monkeypatch.setenv(f"CCVAULT_{name.upper()}", value)
    return kms, url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """Run ``ccvault <argv>``, expecting success; the JSON object it printed."""
    assert main(list(argv)) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def sqlite_backup(source: Path, target: Path) -> None:
    """An online SQLite backup (WAL included), as a backup job takes it."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
