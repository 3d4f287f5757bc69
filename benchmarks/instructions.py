"""Instructions per row of the column types' hot paths, counted by valgrind's callgrind.

Times on a shared machine move by 30 % and more from one minute to the next; instruction counts
do not. This counts the instructions of the write hook (``_write._insert`` on a batch of 1,000
rows with four encrypted columns, two searchable, keys cached, for an SQLite engine: the values
written as the driver's bytes, which no bind step checks again) and of the read loop
(``Reader.process`` on the same rows as the driver returns them), for the tree this file is in::

    python -m benchmarks.instructions          # needs valgrind; about 10 minutes

Retention (issue 14): ``searchable=`` does not combine with ``retention=``, so the suite-2 read
loop is measured on the same rows in four unsearchable columns (``read-suite2``: ``retention=``,
each value under its customer's key of the month), beside the same columns without it
(``read-suite1``); the target is suite 2 within +10 % of suite 1.

``read-first`` is the read loop on rows read for the first time after they were written: their
customers' keys were created by the write hook (not by ``warm``), and the driver returns each
row's subject as SQLite does (a UUID as 32 hex digits). Every run writes 3,000 such rows and
reads 1 or 3 batches of 1,000 of them once each, so the difference is first reads only.

``first-write`` is the write hook on rows of new customers: each batch of 1,000 rows names
customers the key store has never seen, so the hook creates a key per row (the subject ref's
HMAC, one read of the key store, the key wrapped under the epoch key, the head MACed, the head
and key rows inserted and committed, the keys cached) before it seals the row. The key store
is a SQLite file; a first batch (untimed) creates the installation's keys. Compared with
``write`` (the same rows, keys cached), it is the cost of a new customer in instructions; the
key store's fsyncs and page writes are system time and do not show.

Each path runs in a child process under callgrind once with 1 batch and once with 3; the
difference divided by 2,000 rows is the cost of a row, start-up excluded. Not part of
``python -m benchmarks`` (valgrind makes it slow) and not a timing: an instruction is not a
nanosecond (cache misses of 20,000 keys do not show), but fewer is less work.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROWS = 1_000
# Keys cached for the whole run, and the invalidation channel polled once an hour: a poll runs
# every half second of real time, and under valgrind (about 50 times slower) how many fall into
# a run would move the count by a few per cent from one run to the next. At full speed a poll
# costs a few nanoseconds a value.
QUIET: dict[str, Any] = {"cache_ttl": 86_400, "propagation_interval": 3_600, "listen_url": "off"}


def _field(op: str, batches: int) -> None:
    """``field``: ``vault.encrypt`` + ``vault.decrypt(..., subject=)`` of a 100-byte value, the
    key cached (the field round trip's figure); ``field-aesgcm``: its baseline, ``AESGCM``
    encrypt + decrypt with a fresh ``os.urandom(12)`` nonce, the key object reused."""
    from ccvault import Vault
    from ccvault.kms import LocalKms

    value = b"x" * 100
    if op == "field-aesgcm":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(os.urandom(32))
        for _ in range(batches * ROWS):
            nonce = os.urandom(12)
            aead.decrypt(nonce, aead.encrypt(nonce, value, None), None)
        return
    keys = Path(tempfile.mkdtemp()) / "keys.db"
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{keys}", **QUIET)
    subject = uuid.uuid4()
    vault.decrypt(
        vault.encrypt(subject, value, context="customers.phone"),
        context="customers.phone",
        subject=subject,
    )
    for _ in range(batches * ROWS):
        blob = vault.encrypt(subject, value, context="customers.phone")
        vault.decrypt(blob, context="customers.phone", subject=subject)


def _reproducible_randomness() -> None:
    """Make ``os.urandom`` of this child process a seeded generator, before ccvault is
    imported (its nonce source binds ``os.urandom`` at import). The work counted is the same;
    only its bytes repeat from run to run: the keys (the local master key, data keys, the
    blind-index root), the nonces and ``uuid4``. With random bytes the blind-index values,
    hence the B-tree a lookup walks and the order of the keys in the vault's dicts, differed
    from run to run, and so did the counts (``orm-lookup`` by about 2 %). Counting only: no
    other code path of the project replaces ``os.urandom``."""
    source = random.Random(20261206)
    os.urandom = source.randbytes


# What the child keeps before it starts, in layout n > 0: objects and byte strings of sizes drawn
# from a generator seeded with n, about n * LAYOUT_STEP of each.
LAYOUT_STEP = 97
_layout: list[object] = []
_layout_number = 0


def _shift_layout(n: int) -> None:
    """Move the objects the child makes after this in memory (layout 0: as it starts). Where an
    object lies decides the hash of one that hashes by identity, hence the order of the sets
    and dicts of such objects (SQLAlchemy has many, its statement cache keys among them) and how
    often their lookups collide: the same code, run from another directory or with another
    environment, counted ``orm-lookup`` up to 7 % apart (786,252 to 845,415 a lookup).
    ``--layouts N`` counts each OP in layouts 0 to N - 1 and reports their median and range."""
    global _layout_number
    _layout_number = n
    if n <= 0:
        return
    sizes = random.Random(n)
    for _ in range(n * LAYOUT_STEP):
        _layout.append(object())
        _layout.append(bytes(sizes.randrange(1, 700)))


def _child(op: str, batches: int) -> None:
    _reproducible_randomness()
    import sqlalchemy as sa

    if op.startswith("field"):
        _field(op, batches)
        return

    if op.startswith("orm-"):
        _orm(op, batches)
        return

    from benchmarks.bench_orm import _models, retention_policy, rows, timed_rows
    from ccvault import Vault
    from ccvault.kms import LocalKms
    from ccvault.sqlalchemy import _read, _write
    from ccvault.sqlalchemy._plan import plan_for

    models, md = _models(uuid.uuid4().hex[:8], "00" * 32)
    kind = {"read-suite1": "unsearchable", "read-suite2": "retained"}.get(op, "ccvault")
    table = models[kind].__table__
    plan = plan_for(table)
    assert plan is not None
    keys = Path(tempfile.mkdtemp()) / "keys.db"
    vault = Vault(
        LocalKms.ephemeral(),
        f"sqlite:///{keys}",
        retention_policy=retention_policy(),
        **QUIET,
    )
    ring = vault._ring  # the key ring the column types use (vault.attach hands it to them)
    insert = sa.insert(table)
    periods = vault._periods
    # the hook as it runs on an attached SQLite engine: the driver's bytes, no bind step after
    dialect = sa.create_engine("sqlite://").dialect
    if op == "read-first":
        _first_reads(vault, table, md, batches)
        return
    if op == "first-write":
        fresh = [rows(ROWS) for _ in range(4)]  # always 4: the runs differ in writes only
        _write._insert(ring, plan, insert, fresh[0], None, periods, dialect)  # installation keys
        for batch in fresh[1 : 1 + batches]:
            _write._insert(ring, plan, insert, batch, None, periods, dialect)  # new customers
        return
    data = rows(ROWS) if kind == "ccvault" else timed_rows(rows(ROWS))
    vault.warm(d["id"] for d in data)
    _write._insert(ring, plan, insert, data, None, periods, dialect)  # warm: index keys, code
    if op == "write":
        for _ in range(batches):
            _write._insert(ring, plan, insert, data, None, periods, dialect)
        return
    engine = sa.create_engine("sqlite://")
    vault.attach(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert, data)
    reader = _read._build_reader(ring, sa.select(table).compile(engine), False)
    assert reader is not None
    names = ", ".join(c.name for c in table.columns)
    with engine.connect() as conn:
        raw = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {names} FROM {table.name}")]
    suite = 2 if kind == "retained" else 1
    assert all(bytes(r[-1])[1] == suite for r in raw)
    reader.process(raw)
    for _ in range(batches):
        reader.process(raw)


def _orm(op: str, batches: int) -> None:
    """The whole ORM workload of ``bench_orm`` through a session, database work included, on
    an SQLite file: ``orm-insert`` (``add_all`` + ``commit`` of 1,000 rows, their customers'
    keys existing, cached and used for the same rows before, which were then deleted),
    ``orm-select`` (a fresh session selects 1,000 rows and reads every attribute, keys warm and
    read before: steady state) and ``orm-lookup`` (1,000 rows looked up one at a time by phone,
    each in a statement of its own, as ``bench_orm._lookup``: the blind index computed, the
    row post-filtered and decrypted; among 4,000 rows, every key read before: steady state);
    each beside its plaintext table (``-plain``) and, but for the lookup, the floor's
    bare ``cryptography`` calls for the same rows alone (``-floor``: ``bench_orm._Floor``).
    ``orm-insert`` / ``orm-insert-plain`` is the issue's ``orm_insert_ratio_sqlite`` in
    instructions, and (``orm-insert`` - ``orm-insert-plain``) / ``orm-insert-floor`` its
    added-time ratio. As in ``bench_orm``, the cyclic GC is kept out of the measured part
    (collected, then disabled).

    ``orm-select-pg`` / ``orm-select-pg-plain``: the select on PostgreSQL (``bench_orm``'s
    database URL), the instructions of this process only: psycopg's decoding of the hex text
    bytea arrives in is counted, the server's encoding and the transfer are not (the timed
    ``orm_select_*_postgres`` figures include them). Its floor is ``orm-select-floor``."""
    import sqlalchemy as sa

    from benchmarks.bench_orm import _models, _pg_url
    from ccvault import Vault
    from ccvault.kms import LocalKms

    postgres = op.startswith("orm-select-pg")
    # Tables of their own for each child (they run at once, on one PostgreSQL database), named
    # alike in every run of the same count (a uuid4 is seeded here: the same in every child).
    suffix = f"{zlib.crc32(op.encode()):08x}{batches}{_layout_number}"
    models, md = _models(suffix, "00" * 32)
    if postgres:
        op = op.replace("-pg", "")
        md.drop_all(engine := sa.create_engine(_pg_url()))  # what a killed count left
        engine.dispose()
    model = models["ccvault" if op in ("orm-insert", "orm-select", "orm-lookup") else "plain"]
    work = Path(tempfile.mkdtemp())
    engine = sa.create_engine(_pg_url() if postgres else f"sqlite:///{work / 'app.db'}")
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{work / 'keys.db'}", **QUIET)
    vault.attach(engine)
    md.create_all(engine)
    try:
        _orm_run(op, batches, engine, model, vault)
    finally:
        if postgres:
            md.drop_all(engine)
            engine.dispose()


def _orm_run(op: str, batches: int, engine: Any, model: Any, vault: Any) -> None:
    import gc

    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from benchmarks.bench_orm import COLUMNS, _Floor, rows

    # always 4: the runs differ in the measured part only (a lookup's table holds all 4, each
    # customer its own phone number)
    data = [rows(ROWS, start=i * ROWS if op.startswith("orm-lookup") else 0) for i in range(4)]
    # The same customer ids in every run (rows() draws uuid4s): the tables' B-trees are keyed by
    # them, and with random ids their shapes, and the database's share of the counts, moved by
    # 2 % from one run to the next.
    ids = random.Random(1)
    for batch in data:
        for row in batch:
            row["id"] = uuid.UUID(int=ids.getrandbits(128), version=4)
    vault.warm(d["id"] for batch in data for d in batch)

    def add(batch: list[dict[str, Any]]) -> None:
        with Session(engine) as session:
            session.add_all([model(**row) for row in batch])
            session.commit()

    def select() -> None:
        with Session(engine) as session:
            for r in session.scalars(sa.select(model)).all():
                for column in ("id", *COLUMNS):
                    getattr(r, column)

    def lookup(phones: list[str]) -> None:  # as bench_orm._lookup: one row at a time by phone
        with Session(engine) as session:
            for phone in phones:
                session.scalars(sa.select(model).where(model.phone == phone)).one()

    if op.startswith("orm-lookup"):
        for batch in data:
            add(batch)
        select()  # every key read once: the counted lookups are steady state
        phones = [row["phone"] for batch in data for row in batch]
        random.Random(0).shuffle(phones)
        lookup(phones[:ROWS])  # the statement compiled and cached, the index key derived
        gc.collect()
        gc.disable()
        for i in range(1, 1 + batches):
            lookup(phones[i * ROWS : (i + 1) * ROWS])
        return
    if op.endswith("-floor"):  # the bare calls alone: no database, no ORM
        floors = [_Floor(batch, random.Random(0)) for batch in data]
        gc.collect()
        gc.disable()
        for floor in floors[:batches]:
            floor.insert_calls() if op == "orm-insert-floor" else floor.select_calls()
        return
    if op.startswith("orm-insert"):
        for batch in data:  # as in bench_orm, the keys have sealed these rows' values before
            add(batch)
        with Session(engine) as session:
            session.execute(sa.delete(model))
            session.commit()
        gc.collect()
        gc.disable()
        for batch in data[:batches]:
            add(batch)
        return
    add(data[0])  # the 1,000 rows every select reads
    select()  # every key read once: the counted reads are steady state
    gc.collect()
    gc.disable()
    for _ in range(batches):
        select()


def _first_reads(vault: Any, table: Any, md: Any, batches: int) -> None:
    """Write 3 batches of rows for new customers through the column types, then read
    ``batches`` of them once each."""
    import sqlalchemy as sa

    from benchmarks.bench_orm import rows
    from ccvault.sqlalchemy import _read

    engine = sa.create_engine("sqlite://")
    vault.attach(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows(3 * ROWS))
    reader = _read._build_reader(vault._ring, sa.select(table).compile(engine), False)
    assert reader is not None
    names = ", ".join(c.name for c in table.columns)
    with engine.connect() as conn:
        raw = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {names} FROM {table.name}")]
    assert type(raw[0][0]) is str  # SQLite's spelling of a UUID
    for i in range(batches):
        reader.process(raw[i * ROWS : (i + 1) * ROWS])


def _count(op: str, batches: int, layout: int = 0) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            op,
            str(batches),
            str(layout),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _shift_layout(int(sys.argv[4]))
        _child(sys.argv[2], int(sys.argv[3]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    args = sys.argv[1:]
    layouts = 1
    if "--layouts" in args:
        at = args.index("--layouts")
        given = args[at + 1] if at + 1 < len(args) else ""
        if not given.isdigit() or int(given) < 1:
            sys.exit(f"--layouts takes a number of layouts, 1 or more (got {given!r})")
        layouts = int(given)
        del args[at : at + 2]
    found = {}
    ops = args or [
        "write",
        "first-write",
        "read",
        "read-first",
        "read-suite1",
        "read-suite2",
        "field",
        "field-aesgcm",
        "orm-insert",
        "orm-insert-plain",
        "orm-insert-floor",
        "orm-select",
        "orm-select-plain",
        "orm-select-floor",
        "orm-lookup",
        "orm-lookup-plain",
        "orm-select-pg",
        "orm-select-pg-plain",
    ]
    # every count at once, as many at a time as there are CPUs (each valgrind runs on one;
    # the counts do not depend on what else runs)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = {
            (op, batches, layout): pool.submit(_count, op, batches, layout)
            for op in ops
            for layout in range(layouts)
            for batches in (1, 3)
        }
        for op in ops:
            per_layout = sorted(
                (counts[op, 3, n].result() - counts[op, 1, n].result()) / (2 * ROWS)
                for n in range(layouts)
            )
            per_row = found[op] = statistics.median(per_layout)
            unit = (
                "a round trip"
                if op.startswith("field")
                else "a lookup"
                if op.startswith("orm-lookup")
                else "a row"
            )
            spread = ""
            if layouts > 1:
                low, high = per_layout[0], per_layout[-1]
                spread = f" (median of {layouts} layouts, {low:,.0f} to {high:,.0f})"
            print(f"{op}: {per_row:,.0f} instructions {unit}{spread}", flush=True)
    if "field" in found and "field-aesgcm" in found:
        ratio = found["field"] / found["field-aesgcm"]
        print(f"field round trip / raw AES-GCM: {ratio:.2f} (target within 3)", flush=True)
    for orm, target in (
        ("orm-insert", 1.4),
        ("orm-select", None),
        ("orm-lookup", 1.2),
        ("orm-select-pg", None),
    ):
        # the floor's calls need no database: PostgreSQL's select has SQLite's floor
        plain = found.get(f"{orm}-plain")
        floor = found.get(f"{orm.replace('-pg', '')}-floor")
        if orm in found and plain:
            ratio = found[orm] / plain
            goal = "" if target is None else f" (target within {target})"
            print(f"{orm} / plaintext: {ratio:.2f}{goal}", flush=True)
            if floor:
                added = (found[orm] - plain) / floor
                print(f"{orm}, added over plaintext / the floor's: {added:.2f}", flush=True)
    if "read-suite1" in found and "read-suite2" in found:
        ratio = found["read-suite2"] / found["read-suite1"]
        print(f"read, suite 2 / suite 1: {ratio:.3f} (target within 1.10)", flush=True)


if __name__ == "__main__":
    main()
