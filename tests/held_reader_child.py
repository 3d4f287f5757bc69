"""The child of tests/test_batched_held_keys.py: a fresh vault in a process of its own reads
values of an expired period and returns, for each, its plaintext or the error's class name."""

from __future__ import annotations

from typing import Any

from ccvault import Vault
from ccvault.kms import LocalKms
from ccvault.retention import RetentionPolicy


def read(
    key_path: str,
    url: str,
    ledger: str,
    now: float,
    policy: dict[str, Any],
    items: list[tuple[object, bytes]],
    context: str,
) -> list[str]:
    with Vault(
        LocalKms.from_file(key_path),
        url,
        ledger=ledger,
        clock=lambda: now,
        listen_url="off",
        retention_policy=RetentionPolicy.from_dict(policy),
    ) as vault:
        out = []
        for subject, blob in items:
            try:
                out.append(vault.decrypt(blob, context=context, subject=subject).decode())
            except Exception as exc:  # the parent compares the class names
                out.append(type(exc).__name__)
        return out
