"""The restore gap (issue 13 item 2; DESIGN.md lifecycle rule 3, as amended in docs/erasure.md,
'A process that was idle across the shreds'): a process that last saw the invalidation channel
at seq N, stayed idle while other processes shredded, and is then served a key store restored
from a backup taken at seq N sees the channel exactly as it last saw it. Nothing goes
backwards; only the comparison of the ledger's head with the store's ``ledger_applied_seq``
shows that the store is behind. The poll makes it every ``ledger_check_interval``.

Real components: SQLite key-store files (one test on PostgreSQL, restored with ``pg_dump`` and
``psql``), JSONL and SQLite ledgers. Time is the vaults' injected clock: nothing sleeps.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from vault_ledgers import entries, restore, snapshot

CTX = "customers.phone"


def _vault(kms: LocalKms, url: str, ledger: str, **options: Any) -> Vault:
    return Vault(kms, url, ledger=ledger, listen_url="off", **options)


def _applied(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT value FROM ccvault_meta WHERE name = 'ledger_applied_seq'")
            ).scalar()
    finally:
        engine.dispose()
    return None if value is None else int(value)


def _ledger(kind: str, tmp_path: Path) -> str:
    if kind == "jsonl":
        return f"file://{tmp_path / 'ledger.jsonl'}"
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_an_idle_process_served_a_restored_store_refuses_after_the_check(
    kind: str, tmp_path: Path
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger(kind, tmp_path)
    x, others = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    with _vault(kms, url, ledger, create=True) as setup:
        blob = setup.encrypt(x, b"+1 555 0100", context=CTX)
        setup.shred(uuid.uuid4())  # the channel has a row
    clock = [1000.0]
    with _vault(kms, url, ledger, clock=lambda: clock[0]) as a:
        assert a.decrypt(blob, context=CTX) == b"+1 555 0100"  # warm; the channel polled
        snapshot(url, tmp_path)  # the backup: the channel at the seq A last saw
        with _vault(kms, url, ledger) as b:
            for subject in [x, *others]:
                b.shred(subject)  # A is idle meanwhile: it never polls
        restore(url, tmp_path)  # X's keys are live again; the channel is as A last saw it
        clock[0] += 2  # a poll is due; it finds nothing new
        assert a.decrypt(blob, context=CTX) == b"+1 555 0100"  # the window (see docs)
        clock[0] += 60  # past the default ledger_check_interval
        with pytest.raises(SubjectShreddedError):
            a.decrypt(blob, context=CTX)
        head = entries(ledger, a.installation_id)[-1].seq
        assert _applied(url) == head == 5  # replayed: genesis, 1 + 4 receipts
        assert not a.ledger_unverified
