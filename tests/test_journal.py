"""The erasure journal: genesis, records (receipt v1 unchanged, completion), signatures with the
installation's receipt key, the hash chain, and verification naming by seq every tampered,
changed-seq, reordered, deleted, truncated and foreign entry, on every sink. Frozen vectors in
tests/vectors/journal_v1.json (docs/erasure.md, "Journal and ledger")."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from ccvault import ErasureReceipt, LedgerIntegrityError, LedgerUnavailableError
from ccvault._secret import SecretKey
from ccvault.erasure import (
    CompletionRecord,
    GenesisRecord,
    Journal,
    JournalEntry,
    JsonlLedger,
    LedgerSink,
    SignedRecord,
    StoredEntry,
    TornWrite,
    ledger_from_url,
    read_entry,
    register_record_type,
    verify_ledger,
)
from ccvault.erasure import _journal as journal_module
from ccvault.erasure._records import canonical_json, receipt_sha256
from ledgers import (
    INSTALLATION,
    T0,
    Raw,
    ledger_url,
    new_seed,
    public_of,
    receipt,
    sink_kind,
)

__all__ = ["ledger_url"]  # the fixture, imported for pytest

VECTORS = json.loads((Path(__file__).parent / "vectors" / "journal_v1.json").read_text())
FOREIGN = "ee" * 16


def _completion(r: ErasureReceipt, seq: int) -> CompletionRecord:
    return CompletionRecord.for_receipt(
        r,
        ledger_seq=seq,
        completed_at=T0 + timedelta(seconds=2),
        bound_waited_seconds=1.0,
        tables_swept=("customers", "calls"),
    )


@pytest.fixture
def seed() -> SecretKey:
    return new_seed()


def _filled(url: str, seed: SecretKey, n: int = 6) -> Journal:
    """A journal with a genesis and ``n`` receipt entries (seqs 1..n)."""
    journal = Journal(ledger_from_url(url), INSTALLATION, seed)
    journal.append_many([receipt(seed, i) for i in range(1, n + 1)])
    return journal


def _fresh(url: str, seed: SecretKey) -> Journal:
    return Journal(ledger_from_url(url), INSTALLATION, seed)


def _found(journal: Journal, **kwargs: Any) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in journal.verify(**kwargs).problems]


# -- genesis, records, signatures ------------------------------------------------------------------


def test_an_empty_ledger_gets_a_genesis_naming_the_installation(
    ledger_url: str, seed: SecretKey
) -> None:
    journal = _fresh(ledger_url, seed)
    genesis = journal.head()
    assert (genesis.seq, genesis.kind, genesis.prev_hash) == (0, GenesisRecord.FORMAT, "0" * 64)
    record = genesis.parsed()
    assert isinstance(record, GenesisRecord)
    assert record.installation_id == INSTALLATION
    assert record.verify(public_of(seed))
    again = _fresh(ledger_url, seed)  # a second opening writes no second genesis
    assert [e.seq for e in again.entries()] == [0]
    assert journal.public_key == public_of(seed)


def test_a_ledger_of_another_installation_is_refused(ledger_url: str, seed: SecretKey) -> None:
    if sink_kind(ledger_url) == "sql":
        # SQL keeps a sequence per installation: another's rows appear under ours only if moved.
        other = Journal(ledger_from_url(ledger_url), FOREIGN, seed)
        other.append(receipt(seed, 1, installation=FOREIGN))
        raw = Raw(ledger_url, installation=FOREIGN)
        with raw.engine.begin() as c:
            for table in (raw.entries, raw.heads):
                c.execute(table.update().values(installation_id=INSTALLATION))
        raw.close()
    else:
        Journal(ledger_from_url(ledger_url), FOREIGN, new_seed())
    with pytest.raises(
        LedgerIntegrityError, match=f"foreign seq .*installation {FOREIGN}"
    ) as caught:
        _fresh(ledger_url, seed)
    assert caught.value.problems[0].kind == "foreign"


def test_a_receipt_entry_carries_the_receipt_unchanged(ledger_url: str, seed: SecretKey) -> None:
    journal = _fresh(ledger_url, seed)
    r = receipt(seed, 1)
    entry = journal.append(r)
    assert entry.kind == "ccvault-erasure-receipt/v1"
    assert entry.record == json.loads(r.model_dump_json())
    stored = next(_fresh(ledger_url, seed).entries(after=0))
    assert stored == entry
    parsed = stored.parsed()
    assert parsed == r
    assert isinstance(parsed, ErasureReceipt)
    assert parsed.signed_bytes() == r.signed_bytes()
    assert parsed.verify(public_of(seed), installation_id=INSTALLATION)
    done = journal.append(_completion(r, entry.seq))
    completion = done.parsed()
    assert isinstance(completion, CompletionRecord)
    assert completion.completes(r)
    assert completion.receipt_sha256 == receipt_sha256(r)
    assert completion.ledger_seq == entry.seq == done.seq - 1
    assert completion.verify(public_of(seed))


def test_signatures_verify_with_the_installation_key_and_fail_with_another(
    ledger_url: str, seed: SecretKey
) -> None:
    journal = _filled(ledger_url, seed, 3)
    journal.append(_completion(receipt(seed, 1), 1))
    for entry in journal.entries():
        assert entry.verify(public_of(seed))
        assert entry.verify(public_of(seed).hex())
        assert not entry.verify(public_of(new_seed()))
        record = entry.parsed()
        assert record is not None
        assert not record.verify(public_of(new_seed()))
    sink = ledger_from_url(ledger_url)
    assert verify_ledger(sink, INSTALLATION, public_of(seed)).problems == ()
    wrong = verify_ledger(sink, INSTALLATION, public_of(new_seed()))
    assert wrong.seqs("tampered") == [0, 1, 2, 3, 4]
    assert wrong.entries == 0
    with pytest.raises(LedgerIntegrityError, match="tampered seq 4"):  # the head, read first
        Journal(sink, INSTALLATION, new_seed())


def test_appends_refuse_records_they_cannot_vouch_for(tmp_path: Path, seed: SecretKey) -> None:
    journal = Journal(JsonlLedger(tmp_path / "l.jsonl"), INSTALLATION, seed)
    with pytest.raises(LedgerIntegrityError, match=f"installation {FOREIGN}"):
        journal.append(receipt(seed, 1, installation=FOREIGN))
    with pytest.raises(ValueError, match="does not verify"):
        journal.append(receipt(new_seed(), 1))  # another installation's key
    forged = _completion(receipt(seed, 1), 1).sign(new_seed())
    with pytest.raises(ValueError, match="does not verify"):
        journal.append(forged)
    with pytest.raises(ValueError, match="genesis"):
        journal.append(GenesisRecord(installation_id=INSTALLATION, created_at=T0))
    with pytest.raises(TypeError):
        journal.append({"format": "x"})  # type: ignore[arg-type]
    with pytest.raises(LedgerIntegrityError):  # one bad record: nothing of the batch is written
        journal.append_many([receipt(seed, 1), receipt(seed, 2, installation=FOREIGN)])
    assert journal.head().seq == 0
    with pytest.raises(TypeError):
        Journal(JsonlLedger(tmp_path / "l.jsonl"), INSTALLATION, seed.reveal())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="installation_id"):
        Journal(JsonlLedger(tmp_path / "l.jsonl"), "", seed)


def test_signed_records_sign_deterministically_and_check_format_first(seed: SecretKey) -> None:
    unsigned = _completion(receipt(seed, 1), 1)
    signed = unsigned.sign(seed)
    assert signed == signed.sign(seed)  # Ed25519 is deterministic
    assert signed.signed_bytes().startswith(b"\x00\x00\x00\x0eccvault/sig/v1\x00\x00\x00\x1d")
    relabelled = signed.model_copy(update={"format": "ccvault-journal-genesis/v1"})
    assert not relabelled.verify(public_of(seed))
    with pytest.raises(ValueError, match="UTC"):
        GenesisRecord(installation_id=INSTALLATION, created_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="UTC"):
        GenesisRecord(
            installation_id=INSTALLATION,
            created_at=datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        )
    with pytest.raises(ValueError, match="extra"):
        CompletionRecord.model_validate({**signed.model_dump(), "note": "x"})
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


# -- batching and conflicts ---------------------------------------------------------------------


class CountingSink:
    """A sink that counts (and can refuse) the writes reaching another."""

    def __init__(self, inner: LedgerSink, *, refuse: bool = False) -> None:
        self.inner, self.refuse, self.writes = inner, refuse, []  # type: ignore[var-annotated]

    @property
    def location(self) -> str:
        return self.inner.location

    def head(self, installation_id: str) -> StoredEntry | None:
        return self.inner.head(installation_id)

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        return self.inner.read(installation_id, after, limit)

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        self.writes.append(len(entries))
        return 0 if self.refuse else self.inner.append(installation_id, first_seq, entries)

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        return self.inner.torn(installation_id, repair=repair)

    def close(self) -> None:
        self.inner.close()


def test_append_many_writes_at_most_500_entries_a_sink_write(
    tmp_path: Path, seed: SecretKey
) -> None:
    sink = CountingSink(ledger_from_url(f"sqlite:///{tmp_path / 'l.db'}"))
    journal = Journal(sink, INSTALLATION, seed)
    entries = journal.append_many([receipt(seed, i) for i in range(1234)])
    assert sink.writes == [1, 500, 500, 234]
    assert [e.seq for e in entries] == list(range(1, 1235))
    assert journal.verify().problems == ()


def test_a_lost_seq_is_retried_at_the_new_head(tmp_path: Path, seed: SecretKey) -> None:
    url = f"file://{tmp_path / 'l.jsonl'}"
    first, second = _fresh(url, seed), _fresh(url, seed)
    first.append(receipt(seed, 1))
    sink = CountingSink(ledger_from_url(url))
    late = Journal(sink, INSTALLATION, seed)
    second.append(receipt(seed, 2))  # `late` still believes seq 1 is the head
    first.append(receipt(seed, 3))
    assert late.append(receipt(seed, 4)).seq == 4
    assert sink.writes == [1, 1]  # seq 2 was taken; retried at 4
    assert late.conflicts == 1
    assert _fresh(url, seed).verify().problems == ()


def test_appends_give_up_after_a_bounded_number_of_losses(
    tmp_path: Path, seed: SecretKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "CONFLICT_RETRIES", 5)
    inner = ledger_from_url(f"file://{tmp_path / 'l.jsonl'}")
    Journal(inner, INSTALLATION, seed)
    sink = CountingSink(inner, refuse=True)
    journal = Journal(sink, INSTALLATION, seed)
    with pytest.raises(LedgerUnavailableError, match="5 appends in a row lost") as caught:
        journal.append(receipt(seed, 1))
    assert sink.writes == [1] * 5
    assert caught.value.location == inner.location


# -- tampering, on every sink ----------------------------------------------------------------------


def test_a_tampered_record_is_named(ledger_url: str, seed: SecretKey) -> None:
    _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    raw.edit(
        3,
        lambda doc: doc["record"].update(subject_was_known=not doc["record"]["subject_was_known"]),
    )
    journal = _fresh(ledger_url, seed)
    assert _found(journal) == [("tampered", 3)]
    with pytest.raises(LedgerIntegrityError, match="tampered seq 3") as caught:
        list(journal.entries())
    assert caught.value.seq == 3
    assert [e.seq for e in journal.entries(after=4)] == [5, 6]  # the chain from 4 on holds
    raw.close()


def test_a_resigned_record_with_a_stolen_envelope_is_named(
    ledger_url: str, seed: SecretKey
) -> None:
    """An editor who re-signs a record with a key of their own, even carrying it in the entry."""
    _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    other = new_seed()

    def forge(doc: dict[str, Any]) -> None:
        doc["record"] = json.loads(receipt(other, 77).model_dump_json())

    raw.edit(2, forge)
    assert _found(_fresh(ledger_url, seed)) == [("tampered", 2)]
    raw.close()


def test_a_changed_seq_is_named(ledger_url: str, seed: SecretKey) -> None:
    _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    if raw.kind == "jsonl":
        raw.edit(4, lambda doc: doc.update(seq=40))  # a line has no index: its signed seq changes
        detail = "signature does not verify"
    else:
        raw.move(4, 40)  # the SQL seq column, the S3 key
        detail = "stored as seq 40"
    report = verify_ledger(ledger_from_url(ledger_url), INSTALLATION, public_of(seed))
    assert [(p.kind, p.seq) for p in report.problems] == [("tampered", 4)]
    assert detail in report.problems[0].detail
    raw.close()


def test_a_reordered_pair_is_named(ledger_url: str, seed: SecretKey) -> None:
    _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    raw.swap(2, 3)
    journal = _fresh(ledger_url, seed)
    assert _found(journal) == [("reordered", 2), ("reordered", 3)]
    with pytest.raises(LedgerIntegrityError, match="seq 2"):
        list(journal.entries())
    raw.close()


def test_a_deleted_middle_entry_is_named(ledger_url: str, seed: SecretKey) -> None:
    _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    raw.delete(3)
    journal = _fresh(ledger_url, seed)
    report = journal.verify()
    assert [(p.kind, p.seq, p.last_seq) for p in report.problems] == [("missing", 3, 3)]
    with pytest.raises(LedgerIntegrityError, match="missing seq 3"):
        list(journal.entries())
    raw.close()


def test_a_truncated_tail_is_named_as_such(ledger_url: str, seed: SecretKey) -> None:
    journal = _filled(ledger_url, seed)
    raw = Raw(ledger_url)
    raw.cut_from(5)  # entries 5 and 6 gone
    if raw.kind == "sql":
        raw.set_head(4)  # a thorough editor fixes the head row too
    # The journal that wrote them knows; a fresh one learns it from the key store's seq.
    assert [(p.kind, p.seq, p.last_seq) for p in journal.verify().problems] == [("truncated", 5, 6)]
    with pytest.raises(LedgerIntegrityError, match="truncated"):
        list(journal.entries())
    with pytest.raises(LedgerIntegrityError, match="truncated seq 5"):
        journal.append(receipt(seed, 7))
    fresh = _fresh(ledger_url, seed)
    assert _found(fresh) == []  # nothing says more was there
    assert _found(fresh, expect_head=6) == [("truncated", 5)]
    raw.close()


def test_a_foreign_entry_is_named(ledger_url: str, seed: SecretKey, tmp_path: Path) -> None:
    _filled(ledger_url, seed)
    other_seed = new_seed()
    other = Journal(JsonlLedger(tmp_path / "other.jsonl"), FOREIGN, other_seed)
    stranger = other.append(receipt(other_seed, 1, installation=FOREIGN)).canonical_bytes()
    raw = Raw(ledger_url)
    raw.put(2, stranger)
    report = _fresh(ledger_url, seed).verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("foreign", 2)]
    assert FOREIGN in report.problems[0].detail
    raw.close()


def test_a_sound_ledger_has_no_problems(ledger_url: str, seed: SecretKey) -> None:
    journal = _filled(ledger_url, seed, 3)
    report = journal.verify(expect_head=3)
    assert report.ok
    assert (report.head_seq, report.entries, report.problems) == (3, 4, ())
    assert report.location == ledger_from_url(ledger_url).location


# -- record types that later issues add ------------------------------------------------------------


@register_record_type
class HoldRecord(SignedRecord):
    FORMAT: ClassVar[str] = "ccvault-test-hold/v1"

    format: Literal["ccvault-test-hold/v1"] = "ccvault-test-hold/v1"
    installation_id: str
    case: str


def test_registered_record_types_are_appended_and_verified(tmp_path: Path, seed: SecretKey) -> None:
    url = f"file://{tmp_path / 'l.jsonl'}"
    journal = _fresh(url, seed)
    entry = journal.append(HoldRecord(installation_id=INSTALLATION, case="C-1"))
    assert isinstance(entry.parsed(), HoldRecord)
    with pytest.raises(ValueError, match="already registered"):

        @register_record_type
        class Other(SignedRecord):
            FORMAT: ClassVar[str] = "ccvault-test-hold/v1"

    Raw(url).edit(1, lambda doc: doc["record"].update(case="C-2"))
    report = verify_ledger(ledger_from_url(url), INSTALLATION, public_of(seed))
    assert [(p.kind, p.seq) for p in report.problems] == [("tampered", 1)]


def test_unknown_kinds_verify_as_entries(tmp_path: Path, seed: SecretKey) -> None:
    """A newer library's entry kind: its envelope is signed and chained, its record is opaque."""
    url = f"file://{tmp_path / 'l.jsonl'}"
    journal = _fresh(url, seed)
    tip = journal.head()
    future = JournalEntry(
        installation_id=INSTALLATION,
        seq=1,
        prev_hash=tip.digest(),
        appended_at=T0,
        kind="ccvault-future/v9",
        record={"format": "ccvault-future/v9", "anything": [1, 2]},
    ).sign(seed)
    assert ledger_from_url(url).append(INSTALLATION, 1, [future.canonical_bytes()]) == 1
    fresh = _fresh(url, seed)
    assert fresh.verify().problems == ()
    assert fresh.head().parsed() is None


# -- frozen vectors ------------------------------------------------------------------------------


def test_journal_vectors_verify_and_parse_back_to_the_same_bytes() -> None:
    public = bytes.fromhex(VECTORS["public_key"])
    previous = "0" * 64
    for vec in VECTORS["entries"]:
        entry = JournalEntry.model_validate_json(vec["line"])
        assert entry.canonical_bytes() == vec["line"].encode("utf-8")
        assert entry.signed_bytes().hex() == vec["signed_bytes"]
        assert entry.digest() == vec["hash"]
        assert entry.prev_hash == previous
        assert entry.verify(public)
        record = entry.parsed()
        assert record is not None
        assert record.signed_bytes().hex() == vec["record_signed_bytes"]
        assert record.verify(public)
        previous = vec["hash"]


def test_a_journal_with_the_vector_inputs_writes_the_vector_bytes(tmp_path: Path) -> None:
    seed = SecretKey(bytes.fromhex(VECTORS["seed"]))
    start = datetime.fromisoformat(VECTORS["clock_start"])
    ticks = iter(start + timedelta(seconds=i) for i in range(10))
    path = tmp_path / "ledger.jsonl"
    journal = Journal(
        JsonlLedger(path), VECTORS["installation_id"], seed, clock=lambda: next(ticks)
    )
    r = ErasureReceipt.model_validate(VECTORS["receipt"])
    entry = journal.append(r)
    c = VECTORS["completion"]
    journal.append(
        CompletionRecord.for_receipt(
            r,
            ledger_seq=entry.seq,
            completed_at=datetime.fromisoformat(c["completed_at"]),
            bound_waited_seconds=c["bound_waited_seconds"],
            tables_swept=tuple(c["tables_swept"]),
        )
    )
    assert path.read_text(encoding="utf-8").splitlines() == [v["line"] for v in VECTORS["entries"]]


# -- an auditor's reading of one entry -------------------------------------------------------------


def test_read_entry_returns_a_verified_record_and_names_what_is_wrong(
    tmp_path: Path, seed: SecretKey
) -> None:
    url = f"file://{tmp_path / 'ledger.jsonl'}"
    journal = _filled(url, seed, 3)
    r = receipt(seed, 2)
    journal.append(_completion(r, 2))
    sink = ledger_from_url(url)
    try:
        assert read_entry(sink, INSTALLATION, public_of(seed), 2) == r
        completion = read_entry(sink, INSTALLATION, public_of(seed), 4)
        assert isinstance(completion, CompletionRecord)
        assert completion.completes(r)
        assert isinstance(read_entry(sink, INSTALLATION, public_of(seed), 0), GenesisRecord)
        with pytest.raises(LedgerIntegrityError, match="missing seq 9"):
            read_entry(sink, INSTALLATION, public_of(seed), 9)
        with pytest.raises(LedgerIntegrityError, match="tampered seq 2"):
            read_entry(sink, INSTALLATION, public_of(new_seed()), 2)  # another key
        with pytest.raises(ValueError, match="sequence number"):
            read_entry(sink, INSTALLATION, public_of(seed), -1)
        path = tmp_path / "ledger.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"epoch_seq":', b'"epoch_seq":1', 1)  # an edited receipt
        path.write_bytes(b"".join(lines))
        with pytest.raises(LedgerIntegrityError, match="tampered seq 2") as caught:
            read_entry(sink, INSTALLATION, public_of(seed), 2)
        assert caught.value.seq == 2
        assert read_entry(sink, INSTALLATION, public_of(seed), 1) == receipt(seed, 1)
    finally:
        sink.close()
