"""The child of tests/test_enforce_retention.py's concurrent enforcers: a vault with a ledger in a
process of its own, its clock frozen at the time given, that waits for ``go``, runs
``enforce_retention()`` and sends back ``("report", json)`` — or ``("error", text)``."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any

from ccvault import Vault
from ccvault.kms import LocalKms
from ccvault.retention import RetentionPolicy


def run(
    key_path: str, url: str, ledger: str, now: float, policy: dict[str, Any], pipe: Connection
) -> None:
    vault = Vault(
        LocalKms.from_file(key_path),
        url,
        ledger=ledger,
        clock=lambda: now,
        listen_url="off",
        retention_policy=RetentionPolicy.from_dict(policy),
    )
    try:
        pipe.send(("ready",))
        assert pipe.recv() == "go"
        try:
            report = vault.enforce_retention()
        except Exception as exc:  # the parent asserts there is none
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            pipe.send(("report", report.model_dump_json()))
    finally:
        vault.close()
        pipe.close()
