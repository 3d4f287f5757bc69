"""Key-creation and shred races on every key-store backend, across threads and processes.

The database settles both races (see ``ccvault.keystore._sql``): however many threads and
processes create the first key of a subject at once, one key exists afterwards and every caller
uses it; a shred racing creations leaves no live key behind, and every creation either wins (its
ciphertext is then shredded with the rest) or fails with ``SubjectShreddedError``, never with
anything else.

Child processes use the ``spawn`` start method and receive plain data (paths, URLs, subject
strings): each builds its own vaults, as a real worker process would.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import SubjectShreddedError, Vault
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms

pytestmark = pytest.mark.slow

CTX = "customers.phone"
SPAWN = mp.get_context("spawn")
BARRIER_TIMEOUT = 45.0
RESULT_TIMEOUT = 90.0

# Key-creation race: 2 processes x 16 threads, over a few fresh subjects.
CREATE_PROCS = 2
CREATE_THREADS = 16
CREATE_SUBJECTS = 3

# Shred race: encrypting threads here and in a second process, one shredding thread here.
SHRED_SUBJECTS = 20
SHRED_LOCAL_THREADS = 6
SHRED_CHILD_THREADS = 6
CACHED_CALLS = 3  # calls per round of a thread whose vault caches keys
UNCACHED_TTL = 1e-6  # a vault that caches nothing: every call reads the key store
UNCACHED_SECONDS = 5.0  # an uncached thread calls until it sees the shred, for at most this long

Outcome = tuple[str, Any]  # ("ok", blob) | ("shredded", None) | ("error", traceback text)
Round = tuple[str, str, bool, list[Outcome]]  # subject, thread name, uncached, outcomes


def _vault(key_path: str, db_url: str, cache_ttl: float = 60.0) -> Vault:
    return Vault(LocalKms.from_file(key_path), db_url, cache_ttl=cache_ttl)


def _error(exc: BaseException) -> Outcome:
    return ("error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _wait(barrier: Any, record: Callable[[Outcome], None]) -> bool:
    """Wait at the start line; a broken barrier (another party failed) is recorded, not raised."""
    try:
        barrier.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError as exc:
        record(_error(exc))
        return False
    return True


def _run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RESULT_TIMEOUT)
        assert not t.is_alive(), "a racing thread hung"


def _close_all(vaults: list[Vault]) -> None:
    for v in {id(v): v for v in vaults}.values():
        v.close()


# -- child processes (module level, for spawn) ----------------------------------------------------


def creation_worker(
    key_path: str,
    db_url: str,
    subjects: list[str],
    n_threads: int,
    proc: int,
    barrier: Any,
    results: Any,
) -> None:
    """Encrypt for each subject from ``n_threads`` threads, all released by one barrier.

    Even threads share this process's vault (one cache, as in production); odd threads each
    build their own (as separate workers would). Reports ``(proc, [(subject, plaintext,
    outcome)])``.
    """
    out: list[tuple[str, bytes, Outcome]] = []
    lock = threading.Lock()
    vaults: list[Vault] = []
    try:
        shared = _vault(key_path, db_url)
        vaults = [shared if i % 2 == 0 else _vault(key_path, db_url) for i in range(n_threads)]
    except BaseException as exc:
        barrier.abort()
        results.put((proc, [("", b"", _error(exc))]))
        return

    def thread(i: int) -> None:
        for s in subjects:
            plaintext = f"{s}/p{proc}/t{i}".encode()
            if not _wait(barrier, lambda o, s=s: out.append((s, b"", o))):
                break
            try:
                outcome: Outcome = ("ok", vaults[i].encrypt(uuid.UUID(s), plaintext, context=CTX))
            except BaseException as exc:
                outcome = _error(exc)
            with lock:
                out.append((s, plaintext, outcome))

    try:
        _run_threads([lambda i=i: thread(i) for i in range(n_threads)])
    except BaseException as exc:
        out.append(("", b"", _error(exc)))
    _close_all(vaults)
    results.put((proc, out))


def _thread_vaults(
    n_threads: int, shared: Vault, key_path: str, db_url: str
) -> list[tuple[Vault, bool]]:
    """Per thread ``(vault, uncached)``, cycling through: the shared ``shared`` (one process
    cache), a vault that caches nothing, a caching vault of its own, another uncached one."""
    out = []
    for i in range(n_threads):
        role = i % 4
        if role == 0:
            out.append((shared, False))
        elif role == 2:
            out.append((_vault(key_path, db_url), False))
        else:
            out.append((_vault(key_path, db_url, cache_ttl=UNCACHED_TTL), True))
    return out


def _jitter(round_no: int, subject: str, who: str) -> float:
    """A per-round, per-participant delay: the rounds cycle through who starts first.

    Spreading the encrypters over a few milliseconds makes some vaults read the subject for the
    first time after its key was created, while the shred is running.
    """
    rng = random.Random(f"{subject}/{who}")
    shred = who == "shred"
    mode = round_no % 4
    if mode == 0:
        return 0.0  # everyone at once
    if mode == 1:
        return rng.uniform(0.001, 0.006) if shred else rng.uniform(0, 0.008)  # creations lead
    if mode == 2:
        return 0.0 if shred else rng.uniform(0, 0.004)  # the shred leads
    return rng.uniform(0, 0.008)  # everyone spread out


def _encrypt_round(vault: Vault, subject: str, delay: float, uncached: bool) -> list[Outcome]:
    """A caching vault makes ``CACHED_CALLS`` calls; an uncached one calls until it sees the
    shred (each of its calls reads the key store, so some land in the middle of the shred)."""
    if delay:
        time.sleep(delay)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + UNCACHED_SECONDS
    while True:
        try:
            outcomes.append(("ok", vault.encrypt(uuid.UUID(subject), b"x", context=CTX)))
        except SubjectShreddedError:
            outcomes.append(("shredded", None))
            if uncached:
                break
        except BaseException as exc:
            outcomes.append(_error(exc))
            break
        if not uncached and len(outcomes) >= CACHED_CALLS:
            break
        if uncached and time.monotonic() > deadline:
            break
    return outcomes


def _encrypt_rounds(
    name: str,
    vault: Vault,
    uncached: bool,
    subjects: list[str],
    barrier: Any,
    record: Callable[[Round], None],
) -> None:
    for n, s in enumerate(subjects):
        if not _wait(barrier, lambda o, s=s: record((s, name, uncached, [o]))):
            break
        got = _encrypt_round(vault, s, _jitter(n, s, name), uncached)
        record((s, name, uncached, got))


def shred_race_encrypter(
    key_path: str,
    db_url: str,
    subjects: list[str],
    n_threads: int,
    barrier: Any,
    results: Any,
) -> None:
    """The second process of the shred race: ``n_threads`` encrypting threads."""
    out: list[Round] = []
    lock = threading.Lock()
    vaults: list[tuple[Vault, bool]] = []
    try:
        shared = _vault(key_path, db_url)
        vaults = _thread_vaults(n_threads, shared, key_path, db_url)
    except BaseException as exc:
        barrier.abort()
        results.put([("", "child", False, [_error(exc)])])
        return

    def record(r: Round) -> None:
        with lock:
            out.append(r)

    try:
        _run_threads(
            [
                lambda i=i: _encrypt_rounds(f"child{i}", *vaults[i], subjects, barrier, record)
                for i in range(n_threads)
            ]
        )
    except BaseException as exc:
        record(("", "child", False, [_error(exc)]))
    _close_all([v for v, _ in vaults])
    results.put(out)


# -- helpers in the test process ----------------------------------------------------------------


def _collect(results: Any, n: int, procs: list[Any]) -> list[Any]:
    got = []
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(got) < n:
        try:
            got.append(results.get(timeout=0.5))
        except queue.Empty:
            if time.monotonic() > deadline:
                pytest.fail("child processes did not report in time")
            dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
            if dead and results.empty():
                pytest.fail(f"a child process died: exit codes {[p.exitcode for p in dead]}")
    return got


@pytest.fixture
def children() -> Iterator[list[Any]]:
    """Processes started by the test; joined (or, if hung, terminated) afterwards."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join(5)


def _store_rows(db_url: str, ref: bytes) -> tuple[list[Any], list[Any]]:
    """The subject-head rows and key rows of ``ref``, read by reflection (not via ccvault)."""
    engine = sa.create_engine(db_url)
    try:
        md = sa.MetaData()
        heads = sa.Table("ccvault_subject_heads", md, autoload_with=engine)
        keys = sa.Table("ccvault_keys", md, autoload_with=engine)
        with engine.connect() as c:
            h = c.execute(sa.select(heads).where(heads.c.ref == ref)).all()
            k = c.execute(sa.select(keys).where(keys.c.ref == ref)).all()
        return h, k
    finally:
        engine.dispose()


# -- tests --------------------------------------------------------------------------------------


def test_key_creation_race(kms: LocalKms, key_path: Path, db_url: str, children: list[Any]) -> None:
    """2 processes x 16 threads create the first key of the same subject at the same moment."""
    # ``kms`` only creates the master key file; each process opens it from ``key_path``. The
    # store is left empty, so the processes also race to create the tables and installation.
    subjects = [str(uuid.uuid4()) for _ in range(CREATE_SUBJECTS)]
    barrier = SPAWN.Barrier(CREATE_PROCS * CREATE_THREADS)
    results = SPAWN.Queue()
    for proc in range(CREATE_PROCS):
        p = SPAWN.Process(
            target=creation_worker,
            args=(str(key_path), db_url, subjects, CREATE_THREADS, proc, barrier, results),
        )
        p.start()
        children.append(p)
    reports = _collect(results, CREATE_PROCS, children)

    outcomes = [(s, pt, o) for _proc, out in reports for s, pt, o in out]
    errors = [f"{s}: {o[1]}" for s, _pt, o in outcomes if o[0] != "ok"]
    assert not errors, "\n".join(errors)
    assert len(outcomes) == CREATE_PROCS * CREATE_THREADS * CREATE_SUBJECTS

    with _vault(str(key_path), db_url) as fresh:
        for s in subjects:
            ref = fresh.subject_ref(uuid.UUID(s))
            heads, keys = _store_rows(db_url, ref)
            assert len(heads) == 1, f"{len(heads)} subject heads for one subject"
            assert len(keys) == 1, f"{len(keys)} keys for one subject"
            assert heads[0].state == "active"
            assert keys[0].state == "live"
            assert keys[0].wrapped is not None
            assert bytes(keys[0].key_id) == bytes(heads[0].key_id)
            assert keys[0].version == heads[0].current_version
        for s, plaintext, (_, blob) in outcomes:
            assert fresh.decrypt(blob, context=CTX, subject=uuid.UUID(s)) == plaintext


def test_shred_races_creation(
    kms: LocalKms, key_path: Path, db_url: str, children: list[Any]
) -> None:
    """Threads here and in a second process encrypt for fresh subjects while one shreds them."""
    # ``kms`` only creates the master key file; every vault opens it from ``key_path``.
    subjects = [str(uuid.uuid4()) for _ in range(SHRED_SUBJECTS)]
    parties = SHRED_LOCAL_THREADS + 1 + SHRED_CHILD_THREADS
    barrier = SPAWN.Barrier(parties)
    results = SPAWN.Queue()
    # The shredding thread shares its vault (and cache) with some local encrypters.
    shredder_vault = _vault(str(key_path), db_url)
    vaults = _thread_vaults(SHRED_LOCAL_THREADS, shredder_vault, str(key_path), db_url)
    p = SPAWN.Process(
        target=shred_race_encrypter,
        args=(str(key_path), db_url, subjects, SHRED_CHILD_THREADS, barrier, results),
    )
    p.start()
    children.append(p)

    local: list[Round] = []
    receipts: dict[str, Outcome] = {}
    lock = threading.Lock()

    def record(r: Round) -> None:
        with lock:
            local.append(r)

    def shredder() -> None:
        for n, s in enumerate(subjects):
            if not _wait(barrier, lambda o, s=s: receipts.__setitem__(s, o)):
                break
            delay = _jitter(n, s, "shred")
            if delay:
                time.sleep(delay)
            try:
                receipts[s] = ("ok", shredder_vault.shred(uuid.UUID(s)))
            except BaseException as exc:
                receipts[s] = _error(exc)

    try:
        _run_threads(
            [
                lambda i=i: _encrypt_rounds(f"local{i}", *vaults[i], subjects, barrier, record)
                for i in range(SHRED_LOCAL_THREADS)
            ]
            + [shredder]
        )
    except BaseException:
        barrier.abort()
        raise
    finally:
        _close_all([v for v, _ in vaults])
    rounds = local + _collect(results, 1, children)[0]

    shred_errors = [f"{s}: {r[1]}" for s, r in receipts.items() if r[0] != "ok"]
    assert not shred_errors, "\n".join(shred_errors)
    assert len(receipts) == SHRED_SUBJECTS
    outcomes = [(s, o) for s, _name, _u, got in rounds for o in got]
    errors = [f"{s}: {o[1]}" for s, o in outcomes if o[0] == "error"]
    assert not errors, "\n".join(errors)
    assert len(rounds) == SHRED_SUBJECTS * (parties - 1)
    # A vault that caches nothing sees the shred at once: its calls end with the fence.
    unfenced = [(s, name) for s, name, uncached, got in rounds if uncached and got[-1][0] == "ok"]
    assert not unfenced, f"uncached vaults still encrypting after the shred: {unfenced}"
    # Both outcomes occurred, so the rounds did interleave creations and shreds both ways.
    kinds = {o[0] for _s, o in outcomes}
    assert kinds == {"ok", "shredded"}, kinds

    with _vault(str(key_path), db_url) as fresh:
        for s in subjects:
            ref = fresh.subject_ref(uuid.UUID(s))
            heads, keys = _store_rows(db_url, ref)
            assert [h.state for h in heads] == ["shredded"]
            assert len(keys) <= 1, f"{len(keys)} keys for one subject"
            assert [k for k in keys if k.state == "live" or k.wrapped is not None] == []
            assert fresh.is_shredded(uuid.UUID(s))
            # A creation that won is in the receipt; one that lost to the shred left no key,
            # only the version-0 tombstone of a subject shredded before it had one.
            receipt = receipts[s][1]
            assert [(bytes.fromhex(d.key_id), d.version) for d in receipt.destroyed_keys] == [
                (bytes(k.key_id), k.version) for k in keys if k.version
            ]
            assert [k.key_id for k in keys if not k.version] in ([], [heads[0].key_id])
        for s, (kind, blob) in outcomes:
            if kind == "ok":
                with pytest.raises(SubjectShreddedError):
                    fresh.decrypt(blob, context=CTX)
                with pytest.raises(SubjectShreddedError):
                    fresh.decrypt(blob, context=CTX, subject=uuid.UUID(s))


class _ShredAfterCreation:
    """A vault's key store, except that right after a subject key is created another thread
    shreds the subject to completion: the interleaving where the creating thread caches the
    key only after the shred has evicted that subject from the same vault's caches."""

    def __init__(self, store: Any, shred: Callable[[], object]) -> None:
        self._store = store
        self._shred = shred

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not name.startswith("create_subject_key"):
            return attr

        def create(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            t = threading.Thread(target=self._shred)
            t.start()
            t.join()
            return out

        return create


def test_shred_is_immediate_in_its_own_process(kms: LocalKms, sqlite_url: str) -> None:
    s = uuid.uuid4()
    vaults: list[Vault] = []
    store = _ShredAfterCreation(SqlKeyStore(sqlite_url), lambda: vaults[0].shred(s))
    with Vault(kms, store) as v:  # type: ignore[arg-type]
        vaults.append(v)
        try:
            first: bytes | None = v.encrypt(s, b"x", context=CTX)  # the creation won the race
        except SubjectShreddedError:
            first = None
        assert v.is_shredded(s)
        if first is not None:
            with pytest.raises(SubjectShreddedError):
                v.decrypt(first, context=CTX)
        with pytest.raises(SubjectShreddedError):
            v.encrypt(s, b"y", context=CTX)
