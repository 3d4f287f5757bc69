"""A shred racing writers in several processes (issue 13, "Bad input and races"), on PostgreSQL
and MariaDB, with a ledger and the completion: every write lands before the shred and is
destroyed with it, or fails with ``SubjectShreddedError``; none stays readable; no blind index of
the customer survives the completion.

Three writers (tests/race_writer_child.py, forked from a server that imported ccvault first)
hold the customer's key in their caches (``cache_ttl`` 60 s) and commit notes of that customer,
each with a blind index, as fast as they can. This process shreds the customer with
``wait=True``: the first sweep, the wait for the propagation bound, the second sweep, the signed
completion record. Real clocks, real processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import race_writer_child as child
from ccvault import SHREDDED, Vault
from ccvault.kms import LocalKms
from conftest import _server_db

WRITERS = 3


@pytest.fixture(scope="module")
def forkserver() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ccvault", "ccvault.vault", "sqlalchemy", "race_writer_child"])
    return ctx


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(key store and application tables, SQL ledger): one server, the ledger apart."""
    with contextlib.ExitStack() as stack:
        db = contextlib.contextmanager(_server_db)
        yield stack.enter_context(db(request.param)), stack.enter_context(db(request.param))


def test_a_shred_racing_writers_leaves_nothing_readable_and_no_blind_index(
    server: tuple[str, str], forkserver: Any, tmp_path: Path
) -> None:
    url, ledger = server
    key_path = str(tmp_path / "master.key")
    kms = LocalKms.from_file(key_path, create=True)
    engine = sa.create_engine(url)
    child.Base.metadata.create_all(engine)
    customer, other = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, url, ledger=ledger, create=True, listen_url="off") as vault:
        vault.attach(engine)
        with Session(engine) as s:
            s.add(child.Note(customer_id=other, phone="+1 555 0142"))
            s.commit()
        pipes, processes = [], []
        for _ in range(WRITERS):
            mine, theirs = forkserver.Pipe()
            p = forkserver.Process(
                target=child.run,
                args=(key_path, url, url, ledger, str(customer), theirs, {}),
            )
            p.start()
            theirs.close()
            pipes.append(mine)
            processes.append(p)
        try:
            for pipe in pipes:
                assert pipe.poll(60), "a writer never got ready"
                assert pipe.recv() == ("ready",)
            receipt = vault.shred(customer, wait=True)  # both sweeps and the completion
            reports = []
            for pipe in pipes:
                assert pipe.poll(60), "a writer never finished"
                reports.append(pipe.recv())
        finally:
            for p in processes:
                p.join(30)
                if p.exitcode is None:
                    p.kill()
        written = []
        for report in reports:
            assert report[0] == "done", report
            _, ids, refusals, errors = report
            assert errors == [], errors  # every failure was the refusal, none succeeded after
            assert refusals == child.REFUSALS
            written += ids
        assert written, "the writers wrote nothing before the shred"
        status = vault.erasure_status(receipt.receipt_id)
        assert status is not None
        assert status.phase == "completed"
        with Session(engine) as s:
            notes = s.scalars(sa.select(child.Note)).all()
            mine = [n for n in notes if n.customer_id == customer]
            assert {str(n.id) for n in mine} >= set(written)  # every commit is there ...
            assert all(n.phone is SHREDDED for n in mine)  # ... and none reads
            assert [n.phone for n in notes if n.customer_id == other] == ["+1 555 0142"]
        table = child.Note.__table__
        with engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.customer_id == customer, table.c.phone_bidx.is_not(None))
            ).scalar()
            kept = conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.customer_id == other, table.c.phone_bidx.is_not(None))
            ).scalar()
        assert (left, kept) == (0, 1)  # no blind index of the customer survived the completion
        vault.detach(engine)
    engine.dispose()
    print(
        f"\nshred racing {WRITERS} writers: {len(written)} notes committed before it, all destroyed"
    )
