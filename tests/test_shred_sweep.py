"""The blind-index sweep after vault.shred(): retried, never silent (issue 11, item 8), and exact
about which stored subjects are the shredded one (issue 11, item 9)."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from ccvault import ErasureIncompleteError, ErasureReceipt, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted, _attach
from conftest import _server_db
from sqla_models import Base, Customer

# -- engines whose lock waits are short ---------------------------------------------------------


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


def _short_wait_engine(db_url: str) -> sa.Engine:
    """An engine that gives up on a lock quickly: SQLite's busy timeout, PostgreSQL's
    lock_timeout and InnoDB's innodb_lock_wait_timeout set low on every session."""
    url = sa.make_url(_app_url(db_url))
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(url, connect_args={"timeout": 0.05})
    if url.get_backend_name() == "postgresql":
        options = f"{url.query.get('options', '')} -clock_timeout=100".strip()
        return sa.create_engine(url.update_query_dict({"options": options}))
    return sa.create_engine(
        url, connect_args={"init_command": "SET SESSION innodb_lock_wait_timeout=1"}
    )


class _Blocker:
    """A second connection holding a write lock on a customer's row (SQLite: on the database)
    in an open transaction, until release()."""

    def __init__(self, db_url: str, customer: uuid.UUID) -> None:
        self.engine = sa.create_engine(_app_url(db_url))
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        self.conn.execute(
            sa.text("UPDATE customers SET phone_bidx = phone_bidx WHERE id = :id").bindparams(
                sa.bindparam("id", customer, type_=sa.Uuid())
            )
        )

    def release(self) -> None:
        if self.tx.is_active:
            self.tx.rollback()
        self.conn.close()
        self.engine.dispose()


@pytest.fixture
def locked_app(vault: Vault, db_url: str) -> Iterator[tuple[sa.Engine, uuid.UUID, uuid.UUID]]:
    """Customers a and b with blind indexes on an attached short-wait engine."""
    engine = _short_wait_engine(db_url)
    Base.metadata.create_all(engine)
    vault.attach(engine)
    with Session(engine) as s:
        a = Customer(name="A", phone="+44 20 7946 0001", email="a@example.com")
        b = Customer(name="B", phone="+44 20 7946 0002", email="b@example.com")
        s.add_all([a, b])
        s.commit()
        ids = (a.id, b.id)
    yield engine, *ids
    engine.dispose()


def _indexes(engine: sa.Engine, customer: uuid.UUID) -> tuple[object, object]:
    t = Customer.__table__
    with engine.connect() as conn:
        row = conn.execute(select(t.c.phone_bidx, t.c.email_bidx).where(t.c.id == customer)).one()
    return row[0], row[1]


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sweep's backoff pauses, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(_attach, "_sleep", seen.append)
    return seen


# -- item 8: a failed sweep is retried, then reported ------------------------------------------

# Models of this process whose tables a test database lacks (another app's), or has without
# their blind-index column (a schema behind the models).
elsewhere = sa.Table(
    "elsewhere_contacts",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("phone", Encrypted(sa.String(32), subject="id", searchable="phone:1")),
)
behind = sa.Table(
    "behind_contacts",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("phone", Encrypted(sa.String(32), subject="id", searchable="phone:1")),
    sa.Column("email", Encrypted(sa.String(64), subject="id", searchable="email")),
)


def test_a_locked_sweep_is_retried_then_raised_with_the_receipt(
    vault: Vault,
    db_url: str,
    locked_app: tuple[sa.Engine, uuid.UUID, uuid.UUID],
    pauses: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, a, b = locked_app
    blocker = _Blocker(db_url, a)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="ccvault"),
            pytest.raises(ErasureIncompleteError) as info,
        ):
            vault.shred(a)
    finally:
        blocker.release()
    exc = info.value
    # The keys are destroyed (committed) and the caller still gets the signed receipt.
    assert vault.is_shredded(a)
    assert isinstance(exc.receipt, ErasureReceipt)
    assert exc.receipt.verify(vault.receipt_public_key, installation_id=vault.installation_id)
    assert exc.receipt.subject_ref == vault.subject_ref(a).hex()
    # It names the tables and columns not swept, and why; never the subject.
    assert "customers" in exc.tables
    assert set(exc.tables) <= {t.name for t in Base.metadata.sorted_tables}
    if not db_url.startswith("sqlite"):  # a row lock: only the customer's table is blocked
        assert exc.tables == ("customers",)
    assert {"customers.phone", "customers.email"} <= set(exc.columns)
    assert not {"customers.phone", "customers.email"} & exc.swept
    text = str(exc)
    assert "table customers (" in text
    assert "3 attempts" in text
    assert str(a) not in text
    assert a.hex not in text
    assert exc.__cause__ is None
    assert exc.__context__ is None
    # Bounded: three tries, two pauses with growing backoff.
    assert pauses[:2] == list(_attach.SWEEP_BACKOFF)
    assert len(pauses) == 2 * len(exc.tables)
    # Logged at ERROR too, so a caller that swallows the exception is not silent either.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "customers" in errors[0].getMessage()
    assert str(a) not in caplog.text
    # Not counted as "no engine attached sweeps it": the failure says it instead.
    assert not [r for r in caplog.records if "left blind indexes" in r.getMessage()]
    assert None not in _indexes(engine, a)  # still there

    # A repeated shred returns the same receipt and sweeps.
    assert vault.shred(a) == exc.receipt
    assert _indexes(engine, a) == (None, None)
    assert None not in _indexes(engine, b)


def test_a_sweep_that_succeeds_on_a_retry_returns_the_receipt(
    vault: Vault,
    db_url: str,
    locked_app: tuple[sa.Engine, uuid.UUID, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, a, b = locked_app
    blocker = _Blocker(db_url, a)
    seen: list[float] = []

    def pause(seconds: float) -> None:  # the lock goes away during the first backoff
        seen.append(seconds)
        blocker.release()

    monkeypatch.setattr(_attach, "_sleep", pause)
    try:
        receipt = vault.shred(a)
    finally:
        blocker.release()
    assert isinstance(receipt, ErasureReceipt)
    assert seen == [_attach.SWEEP_BACKOFF[0]]
    assert _indexes(engine, a) == (None, None)
    assert None not in _indexes(engine, b)


def test_a_table_this_database_does_not_have_is_skipped_not_failed(
    vault: Vault,
    locked_app: tuple[sa.Engine, uuid.UUID, uuid.UUID],
    pauses: list[float],
) -> None:
    """Another app's model imported in this process: its table is missing here, which is not a
    failure, not retried, and not reported for ever."""
    engine, a, _ = locked_app
    receipt = vault.shred(a)
    assert vault.shred(a) == receipt
    assert pauses == []
    assert _indexes(engine, a) == (None, None)
    assert elsewhere.c.phone_bidx is not None


def test_blind_index_columns_the_database_lacks_hold_nothing_to_sweep(
    vault: Vault, db_url: str, pauses: list[float]
) -> None:
    """The table exists without one of its *_bidx columns (another app's table of the same
    name, or a migration not run yet): that column holds no blind index, so it is not a failure;
    the columns that exist are swept, at once."""
    engine = sa.create_engine(_app_url(db_url))
    before = sa.MetaData()  # the table as the database has it: no email_bidx column
    sa.Table(
        "behind_contacts",
        before,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("phone", sa.LargeBinary),
        sa.Column("phone_bidx", sa.LargeBinary),
        sa.Column("email", sa.LargeBinary),
    )
    before.create_all(engine)
    subject = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(before.tables["behind_contacts"]).values(id=subject, phone_bidx=b"i")
        )
    vault.attach(engine)
    try:
        vault.shred(subject)
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT phone_bidx FROM behind_contacts")).scalar_one()
    finally:
        engine.dispose()
    assert left is None
    assert pauses == []
    assert behind.c.email_bidx is not None


def test_a_hook_that_raises_never_loses_the_receipt(svault: Vault) -> None:
    def broken(_subject: object) -> list[tuple[str, str]]:
        raise RuntimeError("boom")

    svault._ring.after_shred.add(broken)
    subject = uuid.uuid4()
    with pytest.raises(ErasureIncompleteError) as info:
        svault.shred(subject)
    assert isinstance(info.value.receipt, ErasureReceipt)
    assert "RuntimeError" in str(info.value)
    assert "boom" not in str(info.value)
    assert info.value.__context__ is None
    assert svault.is_shredded(subject)


# -- item 9: str subjects are compared exactly -------------------------------------------------

_people_meta = sa.MetaData()
people = sa.Table(
    "people",
    _people_meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer", sa.String(64), nullable=False, index=True),
    sa.Column("phone", Encrypted(sa.String(32), subject="customer", searchable="phone:1")),
)
_loose_meta = sa.MetaData()
loose = sa.Table(  # no primary key
    "loose_people",
    _loose_meta,
    sa.Column("customer", sa.String(64), nullable=False),
    sa.Column("phone", Encrypted(sa.String(32), subject="customer", searchable="phone:1")),
)
_exact_meta = sa.MetaData()
exact = sa.Table(
    "exact_people",
    _exact_meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer", sa.String(64, collation="utf8mb4_nopad_bin"), nullable=False),
    sa.Column("phone", Encrypted(sa.String(32), subject="customer", searchable="phone:1")),
)

NFC = unicodedata.normalize("NFC", "Zoë Ångström")
NFD = unicodedata.normalize("NFD", NFC)


@pytest.fixture
def str_app(
    kms: LocalKms, db_url: str, tmp_path: Path
) -> Iterator[tuple[Vault, sa.Engine, Callable[[sa.Table, str, str], None]]]:
    """A vault whose subject type is str, with `people` and `loose_people` attached."""
    keys = f"sqlite:///{tmp_path / 'str_keys.db'}" if db_url.startswith("sqlite") else db_url
    v = Vault(kms, keys, subject_type="str")
    engine = sa.create_engine(_app_url(db_url))
    _people_meta.create_all(engine)
    _loose_meta.create_all(engine)
    v.attach(engine)

    def add(table: sa.Table, customer: str, phone: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(table).values(customer=customer, phone=phone))

    yield v, engine, add
    v.close()
    engine.dispose()


def _indexed(engine: sa.Engine, table: sa.Table) -> dict[str, bool]:
    """Stored subject -> whether its row still has a blind index."""
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.customer, table.c.phone_bidx)).all()
    return {customer: bidx is not None for customer, bidx in rows}


def test_a_subject_stored_in_nfd_is_swept(
    str_app: tuple[Vault, sa.Engine, Callable[[sa.Table, str, str], None]],
) -> None:
    v, engine, add = str_app
    assert NFC != NFD
    add(people, NFD, "+44 20 7946 0001")  # as macOS input methods send it
    add(people, NFC, "+44 20 7946 0002")
    add(people, NFC.lower(), "+44 20 7946 0003")  # another subject
    v.shred(NFC)
    assert _indexed(engine, people) == {NFD: False, NFC: False, NFC.lower(): True}
    v.shred(unicodedata.normalize("NFD", NFC.lower()))  # the caller's form need not be NFC
    assert _indexed(engine, people) == {NFD: False, NFC: False, NFC.lower(): False}


def test_case_and_trailing_spaces_name_other_subjects(
    str_app: tuple[Vault, sa.Engine, Callable[[sa.Table, str, str], None]],
) -> None:
    """On MariaDB's default collation 'alice' = 'Alice' = 'alice ': the sweep must still clear
    only the shredded subject's rows, not a live customer's search."""
    v, engine, add = str_app
    for i, name in enumerate(["Alice", "alice", "alice ", "ALICE"]):
        add(people, name, f"+44 20 7946 000{i}")
    v.shred("alice")
    assert _indexed(engine, people) == {
        "Alice": True,
        "alice": False,
        "alice ": True,
        "ALICE": True,
    }
    with engine.connect() as conn:  # the live customers are still found by their phone
        found = conn.execute(
            select(people.c.customer).where(people.c.phone == "+44 20 7946 0000")
        ).all()
    assert [r[0] for r in found] == ["Alice"]
    v.shred("alice ")
    assert _indexed(engine, people) == {
        "Alice": True,
        "alice": False,
        "alice ": False,
        "ALICE": True,
    }


def test_a_table_without_primary_key(
    str_app: tuple[Vault, sa.Engine, Callable[[sa.Table, str, str], None]], db_url: str
) -> None:
    """Without a primary key the rows are swept by value: exact where the database compares
    exactly, and reported (never over-swept) where it cannot tell 'Alice' from 'alice'."""
    v, engine, add = str_app
    add(loose, "Alice", "+44 20 7946 0001")
    add(loose, "alice", "+44 20 7946 0002")
    add(loose, "bob", "+44 20 7946 0003")
    v.shred("bob")
    assert _indexed(engine, loose) == {"Alice": True, "alice": True, "bob": False}
    if "mysql" in db_url:
        with pytest.raises(ErasureIncompleteError) as info:
            v.shred("alice")
        assert info.value.tables == ("loose_people",)
        assert "primary key" in str(info.value)
        assert "alice" not in str(info.value)
        assert _indexed(engine, loose) == {"Alice": True, "alice": True, "bob": False}
    else:
        v.shred("alice")
        assert _indexed(engine, loose) == {"Alice": True, "alice": False, "bob": False}


# -- item 9: the collation warning on MariaDB --------------------------------------------------


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    yield from _server_db("mariadb")


def _collation_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "has collation" in r.getMessage()
    ]


def test_attach_warns_about_a_case_insensitive_subject_column(
    kms: LocalKms, mariadb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(mariadb_url)
    _people_meta.create_all(engine)
    _exact_meta.create_all(engine)
    v = Vault(kms, mariadb_url, subject_type="str")
    try:
        with caplog.at_level(logging.WARNING, logger="ccvault"):
            v.attach(engine)
        warnings = _collation_warnings(caplog)
        (message,) = [w for w in warnings if w.startswith("people.customer")]
        assert "utf8mb4_general_ci" in message
        assert "utf8mb4_nopad_bin" in message
        assert not [w for w in warnings if w.startswith("exact_people.")]  # NO PAD binary
        # Exact comparisons on the binary column too.
        with engine.begin() as conn:
            for name in ["carol", "carol "]:
                conn.execute(sa.insert(exact).values(customer=name, phone="+44 20 7946 0009"))
        v.shred("carol")
        assert _indexed(engine, exact) == {"carol": False, "carol ": True}
    finally:
        v.close()
        engine.dispose()


def test_no_collation_warning_for_other_subject_types(
    kms: LocalKms, mariadb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(mariadb_url)
    Base.metadata.create_all(engine)
    _people_meta.create_all(engine)
    v = Vault(kms, mariadb_url, subject_type="uuid")
    try:
        with caplog.at_level(logging.DEBUG, logger="ccvault"):
            v.attach(engine)
        assert _collation_warnings(caplog) == []
    finally:
        v.close()
        engine.dispose()


def test_an_async_engine_is_checked_at_its_first_sweep(
    kms: LocalKms, mariadb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """attach() cannot query through an async engine outside a coroutine: the collation check
    runs at the engine's first sweep (under vault.run), and the sweep is exact there too."""
    sync_engine = sa.create_engine(mariadb_url)
    _people_meta.create_all(sync_engine)
    v = Vault(kms, mariadb_url, subject_type="str")
    v.attach(sync_engine)
    with sync_engine.begin() as conn:
        for name in ["Dora", "dora"]:
            conn.execute(sa.insert(people).values(customer=name, phone="+44 20 7946 0004"))
    v.detach(sync_engine)
    caplog.clear()

    async def main() -> None:
        engine = create_async_engine(mariadb_url.replace("mysql+pymysql://", "mysql+asyncmy://"))
        try:
            with caplog.at_level(logging.WARNING, logger="ccvault"):
                v.attach(engine)
                assert _collation_warnings(caplog) == []
                await v.run(v.shred, "dora")
            (message,) = _collation_warnings(caplog)
            assert message.startswith("people.customer")
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
        assert _indexed(sync_engine, people) == {"Dora": True, "dora": False}
    finally:
        v.close()
        sync_engine.dispose()


def test_backoff_under_vault_run_does_not_block_the_event_loop(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blocking(_seconds: float) -> None:
        raise AssertionError("time.sleep on the event loop")

    monkeypatch.setattr(_attach, "_sleep", blocking)
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await greenlet_spawn(_attach._pause, engine.sync_engine, 0.01)
        return loop.time() - start

    try:
        assert asyncio.run(main()) >= 0.01
    finally:
        asyncio.run(engine.dispose())
