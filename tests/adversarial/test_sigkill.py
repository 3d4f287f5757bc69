"""Shreds SIGKILLed at random points: a receipt in the key store always means the keys are
destroyed, and a repeated shred finishes the job or returns the same receipt.

A child process (tests/adversarial/sigkill_child.py) shreds a few customers — some with keys,
one never seen — and kills itself with SIGKILL at the N-th SQL statement, at the N-th COMMIT
(before the database has it), right after the N-th shred committed (before the vault evicted
and returned), or is killed from outside after a random delay. Then, reading the key store
behind ccvault's back:

* every subject head that holds a receipt is shredded and every key row of its ref is
  destroyed (no wrapped bytes, no commitment) — 0 receipts without destruction;
* a head that is shredded holds a receipt.

Then a fresh vault shreds every customer of the run again: it succeeds, returns the very receipt
already stored where there was one (idempotent), leaves no live key, and the customers' values
no longer decrypt.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adversarial import sigkill_child
from adversarial.harness import SCALES, Figures, Scale
from ccvault import SubjectShreddedError, Vault
from ccvault.keystore._schema import build_metadata
from ccvault.kms import LocalKms
from conftest import _server_db

CTX = "customers.phone"
SUBJECTS = 3  # with keys; one more never seen, per run
TABLES = build_metadata().tables
KILL_POINTS = ("execute", "commit", "stored", "outside")


@pytest.fixture(scope="module")
def forkserver() -> Any:
    """Children forked from a server that already imported ccvault (a run costs milliseconds)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["ccvault", "ccvault.vault", "sqlalchemy", "adversarial.sigkill_child"]
    )
    return ctx


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        yield from _server_db(request.param)


def _state(url: str) -> tuple[dict[bytes, Any], dict[bytes, list[Any]]]:
    """Heads by ref and key rows by ref, read without ccvault."""
    heads, keys = TABLES["ccvault_subject_heads"], TABLES["ccvault_keys"]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            by_ref: dict[bytes, list[Any]] = {}
            for k in c.execute(sa.select(keys).where(keys.c.kind == "subject")):
                by_ref.setdefault(bytes(k.ref), []).append(k)
            return {bytes(h.ref): h for h in c.execute(sa.select(heads))}, by_ref
    finally:
        engine.dispose()


def _kill_point(run: int, rng: random.Random) -> str:
    point = KILL_POINTS[run % len(KILL_POINTS)]
    if point == "execute":
        return f"execute:{rng.randint(1, 9 * (SUBJECTS + 1))}"
    if point in ("commit", "stored"):
        return f"{point}:{rng.randint(1, SUBJECTS + 1)}"
    return ""


@pytest.mark.parametrize("scale", SCALES)
def test_a_killed_shred_leaves_no_receipt_without_destruction(
    forkserver: Any, store_url: str, tmp_path: Path, scale: Scale, figures: Figures
) -> None:
    key_path = str(tmp_path / "master.key")
    kms = LocalKms.from_file(key_path, create=True)
    rng = random.Random(7)
    problems: list[str] = []
    with Vault(kms, store_url) as vault:
        pinned = vault.receipt_public_key
        for run in range(scale.kills):
            subjects = [uuid.uuid4() for _ in range(SUBJECTS)]
            blobs = {s: vault.encrypt(s, b"x", context=CTX) for s in subjects}
            subjects.append(uuid.uuid4())  # never seen: shredding fences it
            rng.shuffle(subjects)
            kill_at = _kill_point(run, rng)
            child = forkserver.Process(
                target=sigkill_child.run,
                args=(key_path, store_url, [str(s) for s in subjects], kill_at),
            )
            child.start()
            if not kill_at:
                time.sleep(rng.uniform(0.0, 0.4))
                child.kill()  # SIGKILL (nothing, when the child has already finished)
            child.join(60)
            assert child.exitcode is not None, "the shredding child hung"
            killed = child.exitcode == -signal.SIGKILL
            figures.add("SIGKILL runs")
            figures.add(f"SIGKILL runs at {kill_at.split(':')[0] or 'a random time, from outside'}")
            figures.add("runs killed" if killed else "runs that finished before the kill point")
            if not killed:
                assert child.exitcode == 0, f"the child failed: exit code {child.exitcode}"

            # 0 receipts without destruction, 0 shredded heads without a receipt
            heads, keys = _state(store_url)
            refs = {s: vault.subject_ref(s) for s in subjects}
            stored = {}
            for s, ref in refs.items():
                head = heads.get(ref)
                if head is None:
                    continue
                if head.receipt is not None:
                    figures.add("receipts found after a kill")
                    stored[s] = head.receipt
                    if head.state != "shredded":
                        problems.append(f"{kill_at}: a receipt on a head that is {head.state}")
                    live = [
                        k
                        for k in keys.get(ref, [])
                        if k.state != "destroyed"
                        or k.wrapped is not None
                        or k.commitment is not None
                    ]
                    if live:
                        problems.append(f"{kill_at}: a receipt, and {len(live)} keys not destroyed")
                elif head.state == "shredded":
                    problems.append(f"{kill_at}: a shredded head without a receipt")

            # the retry finishes the job, and returns the receipt already stored
            for s in subjects:
                receipt = vault.shred(s)
                figures.add("shreds retried after a kill")
                assert receipt.verify(pinned, installation_id=vault.installation_id)
                if s in stored and receipt.model_dump_json() != stored[s]:
                    problems.append(f"{kill_at}: the retry returned another receipt")
                with pytest.raises(SubjectShreddedError):
                    vault.encrypt(s, b"y", context=CTX)
            heads, keys = _state(store_url)
            for ref in refs.values():
                assert (heads[ref].state, heads[ref].receipt is not None) == ("shredded", True)
                assert all(k.state == "destroyed" and k.wrapped is None for k in keys.get(ref, []))
            with Vault(kms, store_url) as fresh:
                for s, blob in blobs.items():
                    with pytest.raises(SubjectShreddedError):
                        fresh.decrypt(blob, context=CTX, subject=s)
    figures.add("receipts without destruction, or shredded heads without one", len(problems))
    assert not problems, "\n".join(problems)
