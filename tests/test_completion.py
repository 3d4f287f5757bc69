"""Two phases of an erasure (issue 13 item 3; DESIGN.md, lifecycle rule 4): ``shred()`` returns
the v1 receipt (phase ``destroyed``) and queues the erasure, its subject sealed under the day's
erasure-queue key; ``complete_erasures()`` (cron) or ``shred(wait=True)`` waits for the
propagation bound, sweeps the blind indexes again and appends a signed completion record
naming the tables swept; the queue row goes in the same commit.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), the application's
tables in the same database (a second SQLite file for SQLite), a SQLite-file SQL ledger.
Time is the vault's clock (``clock=``), never slept.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import (
    ConfigurationError,
    ErasureIncompleteError,
    LedgerUnavailableError,
    SubjectHeldError,
    Vault,
)
from ccvault.erasure import CompletionRecord, _complete
from ccvault.kms import LocalKms
from ccvault.testing import FrozenClock
from sqla_models import Base, Customer
from vault_ledgers import Blockable, blockable, entries, kinds, restore, snapshot

__all__ = ["blockable"]  # a fixture, for pytest

BOUND = 1.0  # the vault's propagation interval: the installation's bound
SWEPT = ("customers", "migrating")  # the searchable tables of sqla_models in the database


class App:
    """A vault with a ledger, the application's tables attached, and its customers."""

    def __init__(
        self, tmp_path: Path, db_url: str, ledger: str | None = None, **options: Any
    ) -> None:
        self.kms = LocalKms.ephemeral()
        self.clock = FrozenClock()
        self.url = db_url
        self.ledger = ledger or f"sqlite:///{tmp_path / 'ledger.db'}"
        app_url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
        self.engine = sa.create_engine(app_url)
        Base.metadata.create_all(self.engine)
        self.vault = self.open(create=True, **options)
        self.vault.attach(self.engine)

    def open(self, **options: Any) -> Vault:
        return Vault(
            self.kms,
            self.url,
            subject_type="uuid",
            ledger=self.ledger,
            listen_url="off",
            clock=self.clock,
            propagation_interval=BOUND,
            **options,
        )

    def customer(self, phone: str) -> uuid.UUID:
        with Session(self.engine) as s:
            c = Customer(name="C", phone=phone, email=f"{phone[-4:]}@example.com")
            s.add(c)
            s.commit()
            return c.id

    def bidx(self, customer: uuid.UUID) -> tuple[Any, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT phone_bidx, email_bidx FROM customers WHERE id = :id").bindparams(
                    sa.bindparam("id", customer, type_=sa.Uuid())
                )
            ).one()
        return row[0], row[1]

    def late_write(self, customer: uuid.UUID, like: uuid.UUID) -> None:
        """What a warm writer that had not seen the shred yet leaves after the first sweep: a
        blind index of the shredded customer (written here directly: ``like``'s value)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE customers SET phone_bidx = :b WHERE id = :id").bindparams(
                    sa.bindparam("id", customer, type_=sa.Uuid()),
                    sa.bindparam("b", self.bidx(like)[0], type_=sa.LargeBinary()),
                )
            )

    def queued(self) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [
                    tuple(r)
                    for r in conn.execute(
                        sa.text("SELECT receipt_id, ref, sealed, due FROM ccvault_erasure_queue")
                    )
                ]
        finally:
            engine.dispose()

    def completions(self) -> list[CompletionRecord]:
        return [
            CompletionRecord.model_validate(e.record)
            for e in entries(self.ledger, self.vault.installation_id)
            if e.kind == CompletionRecord.FORMAT
        ]

    def close(self) -> None:
        self.vault.close()
        self.engine.dispose()


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[App]:
    a = App(tmp_path, db_url)
    yield a
    a.close()


# -- the two phases -------------------------------------------------------------------------------


def test_complete_erasures_completes_after_the_bound_and_sweeps_again(app: App) -> None:
    a, b = app.customer("+44 20 7946 0001"), app.customer("+44 20 7946 0002")
    receipt = app.vault.shred(a)
    status = app.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "destroyed"
    assert status.in_ledger
    assert app.bidx(a) == (None, None)  # the first sweep
    [(receipt_id, ref, sealed, due)] = app.queued()
    assert (receipt_id, bytes(ref)) == (receipt.receipt_id, bytes.fromhex(receipt.subject_ref))
    assert a.bytes not in bytes(sealed)
    assert str(a).encode() not in bytes(sealed)
    assert due >= receipt.shredded_at.timestamp() + BOUND  # the bound, and the commit's slack

    early = app.vault.complete_erasures()
    assert (early.completed, early.waiting, early.ok) == (0, 1, True)
    assert early.next_due is not None
    assert early.next_due.timestamp() == due
    app.late_write(a, like=b)  # a warm writer, within the bound
    app.clock.advance(due - app.clock())
    report = app.vault.complete_erasures()
    assert (report.completed, report.receipt_ids, report.waiting) == (1, (receipt_id,), 0)
    assert report.tables_swept == SWEPT
    assert report.ok
    assert not report.lines()
    assert app.bidx(a) == (None, None)  # the second sweep cleared the late blind index
    assert app.bidx(b)[0] is not None  # nobody else's
    assert app.queued() == []  # the sealed subject went with the completion

    status = app.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "completed"
    assert status.completion_seq
    [completion] = app.completions()
    assert completion.verify(app.vault.receipt_public_key)
    assert completion.completes(receipt)
    assert completion.ledger_seq == status.ledger_seq
    assert completion.tables_swept == SWEPT
    assert completion.bound_waited_seconds >= BOUND
    assert kinds(app.ledger, app.vault.installation_id)[-2:] == ["receipt", "completion"]
    assert app.vault.verify_erasures().ok
    again = app.vault.complete_erasures()  # idempotent
    assert (again.completed, again.waiting) == (0, 0)
    assert len(app.completions()) == 1


def test_shred_wait_completes_before_it_returns(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    a = app.customer("+44 20 7946 0003")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        app.clock.advance(seconds)

    monkeypatch.setattr(_complete, "_sleep", sleep)
    receipt = app.vault.shred(a, wait=True)
    assert slept
    assert sum(slept) >= BOUND
    status = app.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "completed"
    assert app.queued() == []
    [completion] = app.completions()
    assert completion.completes(receipt)
    assert completion.tables_swept == SWEPT
    # a repeat returns the same receipt and completes nothing twice
    assert app.vault.shred(a, wait=True) == receipt
    assert len(app.completions()) == 1


def test_complete_erasures_sweeps_a_page_in_one_batch(app: App) -> None:
    customers = [app.customer(f"+44 20 7946 2{i:03d}") for i in range(5)]
    kept = app.customer("+44 20 7946 2999")
    for c in customers:
        app.vault.shred(c)
        app.late_write(c, like=kept)  # each gets a blind index back after its first sweep
    app.clock.advance(10)
    updates: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE CUSTOMERS"):
            updates.append(statement)

    sa.event.listen(app.engine, "before_cursor_execute", count)
    try:
        report = app.vault.complete_erasures()
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", count)
    assert report.completed == len(customers)
    assert len(updates) == 1  # one UPDATE ... WHERE id IN (...) for the page, not one each
    assert all(app.bidx(c) == (None, None) for c in customers)
    assert app.bidx(kept)[0] is not None
    assert len(app.completions()) == len(customers)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_wait_needs_a_ledger_and_refuses_before_destroying(tmp_path: Path, db_url: str) -> None:
    with Vault(LocalKms.ephemeral(), db_url, listen_url="off") as vault:
        subject = uuid.uuid4()
        vault.encrypt(subject, b"x", context="c")
        with pytest.raises(ConfigurationError, match=r"shred\(wait=True\) needs an erasure ledger"):
            vault.shred(subject, wait=True)
        assert not vault.is_shredded(subject)
        with pytest.raises(ConfigurationError, match="complete_erasures needs an erasure ledger"):
            vault.complete_erasures()
        with pytest.raises(ConfigurationError, match="exclude each other"):
            vault.shred(subject, dry_run=True, wait=True)  # type: ignore[call-overload]
        vault.shred(subject)  # without a ledger: legacy, nothing queued
        with vault._store.engine.connect() as conn:  # type: ignore[attr-defined]
            count = conn.execute(sa.text("SELECT count(*) FROM ccvault_erasure_queue")).scalar()
        assert count == 0


# -- never a completion while a blind index may remain -------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unswept_column_leaves_the_erasure_queued(app: App) -> None:
    a = app.customer("+44 20 7946 0004")
    receipt = app.vault.shred(a)
    app.vault.detach(app.engine)  # this process no longer sweeps customers
    app.clock.advance(10)
    report = app.vault.complete_erasures()
    assert (report.completed, report.ok) == (0, False)
    [problem] = report.incomplete
    assert problem.receipt_id == receipt.receipt_id
    assert "customers.phone" in problem.detail
    assert "attach" in problem.detail
    assert str(a) not in str(report.model_dump())
    assert len(app.queued()) == 1
    assert app.completions() == []
    status = app.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "destroyed"
    app.vault.attach(app.engine)
    assert app.vault.complete_erasures().completed == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_models_tables_must_be_swept(app: App) -> None:
    import sqla_models

    a = app.customer("+44 20 7946 0005")
    app.vault.shred(a)
    app.clock.advance(10)
    other = sa.MetaData()
    from ccvault.sqlalchemy import Encrypted

    sa.Table(  # a searchable table of the models that no attached database has
        "callers",
        other,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("phone", Encrypted(sa.String(32), subject="id", searchable="phone")),
    )
    report = app.vault.complete_erasures(models=[sqla_models, other])
    [problem] = report.incomplete
    assert "callers" in problem.detail
    assert report.completed == 0
    with pytest.raises(TypeError, match=r"models are a module, .* not int"):
        app.vault.complete_erasures(models=42)
    report = app.vault.complete_erasures(models=sqla_models)
    assert report.completed == 1
    assert report.tables_swept == SWEPT


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_second_sweep_is_retried_by_the_next_run(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = app.customer("+44 20 7946 0006")
    receipt = app.vault.shred(a)
    app.clock.advance(10)

    def broken(_subject: object) -> list[tuple[str, str]]:
        raise RuntimeError("the database went away")

    app.vault._ring.after_shred.add(broken)
    report = app.vault.complete_erasures()
    assert report.completed == 0
    assert "RuntimeError" in report.incomplete[0].detail
    assert "went away" not in str(report.model_dump())
    monkeypatch.setattr(_complete, "_sleep", app.clock.advance)
    with pytest.raises(ErasureIncompleteError) as raised:
        app.vault.shred(a, wait=True)
    assert raised.value.receipt == receipt
    app.vault._ring.after_shred.remove(broken)
    assert app.vault.complete_erasures().completed == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_edited_queue_row_is_never_swept_as_someone_else(app: App) -> None:
    a, b = app.customer("+44 20 7946 0007"), app.customer("+44 20 7946 0008")
    app.vault.shred(a)
    app.vault.shred(b)
    engine = sa.create_engine(app.url)
    with engine.begin() as conn:  # a's row carries b's sealed subject
        rows = dict(conn.execute(sa.text("SELECT ref, sealed FROM ccvault_erasure_queue")).all())
        ref_a = app.vault.subject_ref(a)
        [ref_b] = [r for r in rows if bytes(r) != ref_a]
        conn.execute(
            sa.text("UPDATE ccvault_erasure_queue SET sealed = :s WHERE ref = :r").bindparams(
                sa.bindparam("s", rows[ref_b], type_=sa.LargeBinary()),
                sa.bindparam("r", ref_a, type_=sa.LargeBinary()),
            )
        )
    engine.dispose()
    app.clock.advance(10)
    report = app.vault.complete_erasures()
    assert report.completed == 1  # b's own row
    [problem] = report.incomplete
    assert "damaged or was edited" in problem.detail
    assert problem.subject_ref == ref_a.hex()[:16]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_queue_row_without_its_erasure_row_is_reported(app: App) -> None:
    a = app.customer("+44 20 7946 0014")
    receipt = app.vault.shred(a)
    engine = sa.create_engine(app.url)
    with engine.begin() as conn:  # an edited store: the erasure's own row is gone
        conn.execute(sa.text("DELETE FROM ccvault_erasures"))
    engine.dispose()
    app.clock.advance(10)
    report = app.vault.complete_erasures()
    [problem] = report.incomplete
    assert problem.receipt_id == receipt.receipt_id
    assert "no record of this erasure" in problem.detail
    assert report.completed == 0
    assert app.completions() == []


# -- the queue key: daily versions, destroyed after backup_retention -------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_queue_key_versions_lapse_after_backup_retention(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(tmp_path, db_url, backup_retention=timedelta(days=2))
    try:
        a = app.customer("+44 20 7946 0009")
        receipt = app.vault.shred(a)
        app.vault.detach(app.engine)  # the completion cannot run for days
        app.clock.advance(86_400 * 4)
        report = app.vault.complete_erasures()
        [lapsed] = report.lapsed
        assert lapsed.receipt_id == receipt.receipt_id
        assert "shred(subject, wait=True)" in (lapsed.detail)
        engine = sa.create_engine(app.url)
        with engine.connect() as conn:
            states = conn.execute(
                sa.text("SELECT version, state, wrapped FROM ccvault_keys WHERE kind = 'queue'")
            ).all()
        engine.dispose()
        assert [(s, w) for _, s, w in states] == [("destroyed", None)]
        # the subject in hand completes it: queued again under today's version
        app.vault.attach(app.engine)
        monkeypatch.setattr(_complete, "_sleep", app.clock.advance)
        assert app.vault.shred(a, wait=True) == receipt
        status = app.vault.erasure_status(receipt.receipt_id)
        assert status is not None
        assert status.phase == "completed"
    finally:
        app.close()


# -- the ledger: outbox, replay, several hosts ----------------------------------------------------


@pytest.mark.parametrize("blockable", ["sqlite"], indirect=True)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_receipt_in_the_outbox_waits_for_the_ledger(
    tmp_path: Path, db_url: str, blockable: Blockable
) -> None:
    app = App(tmp_path, db_url, ledger=blockable.url, ledger_mode="best-effort")
    try:
        a = app.customer("+44 20 7946 0010")
        blockable.block(app.vault)
        receipt = app.vault.shred(a)  # destroyed; the receipt waits in the outbox
        app.clock.advance(10)
        with pytest.raises(LedgerUnavailableError, match="complete_erasures refuses"):
            app.vault.complete_erasures()
        blockable.unblock()
        report = app.vault.complete_erasures()  # the outbox goes first, then the completion
        assert report.completed == 1
        assert kinds(app.ledger, app.vault.installation_id)[-2:] == ["receipt", "completion"]
        status = app.vault.erasure_status(receipt.receipt_id)
        assert status is not None
        assert status.phase == "completed"
    finally:
        app.close()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_restored_store_replays_the_completion(app: App, tmp_path: Path) -> None:
    a = app.customer("+44 20 7946 0011")
    receipt = app.vault.shred(a)
    snapshot(app.url, tmp_path)  # the queue row and the sealed subject are in this backup
    app.clock.advance(10)
    assert app.vault.complete_erasures().completed == 1
    app.vault.close()
    restore(app.url, tmp_path)
    assert len(app.queued()) == 1
    app.vault = app.open()  # replays the completion: marks it, drops the queue row
    status = app.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "completed"
    assert app.queued() == []
    assert app.vault.verify_erasures().ok


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_two_hosts_completing_at_once_append_one_completion_each(app: App) -> None:
    subjects = [app.customer(f"+44 20 7946 1{i:03d}") for i in range(6)]
    for s in subjects:
        app.vault.shred(s)
    app.clock.advance(10)
    other = app.open()
    other.attach(sa.create_engine(app.engine.url))
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run(vault: Vault) -> None:
        try:
            reports.append(vault.complete_erasures())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (app.vault, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert errors == []
    assert sum(r.completed for r in reports) == len(subjects)
    assert len(app.completions()) == len(subjects)
    assert len({c.receipt_id for c in app.completions()}) == len(subjects)
    assert app.queued() == []


# -- ccvault complete-erasures ---------------------------------------------------------------------


def test_cli_complete_erasures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import time

    from admin_cli import configure
    from ccvault.cli import main

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    kms, url = configure(tmp_path, monkeypatch, ledger_url=ledger, listen_url="off")
    app_url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(app_url)
    Base.metadata.create_all(engine)
    past = lambda: time.time() - 60  # noqa: E731 - shredded a minute ago: due now
    with Vault(kms, url, ledger=ledger, create=True, listen_url="off", clock=past) as vault:
        vault.attach(engine)
        with Session(engine) as s:
            c = Customer(name="C", phone="+44 20 7946 0013", email="c@example.com")
            s.add(c)
            s.commit()
            customer = c.id
        receipt = vault.shred(customer)
    engine.dispose()
    args = ["complete-erasures", "--models", "sqla_models", "--database-url", app_url]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["completed"], out["receipt_ids"], out["tables_swept"]) == (
        1,
        [receipt.receipt_id],
        list(SWEPT),
    )
    assert main(args) == 0  # idempotent: nothing left
    assert json.loads(capsys.readouterr().out)["completed"] == 0
    assert main(["erasure-status", receipt.receipt_id]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["phase"], status["in_ledger"]) == ("completed", True)
    assert status["completion_seq"] == status["ledger_seq"] + 1
    assert main(["erasure-status", "f" * 32]) == 1
    assert "no erasure with that receipt id" in capsys.readouterr().err
    assert (
        main(["complete-erasures", "--models", "no_such_module_x", "--database-url", app_url]) == 1
    )
    assert "cannot import the models" in capsys.readouterr().err
    monkeypatch.delenv("CCVAULT_LEDGER_URL")
    assert main(args) == 1  # no ledger configured: refused, named
    err = capsys.readouterr().err
    assert "ConfigurationError" in err
    assert "ledger" in err


# -- DEBUG logging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_erasure_lifecycle_logs_no_subject_nor_plaintext_at_debug(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    phones = [f"+44 20 7946 3{i:03d}" for i in range(4)]
    a, b, c, kept = (app.customer(p) for p in phones)
    monkeypatch.setattr(_complete, "_sleep", app.clock.advance)
    secrets = {str(s) for s in (a, b, c)} | {s.hex for s in (a, b, c)} | set(phones)
    with caplog.at_level(logging.DEBUG, logger="ccvault"):
        app.vault.shred(a, wait=True)
        app.vault.shred_many([b, "not a uuid"])
        app.vault.detach(app.engine)  # the completion of b is left incomplete, and says so
        app.clock.advance(10)
        incomplete = app.vault.complete_erasures()
        app.vault.attach(app.engine)
        hold = app.vault.hold(c, case="LIT-7", by="legal")
        with pytest.raises(SubjectHeldError):
            app.vault.shred(c)
        app.vault.release(hold, by="legal")
        app.vault.complete_erasures()
    assert incomplete.incomplete  # the warning path ran
    text = "\n".join(f"{r.getMessage()} {getattr(r, '__dict__', {})}" for r in caplog.records)
    assert "complete_erasures left 1 due erasures incomplete" in text  # what was logged
    leaked = sorted(s for s in secrets if s in text)
    assert leaked == []
    assert app.bidx(kept)[0] is not None
