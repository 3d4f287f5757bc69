"""Legal holds (issue 14 item 6; DESIGN.md, lifecycle rules 3 and 8; docs/erasure.md, 'Legal
holds'): ``vault.hold`` / ``release`` / ``holds``, the shred guard (refused, or overridden with a
ledger entry in the shred's transaction), ``shred_many``'s ``held`` outcome, the dry run, holds
brought back by the replay after a key-store restore, the check and the reconciliation, the
hold racing a shred on PostgreSQL and MariaDB, the frozen record vectors, and the CLI.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), a SQL ledger in a
SQLite file of its own. Time is the vault's clock, never slept.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import (
    ConfigurationError,
    Hold,
    HoldNotFoundError,
    LedgerUnavailableError,
    SubjectHeldError,
    SubjectShreddedError,
    Vault,
)
from ccvault._secret import SecretKey
from ccvault.cli import main
from ccvault.erasure import (
    HoldOverrideRecord,
    HoldRecord,
    HoldReleaseRecord,
    Journal,
    JournalEntry,
    JsonlLedger,
)
from ccvault.kms import LocalKms
from conftest import run_sql
from vault_ledgers import Blockable, entries, kinds, restore, snapshot

CTX = "customers.phone"
T0 = 1_800_000_000.0
VECTORS = json.loads((Path(__file__).parent / "vectors" / "holds_v1.json").read_text())


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Setup:
    """An installation on ``url`` with a SQL ledger in a SQLite file, and the vault's clock."""

    def __init__(self, tmp_path: Path, url: str, *, ledger: str | None = None) -> None:
        self.kms = LocalKms.ephemeral()
        self.url = url
        self.ledger = ledger or f"sqlite:///{tmp_path / 'ledger.db'}"
        self.clock = Clock()
        self.vault = self.open(create=True)

    def open(self, **options: Any) -> Vault:
        return Vault(
            self.kms, self.url, ledger=self.ledger, clock=self.clock, listen_url="off", **options
        )

    def kinds(self) -> list[str]:
        return kinds(self.ledger, self.vault.installation_id)

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [
            e.record for e in entries(self.ledger, self.vault.installation_id) if e.kind == kind
        ]


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, db_url)
    yield s
    s.vault.close()


def _until(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, tz=timezone.utc)


# -- placing, releasing, listing; the shred refused -----------------------------------------------


def test_holds_block_the_shred_until_every_one_is_released(setup: Setup) -> None:
    vault = setup.vault
    customer, other = uuid.uuid4(), uuid.uuid4()
    blob = vault.encrypt(customer, b"+1 555 0100", context=CTX)
    first = vault.hold(customer, case="LIT-2031-7", by="legal@acme")
    second = vault.hold(customer, case="TICKET 88", by="compliance", until=_until(3600))
    vault.hold(other, case="LIT-2031-9", by="legal@acme")
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert first != second
    mine = vault.holds(customer)
    assert [h.hold_id for h in mine] == [first, second]
    assert all(isinstance(h, Hold) and h.active for h in mine)
    assert mine[0].subject_ref == vault.subject_ref(customer).hex()
    assert (mine[0].case, mine[0].by, mine[0].until) == ("LIT-2031-7", "legal@acme", None)
    assert mine[1].until == _until(3600)
    assert "TICKET" not in repr(mine[1])  # the case stays out of reprs and logs
    assert len(vault.holds()) == 3
    assert setup.kinds() == ["genesis", "hold", "hold", "hold"]

    with pytest.raises(SubjectHeldError) as refused:
        vault.shred(customer)
    assert refused.value.hold_ids == (first, second)
    assert "2 active legal holds" in str(refused.value)
    assert "LIT" not in str(refused.value)
    assert vault.decrypt(blob, context=CTX) == b"+1 555 0100"  # nothing destroyed
    assert not vault.is_shredded(customer)
    assert vault.erasure_receipt(customer) is None

    vault.release(first, by="legal@acme")
    vault.release(first, by="someone else")  # released already: no second entry
    assert setup.kinds()[-1] == "release"
    assert setup.kinds().count("release") == 1
    assert [h.hold_id for h in vault.holds(customer)] == [second]
    with pytest.raises(SubjectHeldError):  # still held by the other one
        vault.shred(customer)
    released = vault.holds(customer, active_only=False)[0]
    assert (released.active, released.released_by) == (False, "legal@acme")
    assert released.released_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert released.release_seq == setup.kinds().index("release")

    vault.release(second, by="compliance")
    receipt = vault.shred(customer)
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob, context=CTX)
    assert vault.holds(customer) == []
    assert len(vault.holds(customer, active_only=False)) == 2
    assert vault.verify_erasures().ok
    assert setup.records("ccvault-erasure-receipt/v1")[-1]["receipt_id"] == receipt.receipt_id


def test_a_hold_whose_until_passed_holds_no_more(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = setup.vault
    customer = uuid.uuid4()
    hold_id = vault.hold(customer, case="C-1", by="legal", until=_until(60))
    setup.clock.t = T0 + 59.9
    assert [h.hold_id for h in vault.holds(customer)] == [hold_id]
    assert vault.shred(customer, dry_run=True).hold_ids == (hold_id,)
    setup.clock.t = T0 + 60  # until is the first instant it no longer holds
    assert vault.holds(customer) == []
    [lapsed] = vault.holds(customer, active_only=False)
    assert (lapsed.active, lapsed.released_at) == (False, None)
    assert not vault.shred(customer, dry_run=True).held
    vault.shred(customer)
    vault.close()


def test_the_override_shreds_and_records_itself_before_the_receipt(setup: Setup) -> None:
    vault = setup.vault
    customer = uuid.uuid4()
    blob = vault.encrypt(customer, b"+1 555 0100", context=CTX)
    holds = [vault.hold(customer, case=f"LIT-{i}", by="legal") for i in range(2)]
    with pytest.raises(ValueError, match="only with override_hold=True"):
        vault.shred(customer, by="dpo")
    setup.clock.t = T0 + 5
    receipt = vault.shred(customer, override_hold=True, by="dpo@acme")
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob, context=CTX)
    assert setup.kinds()[-2:] == ["override", "receipt"]
    [override] = setup.records("ccvault-hold-override/v1")
    assert override["receipt_id"] == receipt.receipt_id
    assert override["hold_ids"] == holds
    assert override["subject_ref"] == receipt.subject_ref
    assert (override["by"], override["overridden_at"]) == ("dpo@acme", "2027-01-15T08:00:05Z")
    marked = vault.holds(customer, active_only=False)
    assert [(h.active, h.override_receipt, h.released_by) for h in marked] == [
        (False, receipt.receipt_id, "dpo@acme")
    ] * 2
    assert all(h.release_seq == len(setup.kinds()) - 2 for h in marked)
    vault.release(holds[0], by="legal")  # overridden already: nothing to release, no entry
    assert vault.shred(customer) == receipt  # a repeat: no hold is active any more
    assert setup.kinds().count("override") == 1
    check = vault.verify_erasures()
    assert check.ok, check.lines()


def test_shred_many_leaves_held_subjects_out_and_goes_on(setup: Setup) -> None:
    vault = setup.vault
    free, held, also_free = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    blob = vault.encrypt(held, b"+1 555 0100", context=CTX)
    hold_id = vault.hold(held, case="LIT-1", by="legal")
    results = vault.shred_many([free, held, also_free, str(held)])
    assert [r.outcome for r in results] == ["shredded", "held", "shredded", "held"]
    assert [r.hold_ids for r in results] == [(), (hold_id,), (), (hold_id,)]
    assert results[1].receipt is None
    assert not results[1].ok
    assert results[0].ok
    assert vault.decrypt(blob, context=CTX) == b"+1 555 0100"
    assert setup.kinds()[-2:] == ["receipt", "receipt"]
    results = vault.shred_many([held, free], override_hold=True, by="dpo")
    assert [r.outcome for r in results] == ["shredded", "already_shredded"]
    assert results[0].hold_ids == (hold_id,)
    assert results[0].receipt is not None
    assert setup.kinds()[-2:] == ["override", "receipt"]
    assert vault.holds(held, active_only=False)[0].override_receipt == (
        results[0].receipt.receipt_id
    )
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob, context=CTX)
    assert vault.verify_erasures().ok


def test_the_dry_run_and_the_waiting_shred_see_the_hold(setup: Setup) -> None:
    vault = setup.vault
    customer = uuid.uuid4()
    vault.encrypt(customer, b"+1 555 0100", context=CTX)
    free = vault.shred(customer, dry_run=True)
    assert (free.held, free.hold_ids) == (False, ())
    hold_id = vault.hold(customer, case="LIT-1", by="legal")
    preview = vault.shred(customer, dry_run=True)
    assert (preview.held, preview.hold_ids) == (True, (hold_id,))
    assert preview.model_dump(mode="json")["hold_ids"] == [hold_id]
    with pytest.raises(SubjectHeldError):
        vault.shred(customer, wait=True)
    assert not vault.is_shredded(customer)


# -- what is refused ------------------------------------------------------------------------------


def test_what_a_hold_refuses(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = setup.vault
    customer, gone = uuid.uuid4(), uuid.uuid4()
    vault.shred(gone)
    before = setup.kinds()
    with pytest.raises(SubjectShreddedError, match="no hold was placed"):
        vault.hold(gone, case="LIT-1", by="legal")
    secret = "Jane Doe\n+1 555 0100"
    for case in (secret, "", "   ", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="1 to 128 printable characters") as bad:
            vault.hold(customer, case=case, by="legal")
        assert "Jane" not in str(bad.value)
    with pytest.raises(ValueError, match="by must be"):
        vault.hold(customer, case="LIT-1", by="two\nlines")
    with pytest.raises(TypeError, match="case must be a str"):
        vault.hold(customer, case=42, by="legal")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault.hold("not a uuid", case="LIT-1", by="legal")
    with pytest.raises(ValueError, match="aware"):
        vault.hold(customer, case="LIT-1", by="legal", until=datetime(2031, 1, 1))
    with pytest.raises(ValueError, match="later than now"):
        vault.hold(customer, case="LIT-1", by="legal", until=_until(0))
    assert vault.hold(customer, case="x" * 128, by="ü" * 128)  # the longest: 128 characters
    with pytest.raises(HoldNotFoundError) as unknown:
        vault.release(uuid.uuid4().hex, by="legal")
    assert isinstance(unknown.value, LookupError)
    with pytest.raises(ValueError, match="32 lowercase hex"):
        vault.release("Jane Doe", by="legal")
    assert setup.kinds() == [*before, "hold"]  # nothing refused reached the ledger
    with pytest.raises(TypeError, match="override_hold must be a bool"):
        vault.shred(customer, override_hold="yes")  # type: ignore[call-overload]
    vault.close()

    with Vault(setup.kms, setup.url, ledger=setup.ledger, readonly=True) as readonly:
        assert len(readonly.holds()) == 1  # listing is a read
        with pytest.raises(ConfigurationError, match="read-only"):
            readonly.hold(customer, case="LIT-2", by="legal")
    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'other.db'}") as unledgered:
        with pytest.raises(ConfigurationError, match="CCVAULT_LEDGER_URL"):
            unledgered.hold(customer, case="LIT-1", by="legal")
        assert unledgered.holds() == []


def test_an_unreachable_ledger_places_no_hold_in_either_mode(tmp_path: Path, db_url: str) -> None:
    """Holds and releases are ledger first whatever the mode; a best-effort override waits in
    the outbox with its receipt, the holds marked at once, and reaches the ledger before it."""
    ledger = Blockable("sqlite", tmp_path)
    setup = Setup(tmp_path, db_url, ledger=ledger.url)
    setup.vault.close()
    vault = setup.vault = setup.open(ledger_mode="best-effort")
    customer = uuid.uuid4()
    hold_id = vault.hold(customer, case="LIT-1", by="legal")
    ledger.block(vault)
    with pytest.raises(LedgerUnavailableError):
        vault.hold(customer, case="LIT-2", by="legal")
    with pytest.raises(LedgerUnavailableError):
        vault.release(hold_id, by="legal")
    assert [h.hold_id for h in vault.holds()] == [hold_id]
    with pytest.raises(SubjectHeldError):
        vault.shred(customer)
    receipt = vault.shred(customer, override_hold=True)
    [marked] = vault.holds(active_only=False)
    assert (marked.override_receipt, marked.release_seq) == (receipt.receipt_id, None)
    ledger.unblock()
    vault.reconcile_erasures()
    assert setup.kinds()[-2:] == ["override", "receipt"]
    [override] = setup.records("ccvault-hold-override/v1")
    assert (override["receipt_id"], override["by"]) == (receipt.receipt_id, None)
    [marked] = vault.holds(active_only=False)
    assert marked.release_seq == len(setup.kinds()) - 2
    assert vault.verify_erasures().ok
    vault.close()
    ledger.close()


# -- restores, checks, reconciliation -------------------------------------------------------------


def test_a_restored_key_store_gets_its_holds_back_from_the_ledger(
    tmp_path: Path, db_url: str
) -> None:
    setup = Setup(tmp_path, db_url)
    vault = setup.vault
    customer, other = uuid.uuid4(), uuid.uuid4()
    blob = vault.encrypt(customer, b"+1 555 0100", context=CTX)
    early = vault.hold(other, case="LIT-0", by="legal")
    backup = tmp_path / "backup"
    backup.mkdir()
    snapshot(db_url, backup)
    late = vault.hold(customer, case="LIT-1", by="legal")  # after the backup
    vault.release(early, by="legal")
    vault.close()
    restore(db_url, backup)
    with setup.open() as fresh:  # replays the hold and the release before it serves
        assert [h.hold_id for h in fresh.holds()] == [late]
        with pytest.raises(SubjectHeldError):
            fresh.shred(customer)
        assert fresh.decrypt(blob, context=CTX) == b"+1 555 0100"
        assert fresh.holds(other, active_only=False)[0].released_by == "legal"
        assert fresh.verify_erasures().ok
        fresh.shred(other)


def test_hold_rows_lost_behind_the_vaults_back_are_reported_and_put_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'keys.db'}")
    vault = setup.vault
    customer, other = uuid.uuid4(), uuid.uuid4()
    kept = vault.hold(customer, case="LIT-1", by="legal")
    gone = vault.hold(other, case="LIT-2", by="legal")
    vault.release(gone, by="legal")
    holds = sa.table("ccvault_holds", sa.column("hold_id"), sa.column("released_at"))
    run_sql(
        setup.url,
        sa.delete(holds).where(holds.c.hold_id == kept),
        sa.update(holds).where(holds.c.hold_id == gone).values(released_at=None),
    )
    check = vault.verify_erasures()
    assert check.counts["not_applied"] == 2
    assert any(kept in line and "does not hold the legal hold" in line for line in check.lines())
    assert any(gone in line and "as not released" in line for line in check.lines())
    assert vault.shred(uuid.uuid4())  # another subject's shred still runs
    fixed = vault.reconcile_erasures()
    assert fixed.check is not None
    assert fixed.check.ok, fixed.check.lines()
    assert [h.hold_id for h in vault.holds()] == [kept]
    with pytest.raises(SubjectHeldError):
        vault.shred(customer)
    # a hold row written behind the ledger's back is not in the ledger
    run_sql(
        setup.url,
        sa.insert(
            sa.table(
                "ccvault_holds",
                *(sa.column(c) for c in ("hold_id", "ref", "legal_case", "placed_by", "placed_at")),
            )
        ).values(
            hold_id="ab" * 16,
            ref=vault.subject_ref(other),
            legal_case="forged",
            placed_by="insider",
            placed_at=T0,
        ),
    )
    check = vault.verify_erasures()
    assert check.counts["missing_from_ledger"] == 1
    assert "ab" * 16 in check.missing_from_ledger[0].detail
    vault.close()


# -- a hold racing a shred ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_hold_racing_a_shred_is_never_ignored(tmp_path: Path, backend: str) -> None:
    """Two vaults (two engines, two threads) place a hold and shred the same subject at the same
    moment, 50 times: exactly one wins each time — the hold (the shred raises SubjectHeldError
    and destroys nothing) or the shred (the hold raises SubjectShreddedError and places
    nothing). Never a shred that ignored a committed hold."""
    from conftest import _server_db

    db = _server_db(backend)
    url = next(db)
    try:
        kms = LocalKms.ephemeral()
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
        holder = Vault(kms, url, ledger=ledger, create=True, listen_url="off")
        shredder = Vault(kms, url, ledger=ledger, listen_url="off")
        wins = {"hold": 0, "shred": 0}
        try:
            for i in range(50):
                customer = uuid.uuid4()
                holder.encrypt(customer, b"+1 555 0100", context=CTX)
                start = threading.Barrier(2)
                outcome: dict[str, Any] = {}
                # The shred does more before its transaction (it seals the subject for the
                # erasure queue): every other time the hold first reads what a dry run reads,
                # so that either may reach the ledger lock first.
                lag = i % 2

                def place(
                    c: uuid.UUID = customer,
                    o: dict[str, Any] = outcome,
                    b: threading.Barrier = start,
                    lag: int = lag,
                ) -> None:
                    b.wait()
                    for _ in range(lag):
                        holder.shred(c, dry_run=True)
                    try:
                        o["hold"] = holder.hold(c, case="LIT-1", by="legal")
                    except Exception as exc:
                        o["hold"] = exc

                def shred(
                    c: uuid.UUID = customer,
                    o: dict[str, Any] = outcome,
                    b: threading.Barrier = start,
                ) -> None:
                    b.wait()
                    try:
                        o["shred"] = shredder.shred(c)
                    except Exception as exc:
                        o["shred"] = exc

                threads = [threading.Thread(target=place), threading.Thread(target=shred)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                held, shredded = outcome["hold"], outcome["shred"]
                if isinstance(held, str):
                    assert isinstance(shredded, SubjectHeldError), shredded
                    assert shredded.hold_ids == (held,)
                    assert not holder.is_shredded(customer)
                    wins["hold"] += 1
                else:
                    assert isinstance(held, SubjectShreddedError), held
                    assert not isinstance(shredded, Exception), shredded
                    assert holder.holds(customer, active_only=False) == []
                    wins["shred"] += 1
        finally:
            holder.close()
            shredder.close()
        with Vault(kms, url, ledger=ledger, readonly=True) as check:
            assert check.verify_erasures().ok
            assert len(check.holds()) == wins["hold"]
        print(f"\n{backend}: hold won {wins['hold']}, shred won {wins['shred']} of 50")
    finally:
        db.close()


# -- frozen vectors -------------------------------------------------------------------------------


def test_hold_vectors_verify_and_parse_back_to_the_same_bytes() -> None:
    public = bytes.fromhex(VECTORS["public_key"])
    expected = [HoldRecord, HoldRecord, HoldReleaseRecord, HoldOverrideRecord]
    previous = VECTORS["entries"][0]["hash"]
    pairs = zip(VECTORS["entries"][1:-1], expected, VECTORS["records"], strict=True)
    for vec, cls, fields in pairs:
        entry = JournalEntry.model_validate_json(vec["line"])
        assert entry.canonical_bytes() == vec["line"].encode("utf-8")
        assert entry.signed_bytes().hex() == vec["signed_bytes"]
        assert (entry.digest(), entry.prev_hash, entry.kind) == (vec["hash"], previous, cls.FORMAT)
        assert entry.verify(public)
        record = entry.parsed()
        assert isinstance(record, cls)
        assert record.signed_bytes().hex() == vec["record_signed_bytes"]
        assert record.verify(public)
        assert record.model_dump(mode="json", exclude={"signing_key", "signature"}) == fields
        previous = vec["hash"]
    assert VECTORS["entries"][-1]["kind"] == "ccvault-erasure-receipt/v1"


def test_a_journal_with_the_vector_inputs_writes_the_vector_bytes(tmp_path: Path) -> None:
    from ccvault import ErasureReceipt

    seed = SecretKey(bytes.fromhex(VECTORS["seed"]))
    start = datetime.fromisoformat(VECTORS["clock_start"])
    ticks = iter(start + timedelta(seconds=i) for i in range(20))
    path = tmp_path / "ledger.jsonl"
    journal = Journal(
        JsonlLedger(path), VECTORS["installation_id"], seed, clock=lambda: next(ticks)
    )
    types = [HoldRecord, HoldRecord, HoldReleaseRecord, HoldOverrideRecord]
    for cls, fields in zip(types, VECTORS["records"], strict=True):
        journal.append(cls.model_validate(fields))
    journal.append(ErasureReceipt.model_validate(VECTORS["receipt"]))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [vec["line"] for vec in VECTORS["entries"]]


# -- the CLI ---------------------------------------------------------------------------------------


def test_the_hold_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from admin_cli import configure, run

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    kms, url = configure(tmp_path, monkeypatch, ledger_url=ledger)
    Vault(kms, url, ledger=ledger, create=True).close()
    customer = str(uuid.uuid4())
    placed = run(capsys, "hold", customer, "--case", "LIT-1", "--by", "legal", "--until",
                 "2031-06-30T00:00:00+02:00")  # fmt: skip
    hold_id = placed["hold_id"]
    assert customer not in json.dumps(placed)
    listed = run(capsys, "holds", customer)["holds"]
    assert [(h["hold_id"], h["case"], h["until"]) for h in listed] == [
        (hold_id, "LIT-1", "2031-06-29T22:00:00Z")
    ]
    assert run(capsys, "holds")["holds"][0]["subject_ref"] == placed["subject_ref"]

    assert main(["shred", customer]) == 1  # refused, nothing destroyed
    assert "SubjectHeldError" in capsys.readouterr().err
    subjects = tmp_path / "subjects.txt"
    subjects.write_text(f"{customer}\n{uuid.uuid4()}\n")
    assert main(["shred-many", "--from", str(subjects)]) == 3
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["summary"]["held"] == 1
    assert [(r["outcome"], r["hold_ids"]) for r in result["results"]] == [
        ("held", [hold_id]),
        ("shredded", []),
    ]
    assert f"line 1: held by 1 legal hold(s): {hold_id}" in out.err
    with pytest.raises(SystemExit) as usage:  # --by goes with --override-hold
        main(["shred", customer, "--by", "dpo"])
    assert usage.value.code == 2
    capsys.readouterr()

    for bad in (["hold", customer, "--case", "a\nb", "--by", "x"],
                ["hold", customer, "--case", "LIT", "--by", "x", "--until", "2031-06-30"],
                ["release", uuid.uuid4().hex, "--by", "legal"],
                ["release", "nonsense", "--by", "legal"]):  # fmt: skip
        assert main(bad) == 1
        assert capsys.readouterr().err.startswith(f"ccvault {bad[0]}: ")

    receipt = run(capsys, "shred", customer, "--override-hold", "--by", "dpo")["receipt"]
    assert run(capsys, "holds", customer)["holds"] == []
    [done] = run(capsys, "holds", "--all")["holds"]
    assert (done["override_receipt"], done["released_by"]) == (receipt["receipt_id"], "dpo")
    again = run(capsys, "release", hold_id, "--by", "legal")  # overridden already: nothing to do
    assert again == {"hold_id": hold_id, "released": True}
