"""Crash safety with named failpoints (issue 13, item 5; docs/erasure.md, 'Crash safety').

A child process (tests/failpoint_worker.py) opens a vault on an existing installation, writes
customers through an attached engine (``Customer``: ``phone`` and ``email`` have blind indexes)
and shreds one with ``CCVAULT_FAILPOINT`` set; it must end with status 137 at that point. Then:

* **right after the crash**, reading the key store, the ledger and the application tables behind
  ccvault's back: every head holding a receipt is shredded with every key destroyed; every
  receipt in the key store is in the ledger (ledger first); no completion record while its
  subject has key material or a blind index; and what each point must leave (the target's
  receipt in the ledger, in the key store, its blind indexes swept, a torn JSONL tail) is exactly
  what it left;
* **a fresh vault** (its open replays the ledger): a subject whose receipt is in the ledger reads
  SHREDDED and the store holds the ledger's own receipt; a subject that still reads has no
  receipt in the ledger nor in the key store; everyone else reads as written;
  ``verify_erasures()`` is ok, except after a crash mid-JSONL-line, where it reports the torn
  last line — kind ``torn``, never tampering — which ``reconcile_erasures()`` repairs (its check
  says ``repaired``, and is ok);
* **the retried shred** succeeds, returns the ledger's receipt where there was one, leaves the
  subject unreadable with its blind indexes swept, one receipt for it in the ledger, and
  ``verify_erasures()`` ok.

Each named point runs once on SQLite, PostgreSQL and MariaDB (key store, application tables and a
SQL ledger on the same server; a JSONL ledger for mid-JSONL-line), plus 50 seeded random runs on
SQLite (the seed picks the points, one or two crashes in a row, the customers, a target never
seen, prior shreds, a SQLite or JSONL ledger). At the completion phase's points
(after-ledger-append, after-completion) the child shreds with ``wait=True``: the completion
record is in the ledger, and the key store has (after-completion) or has not yet
(after-ledger-append: the open's replay does it) marked it completed and deleted the queued,
sealed subject.

The children are forked from a server that imported ccvault first (a run costs milliseconds, not
a second of imports); one test runs the worker as a plain ``python`` process with the variable in
its environment, and one shows a misspelt point is refused.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import failpoint_worker
from ccvault import SHREDDED, ConfigurationError
from ccvault import _failpoints as fp
from ccvault.audit._receipt import RECEIPT_FORMAT
from ccvault.erasure._records import COMPLETION_FORMAT
from ccvault.keystore._schema import build_metadata
from ccvault.kms import LocalKms
from conftest import _server_db
from failpoint_worker import COMPLETION_POINTS, open_vault
from sqla_models import Customer
from vault_ledgers import entries

SHRED_POINTS = (
    "before-intent",
    "after-intent",
    "after-keystore-commit",
    "after-sweep-1",
    "mid-JSONL-line",
)
TABLES = build_metadata().tables
CUSTOMERS = Customer.__table__
TIMEOUT = 60  # seconds a child may take before the test calls it hung


@dataclass(frozen=True)
class Leaves:
    """What a crash at a point leaves for its target, read behind ccvault's back."""

    in_ledger: bool  # its receipt is a complete ledger entry
    in_store: bool  # the key store holds its receipt (keys destroyed, committed)
    swept: bool  # its blind indexes are gone
    completed: bool = False  # a completion record of its erasure is in the ledger
    completion_in_store: bool = False  # the key store committed it (queue row gone)


LEAVES = {
    "before-intent": Leaves(in_ledger=False, in_store=False, swept=False),
    "after-intent": Leaves(in_ledger=True, in_store=False, swept=False),
    "after-keystore-commit": Leaves(in_ledger=True, in_store=True, swept=False),
    "after-sweep-1": Leaves(in_ledger=True, in_store=True, swept=True),
    "mid-JSONL-line": Leaves(in_ledger=False, in_store=False, swept=False),
    # the completion (shred(wait=True)): the second sweep ran before its record was appended
    "after-ledger-append": Leaves(
        in_ledger=True, in_store=True, swept=True, completed=True, completion_in_store=False
    ),
    "after-completion": Leaves(
        in_ledger=True, in_store=True, swept=True, completed=True, completion_in_store=True
    ),
}


def test_the_points_are_the_issues_and_each_shred_point_is_placed() -> None:
    assert set(LEAVES) == set(fp.FAILPOINTS) == {*SHRED_POINTS, *COMPLETION_POINTS}
    src = Path(fp.__file__).parent
    placed = {
        name
        for path in src.rglob("*.py")
        if path.name != "_failpoints.py"
        for name in fp.FAILPOINTS
        if f'failpoint("{name}")' in path.read_text()
    }
    assert placed == set(fp.FAILPOINTS)


# -- the module itself ----------------------------------------------------------------------------


@pytest.fixture
def reread() -> Iterator[None]:
    fp.reread()
    yield
    fp.reread()


def test_unset_or_another_point_does_nothing(reread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fp.VARIABLE, raising=False)
    for name in fp.FAILPOINTS:
        fp.failpoint(name)  # returns: this process is still here
        assert not fp.armed(name)
    monkeypatch.setenv(fp.VARIABLE, "after-intent")
    fp.reread()
    fp.failpoint("before-intent")
    assert fp.armed("after-intent")
    assert not fp.armed("before-intent")


def test_a_misspelt_point_is_refused_naming_the_known_ones(
    reread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fp.VARIABLE, "after_intent")
    with pytest.raises(ConfigurationError) as caught:
        fp.failpoint("after-intent")
    assert "never set it in production" in str(caught.value)
    assert all(name in str(caught.value) for name in fp.FAILPOINTS)


# -- the runs -------------------------------------------------------------------------------------


@dataclass
class Crash:
    """One child: it writes ``customers`` and shreds ``target`` until ``point`` ends it."""

    point: str
    customers: list[list[Any]]  # [id, name, phone, email or None]
    target: str


@dataclass
class Run:
    key_path: str
    store: str
    app: str
    ledger: str
    kept: list[list[Any]] = field(default_factory=list)  # written before, never shredded
    prior: list[list[Any]] = field(default_factory=list)  # written and shredded before
    crashes: list[Crash] = field(default_factory=list)

    def job(self, crash: Crash) -> dict[str, Any]:
        return {
            "key_path": self.key_path,
            "store": self.store,
            "app": self.app,
            "ledger": self.ledger,
            "customers": crash.customers,
            "target": crash.target,
        }


def _customer(rng: random.Random, n: int) -> list[Any]:
    email = f"c{n}@example.com" if rng.random() < 0.7 else None
    return [str(_uuid(rng)), f"Customer {n}", f"+44 20 7946 {rng.randrange(10_000):04d}", email]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


@pytest.fixture(scope="module")
def forkserver() -> Any:
    """Children forked from a server that already imported ccvault and the worker."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ccvault", "ccvault.vault", "sqlalchemy", "failpoint_worker"])
    return ctx


def _setup(run: Run) -> tuple[str, dict[str, bytes]]:
    """Create the installation beside its ledger, write the kept and prior customers and shred
    the prior ones (no failpoint: this process never sets one). Returns the installation id and
    the subject ref of every customer and target of the run."""
    LocalKms.from_file(run.key_path, create=True)
    engine = sa.create_engine(run.app)
    CUSTOMERS.create(engine, checkfirst=True)
    try:
        with open_vault(run.job(Crash("", [], "")), create=True) as vault:
            vault.attach(engine)
            _write(engine, run.kept + run.prior)
            for c in run.prior:
                vault.shred(uuid.UUID(c[0]))
            ids = [c[0] for c in run.kept + run.prior]
            ids += [c[0] for crash in run.crashes for c in crash.customers]
            ids += [crash.target for crash in run.crashes]
            refs = vault.subject_refs(uuid.UUID(i) for i in ids)
            return vault.installation_id, dict(zip(ids, refs, strict=True))
    finally:
        engine.dispose()


def _write(engine: sa.Engine, customers: list[list[Any]]) -> None:
    with Session(engine) as s:
        s.add_all(
            Customer(id=uuid.UUID(c), name=name, phone=phone, email=email)
            for c, name, phone, email in customers
        )
        s.commit()


def _crash(forkserver: Any, run: Run, crash: Crash) -> None:
    child = forkserver.Process(
        target=failpoint_worker.run, args=({**run.job(crash), "point": crash.point},)
    )
    child.start()
    child.join(TIMEOUT)
    if child.exitcode is None:
        child.kill()
        child.join()
        pytest.fail(f"the child shredding up to {crash.point} hung")
    assert child.exitcode == fp.EXIT_STATUS, (
        f"{crash.point}: the child exited with {child.exitcode}, not at the failpoint "
        f"({fp.EXIT_STATUS})"
    )


@dataclass
class Raw:
    """The key store, the ledger and the application tables as they are, read without ccvault."""

    heads: dict[bytes, Any]
    keys: dict[bytes, list[Any]]
    ledger_receipts: dict[str, list[str]]  # ref hex -> receipt ids, in ledger order
    completions: list[str]  # receipt ids of completion records
    receipt_refs: dict[str, str]  # receipt id -> ref hex (ledger)
    indexes: dict[str, tuple[Any, Any]]  # customer id -> (phone_bidx, email_bidx)
    torn: bool
    queued: set[bytes]  # refs of erasures queued for completion


def _raw(run: Run, installation: str) -> Raw:
    heads_t, keys_t = TABLES["ccvault_subject_heads"], TABLES["ccvault_keys"]
    store = sa.create_engine(run.store)
    try:
        with store.connect() as c:
            keys: dict[bytes, list[Any]] = {}
            for k in c.execute(sa.select(keys_t).where(keys_t.c.kind == "subject")):
                keys.setdefault(bytes(k.ref), []).append(k)
            heads = {bytes(h.ref): h for h in c.execute(sa.select(heads_t))}
            queue_t = TABLES["ccvault_erasure_queue"]
            queued = {bytes(r) for r in c.execute(sa.select(queue_t.c.ref)).scalars()}
    finally:
        store.dispose()
    app = sa.create_engine(run.app)
    try:
        with app.connect() as c:
            rows = c.execute(
                sa.select(CUSTOMERS.c.id, CUSTOMERS.c.phone_bidx, CUSTOMERS.c.email_bidx)
            )
            indexes = {str(r.id): (r.phone_bidx, r.email_bidx) for r in rows}
    finally:
        app.dispose()
    receipts: dict[str, list[str]] = {}
    receipt_refs: dict[str, str] = {}
    completions: list[str] = []
    for e in entries(run.ledger, installation):
        if e.kind == RECEIPT_FORMAT:
            receipts.setdefault(e.record["subject_ref"], []).append(e.record["receipt_id"])
            receipt_refs[e.record["receipt_id"]] = e.record["subject_ref"]
        elif e.kind == COMPLETION_FORMAT:
            completions.append(e.record["receipt_id"])
    torn = False
    if run.ledger.startswith("file://"):
        data = Path(run.ledger.removeprefix("file://")).read_bytes()
        torn = bool(data) and not data.endswith(b"\n")
    return Raw(heads, keys, receipts, completions, receipt_refs, indexes, torn, queued)


def _live_keys(raw: Raw, ref: bytes) -> list[Any]:
    return [
        k
        for k in raw.keys.get(ref, [])
        if k.state != "destroyed" or k.wrapped is not None or k.commitment is not None
    ]


def _check_crash(run: Run, crash: Crash, raw: Raw, refs: dict[str, bytes], torn: bool) -> None:
    """What the crash left, behind ccvault's back (see the module docstring)."""
    where = crash.point
    ledger_ids = {rid for ids in raw.ledger_receipts.values() for rid in ids}
    for ref, head in raw.heads.items():
        if head.receipt is not None:
            assert head.state == "shredded", f"{where}: a receipt on a {head.state} head"
            assert _live_keys(raw, ref) == [], f"{where}: a receipt while keys remain"
            stored = json.loads(head.receipt)["receipt_id"]
            assert stored in ledger_ids, f"{where}: a receipt in the key store, not the ledger"
        else:
            assert head.state != "shredded", f"{where}: a shredded head without a receipt"
    by_ref = {ref.hex(): cid for cid, ref in refs.items()}
    for rid in raw.completions:  # never a completion while key material or an index remains
        ref_hex = raw.receipt_refs[rid]
        assert _live_keys(raw, bytes.fromhex(ref_hex)) == [], f"{where}: completed, keys remain"
        cid = by_ref.get(ref_hex)
        if cid in raw.indexes:
            assert raw.indexes[cid] == (None, None), f"{where}: completed, an index remains"

    ref = refs[crash.target]
    leaves = LEAVES[crash.point]
    assert (ref.hex() in raw.ledger_receipts) == leaves.in_ledger, where
    head = raw.heads.get(ref)
    assert (head is not None and head.receipt is not None) == leaves.in_store, where
    if crash.target in raw.indexes:
        phone, email = raw.indexes[crash.target]
        swept = phone is None and email is None
        assert swept == leaves.swept, f"{where}: blind indexes swept: {swept}"
    assert raw.torn == torn, f"{where}: a torn JSONL tail: {raw.torn}"
    completed = {raw.receipt_refs[rid] for rid in raw.completions}
    assert (ref.hex() in completed) == leaves.completed, f"{where}: completed"
    queued = ref in raw.queued
    if leaves.in_store and crash.point not in ("after-intent",):
        assert queued == (not leaves.completion_in_store), f"{where}: queued: {queued}"


def _values(engine: sa.Engine, ids: list[str]) -> dict[str, list[Any]]:
    with Session(engine) as s:
        rows = s.scalars(sa.select(Customer).where(Customer.id.in_([uuid.UUID(i) for i in ids])))
        return {str(c.id): [str(c.id), c.name, c.phone, c.email] for c in rows}


def _readable(value: list[Any], written: list[Any]) -> bool:
    if value == written:
        return True
    assert value[1] is SHREDDED, f"neither as written nor shredded: {value}"
    assert value[2] is SHREDDED, f"neither as written nor shredded: {value}"
    return False


def _problems(check: Any) -> list[tuple[str, bool]]:
    return [(p.kind, p.repaired) for p in check.ledger.problems]


def _recover(run: Run, installation: str, refs: dict[str, bytes], torn: bool) -> None:
    """A fresh vault after the crashes: reads, verify, reconcile, the retried shreds."""
    raw = _raw(run, installation)
    written = {c[0]: c for c in run.kept + run.prior}
    written |= {c[0]: c for crash in run.crashes for c in crash.customers}
    targets = {crash.target: LEAVES[crash.point] for crash in run.crashes}
    ledger_receipt = {
        t: raw.ledger_receipts[refs[t].hex()][0]
        for t in targets
        if refs[t].hex() in raw.ledger_receipts
    }
    engine = sa.create_engine(run.app)
    try:
        with open_vault(run.job(Crash("", [], ""))) as vault:  # its open replays the ledger
            vault.attach(engine)
            assert not vault.ledger_unverified
            values = _values(engine, list(written))
            assert sorted(values) == sorted(written)
            for cid, leaves in targets.items():
                stored = vault.erasure_receipt(uuid.UUID(cid))
                if leaves.in_ledger:  # (a) in the ledger: unreadable after the open
                    assert stored is not None
                    assert stored.receipt_id == ledger_receipt[cid]
                    if cid in values:
                        assert not _readable(values[cid], written[cid])
                else:
                    assert stored is None
                    assert cid not in ledger_receipt
                    if cid in values:
                        assert _readable(values[cid], written[cid])
            for cid, value in values.items():
                readable = _readable(value, written[cid])
                if readable:  # (b) still readable: no receipt in the ledger nor the store
                    assert refs[cid].hex() not in raw.ledger_receipts
                    assert vault.erasure_receipt(uuid.UUID(cid)) is None
                elif cid not in targets:
                    assert cid in {c[0] for c in run.prior}

            check = vault.verify_erasures()  # (d) a torn line is a torn write, not tampering
            assert not any(check.counts.values()), check.lines()
            if torn:
                assert _problems(check) == [("torn", False)], _problems(check)
            else:
                assert check.ok, check.lines()
                assert _problems(check) == []
            reconciled = vault.reconcile_erasures()
            assert reconciled.check is not None
            assert reconciled.check.ok, reconciled.check.lines()
            assert _problems(reconciled.check) == ([("torn", True)] if torn else [])
            again = vault.verify_erasures()
            assert again.ok, again.lines()
            assert _problems(again) == []

            for cid in targets:  # (c) the retried shred finishes the job
                receipt = vault.shred(uuid.UUID(cid))
                if cid in ledger_receipt:
                    assert receipt.receipt_id == ledger_receipt[cid]
                status = vault.erasure_status(receipt.receipt_id)
                assert status is not None
                phase = "completed" if targets[cid].completed else "destroyed"
                assert (status.in_ledger, status.phase) == (True, phase)
            after = _raw(run, installation)
            values = _values(engine, list(written))
            for cid in targets:
                assert len(after.ledger_receipts[refs[cid].hex()]) == 1
                assert _live_keys(after, refs[cid]) == []
                # the open replayed a completion the key store lacked: its queue row went
                assert (refs[cid] in after.queued) == (not targets[cid].completed)
                if cid in values:
                    assert not _readable(values[cid], written[cid])
                    assert after.indexes[cid] == (None, None)
            for cid, value in values.items():
                if cid not in targets and cid not in {c[0] for c in run.prior}:
                    assert _readable(value, written[cid])  # nobody else was touched
                    assert after.indexes[cid][0] is not None
            final = vault.verify_erasures()
            assert final.ok, final.lines()
            assert _problems(final) == []
            assert not after.torn
    finally:
        engine.dispose()


def _play(forkserver: Any, run: Run) -> None:
    installation, refs = _setup(run)
    torn = False
    for crash in run.crashes:
        _crash(forkserver, run, crash)
        # the append cuts a torn tail first; a crash before the append leaves it
        if crash.point == "mid-JSONL-line":
            torn = True
        elif crash.point != "before-intent":
            torn = False
        _check_crash(run, crash, _raw(run, installation), refs, torn)
    _recover(run, installation, refs, torn)


# -- each named point on each database ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(key store and application database, SQL ledger, JSONL ledger): on a server, the store,
    the application tables and the ledger are on the same server, the ledger apart."""
    jsonl = f"file://{tmp_path / 'ledger.jsonl'}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}", f"sqlite:///{tmp_path / 'ledger.db'}", jsonl
        return
    with contextlib.ExitStack() as stack:
        server = contextlib.contextmanager(_server_db)
        store = stack.enter_context(server(request.param))
        ledger = stack.enter_context(server(request.param))
        yield store, ledger, jsonl


@pytest.mark.parametrize("point", [*SHRED_POINTS, *COMPLETION_POINTS])
def test_each_point_leaves_nothing_readable_with_a_receipt(
    point: str, databases: tuple[str, str, str], forkserver: Any, tmp_path: Path
) -> None:
    store, sql_ledger, jsonl = databases
    rng = random.Random(point)
    app = f"sqlite:///{tmp_path / 'app.db'}" if store.startswith("sqlite") else store
    customers = [_customer(rng, n) for n in range(3)]
    customers[1][3] = "b@example.com"  # the target has both blind indexes
    run = Run(
        key_path=str(tmp_path / "master.key"),
        store=store,
        app=app,
        ledger=jsonl if point == "mid-JSONL-line" else sql_ledger,
        kept=[_customer(rng, 10)],
        prior=[_customer(rng, 11)],
        crashes=[Crash(point, customers, customers[1][0])],
    )
    _play(forkserver, run)


# -- 50 seeded random runs on SQLite --------------------------------------------------------------


def _random_run(seed: int, tmp_path: Path) -> Run:
    """The seed picks: one crash or two in a row (each a point, 1-3 customers written by the
    child, a target among them, among the customers written before, or never seen), 0-2
    customers shredded before, a SQLite or JSONL ledger (JSONL when a point needs it)."""
    rng = random.Random(seed)
    points = list(fp.FAILPOINTS)
    n = 0
    kept = []
    for _ in range(rng.randint(0, 2)):
        kept.append(_customer(rng, n))
        n += 1
    prior = []
    for _ in range(rng.randint(0, 2)):
        prior.append(_customer(rng, n))
        n += 1
    untouched = [c[0] for c in kept]
    crashes = []
    for _ in range(1 + (rng.random() < 0.3)):
        customers = []
        for _ in range(rng.randint(1, 3)):
            customers.append(_customer(rng, n))
            n += 1
        untouched += [c[0] for c in customers]
        if rng.random() < 0.2:
            target = str(_uuid(rng))  # never seen: the shred fences it
        else:
            target = rng.choice(untouched)
            untouched.remove(target)
        crashes.append(Crash(rng.choice(points), customers, target))
    jsonl = any(c.point == "mid-JSONL-line" for c in crashes) or rng.random() < 0.5
    return Run(
        key_path=str(tmp_path / "master.key"),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        app=f"sqlite:///{tmp_path / 'app.db'}",
        ledger=f"file://{tmp_path / 'ledger.jsonl'}" if jsonl else f"sqlite:///{tmp_path / 'l.db'}",
        kept=kept,
        prior=prior,
        crashes=crashes,
    )


@pytest.mark.parametrize("seed", range(50))
def test_random_failpoints_on_sqlite(seed: int, forkserver: Any, tmp_path: Path) -> None:
    _play(forkserver, _random_run(seed, tmp_path))


# -- the variable in a plain child's environment ---------------------------------------------------


def _script(job: dict[str, Any], point: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, fp.VARIABLE: point}
    worker = Path(failpoint_worker.__file__)
    return subprocess.run(
        [sys.executable, str(worker), json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_a_python_process_with_the_variable_set_ends_at_the_point(tmp_path: Path) -> None:
    rng = random.Random(1)
    customers = [_customer(rng, n) for n in range(2)]
    run = Run(
        key_path=str(tmp_path / "master.key"),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        app=f"sqlite:///{tmp_path / 'app.db'}",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        crashes=[Crash("after-intent", customers, customers[0][0])],
    )
    installation, refs = _setup(run)
    done = _script(run.job(run.crashes[0]), "after-intent")
    assert done.returncode == fp.EXIT_STATUS, done.stderr
    _check_crash(run, run.crashes[0], _raw(run, installation), refs, torn=False)
    _recover(run, installation, refs, torn=False)


def test_a_misspelt_point_in_a_child_fails_loudly_and_destroys_nothing(tmp_path: Path) -> None:
    rng = random.Random(2)
    customers = [_customer(rng, 0)]
    run = Run(
        key_path=str(tmp_path / "master.key"),
        store=f"sqlite:///{tmp_path / 'keys.db'}",
        app=f"sqlite:///{tmp_path / 'app.db'}",
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        crashes=[Crash("before_intent", customers, customers[0][0])],
    )
    installation, refs = _setup(run)
    done = _script(run.job(run.crashes[0]), "before_intent")
    assert done.returncode == 1
    assert "ConfigurationError" in done.stderr
    assert "before-intent" in done.stderr  # the known names
    raw = _raw(run, installation)
    assert raw.ledger_receipts == {}
    assert refs[customers[0][0]] not in {r for r, h in raw.heads.items() if h.receipt}
