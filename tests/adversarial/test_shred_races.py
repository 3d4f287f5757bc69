"""Operations racing shreds and rotations, on PostgreSQL and MariaDB.

Each round releases every participant at once on one subject: threads (and, in the long
version, other processes) encrypting for it and decrypting its values through vaults of three
kinds — the shredding vault itself, vaults that cache nothing, vaults with their own cache — a
thread that shreds it, and a thread that rotates the epoch. A control customer who is never
shredded is written and read throughout. Afterwards, and for every shred:

* 0 live keys for the subject (every key row destroyed, the head shredded with its receipt);
* no encryption for it that started after its shred returned succeeds in the shredding vault or
  in a vault that caches nothing (vaults with a cache of their own may serve the old key for
  their ``cache_ttl``: docs/security.md, "Shred propagation"), and no decryption either;
* every value an encryption produced for it, before or after, is unreadable in a fresh vault
  (SubjectShreddedError): no key was created for it after the shred;
* the racing rotations quarantined nothing, and the control customer's values all read;
* every failure was SubjectShreddedError: no other exception type.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import queue
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adversarial.harness import SCALES, Figures, Scale
from ccvault import SubjectShreddedError, Vault
from ccvault.keystore._schema import build_metadata
from ccvault.kms import LocalKms
from conftest import _server_db

CTX = "customers.phone"
ROUND_SECONDS = 0.25  # how long encrypters and decrypters keep going in one round
# ... and at most this much longer, until their vault refuses the round's subject (more than the
# cached vaults' propagation bound of 1 s)
SHRED_WAIT = 2.0
BARRIER_TIMEOUT = 60.0
UNCACHED = 1e-6  # a vault whose caches expire at once: every call reads the key store
SPAWN = mp.get_context("spawn")
TABLES = build_metadata().tables


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _server_db(request.param)


@dataclass(frozen=True)
class Op:
    who: str  # participant
    vault: str  # "shredder", "uncached" or "cached"
    kind: str  # "encrypt", "decrypt", "shred", "rotate"
    subject: str
    start: float  # time.time(): comparable across processes of this machine
    end: float
    outcome: str  # "ok", "shredded" or "error: <traceback>"
    blob: bytes = b""


def _vault(key_path: str, url: str, kind: str) -> Vault:
    return Vault(
        LocalKms.from_file(key_path), url, cache_ttl=UNCACHED if kind == "uncached" else 60.0
    )


def _call(who: str, vkind: str, kind: str, subject: str, fn: Callable[[], Any]) -> Op:
    start = time.time()
    try:
        got = fn()
        outcome, blob = "ok", got if isinstance(got, bytes) else b""
    except SubjectShreddedError:
        outcome, blob = "shredded", b""
    except Exception:
        outcome, blob = "error: " + traceback.format_exc(), b""
    return Op(who, vkind, kind, subject, start, time.time(), outcome, blob)


def _started(
    barrier: Any, record: Callable[[Op], None], who: str, vkind: str, subject: str
) -> bool:
    """Wait for the round to start; a broken barrier (another party failed) is recorded."""
    try:
        barrier.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        record(Op(who, vkind, "barrier", subject, 0, 0, "error: broken barrier"))
        return False
    return True


def _worker_rounds(
    who: str,
    vkind: str,
    vault: Vault,
    rounds: list[tuple[str, bytes]],
    control: str,
    barrier: Any,
    record: Callable[[Op], None],
    seed: int,
) -> None:
    """Encrypt for and decrypt the round's subject (and the control customer) until the round
    ends — and on, up to ``SHRED_WAIT`` more, until this vault has refused the subject once, so
    that every round exercises operations after its shred however slow the shred was (on a
    busy machine a shred can outlast the round); the round's value is ``blob``."""
    rng = random.Random(seed)
    for subject, blob in rounds:
        if not _started(barrier, record, who, vkind, subject):
            return
        deadline = time.time() + ROUND_SECONDS
        hard_stop = deadline + SHRED_WAIT
        u = uuid.UUID(subject)
        refused = False
        while time.time() < deadline or (not refused and time.time() < hard_stop):
            if rng.random() < 0.5:
                op = functools.partial(vault.encrypt, u, b"x", context=CTX)
                done = _call(who, vkind, "encrypt", subject, op)
            else:
                op = functools.partial(vault.decrypt, blob, context=CTX, subject=u)
                done = _call(who, vkind, "decrypt", subject, op)
            record(done)
            refused = refused or done.outcome == "shredded"
            if rng.random() < 0.1:
                op = functools.partial(vault.encrypt, uuid.UUID(control), b"c", context=CTX)
                record(_call(who, vkind, "encrypt", control, op))


def child_process(
    key_path: str,
    url: str,
    rounds: list[tuple[str, bytes]],
    control: str,
    n_threads: int,
    proc: int,
    barrier: Any,
    results: Any,
) -> None:
    """Another process of the long version: threads with uncached and cached vaults."""
    out: list[Op] = []
    lock = threading.Lock()

    def record(op: Op) -> None:
        with lock:
            out.append(op)

    vaults = []
    try:
        for i in range(n_threads):
            kind = "uncached" if i % 2 == 0 else "cached"
            vaults.append((kind, _vault(key_path, url, kind)))
        threads = [
            threading.Thread(
                target=_worker_rounds,
                args=(f"p{proc}t{i}", kind, v, rounds, control, barrier, record, 100 * proc + i),
                daemon=True,
            )
            for i, (kind, v) in enumerate(vaults)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BARRIER_TIMEOUT * (len(rounds) + 1))
    except BaseException:
        barrier.abort()
        out.append(Op(f"p{proc}", "", "setup", "", 0, 0, "error: " + traceback.format_exc()))
    for _kind, v in vaults:
        v.close()
    results.put(out)


def _store_rows(url: str, ref: bytes) -> tuple[list[Any], list[Any]]:
    engine = sa.create_engine(url)
    heads, keys = TABLES["ccvault_subject_heads"], TABLES["ccvault_keys"]
    try:
        with engine.connect() as c:
            return (
                c.execute(sa.select(heads).where(heads.c.ref == ref)).all(),
                c.execute(sa.select(keys).where(keys.c.ref == ref)).all(),
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("scale", SCALES)
def test_shreds_racing_operations_and_rotations_leave_nothing_live(
    server_url: str, tmp_path: Path, scale: Scale, figures: Figures
) -> None:
    key_path = str(tmp_path / "master.key")
    LocalKms.from_file(key_path, create=True)
    url = server_url
    admin = _vault(key_path, url, "cached")
    subjects = [uuid.uuid4() for _ in range(scale.race_subjects)]
    control = uuid.uuid4()
    rounds = [(str(s), admin.encrypt(s, b"before", context=CTX)) for s in subjects]
    control_blob = admin.encrypt(control, b"c", context=CTX)
    admin.close()

    shredder = _vault(key_path, url, "cached")
    rotator = _vault(key_path, url, "cached")
    local = []
    for i in range(scale.race_threads):
        kind = ("shredder", "uncached", "cached")[i % 3]
        local.append((kind, shredder if kind == "shredder" else _vault(key_path, url, kind)))
    n_procs = scale.race_processes
    parties = len(local) + 2 + n_procs * scale.race_threads
    barrier = SPAWN.Barrier(parties) if n_procs else threading.Barrier(parties)
    results = SPAWN.Queue() if n_procs else None
    procs = [
        SPAWN.Process(
            target=child_process,
            args=(key_path, url, rounds, str(control), scale.race_threads, p, barrier, results),
        )
        for p in range(n_procs)
    ]
    for p in procs:
        p.start()
    ops: list[Op] = []
    lock = threading.Lock()

    def record(op: Op) -> None:
        with lock:
            ops.append(op)

    def lead(kind: str, vault: Vault, act: Callable[[uuid.UUID], Any]) -> None:
        rng = random.Random(kind)
        for subject, _blob in rounds:
            if not _started(barrier, record, kind, kind, subject):
                return
            time.sleep(rng.uniform(0, ROUND_SECONDS / 2))
            record(_call(kind, kind, kind, subject, functools.partial(act, uuid.UUID(subject))))

    threads = [
        threading.Thread(target=lead, args=("shred", shredder, shredder.shred)),
        threading.Thread(target=lead, args=("rotate", rotator, lambda _u: rotator.rotate_epoch())),
    ] + [
        threading.Thread(
            target=_worker_rounds,
            args=(f"t{i}", kind, v, rounds, str(control), barrier, record, i),
        )
        for i, (kind, v) in enumerate(local)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BARRIER_TIMEOUT * (len(rounds) + 1))
        assert not t.is_alive(), "a racing thread hung"
    for _ in procs:
        try:
            ops.extend(results.get(timeout=BARRIER_TIMEOUT))  # type: ignore[union-attr]
        except queue.Empty:
            pytest.fail("a racing process did not report")
    for p in procs:
        p.join(30)
    for _kind, v in {id(v): (k, v) for k, v in local}.values():
        v.close()
    rotator.close()

    errors = [f"{o.who} {o.kind}: {o.outcome}" for o in ops if o.outcome.startswith("error")]
    assert not errors, "\n".join(errors[:5])
    shreds = {o.subject: o for o in ops if o.kind == "shred"}
    assert len(shreds) == len(subjects)
    late: list[str] = []
    for o in ops:
        shred = shreds.get(o.subject)
        if o.kind in ("encrypt", "decrypt") and shred is not None and o.start > shred.end:
            figures.add(f"{o.kind}s after the shred returned ({o.vault} vault)")
            if o.outcome == "ok" and o.vault in ("shredder", "uncached"):
                late.append(f"{o.who} ({o.vault}) {o.kind} succeeded after the shred")
    with _vault(key_path, url, "cached") as fresh:
        for subject in subjects:
            heads, keys = _store_rows(url, fresh.subject_ref(subject))
            assert [(h.state, h.receipt is not None) for h in heads] == [("shredded", True)]
            live = [k for k in keys if k.state != "destroyed" or k.wrapped is not None]
            figures.add("live keys after a shred", len(live))
            assert not live
        for o in ops:
            if o.kind == "encrypt" and o.outcome == "ok":
                u = uuid.UUID(o.subject)
                if u == control:
                    assert fresh.decrypt(o.blob, context=CTX, subject=u) == b"c"
                    continue
                figures.add("values written for a shredded customer, unreadable afterwards")
                with pytest.raises(SubjectShreddedError):
                    fresh.decrypt(o.blob, context=CTX, subject=u)
        assert fresh.decrypt(control_blob, context=CTX, subject=control) == b"c"
        assert fresh.quarantined_keys() == 0
        assert fresh.rotate_epoch().quarantined == ()
    kinds = {(o.kind, o.outcome) for o in ops}
    assert {("encrypt", "ok"), ("encrypt", "shredded")} <= kinds, kinds
    figures.add("race rounds (one subject shredded each)", len(rounds))
    figures.add("rotations", sum(o.kind == "rotate" for o in ops))
    figures.add("operations", sum(o.kind in ("encrypt", "decrypt") for o in ops))
    figures.add("racing processes", n_procs + 1)
    figures.add("successful encryptions or decryptions after a shred (must see it)", len(late))
    assert not late, "\n".join(late[:10])
