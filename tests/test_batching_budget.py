"""Batched key loading (Vault.warm) and the vault-wide nonce budget."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from ccvault import NO_SUBJECT, SubjectShreddedError, Vault
from ccvault.crypto import _format as fmt
from ccvault.kms import LocalKms

CTX = "customers.phone"


@contextmanager
def count_statements(vault: Vault) -> Iterator[list[str]]:
    """The key-store statements of the block, but the invalidation channel's polls (at most one
    per 0.8 s of key use: tests/test_invalidation.py counts those)."""
    engine = vault._store.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if "ccvault_invalidations" in statement:
            return
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_warm_creates_and_loads_keys_in_batches(vault: Vault, kms: LocalKms, db_url: str) -> None:
    subjects = [uuid.uuid4() for _ in range(1200)]
    shredded = subjects[:3]
    for s in shredded:
        vault.shred(s)
    with count_statements(vault) as statements:
        assert vault.warm(subjects) == len(subjects) - len(shredded)
    # 3 batches of 500: per batch one read of heads (+ keys) and one write transaction.
    assert len(statements) <= 3 * 8, statements[:10]
    with count_statements(vault) as statements:
        blobs = [vault.encrypt(s, b"x", context=CTX) for s in subjects[3:]]
    assert statements == []  # every key is warm
    with pytest.raises(SubjectShreddedError):
        vault.encrypt(shredded[0], b"x", context=CTX)
    # Another process warming the same subjects loads (does not re-create) the keys.
    with Vault(kms, db_url) as other:
        assert other.warm(subjects) == len(subjects) - 3
        assert other.decrypt(blobs[0], context=CTX, subject=subjects[3]) == b"x"
        with count_statements(other) as statements:
            assert other.encrypt(subjects[-1], b"y", context=CTX)
        assert statements == []


def test_vault_wide_key_moves_to_a_new_version_when_its_budget_is_spent(
    kms: LocalKms, sqlite_url: str
) -> None:
    with Vault(kms, sqlite_url, nonce_budget=2 * 4096) as vault:
        blobs = [vault.encrypt(NO_SUBJECT, b"p", context="ivr.prompts") for _ in range(2 * 4096)]
        assert {fmt.parse(b)[0].key_version for b in blobs} == {1}
        nxt = vault.encrypt(NO_SUBJECT, b"p", context="ivr.prompts")
        assert fmt.parse(nxt)[0].key_version == 2
        assert fmt.parse(nxt)[0].key_id == fmt.parse(blobs[0])[0].key_id
        # A second process reserves its own block: on version 2, since version 1 is spent.
        with Vault(kms, sqlite_url, nonce_budget=2 * 4096) as other:
            assert (
                fmt.parse(other.encrypt(NO_SUBJECT, b"q", context="ivr.prompts"))[0].key_version
                == 2
            )
            assert other.decrypt(blobs[0], context="ivr.prompts") == b"p"
        assert vault.decrypt(nxt, context="ivr.prompts") == b"p"
