"""A bad value in a batch leaves no other row's plaintext in the raised exception (issue 11,
item 4): error trackers send the frame locals of every frame of a traceback (and of its
``__context__`` chain, even a suppressed one), and the reader's frames held every row it had
decrypted before the bad one, its retry path the rest of the batch.

Each test walks the exception with ``leaks.secrets_in`` for the plaintext of every row. The one
thing the reader cannot clear is SQLAlchemy's own: with ``yield_per`` and ``partitions()`` the
partition *already returned to the application* is still a local of SQLAlchemy's generator when
the next one fails (docs/security.md, "Exceptions").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import DecryptionError, KeyStoreError, SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import UNREADABLE, _read
from leaks import raised, secrets_in
from raw_values import get_raw, set_raw, tampered
from sqla_models import Customer

T = Customer.__table__
N = 12  # rows; partitions of 3 and 4 below
ORDERED = sa.select(Customer).order_by(Customer.id)
CORE = sa.select(T).order_by(T.c.id)


def _customers(app: sa.Engine, n: int = N, first: int = 1) -> list[tuple[uuid.UUID, list[str]]]:
    """``n`` customers with ids in read order, and the plaintexts of each."""
    rows = [
        Customer(
            id=uuid.UUID(int=first + i),
            name=f"name-{uuid.uuid4().hex}",
            phone=f"+44 20 7946 {first + i:04d}",
            email=f"{uuid.uuid4().hex}@example.com",
        )
        for i in range(n)
    ]
    with Session(app) as s:
        s.add_all(rows)
        s.commit()
        return [(c.id, [c.name, c.phone, c.email]) for c in rows]


def _leaked(exc: BaseException, plaintexts: list[str]) -> list[str]:
    return [where for p in plaintexts for where in secrets_in(exc, p.encode())]


def _orm(call: Callable[[Session], Any]) -> Callable[[sa.Engine], Any]:
    def run(app: sa.Engine) -> Any:
        with Session(app) as s:
            return call(s)

    return run


def _core(call: Callable[[sa.Connection], Any]) -> Callable[[sa.Engine], Any]:
    def run(app: sa.Engine) -> Any:
        with app.connect() as conn:
            return call(conn)

    return run


# (built here: the test's own frames must not hold the phone numbers searched for)
SEARCH = sa.select(Customer).where(
    Customer.phone.in_([f"+44 20 7946 {i:04d}" for i in range(1, N + 1)])
)


# Every way a result is read: fetchall, the read-ahead of row-by-row iteration, fetchmany,
# read-ahead rows taken by a fetchall, a searched (post-filtered) select, server-side cursors.
READS: dict[str, Callable[[sa.Engine], Any]] = {
    "orm all": _orm(lambda s: s.scalars(ORDERED).all()),
    "orm iteration": _orm(lambda s: list(s.scalars(ORDERED))),
    "orm search": _orm(lambda s: s.scalars(SEARCH).all()),
    "core all": _core(lambda c: c.execute(CORE).all()),
    "core iteration": _core(lambda c: list(c.execute(CORE))),
    "core fetchmany": _core(
        lambda c: (lambda r: [r.fetchmany(3) for _ in range(5)])(c.execute(CORE))
    ),
    "core fetchone then all": _core(lambda c: (lambda r: (r.fetchone(), r.all()))(c.execute(CORE))),
    "core scalars": _core(lambda c: c.execute(CORE).scalars(1).all()),
    "core stream": _core(lambda c: list(c.execution_options(stream_results=True).execute(CORE))),
}
# Reads in partitions: the partitions before the failing one were returned to the application.
PARTITIONED: dict[str, tuple[int, Callable[[sa.Engine], Any]]] = {
    "orm yield_per": (3, _orm(lambda s: list(s.scalars(ORDERED.execution_options(yield_per=3))))),
    "core partitions": (
        4,
        _core(lambda c: list(c.execute(CORE.execution_options(yield_per=4)).partitions())),
    ),
}


def test_a_corrupt_value_leaves_no_other_rows_plaintext_in_the_error(app: sa.Engine) -> None:
    names = [f"customer-{i}-{uuid.uuid4().hex}" for i in range(6)]
    with Session(app) as s:
        s.add_all(Customer(name=n, phone=f"+44 20 7946 000{i}") for i, n in enumerate(names))
        s.commit()
    with app.begin() as conn:  # the tag of the last row (by id) is damaged
        last = bytes(conn.execute(sa.text("SELECT name FROM customers ORDER BY id")).all()[-1][0])
        bad = last[:-1] + bytes([last[-1] ^ 1])
        conn.execute(
            sa.text("UPDATE customers SET name = :b WHERE name = :o"), {"b": bad, "o": last}
        )
    with Session(app) as s:
        exc = raised(lambda: s.scalars(sa.select(Customer).order_by(Customer.id)).all())
    assert isinstance(exc, DecryptionError)
    found = [where for name in names for where in secrets_in(exc, name.encode())]
    assert found == []


@pytest.mark.parametrize("kind", ["tampered", "another customer's value"])
def test_no_read_leaves_another_rows_plaintext_in_the_error(app: sa.Engine, kind: str) -> None:
    """Every way of reading, with the bad value in the first, a middle and the last row."""
    customers = _customers(app)
    plaintexts = [p for _, ps in customers for p in ps]
    for bad_row in (0, N // 2, N - 1):
        pk = customers[bad_row][0]
        good = get_raw(app, T, "name", pk)
        other = customers[(bad_row + 1) % N][0]
        set_raw(
            app,
            T,
            "name",
            pk,
            tampered(good) if kind == "tampered" else get_raw(app, T, "name", other),
        )
        for how, read in READS.items():
            exc = raised(lambda read=read: read(app))  # type: ignore[misc]
            assert isinstance(exc, DecryptionError), (how, exc)
            assert exc.primary_key == (pk,), how
            assert _leaked(exc, plaintexts) == [], (how, bad_row)
        set_raw(app, T, "name", pk, good)


def test_rows_read_ahead_are_not_in_the_error(app: sa.Engine) -> None:
    """Row-by-row reading decrypts 100 rows ahead; a fetchall after it decrypts the rest while
    the read-ahead rows wait in the buffer."""
    customers = _customers(app, 103)
    pk = customers[101][0]
    set_raw(app, T, "name", pk, tampered(get_raw(app, T, "name", pk)))
    read = READS["core fetchone then all"]
    exc = raised(lambda: read(app))
    assert isinstance(exc, DecryptionError)
    assert exc.primary_key == (pk,)
    assert _leaked(exc, [p for _, ps in customers[1:] for p in ps]) == []


def test_partitioned_reads_leave_only_partitions_already_returned(app: sa.Engine) -> None:
    """The failing partition and those after it are nowhere in the error; the one returned
    before it is a local of SQLAlchemy's generator only (a known limit: docs/security.md)."""
    customers = _customers(app)
    bad_row = N // 2 + 1
    pk = customers[bad_row][0]
    set_raw(app, T, "name", pk, tampered(get_raw(app, T, "name", pk)))
    for how, (size, read) in PARTITIONED.items():
        exc = raised(lambda read=read: read(app))  # type: ignore[misc]
        assert isinstance(exc, DecryptionError), how
        returned = bad_row // size * size  # rows of the partitions handed out before
        later = [p for _, ps in customers[returned:] for p in ps]
        assert _leaked(exc, later) == [], how
        earlier = _leaked(exc, [p for _, ps in customers[:returned] for p in ps])
        sqlalchemy_generators = {"chunks", "partitions"}
        assert {w.split(": ")[1].split(".")[0] for w in earlier} <= sqlalchemy_generators, how


def test_a_strict_read_of_a_shredded_row_leaves_no_other_rows_plaintext(
    app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str
) -> None:
    customers = _customers(app)
    shredded = customers[N // 2][0]
    vault.shred(shredded)
    strict = sa.create_engine(app.url)
    try:
        with Vault(kms, db_url) as other:
            other.attach(strict, strict=True)
            for how, read in READS.items():
                if how == "orm search":
                    continue  # the shred cleared the blind index: the row is not found
                exc = raised(lambda read=read: read(strict))  # type: ignore[misc]
                assert isinstance(exc, SubjectShreddedError), how
                assert exc.primary_key == (shredded,), how
                assert _leaked(exc, [p for _, ps in customers for p in ps]) == [], how
    finally:
        strict.dispose()


def test_an_error_no_value_caused_leaves_no_decrypted_row_either(
    app: sa.Engine, kms: LocalKms, db_url: str
) -> None:
    """The key store fails in the middle of a batch (the first rows' keys are cached, a later
    row's are not): the error passes through the row loop, which holds the rows it decrypted
    until then."""
    late = _customers(app, 6, first=100)
    early = _customers(app, 6)  # read first, with keys the reader has cached
    keystore = sa.create_engine(db_url)
    with Vault(kms, db_url) as reader:
        engine = sa.create_engine(app.url)
        reader.attach(engine)
        with Session(engine) as s:
            s.scalars(sa.select(Customer).where(Customer.id.in_([i for i, _ in early]))).all()
        with keystore.begin() as conn:  # the key store cannot be read any more
            conn.exec_driver_sql("ALTER TABLE ccvault_keys RENAME TO ccvault_keys_away")
        try:
            for how in ("orm all", "core all", "core iteration", "core fetchone then all"):
                exc = raised(lambda how=how: READS[how](engine))  # type: ignore[misc]
                assert isinstance(exc, KeyStoreError), (how, exc)
                assert _leaked(exc, [p for _, ps in early + late for p in ps]) == [], how
        finally:
            with keystore.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE ccvault_keys_away RENAME TO ccvault_keys")
            engine.dispose()
            keystore.dispose()


def test_an_unexpected_error_in_the_slow_path_leaves_no_decrypted_row(
    app: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of no known kind (injected) while the batch is read again value by value, at
    the bad value: the rows before it, and its row's values read before it, are decrypted by
    then."""
    customers = _customers(app)
    pk = customers[N // 2][0]
    set_raw(app, T, "email", pk, tampered(get_raw(app, T, "email", pk)))

    def broken(*raw_row_and_slot: Any) -> Any:  # given the raw row only: no plaintext
        raise RuntimeError("injected")

    monkeypatch.setattr(_read.Reader, "_failed", broken)
    exc = raised(lambda: READS["orm all"](app))
    assert isinstance(exc, RuntimeError)
    assert _leaked(exc, [p for _, ps in customers for p in ps]) == []


def test_unreadable_log_records_carry_no_plaintext(
    app: sa.Engine, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    sentinel_app = sa.create_engine(app.url)
    vault.attach(sentinel_app, on_error="sentinel")
    customers = _customers(app)
    plaintexts = [p for _, ps in customers for p in ps]
    bad = [customers[i][0] for i in (0, N // 2, N - 1)]
    for pk in bad:
        set_raw(app, T, "phone", pk, tampered(get_raw(app, T, "phone", pk)))
    with caplog.at_level(1):
        with Session(sentinel_app) as s:
            read = {c.id: c.phone for c in s.scalars(ORDERED)}
        with sentinel_app.connect() as conn:
            assert len(conn.execute(CORE).all()) == N
    sentinel_app.dispose()
    assert [pk for pk, phone in read.items() if phone is UNREADABLE] == bad
    records = [r for r in caplog.records if r.name == "ccvault"]
    assert len(records) == 2 * len(bad)
    for record in records:
        assert record.exc_info is None
        assert record.stack_info is None
        shown = f"{record.getMessage()} {record.__dict__!r}"
        assert [p for p in plaintexts if p in shown] == []


@pytest.mark.parametrize("on_error", ["raise", "sentinel"])
def test_a_bad_value_raises_with_no_context(app: sa.Engine, vault: Vault, on_error: str) -> None:
    """The located error is new, raised outside any handler: no __context__ or __cause__
    leads back to the failures the reader met (whose tracebacks held the batch)."""
    customers = _customers(app, 4)
    pk = customers[2][0]
    set_raw(app, T, "name", pk, tampered(get_raw(app, T, "name", pk)))
    engine = sa.create_engine(app.url)
    vault.attach(engine, on_error=on_error)  # type: ignore[arg-type]
    try:
        with Session(engine) as s:
            if on_error == "sentinel":
                assert [c.name for c in s.scalars(ORDERED)][2] is UNREADABLE
                return
            exc = raised(lambda: s.scalars(ORDERED).all())
    finally:
        engine.dispose()
    assert isinstance(exc, DecryptionError)
    assert exc.__context__ is None
    assert exc.__cause__ is None
