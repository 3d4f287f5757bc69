"""The erasure ledger wired into the vault (DESIGN.md, lifecycle rule 3), in one process: a new
installation beside a ledger only when asked, ledger-first shreds (an unreachable ledger
destroys nothing; ``best-effort`` destroys, queues, flushes later), replay of a restored key
store with the ledger's own receipts, a ledger behind the store repaired with a signed repair
entry, an existing store's receipts imported as the genesis batch, ledgers of another
installation refused, tampered / truncated / reordered / deleted entries named by
``verify_erasures()``, ``erasure_status``, read-only vaults, the ``destroy_epochs`` guard and
``ccvault verify-erasures`` / ``reconcile-erasures``.

Real components: SQLite files, PostgreSQL, MariaDB, JSONL files and S3 on moto's server. Key
stores are SQLite files unless a test is about the key store's database (``db_url``).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from admin_cli import configure
from ccvault import (
    ConfigurationError,
    ErasureReceipt,
    LedgerIntegrityError,
    LedgerUnavailableError,
    SubjectShreddedError,
    Vault,
)
from ccvault.cli import main
from ccvault.erasure import (
    CompletionRecord,
    Journal,
    RepairRecord,
    ledger_from_url,
    verify_ledger,
)
from ccvault.keystore import SqlKeyStore
from ccvault.kms import LocalKms
from ledgers import Raw, ledger_url, s3_bucket, s3_env, s3_url
from vault_ledgers import (
    Blockable,
    applied_seq,
    blockable,
    but_new_queue_keys,
    copy_ledger_file,
    dump_store,
    entries,
    kinds,
    put_back_ledger_file,
    restore,
    snapshot,
)

__all__ = ["blockable", "ledger_url"]  # fixtures, for pytest

CTX = "customers.phone"


def _vault(kms: LocalKms, url: str, ledger: str, **options: Any) -> Vault:
    return Vault(kms, url, ledger=ledger, listen_url="off", **options)


def _new(tmp_path: Path, ledger: str, **options: Any) -> tuple[LocalKms, str, Vault]:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    return kms, url, _vault(kms, url, ledger, create=True, **options)


_applied = applied_seq


# -- a new installation, a foreign ledger ---------------------------------------------------------


def test_an_empty_store_beside_a_ledger_becomes_an_installation_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    with pytest.raises(ConfigurationError, match=r"no ccvault installation .* create=True"):
        Vault(kms, url, ledger=ledger)
    assert not (tmp_path / "keys.db").exists()  # refused before the store's tables
    assert not (tmp_path / "ledger.jsonl").exists()
    with pytest.raises(ConfigurationError, match="no ccvault installation"):
        Vault(kms, url, ledger=ledger, create=False)
    with Vault(kms, url, ledger=ledger, create=True) as vault:
        assert kinds(ledger, vault.installation_id) == ["genesis"]
        assert not vault.ledger_unverified
    assert _applied(url) == 0
    with Vault(kms, url, ledger=ledger) as again:  # an existing installation: no create needed
        assert kinds(ledger, again.installation_id) == ["genesis"]
    # from_settings: CCVAULT_LEDGER_URL set, the key store empty
    configure(tmp_path / "s", monkeypatch, ledger_url=f"file://{tmp_path / 's.jsonl'}")
    with pytest.raises(ConfigurationError, match="create=True"):
        Vault.from_settings()
    with Vault.from_settings(create=True) as vault:
        assert kinds(f"file://{tmp_path / 's.jsonl'}", vault.installation_id) == ["genesis"]


def test_a_ledger_of_another_installation_is_refused(tmp_path: Path) -> None:
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    kms_a, url_a, a = _new(tmp_path, ledger)
    a.shred(uuid.uuid4())
    a.close()
    other = tmp_path / "b.db"
    with pytest.raises(LedgerIntegrityError, match="another installation"):
        Vault(LocalKms.ephemeral(), f"sqlite:///{other}", ledger=ledger, create=True)
    probe = SqlKeyStore(f"sqlite:///{other}", create=False)
    assert probe.installation() is None  # refused before the installation was created
    probe.close()
    b_url, kms_b = f"sqlite:///{tmp_path / 'c.db'}", LocalKms.ephemeral()
    Vault(kms_b, b_url).close()  # an installation with no ledger yet
    with pytest.raises(LedgerIntegrityError, match="belongs to installation"):
        Vault(kms_b, b_url, ledger=ledger)
    assert _applied(b_url) is None  # refused before anything was imported
    with _vault(kms_a, url_a, ledger) as a_again:
        assert not a_again.ledger_unverified


def test_a_foreign_s3_ledger_is_refused(
    tmp_path: Path, moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env(monkeypatch)
    ledger = s3_url(moto_server, s3_bucket(moto_server))
    _, _, a = _new(tmp_path, ledger)
    a.close()
    url, kms = f"sqlite:///{tmp_path / 'other.db'}", LocalKms.ephemeral()
    Vault(kms, url).close()
    with pytest.raises(LedgerIntegrityError, match="belongs to installation"):
        Vault(kms, url, ledger=ledger)


def test_the_ledger_cannot_be_the_key_stores_own_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with pytest.raises(ConfigurationError, match="own SQLite file"):
        Vault(LocalKms.ephemeral(), url, ledger=url, create=True)


# -- ledger first ---------------------------------------------------------------------------------


def test_each_shred_appends_its_receipt_in_the_transaction_that_destroys(
    ledger_url: str, tmp_path: Path
) -> None:
    _kms, url, vault = _new(tmp_path, ledger_url)
    with vault:
        customers = [uuid.uuid4() for _ in range(3)]
        blobs = [vault.encrypt(c, b"+1 555 0100", context=CTX) for c in customers]
        receipts = [vault.shred(c) for c in customers]
        assert vault.shred(customers[0]) == receipts[0]  # a repeat appends nothing
        stored = entries(ledger_url, vault.installation_id)
        assert kinds(ledger_url, vault.installation_id) == ["genesis"] + ["receipt"] * 3
        assert [ErasureReceipt.model_validate(e.record) for e in stored[1:]] == receipts
        assert _applied(url) == 3
        for n, r in enumerate(receipts, start=1):
            status = vault.erasure_status(r.receipt_id)
            assert status is not None
            assert (status.phase, status.in_ledger, status.ledger_seq) == ("destroyed", True, n)
            assert status.subject_ref == r.subject_ref
        assert vault.erasure_status("not-a-receipt") is None
        check = vault.verify_erasures()
        assert check.ok, check.lines()
        assert (check.ledger_head_seq, check.store_applied_seq, check.ledger_receipts) == (3, 3, 3)
        for blob in blobs:
            with pytest.raises(SubjectShreddedError):
                vault.decrypt(blob, context=CTX)
    report = verify_ledger(
        ledger_from_url(ledger_url), vault.installation_id, vault.receipt_public_key
    )
    assert report.ok
    assert report.head_seq == 3


def test_without_a_ledger_receipts_are_legacy(tmp_path: Path) -> None:
    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}") as vault:
        receipt = vault.shred(uuid.uuid4())
        status = vault.erasure_status(receipt.receipt_id)
        assert status is not None
        assert (status.phase, status.in_ledger, status.ledger_seq) == ("legacy", False, None)
        assert not vault.ledger_unverified
        with pytest.raises(ConfigurationError, match="needs an erasure ledger"):
            vault.verify_erasures()
        with pytest.raises(TypeError):
            vault.erasure_status(1)  # type: ignore[arg-type]


def test_an_unreachable_ledger_destroys_nothing(
    blockable: Blockable, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    with _vault(kms, db_url, blockable.url, create=True) as vault:
        customer = uuid.uuid4()
        blob = vault.encrypt(customer, b"+1 555 0100", context=CTX)
        assert vault.decrypt(blob, context=CTX) == b"+1 555 0100"
        before = dump_store(db_url)
        blockable.block(vault)
        try:
            with pytest.raises(LedgerUnavailableError) as raised:
                vault.shred(customer)
            assert raised.value.location
            # not a row changed, nothing destroyed (the day's erasure-queue key may be new)
            assert but_new_queue_keys(before, dump_store(db_url)) == before
            assert vault.decrypt(blob, context=CTX) == b"+1 555 0100"
            assert not vault.is_shredded(customer)
        finally:
            blockable.unblock()
        receipt = vault.shred(customer)  # the caller's queue retries: now it goes through
        assert kinds(blockable.url, vault.installation_id) == ["genesis", "receipt"]
        assert vault.erasure_status(receipt.receipt_id).in_ledger  # type: ignore[union-attr]
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)


def test_best_effort_destroys_queues_and_flushes_later(
    blockable: Blockable, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with _vault(kms, url, blockable.url, create=True, ledger_mode="best-effort") as vault:
        first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        blob = vault.encrypt(first, b"x", context=CTX)
        blockable.block(vault)
        caplog.set_level(logging.WARNING, logger="ccvault")
        try:
            queued = vault.shred(first)
            queued_too = vault.shred(second)
            with pytest.raises(SubjectShreddedError):  # destroyed at once
                vault.decrypt(blob, context=CTX)
            status = vault.erasure_status(queued.receipt_id)
            assert status is not None
            assert (status.phase, status.in_ledger) == ("destroyed", False)
            assert vault.ledger_unverified
            assert "not in the erasure ledger yet" in caplog.text
            assert _applied(url) == 0
            with pytest.raises(LedgerUnavailableError, match="destroy_epochs refuses"):
                vault.destroy_epochs()
        finally:
            blockable.unblock()
        check = vault.verify_erasures()  # read-only: reports them, appends nothing
        assert not check.ok
        assert {p.receipt_id for p in check.pending} == {queued.receipt_id, queued_too.receipt_id}
        assert kinds(blockable.url, vault.installation_id) == ["genesis"]
        latest = vault.shred(third)  # the next shred appends the outbox first, then its own
        stored = entries(blockable.url, vault.installation_id)
        assert [e.record["receipt_id"] for e in stored[1:]] == [
            queued.receipt_id,
            queued_too.receipt_id,
            latest.receipt_id,
        ]
        assert vault.erasure_status(queued.receipt_id).ledger_seq == 1  # type: ignore[union-attr]
        assert not vault.ledger_unverified
        assert vault.verify_erasures().ok
        assert vault.destroy_epochs() == []


def test_best_effort_outbox_flushed_at_open_and_by_reconcile(tmp_path: Path) -> None:
    ledger = Blockable("jsonl", tmp_path)
    kms, url, vault = _new(tmp_path, ledger.url, ledger_mode="best-effort")
    ledger.block()
    receipt = vault.shred(uuid.uuid4())
    vault.close()
    with _vault(kms, url, ledger.url) as unreached:  # strict, at open: unverified
        assert unreached.ledger_unverified
    ledger.unblock()
    with _vault(kms, url, ledger.url) as reopened:
        assert not reopened.ledger_unverified
        assert reopened.erasure_status(receipt.receipt_id).in_ledger  # type: ignore[union-attr]
    assert kinds(ledger.url, vault.installation_id) == ["genesis", "receipt"]


# -- replay: restores never resurrect -----------------------------------------------------------


def test_a_restored_key_store_is_replayed_with_the_ledgers_own_receipts(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    customers = [uuid.uuid4() for _ in range(5)]
    with _vault(kms, db_url, ledger, create=True) as vault:
        blobs = [vault.encrypt(c, b"+1 555 0100", context=CTX) for c in customers]
        kept = vault.encrypt(uuid.uuid4(), b"kept", context=CTX)
    snapshot(db_url, tmp_path)
    with _vault(kms, db_url, ledger) as vault:
        receipts = [vault.shred(c) for c in customers]
    restore(db_url, tmp_path)
    assert _applied(db_url) == 0
    caplog.set_level(logging.WARNING, logger="ccvault")
    with _vault(kms, db_url, ledger) as fresh:
        assert "5 entries replayed (5 subjects shredded again)" in caplog.text
        for blob in blobs:
            with pytest.raises(SubjectShreddedError):
                fresh.decrypt(blob, context=CTX)
        assert fresh.decrypt(kept, context=CTX) == b"kept"
        assert [fresh.erasure_receipt(c) for c in customers] == receipts  # never new ones
        assert fresh.verify_heads().ok  # MACs and tombstones as a shred makes them
        assert fresh.verify_erasures().ok
        assert fresh.shred(customers[0]) == receipts[0]
    assert _applied(db_url) == 5
    assert kinds(ledger, fresh.installation_id) == ["genesis"] + ["receipt"] * 5


def test_a_running_vault_replays_when_its_store_goes_back(tmp_path: Path) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    customer = uuid.uuid4()
    with _vault(kms, url, ledger, create=True) as setup:
        blob = setup.encrypt(customer, b"x", context=CTX)
        setup.shred(uuid.uuid4())  # the channel has a row: a restore shows as going back
    snapshot(url, tmp_path)
    clock = [1000.0]
    with _vault(kms, url, ledger, clock=lambda: clock[0]) as running:
        assert running.decrypt(blob, context=CTX) == b"x"
        with _vault(kms, url, ledger) as other:
            other.shred(customer)
        clock[0] += 2
        with pytest.raises(SubjectShreddedError):
            running.decrypt(blob, context=CTX)
        restore(url, tmp_path)  # the subject's keys are live again in the store
        clock[0] += 2
        with pytest.raises(SubjectShreddedError):  # the poll noticed, replayed, then read
            running.decrypt(blob, context=CTX)
        assert _applied(url) == 2


def test_a_restore_noticed_while_the_ledger_is_unreachable_refuses_reads(tmp_path: Path) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = Blockable("jsonl", tmp_path)
    customer = uuid.uuid4()
    with _vault(kms, url, ledger.url, create=True) as setup:
        blob = setup.encrypt(customer, b"x", context=CTX)
        setup.shred(uuid.uuid4())
    snapshot(url, tmp_path)
    clock = [1000.0]
    with _vault(kms, url, ledger.url, clock=lambda: clock[0]) as running:
        assert running.decrypt(blob, context=CTX) == b"x"  # warm, and it polled
        with _vault(kms, url, ledger.url) as other:
            other.shred(customer)
        clock[0] += 2
        with pytest.raises(SubjectShreddedError):  # it saw the shred
            running.decrypt(blob, context=CTX)
        restore(url, tmp_path)
        ledger.block()
        clock[0] += 2
        with pytest.raises(LedgerUnavailableError):  # fail closed: it knows the store went back
            running.decrypt(blob, context=CTX)
        with pytest.raises(LedgerUnavailableError):
            running.decrypt(blob, context=CTX)
        ledger.unblock()
        with pytest.raises(SubjectShreddedError):
            running.decrypt(blob, context=CTX)


def test_a_crash_after_the_ledger_append_is_replayed(tmp_path: Path) -> None:
    """The ledger took the entry, the key store's transaction did not commit (a crash, a lost
    connection): the ledger is ahead, the subject still readable. The next shred (any subject)
    and the next open apply it, with the ledger's receipt."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    crashed, later = uuid.uuid4(), uuid.uuid4()
    with _vault(kms, url, ledger, create=True) as vault:
        blob = vault.encrypt(crashed, b"x", context=CTX)
        journal = vault._link._journal
        assert journal is not None
        real = journal.append_after

        def append_then_fail(after: int, records: Any) -> Any:
            real(after, records)
            raise LedgerUnavailableError("the connection was lost at commit")

        journal.append_after = append_then_fail  # type: ignore[method-assign]
        with pytest.raises(LedgerUnavailableError):
            vault.shred(crashed)
        journal.append_after = real  # type: ignore[method-assign]
        assert kinds(ledger, vault.installation_id) == ["genesis", "receipt"]
        assert _applied(url) == 0
        in_ledger = ErasureReceipt.model_validate(entries(ledger, vault.installation_id)[1].record)
        vault.shred(later)  # finds the ledger ahead: replays it, then appends its own
        assert vault.erasure_receipt(crashed) == in_ledger
        assert kinds(ledger, vault.installation_id) == ["genesis", "receipt", "receipt"]
        assert _applied(url) == 2
        with pytest.raises(SubjectShreddedError):
            vault.decrypt(blob, context=CTX)
        assert vault.shred(crashed) == in_ledger  # the retried shred gets the ledger's receipt


def test_a_completion_in_the_ledger_is_replayed_into_the_status(tmp_path: Path) -> None:
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    kms, url, vault = _new(tmp_path, ledger)
    with vault:
        receipt = vault.shred(uuid.uuid4())
        seed = vault._epochs.long_lived_key("receipt")
    journal = Journal(ledger_from_url(ledger), vault.installation_id, seed)
    journal.append(
        CompletionRecord.for_receipt(
            receipt,
            ledger_seq=1,
            completed_at=receipt.shredded_at,
            bound_waited_seconds=1.0,
            tables_swept=("calls",),
        )
    )
    with _vault(kms, url, ledger) as reopened:
        status = reopened.erasure_status(receipt.receipt_id)
        assert status is not None
        assert (status.phase, status.completion_seq) == ("completed", 2)


def test_an_entry_of_a_kind_this_library_does_not_know_stops_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccvault.erasure import _records

    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    kms, url, vault = _new(tmp_path, ledger)
    vault.close()
    seed = vault._epochs.long_lived_key("receipt")
    Journal(ledger_from_url(ledger), vault.installation_id, seed).append(
        RepairRecord(
            installation_id=vault.installation_id,
            repaired_at=datetime.now(timezone.utc),
            reason="ledger-behind",
            receipt_ids=(),
            store_applied_seq=0,
            ledger_head_seq=0,
        )
    )
    monkeypatch.delitem(_records._TYPES, "ccvault-journal-repair/v1")  # as an older ccvault
    with pytest.raises(ConfigurationError, match="newer ccvault wrote it"):
        _vault(kms, url, ledger)


# -- a ledger behind the store, an existing store, problems named ---------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_ledger_behind_the_store_is_repaired_with_a_signed_repair_entry(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = (
        f"file://{tmp_path / 'ledger.jsonl'}"
        if kind == "jsonl"
        else f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    kms, url, vault = _new(tmp_path, ledger)
    with vault:
        early = vault.shred(uuid.uuid4())
        copy_ledger_file(ledger, tmp_path / "ledger-copy")  # the ledger's backup, seq 1
        lost = [vault.shred(uuid.uuid4()) for _ in range(2)]
    put_back_ledger_file(ledger, tmp_path / "ledger-copy")  # restored: seqs 2 and 3 lost
    caplog.set_level(logging.WARNING, logger="ccvault")
    with _vault(kms, url, ledger) as reopened:
        assert "is behind the key store" in caplog.text
        assert not reopened.ledger_unverified
        stored = entries(ledger, reopened.installation_id)
        assert [e.kind.split("/")[0] for e in stored] == [
            "ccvault-journal-genesis",
            "ccvault-erasure-receipt",
            "ccvault-journal-repair",
            "ccvault-erasure-receipt",
            "ccvault-erasure-receipt",
        ]
        note = RepairRecord.model_validate(stored[2].record)
        assert note.verify(reopened.receipt_public_key)
        assert (note.reason, note.store_applied_seq, note.ledger_head_seq) == (
            "ledger-behind",
            3,
            1,
        )
        assert set(note.receipt_ids) == {r.receipt_id for r in lost}
        assert {e.record["receipt_id"] for e in stored[3:]} == set(note.receipt_ids)
        assert reopened.verify_erasures().ok
        assert reopened.erasure_status(early.receipt_id).ledger_seq == 1  # type: ignore[union-attr]
        moved = reopened.erasure_status(lost[0].receipt_id)
        assert moved is not None
        assert moved.ledger_seq in (3, 4)
        assert moved.phase == "destroyed"
    assert _applied(url) == 4


def test_an_existing_store_is_imported_as_the_genesis_batch(
    ledger_url: str, tmp_path: Path
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(kms, url) as plain:
        before = [plain.shred(uuid.uuid4()) for _ in range(3)]
    with _vault(kms, url, ledger_url) as vault:
        assert kinds(ledger_url, vault.installation_id) == [
            "genesis", "repair", "receipt", "receipt", "receipt",
        ]  # fmt: skip
        note = RepairRecord.model_validate(entries(ledger_url, vault.installation_id)[1].record)
        assert note.reason == "genesis-import"
        assert set(note.receipt_ids) == {r.receipt_id for r in before}
        for r in before:
            status = vault.erasure_status(r.receipt_id)
            assert status is not None
            assert status.phase == "legacy"
            assert status.in_ledger
        after = vault.shred(uuid.uuid4())
        assert vault.erasure_status(after.receipt_id).phase == "destroyed"  # type: ignore[union-attr]
        assert vault.verify_erasures().ok
    assert _applied(url) == 5
    with _vault(kms, url, ledger_url) as again:  # imported once
        assert len(kinds(ledger_url, again.installation_id)) == 6


@pytest.mark.parametrize("problem", ["tampered", "truncated", "reordered", "deleted"])
def test_verify_erasures_names_what_is_wrong_with_the_ledger(
    ledger_url: str, tmp_path: Path, problem: str
) -> None:
    _kms, _url, vault = _new(tmp_path, ledger_url)
    with vault:
        receipts = [vault.shred(uuid.uuid4()) for _ in range(4)]
        raw = Raw(ledger_url, vault.installation_id)
        try:
            if problem == "tampered":
                raw.edit(2, lambda doc: doc["record"].update(epoch_seq=99))
            elif problem == "truncated":  # as a restored copy of the ledger would be
                raw.cut_from(3)
                if raw.kind == "sql":
                    raw.set_head(2)
            elif problem == "reordered":
                raw.swap(2, 3)
            else:
                raw.delete(2)
        finally:
            raw.close()
        check = vault.verify_erasures()
        assert not check.ok
        wanted = {"tampered": "tampered", "truncated": "truncated", "reordered": "reordered",
                  "deleted": "missing"}[problem]  # fmt: skip
        named = check.ledger.seqs(wanted)  # type: ignore[arg-type]
        expected = {"tampered": [2], "truncated": [3, 4], "reordered": [2, 3], "deleted": [2]}
        assert set(expected[problem]) <= set(named), check.lines()
        assert any(wanted in line for line in check.lines())
        if problem == "truncated":
            missing = {p.receipt_id for p in check.missing_from_ledger}
            assert missing == {receipts[2].receipt_id, receipts[3].receipt_id}
            done = vault.reconcile_erasures()  # re-added after a signed repair entry
            assert done.repaired == 2
            assert done.check is not None
            assert not done.check.missing_from_ledger
            assert kinds(ledger_url, vault.installation_id)[3:] == [
                "repair", "receipt", "receipt",
            ]  # fmt: skip


def test_verify_erasures_names_what_the_store_and_the_ledger_disagree_about(
    tmp_path: Path,
) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    _kms, url, vault = _new(tmp_path, ledger)
    with vault:
        kept, resurrected, forged = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        vault.encrypt(kept, b"x", context=CTX)
        receipt = vault.shred(resurrected)
        vault.shred(forged)
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # an insider edits the store behind the vault's back
            conn.execute(
                sa.text("UPDATE ccvault_subject_heads SET state = 'active' WHERE ref = :r"),
                {"r": vault.subject_ref(resurrected)},
            )
            conn.execute(
                sa.text("UPDATE ccvault_subject_heads SET receipt = '{}' WHERE ref = :r"),
                {"r": vault.subject_ref(forged)},
            )
        engine.dispose()
        check = vault.verify_erasures()
        assert check.ledger.ok
        assert [p.receipt_id for p in check.not_applied] == [receipt.receipt_id]
        assert "does not hold its subject as shredded" in check.not_applied[0].detail
        assert [p.subject_ref for p in check.unverifiable] == [vault.subject_ref(forged).hex()[:16]]
        assert check.counts == {
            "not_applied": 1, "missing_from_ledger": 0, "pending": 0, "unverifiable": 1,
        }  # fmt: skip
        done = vault.reconcile_erasures()  # shreds it again, with the ledger's receipt
        assert done.shredded == 1
        assert done.check is not None
        assert not done.check.not_applied
        assert done.check.counts["unverifiable"] == 1  # a damaged stored receipt stays named
        assert vault.erasure_receipt(resurrected) == receipt


# -- read-only vaults, vaults without the ledger, an unreachable ledger at open -------------------


def test_a_read_only_vault_does_not_replay_but_reads_the_ledgers_erasures_as_shredded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    kms, url, vault = _new(tmp_path, ledger)
    customer = uuid.uuid4()
    with vault:
        blob = vault.encrypt(customer, b"x", context=CTX)
    snapshot(url, tmp_path)
    with _vault(kms, url, ledger) as vault:
        vault.shred(customer)
    restore(url, tmp_path)
    before, ledger_before = dump_store(url), Path(tmp_path / "ledger.jsonl").read_bytes()
    caplog.set_level(logging.ERROR, logger="ccvault")
    with _vault(kms, url, ledger, readonly=True) as reader:
        assert reader.ledger_unverified
        assert "does not replay" in caplog.text
        with pytest.raises(SubjectShreddedError):
            reader.decrypt(blob, context=CTX)
        assert not reader.verify_erasures().ok  # the entry is not applied
        with pytest.raises(ConfigurationError, match="read-only"):
            reader.reconcile_erasures()
    assert dump_store(url) == before
    assert Path(tmp_path / "ledger.jsonl").read_bytes() == ledger_before
    caplog.clear()
    with _vault(kms, url, f"file://{tmp_path / 'empty.jsonl'}", readonly=True) as elsewhere:
        assert elsewhere.ledger_unverified  # an empty ledger: the wrong URL?
        assert "failed a check at open" in caplog.text
    assert Path(tmp_path / "empty.jsonl").read_bytes() == b""  # no genesis written


def test_a_vault_without_the_ledger_refuses_to_shred_in_a_ledgered_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    kms, url, vault = _new(tmp_path, ledger)
    vault.close()
    caplog.set_level(logging.ERROR, logger="ccvault")
    with Vault(kms, url, listen_url="off") as bare:
        assert bare.ledger_unverified
        assert "has none configured" in caplog.text
        customer = uuid.uuid4()
        blob = bare.encrypt(customer, b"x", context=CTX)
        before = dump_store(url)
        with pytest.raises(ConfigurationError, match="nothing was destroyed"):
            bare.shred(customer)
        assert dump_store(url) == before
        assert bare.decrypt(blob, context=CTX) == b"x"
        with pytest.raises(ConfigurationError, match="destroy_epochs refuses"):
            bare.destroy_epochs()


def test_an_unreachable_ledger_at_open_leaves_the_vault_unverified(
    blockable: Blockable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with _vault(kms, url, blockable.url, create=True) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    blockable.block()
    caplog.set_level(logging.ERROR, logger="ccvault")
    try:
        vault = _vault(kms, url, blockable.url)
        with vault:
            assert vault.ledger_unverified
            assert "could not be reached at open" in caplog.text
            assert vault.decrypt(blob, context=CTX) == b"x"  # it serves reads
            assert vault.destroy_epochs(dry_run=True) == []  # a dry run changes nothing
            with pytest.raises(LedgerUnavailableError, match="destroy_epochs refuses"):
                vault.destroy_epochs()
            with pytest.raises(LedgerUnavailableError):
                vault.shred(uuid.uuid4())  # strict: nothing destroyed
            blockable.unblock()
            assert vault.destroy_epochs() == []  # caught up first
            assert not vault.ledger_unverified
    finally:
        if blockable.kind != "postgresql" and not blockable.dir.exists():
            blockable.unblock()


# -- the commands --------------------------------------------------------------------------------


def test_cli_verify_and_reconcile_erasures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = f"file://{tmp_path / 'ledger.jsonl'}"
    _kms, _url = configure(tmp_path, monkeypatch, ledger_url=ledger)
    with Vault.from_settings(create=True) as vault:
        receipts = [vault.shred(uuid.uuid4()) for _ in range(3)]
    assert main(["verify-erasures"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["ledger_head_seq"] == 3
    assert out["store_applied_seq"] == 3
    assert main(["verify-erasures", "--format", "text"]) == 0
    assert "ok" in capsys.readouterr().out
    raw = Raw(ledger, vault.installation_id)
    raw.cut_from(2)
    assert main(["verify-erasures"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert {p["receipt_id"] for p in out["missing_from_ledger"]} == {
        receipts[1].receipt_id,
        receipts[2].receipt_id,
    }
    assert any(p["kind"] == "truncated" for p in out["ledger"]["problems"])
    assert main(["verify-erasures", "--format", "text"]) == 3
    text = capsys.readouterr().out
    assert "truncated seqs 2-3" in text
    assert "missing from the ledger" in text
    assert main(["reconcile-erasures"]) == 0  # its vault repaired the ledger at open already
    out = json.loads(capsys.readouterr().out)
    assert kinds(ledger, vault.installation_id)[2:] == ["repair", "receipt", "receipt"]
    assert out["check"]["ok"] is True
    assert main(["verify-erasures"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CCVAULT_LEDGER_URL", f"file://{tmp_path / 'nowhere' / 'l.jsonl'}")
    assert main(["verify-erasures"]) == 1
    assert "LedgerUnavailableError" in capsys.readouterr().err
    monkeypatch.delenv("CCVAULT_LEDGER_URL")
    assert main(["verify-erasures"]) == 1
    assert "needs an erasure ledger" in capsys.readouterr().err
