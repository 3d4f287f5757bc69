"""``vault.shred_many(subjects)`` and ``ccvault shred-many --from FILE`` (issue 13 item 6): the
nightly queue of deletion requests, one result per subject (shredded, already shredded or an
error: never all-or-nothing), 500 subjects per key-store journal transaction with one ledger
append of their receipts (at most 500 entries per sink write), the erasures queued for their
completion and the blind indexes swept once per batch.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), the application's
tables in the same database (a second SQLite file for SQLite), SQL ledgers (a SQLite file; the
blockable ledgers of tests/vault_ledgers.py). Time is the vault's clock, never slept.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import (
    SHREDDED,
    ErasureReceipt,
    ShredResult,
    SubjectShreddedError,
    Vault,
)
from ccvault.cli import main
from ccvault.erasure import SqlLedger
from ccvault.erasure._many import BATCH
from ccvault.keystore import SqlKeyStore
from ccvault.kms import LocalKms
from keyring_doubles import Clock
from sqla_models import Base, Customer
from test_shred_sweep import NFC, NFD, _Blocker, _indexed, _short_wait_engine, people, str_app
from vault_ledgers import Blockable, blockable, but_new_queue_keys, dump_store, entries

__all__ = ["blockable", "str_app"]  # fixtures, for pytest

BOUND = 1.0
CTX = "customers.phone"
RECEIPT = "ccvault-erasure-receipt/v1"


class CountingLedger(SqlLedger):
    """A SQL ledger that records how many entries each sink write carried."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes: list[int] = []

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        self.writes.append(len(entries))
        return super().append(installation_id, first_seq, entries)


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


class App:
    """A vault with a SQL ledger whose writes are counted, the application's tables attached."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.kms = LocalKms.ephemeral()
        self.clock = Clock(1_800_000_000.0)
        self.url = db_url
        self.ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
        self.ledger = CountingLedger(self.ledger_url)
        self.engine = sa.create_engine(_app_url(db_url))
        Base.metadata.create_all(self.engine)
        self.vault = Vault(
            self.kms,
            db_url,
            subject_type="uuid",
            ledger=self.ledger,
            listen_url="off",
            clock=self.clock,
            propagation_interval=BOUND,
            create=True,
        )
        self.vault.attach(self.engine)

    def customers(self, n: int) -> list[uuid.UUID]:
        ids = [uuid.uuid4() for _ in range(n)]
        with Session(self.engine) as s:
            s.add_all(
                Customer(id=c, name="C", phone=f"+44 20 7946 {i:04d}", email=f"{i}@example.com")
                for i, c in enumerate(ids)
            )
            s.commit()
        return ids

    def bidx(self) -> dict[uuid.UUID, tuple[Any, Any]]:
        t = Customer.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.phone_bidx, t.c.email_bidx)).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    def queued(self) -> set[str]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT receipt_id FROM ccvault_erasure_queue"))
                return {r[0] for r in rows}
        finally:
            engine.dispose()

    def close(self) -> None:
        self.vault.close()
        self.ledger.close()
        self.engine.dispose()


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[App]:
    a = App(tmp_path, db_url)
    yield a
    a.close()


def _store_engine(vault: Vault) -> sa.Engine:
    store = vault._store  # type: ignore[attr-defined]
    assert isinstance(store, SqlKeyStore)
    return store.engine


class Calls:
    """Counts the calls of a key-store method (wrapped on the instance) and the key store's
    write transactions (COMMITs on its engine)."""

    def __init__(self, vault: Vault, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.counts = dict.fromkeys(names, 0)
        self.commits = 0
        store = vault._store  # type: ignore[attr-defined]
        for name in names:
            real = getattr(store, name)

            def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.counts[_name] += 1
                return _real(*args, **kw)

            monkeypatch.setattr(store, name, counted)
        self.engine = _store_engine(vault)
        sa.event.listen(self.engine, "commit", self._commit)

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def close(self) -> None:
        sa.event.remove(self.engine, "commit", self._commit)


# -- 1,200 subjects: three batches ----------------------------------------------------------------


def test_1200_subjects_in_three_batches(
    app: App, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    n = 1200
    ids = app.customers(n)
    bystander = app.customers(1)[0]
    first = app.vault.shred(ids[7])  # today's erasure-queue key exists; one repeat in the input
    writes_before = len(app.ledger.writes)
    progress: list[tuple[int, int]] = []
    calls = Calls(app.vault, monkeypatch, "shred_many", "shred")
    try:
        results = app.vault.shred_many(iter(ids), progress=lambda d, t: progress.append((d, t)))
    finally:
        calls.close()

    assert [r.index for r in results] == list(range(n))
    assert all(isinstance(r, ShredResult) and r.ok for r in results)
    assert [r.outcome for r in results].count("already_shredded") == 1
    assert results[7].outcome == "already_shredded"
    assert results[7].receipt == first
    key = app.vault.receipt_public_key
    for subject, r in zip(ids, results, strict=True):
        assert r.receipt is not None
        assert r.receipt.verify(key, installation_id=app.vault.installation_id)
        assert r.receipt.subject_ref == app.vault.subject_ref(subject).hex()
        assert r.receipt.subject_was_known
        assert r.receipt.destroyed_keys
    # three key-store transactions, one per batch of at most 500 subjects, nothing else written
    assert calls.counts == {"shred_many": 3, "shred": 0}
    assert calls.commits == 3
    assert progress == [(500, n), (1000, n), (n, n)]
    # the ledger: one receipt entry per subject, in the input's order, at most 500 per write
    new = [r.receipt.receipt_id for r in results if r.outcome == "shredded" and r.receipt]
    logged = [
        e.record["receipt_id"]
        for e in entries(app.ledger_url, app.vault.installation_id)
        if e.kind == RECEIPT
    ]
    assert logged == [first.receipt_id, *new]
    writes = app.ledger.writes[writes_before:]
    assert sum(writes) == n - 1
    assert max(writes) <= 500
    assert len(writes) == 3
    for r in results[::97]:
        assert r.receipt is not None
        status = app.vault.erasure_status(r.receipt.receipt_id)
        assert status is not None
        assert (status.phase, status.in_ledger) == ("destroyed", True)
    # every erasure queued for its completion (the repeat's again: not completed yet)
    assert app.queued() == {r.receipt.receipt_id for r in results if r.receipt}
    # the blind indexes swept in batch, nobody else's
    indexes = app.bidx()
    assert all(indexes[c] == (None, None) for c in ids)
    assert indexes[bystander][0] is not None
    with Session(app.engine) as s:
        assert s.get(Customer, ids[-1]).phone is SHREDDED  # type: ignore[union-attr]
        assert s.get(Customer, bystander).phone == "+44 20 7946 0000"  # type: ignore[union-attr]
    assert app.vault.verify_erasures().ok
    # phase 2 completes them all
    app.clock.t += BOUND + 2
    report = app.vault.complete_erasures()
    assert (report.completed, report.waiting, report.ok) == (n, 0, True)
    assert app.queued() == set()


# -- what each subject gets ------------------------------------------------------------------------


def test_unknown_repeated_wrong_type_and_duplicate_subjects(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    known, other = app.customers(2)
    blob = app.vault.encrypt(known, b"x", context=CTX)
    before = app.vault.shred(other)
    never_seen = uuid.uuid4()
    given: list[object] = [known, "secret-customer-7", other, never_seen, known, str(known), 3.5]
    with caplog.at_level(logging.DEBUG, logger="ccvault"):
        results = app.vault.shred_many(given)
    outcomes = [r.outcome for r in results]
    assert outcomes == [
        "shredded",
        "error",
        "already_shredded",
        "shredded",
        "already_shredded",  # the same subject again: shredded once, the same receipt
        "already_shredded",  # the same subject as text
        "error",
    ]
    assert results[0].receipt is not None
    assert results[4].receipt == results[0].receipt == results[5].receipt
    assert results[2].receipt == before
    unknown = results[3].receipt
    assert unknown is not None
    assert not unknown.subject_was_known  # fenced: a never-seen subject never gets a key
    assert unknown.destroyed_keys == ()
    with pytest.raises(SubjectShreddedError):
        app.vault.encrypt(never_seen, b"x", context=CTX)
    assert results[1].error == "TypeError: subject type is uuid: got a str that is not a UUID"
    assert results[6].error == "TypeError: subject type is uuid: got float"
    assert (results[1].receipt, results[1].ok, results[0].ok) == (None, False, True)
    assert "secret-customer-7" not in caplog.text + repr(results)
    with pytest.raises(SubjectShreddedError):
        app.vault.decrypt(blob, context=CTX)
    assert app.vault.shred_many([]) == []
    with pytest.raises(TypeError, match="not one: use shred"):
        app.vault.shred_many(str(known))  # one subject, not its characters


def test_a_stored_receipt_that_does_not_parse_is_that_subjects_error(app: App) -> None:
    a, b, c = app.customers(3)
    app.vault.shred(b)
    with _store_engine(app.vault).begin() as conn:
        conn.execute(
            sa.text("UPDATE ccvault_subject_heads SET receipt = 'not json' WHERE ref = :r"),
            {"r": app.vault.subject_ref(b)},
        )
    results = app.vault.shred_many([a, b, c])
    assert [r.outcome for r in results] == ["shredded", "error", "shredded"]
    assert results[1].error is not None
    assert results[1].error.startswith("KeyStoreError: subject ref ")
    assert "does not parse" in results[1].error


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_batch_is_shredded_one_subject_at_a_time(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = app.customers(5)
    bad = app.vault.subject_ref(ids[2])
    erasure = app.vault._erasure  # type: ignore[attr-defined]
    real = erasure.new_receipt

    def new_receipt(ref: bytes, *args: Any) -> ErasureReceipt:
        if ref == bad:
            raise RuntimeError(f"broken for {ids[2]}")
        receipt: ErasureReceipt = real(ref, *args)
        return receipt

    monkeypatch.setattr(erasure, "new_receipt", new_receipt)
    calls = Calls(app.vault, monkeypatch, "shred_many", "shred")
    try:
        results = app.vault.shred_many(ids)
    finally:
        calls.close()
    assert [r.outcome for r in results] == ["shredded"] * 2 + ["error"] + ["shredded"] * 2
    assert results[2].error == "RuntimeError (message withheld: it may quote data)"
    assert calls.counts == {"shred_many": 1, "shred": 5}  # the batch, then each on its own
    assert not app.vault.is_shredded(ids[2])
    assert all(app.vault.is_shredded(c) for i, c in enumerate(ids) if i != 2)
    assert app.bidx()[ids[2]][0] is not None
    assert all(app.bidx()[c] == (None, None) for i, c in enumerate(ids) if i != 2)
    assert len(app.queued()) == 4
    assert app.vault.verify_erasures().ok


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_read_only_vault_refuses(app: App) -> None:
    from ccvault import ConfigurationError

    with (
        Vault(app.kms, app.url, readonly=True, ledger=app.ledger_url) as ro,
        pytest.raises(ConfigurationError, match="read-only"),
    ):
        ro.shred_many([uuid.uuid4()])


# -- the ledger unreachable ------------------------------------------------------------------------


def _ledgered(kms: LocalKms, url: str, ledger: str, **options: Any) -> Vault:
    return Vault(kms, url, ledger=ledger, listen_url="off", create=True, **options)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_strict_ledger_unreachable_destroys_nothing_and_stops(
    blockable: Blockable, db_url: str
) -> None:
    kms = LocalKms.ephemeral()
    with _ledgered(kms, db_url, blockable.url) as vault:
        ids = [uuid.uuid4() for _ in range(BATCH + 100)]
        vault.warm(ids)
        blob = vault.encrypt(ids[-1], b"kept", context=CTX)
        before = dump_store(db_url)
        blockable.block(vault)
        try:
            results = vault.shred_many(ids)
        finally:
            blockable.unblock()
        assert {r.outcome for r in results} == {"error"}
        assert all(r.error and r.error.startswith("LedgerUnavailableError: ") for r in results)
        assert all("not attempted" not in (r.error or "") for r in results[:BATCH])
        assert all("not attempted" in (r.error or "") for r in results[BATCH:])
        assert but_new_queue_keys(before, dump_store(db_url)) == before  # nothing destroyed
        assert vault.decrypt(blob, context=CTX, subject=ids[-1]) == b"kept"
        assert not any(vault.is_shredded(s) for s in ids[::50])
        again = vault.shred_many(ids)  # the caller's queue retries: done
        assert {r.outcome for r in again} == {"shredded"}
        assert vault.verify_erasures().ok


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_best_effort_ledger_unreachable_destroys_and_queues_in_the_outbox(
    blockable: Blockable, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    with _ledgered(kms, db_url, blockable.url, ledger_mode="best-effort") as vault:
        ids = [uuid.uuid4() for _ in range(BATCH + 100)]
        vault.warm(ids)
        blockable.block(vault)
        try:
            with caplog.at_level(logging.WARNING, logger="ccvault"):
                results = vault.shred_many(ids)
        finally:
            blockable.unblock()
        assert {r.outcome for r in results} == {"shredded"}
        assert "500 subjects are shredded but their receipts are not in the erasure ledger" in (
            caplog.text
        )
        assert vault.ledger_unverified
        receipts = [r.receipt for r in results if r.receipt]
        status = vault.erasure_status(receipts[0].receipt_id)
        assert status is not None
        assert (status.phase, status.in_ledger) == ("destroyed", False)
        assert len(vault.verify_erasures().pending) == len(ids)
        vault.reconcile_erasures()  # the outbox appended, in order
        logged = [
            e.record["receipt_id"]
            for e in entries(blockable.url, vault.installation_id)
            if e.kind == RECEIPT
        ]
        assert logged == [r.receipt_id for r in receipts]
        assert vault.verify_erasures().ok


def _three_customers(vault: Vault, engine: sa.Engine) -> list[uuid.UUID]:
    """Three customers with blind indexes in ``engine``'s database, attached to ``vault``."""
    Base.metadata.create_all(engine)
    vault.attach(engine)
    with Session(engine) as s:
        rows = [Customer(name="A", phone=f"+44 20 7946 000{i}") for i in range(3)]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


# -- the sweep -------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_sweep_keeps_the_receipts_and_says_so(
    kms: LocalKms, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccvault.sqlalchemy import _attach

    monkeypatch.setattr(_attach, "_sleep", lambda _s: None)
    with Vault(kms, db_url) as vault:
        engine = _short_wait_engine(db_url)
        ids = _three_customers(vault, engine)
        blocker = _Blocker(db_url, ids[0])
        try:
            results = vault.shred_many(ids)
        finally:
            blocker.release()
        assert [r.outcome for r in results] == ["shredded"] * 3
        for r in results:
            assert r.receipt is not None
            assert not r.ok
            assert r.sweep_incomplete is not None
            assert r.sweep_incomplete.startswith("blind indexes not cleared in table ")
            assert "table customers (OperationalError SQLITE_BUSY" in r.sweep_incomplete
            assert str(ids[0]) not in r.sweep_incomplete
        assert all(vault.is_shredded(c) for c in ids)
        again = vault.shred_many(ids)  # a repeat sweeps again
        assert [(r.outcome, r.ok) for r in again] == [("already_shredded", True)] * 3
        assert [r.receipt for r in again] == [r.receipt for r in results]
        vault.detach(engine)
        engine.dispose()


def test_str_subjects_are_swept_exactly_in_batch(
    str_app: tuple[Vault, sa.Engine, Callable[[sa.Table, str, str], None]],
) -> None:
    """On MariaDB's default collation 'alice' = 'Alice' = 'alice ': the batched sweep still
    clears only the shredded subjects' rows, in every Unicode form they are stored in."""
    v, engine, add = str_app
    for i, name in enumerate(["Alice", "alice", "alice ", "ALICE", NFD, NFC, "bob"]):
        add(people, name, f"+44 20 7946 000{i}")
    results = v.shred_many(["alice", NFC, "carol"])
    assert [r.outcome for r in results] == ["shredded"] * 3
    assert all(r.ok for r in results)
    assert _indexed(engine, people) == {
        "Alice": True,
        "alice": False,
        "alice ": True,
        "ALICE": True,
        NFD: False,
        NFC: False,
        "bob": True,
    }


def test_the_hook_registry_keeps_each_batched_form_with_its_hook() -> None:
    from ccvault.keyring import AfterShredHooks

    hooks = AfterShredHooks()

    def one(_s: object) -> list[tuple[str, str]]:
        return []

    def many(_s: Sequence[object]) -> list[tuple[str, str]]:
        return []

    def other(_s: object) -> list[tuple[str, str]]:
        return []

    hooks.add(one, many=many)
    hooks.add(other)
    assert (hooks.many(one), hooks.many(other)) == (many, None)
    hooks.remove(one)
    assert hooks.many(one) is None
    assert list(hooks) == [other]


def test_hooks_without_a_batched_form_run_per_subject(svault: Vault) -> None:
    seen: list[object] = []

    def hook(subject: object) -> list[tuple[str, str]]:
        seen.append(subject)
        return []

    batched: list[list[object]] = []

    def one(_s: object) -> list[tuple[str, str]]:
        raise AssertionError("the batched form runs instead")

    def many(subjects: Sequence[object]) -> list[tuple[str, str]]:
        batched.append(list(subjects))
        return []

    svault._ring.after_shred.add(hook)  # type: ignore[attr-defined]
    svault._ring.after_shred.add(one, many=many)  # type: ignore[attr-defined]
    ids = [uuid.uuid4() for _ in range(3)]
    svault.shred_many([ids[0], ids[1], "nope", ids[2], ids[0]])
    assert seen == ids  # each shredded subject once, in the input's order
    assert batched == [ids]


# -- ccvault shred-many --------------------------------------------------------------------------


def test_cli_shred_many(
    vault: Vault,
    db_url: str,
    vault_settings: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = sa.create_engine(_app_url(db_url))
    a, b, c = _three_customers(vault, engine)
    vault.detach(engine)
    before = vault.shred(c)
    listing = tmp_path / "requests.txt"
    listing.write_text(
        f"# tonight's deletion requests\n{a}\n\n  # a comment\n{b}\nsecret-customer-7\n{c}\n{a}\n",
        encoding="utf-8",
    )
    where = ["--models", "sqla_models", "--database-url", _app_url(db_url)]
    assert main(["shred-many", "--from", str(listing), *where]) == 3
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["summary"] == {
        "subjects": 5,
        "shredded": 2,
        "already_shredded": 2,
        "held": 0,
        "errors": 1,
        "sweep_incomplete": 0,
    }
    assert [(r["line"], r["outcome"]) for r in out["results"]] == [
        (2, "shredded"),
        (5, "shredded"),
        (6, "error"),
        (7, "already_shredded"),
        (8, "already_shredded"),
    ]
    assert out["results"][3]["receipt_id"] == before.receipt_id
    assert out["results"][4]["receipt_id"] == out["results"][0]["receipt_id"]
    assert "warning" not in out
    assert "line 6: TypeError: subject type is uuid" in captured.err
    for subject in (a, b, c, "secret-customer-7"):
        assert str(subject) not in captured.out + captured.err
    vault._ring.evict_all()  # type: ignore[attr-defined]  # shredded by the command's vault
    t = Customer.__table__
    with engine.connect() as conn:
        got = conn.execute(sa.select(t.c.id, t.c.phone_bidx).where(t.c.id.in_([a, b]))).all()
    assert {bidx for _, bidx in got} == {None}
    assert vault.is_shredded(a)
    assert vault.is_shredded(b)
    # all good: exit status 0; without --models it says it sweeps nothing
    listing.write_text(f"{a}\r\n{b}\r\n", encoding="utf-8")
    assert main(["shred-many", "--from", str(listing)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [r["outcome"] for r in out["results"]] == ["already_shredded"] * 2
    assert "clears no blind index" in out["warning"]
    engine.dispose()


def test_cli_shred_many_failures(
    vault: Vault, vault_settings: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["shred-many", "--from", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shred-many", "--from", "x", "--models", "sqla_models"])  # no --database-url
    assert "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shred-many"])  # no --from
