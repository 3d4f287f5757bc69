"""vault.shred(subject, dry_run=True) (issue 13, item 6): what a shred would make unreadable —
keys, tables, columns, rows — with nothing destroyed or written, on SQLite, PostgreSQL and
MariaDB; the counts are those a real shred then makes unreadable."""

from __future__ import annotations

import asyncio
import json
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from typing_extensions import assert_type

from ccvault import NO_SUBJECT, SHREDDED, ErasureReceipt, ShredPreview, Vault
from ccvault.cli import main
from ccvault.erasure import EnginePreview, TablePreview
from ccvault.keyring import AfterShredHooks
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted, _subjects
from sqla_models import Customer, Everything, Interaction, Migrating


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


def _urls(db_url: str) -> list[str]:
    """The key store's database and the application's (one database on the servers)."""
    return list(dict.fromkeys([db_url, _app_url(db_url)]))


def _contents(url: str) -> dict[str, list[str]]:
    """Every row of every table of the database at ``url``, as stored (no decryption)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: sorted(repr(tuple(r)) for r in conn.execute(sa.text(f"SELECT * FROM {name}")))
                for name in sorted(sa.inspect(conn).get_table_names())
            }
    finally:
        engine.dispose()


def _snapshot(db_url: str) -> list[dict[str, list[str]]]:
    return [_contents(url) for url in _urls(db_url)]


class _Statements:
    """The SQL statements engines run, recorded."""

    def __init__(self, *engines: sa.Engine) -> None:
        self.seen: list[str] = []
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def writes(self) -> list[str]:
        return [
            s
            for s in self.seen
            if s.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE")
            or "FOR UPDATE" in s.upper()
            or "FOR SHARE" in s.upper()
        ]


def _table(engine: EnginePreview, table: sa.Table | str) -> TablePreview:
    """The preview of ``table`` (a model's table is told from a table of the same name that
    another test module defines by its encrypted columns: both are counted, as both are swept)."""
    if isinstance(table, str):
        (found,) = [t for t in engine.tables if t.table == table]
        return found
    encrypted = [c for c in table.columns if isinstance(c.type, Encrypted)]
    shape = (
        {c.name for c in encrypted},
        {f"{c.name}_bidx" for c in encrypted if getattr(c.type, "searchable", None)},
    )
    same = [
        t
        for t in engine.tables
        if t.table == table.name and (set(t.shredded_columns), set(t.cleared_indexes)) == shape
    ]
    assert same, table.name
    return same[0]


CUSTOMERS, CALLS, EVERYTHING = Customer.__table__, Interaction.__table__, Everything.__table__


def _customer(s: Session, tag: str, calls: int) -> uuid.UUID:
    c = Customer(name=f"name-{tag}", phone=f"+44 20 7946 {tag}", email=f"{tag}@example.org")
    s.add(c)
    s.flush()
    for i in range(calls):
        s.add(Interaction(customer_id=c.id, transcript=f"call {i} of {tag}"))
    s.add(Everything(owner=c.id, s=f"s-{tag}", i=int(tag)))
    s.commit()
    return c.id


@pytest.fixture
def people(app: sa.Engine) -> tuple[uuid.UUID, uuid.UUID]:
    with Session(app) as s:
        return _customer(s, "4401", calls=3), _customer(s, "4402", calls=1)


def _read(engine: sa.Engine, table: sa.Table, subject_column: str, subject: object) -> list[Any]:
    """The rows of ``subject`` in ``table`` through the attached engine (decrypted)."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).where(table.c[subject_column] == subject)))


def _store_engine(vault: Vault) -> sa.Engine:
    engine: sa.Engine = vault._store.engine  # type: ignore[attr-defined]
    return engine


# -- what a dry run reports is what the shred then does ----------------------------------------


def test_a_dry_run_reports_what_the_shred_then_makes_unreadable(
    vault: Vault, app: sa.Engine, people: tuple[uuid.UUID, uuid.UUID], db_url: str
) -> None:
    a, b = people
    before = _snapshot(db_url)
    statements = _Statements(app, _store_engine(vault))
    preview = vault.shred(a, dry_run=True)
    assert isinstance(preview, ShredPreview)
    # nothing written, nothing locked: neither the key store nor the application database
    assert statements.seen
    assert statements.writes() == []
    assert _snapshot(db_url) == before
    assert not vault.is_shredded(a)

    assert preview.installation_id == vault.installation_id
    assert preview.subject_ref == vault.subject_ref(a).hex()
    assert (preview.subject_known, preview.already_shredded) == (True, False)
    assert len(preview.keys_to_destroy) == 1
    (engine,) = preview.engines
    assert "app.db" in engine.database or engine.database.startswith(("postgresql", "mysql"))
    customers = _table(engine, CUSTOMERS)
    assert (customers.subject_column, customers.rows) == ("id", 1)
    assert customers.shredded_columns == ("name", "phone", "email")
    assert customers.cleared_indexes == ("phone_bidx", "email_bidx")
    assert {c.label for c in customers.columns} == {
        "customers.name",
        "customers.phone",
        "customers.email",
    }
    calls = _table(engine, CALLS)
    assert (calls.subject_column, calls.rows, calls.shredded_columns) == (
        "customer_id",
        3,
        ("transcript",),
    )
    assert calls.cleared_indexes == ()
    assert _table(engine, EVERYTHING).rows == 1
    assert _table(engine, Migrating.__table__).rows == 0
    assert preview.rows == sum(t.rows for t in engine.tables)
    assert preview.complete
    assert preview.unswept_indexes == ()

    receipt = vault.shred(a)
    assert isinstance(receipt, ErasureReceipt)
    assert receipt.destroyed_keys == preview.keys_to_destroy
    assert receipt.subject_was_known is preview.subject_known
    assert receipt.subject_ref == preview.subject_ref
    # the rows the dry run counted read SHREDDED, in the columns it named, and the blind-index
    # columns it named are NULL; the other customer is untouched
    for table in (CUSTOMERS, CALLS, EVERYTHING):
        counted = _table(engine, table)
        rows = _read(app, table, counted.subject_column, a)
        assert len(rows) == counted.rows
        for row in rows:
            m = row._mapping
            assert all(m[c] is SHREDDED for c in counted.shredded_columns if m[c] is not None)
            assert all(m[c] is None for c in counted.cleared_indexes)
        for row in _read(app, table, counted.subject_column, b):
            m = row._mapping
            assert not any(m[c] is SHREDDED for c in counted.shredded_columns)
            assert all(m[c] is not None for c in counted.cleared_indexes)
    assert [r.name for r in _read(app, CUSTOMERS, "id", a)] == [SHREDDED]


def test_an_already_shredded_subject(
    vault: Vault, app: sa.Engine, people: tuple[uuid.UUID, uuid.UUID], db_url: str
) -> None:
    a, _ = people
    receipt = vault.shred(a)
    before = _snapshot(db_url)
    preview = vault.shred(a, dry_run=True)
    assert _snapshot(db_url) == before
    # a repeat destroys no key (it returns the stored receipt) and sweeps again
    assert (preview.subject_known, preview.already_shredded) == (True, True)
    assert preview.keys_to_destroy == ()
    assert receipt.destroyed_keys != ()
    assert _table(preview.engines[0], CUSTOMERS).rows == 1
    assert vault.shred(a) == receipt


def test_an_unknown_subject_gets_no_key_and_no_head(
    vault: Vault, app: sa.Engine, people: tuple[uuid.UUID, uuid.UUID], db_url: str
) -> None:
    nobody = uuid.uuid4()
    before = _snapshot(db_url)
    preview = vault.shred(nobody, dry_run=True)
    assert _snapshot(db_url) == before  # no head, no key, no fence
    assert (preview.subject_known, preview.already_shredded) == (False, False)
    assert preview.keys_to_destroy == ()
    assert preview.rows == 0
    assert not vault.is_shredded(nobody)  # not fenced by the dry run
    receipt = vault.shred(nobody)
    assert receipt.subject_was_known is False
    assert receipt.destroyed_keys == ()


def test_a_read_only_vault_previews_and_writes_nothing(
    kms: LocalKms, vault: Vault, app: sa.Engine, people: tuple[uuid.UUID, uuid.UUID], db_url: str
) -> None:
    a, _ = people
    mine = vault.shred(a, dry_run=True)
    before = _snapshot(db_url)
    other = sa.create_engine(_app_url(db_url))
    try:
        with Vault(kms, db_url, readonly=True) as ro:
            ro.attach(other)
            statements = _Statements(other, _store_engine(ro))
            theirs = ro.shred(a, dry_run=True)
            assert statements.writes() == []
            ro.detach(other)
    finally:
        other.dispose()
    assert _snapshot(db_url) == before
    assert theirs.keys_to_destroy == mine.keys_to_destroy
    assert (theirs.subject_known, theirs.already_shredded) == (True, False)
    assert [t.model_dump() for t in theirs.engines[0].tables] == [
        t.model_dump() for t in mine.engines[0].tables
    ]


def test_a_detached_engine_is_not_counted(
    vault: Vault, app: sa.Engine, people: tuple[uuid.UUID, uuid.UUID], db_url: str
) -> None:
    a, _ = people
    second = sa.create_engine(_app_url(db_url))
    try:
        vault.attach(second)
        assert len(vault.shred(a, dry_run=True).engines) == 2
        vault.detach(second)
        assert len(vault.shred(a, dry_run=True).engines) == 1
        vault.detach(app)
        alone = vault.shred(a, dry_run=True)
    finally:
        second.dispose()
    # no engine: the shred here makes the values unreadable and sweeps nothing, and says so
    assert alone.engines == ()
    assert alone.rows == 0
    assert alone.keys_to_destroy != ()
    assert {"customers.email", "customers.phone"} <= set(alone.unswept_indexes)
    assert alone.unswept_indexes == tuple(sorted(vault._ring.searchable_labels()))


# Tables of this process's models that the test database lacks, or has without its blind-index
# column for email (a schema behind the models): skipped, or partly swept, as the sweep does.
_elsewhere_meta = sa.MetaData()
elsewhere = sa.Table(
    "dry_elsewhere",
    _elsewhere_meta,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("phone", Encrypted(sa.String(32), subject="id", searchable="phone:1")),
)
_behind_meta = sa.MetaData()
behind = sa.Table(
    "dry_behind",
    _behind_meta,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("phone", Encrypted(sa.String(32), subject="id", searchable="phone:1")),
    sa.Column("email", Encrypted(sa.String(64), subject="id", searchable="email")),
)
_behind_in_db = sa.Table(  # what the database has of dry_behind: no email_bidx
    "dry_behind",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("phone", sa.LargeBinary),
    sa.Column("phone_bidx", sa.LargeBinary),
    sa.Column("email", sa.LargeBinary),
)
_int_meta = sa.MetaData()
by_number = sa.Table(  # a subject column of another type: never written through a uuid vault
    "dry_by_number",
    _int_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("note", Encrypted(sa.String(32), subject="id")),
)


def test_tables_the_database_lacks_are_skipped_as_the_sweep_skips_them(
    vault: Vault, app: sa.Engine, db_url: str
) -> None:
    subject = uuid.uuid4()
    _behind_in_db.create(app)
    try:
        with app.begin() as conn:
            conn.execute(sa.insert(behind).values(id=subject, phone="+44 20 7946 0009"))
        preview = vault.shred(subject, dry_run=True)
        (engine,) = preview.engines
        skipped = {s.table: s.reason for s in engine.skipped}
        assert skipped["dry_elsewhere"] == "the database has no such table"
        assert "never written through this vault" in skipped["dry_by_number"]
        assert "dry_elsewhere" not in {t.table for t in engine.tables}
        partly = _table(engine, "dry_behind")
        assert partly.rows == 1
        assert partly.shredded_columns == ("phone", "email")
        assert partly.cleared_indexes == ("phone_bidx",)  # email_bidx: not in the database
        # the key store knows dry_behind.email has blind indexes, and none is swept here;
        # dry_elsewhere.phone never had any (never written)
        assert preview.unswept_indexes == ("dry_behind.email",)
        vault.shred(subject)  # the sweep skips them too: no ErasureIncompleteError
        with app.connect() as conn:
            row = conn.execute(sa.select(behind.c.phone, behind.c.phone_bidx)).one()
        assert (row.phone, row.phone_bidx) == (SHREDDED, None)
    finally:
        _behind_in_db.drop(app)


def test_a_wrong_subject_raises_type_error_and_writes_nothing(
    vault: Vault, app: sa.Engine, db_url: str
) -> None:
    before = _snapshot(db_url)
    for wrong in (12345, "not-a-uuid", None, NO_SUBJECT, b"\x00" * 16):
        with pytest.raises(TypeError, match="subject"):
            vault.shred(wrong, dry_run=True)
    assert _snapshot(db_url) == before


# -- str subjects: counted exactly whatever the database's collation --------------------------


class StrBase(DeclarativeBase):
    pass


class StrCall(StrBase):
    __tablename__ = "dry_str_calls"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer: Mapped[str] = mapped_column(String(64), index=True)
    phone: Mapped[str] = mapped_column(
        Encrypted(String(32), subject="customer", searchable="phone")
    )


def test_str_subjects_are_counted_as_the_sweep_matches_them(
    kms: LocalKms, tmp_path: Path, db_url: str
) -> None:
    """On MariaDB 'alice' = 'Alice' = 'alice ' in the default collation: the dry run of 'alice'
    counts alice's row only, as the sweep clears it only; 'Zoë' stored in NFD is 'Zoë'."""
    zoe_nfd = unicodedata.normalize("NFD", "Zoë")
    engine = sa.create_engine(_app_url(db_url))
    StrBase.metadata.create_all(engine)
    with Vault(kms, f"sqlite:///{tmp_path / 'str-keys.db'}", subject_type="str") as v:
        v.attach(engine)
        try:
            with Session(engine) as s:
                for i, who in enumerate(("alice", "Alice", "alice ", zoe_nfd, zoe_nfd)):
                    s.add(StrCall(id=i, customer=who, phone=f"+1 555 010{i}"))
                s.commit()
            assert _table(v.shred("alice", dry_run=True).engines[0], "dry_str_calls").rows == 1
            zoe = v.shred("Zoë", dry_run=True)
            assert _table(zoe.engines[0], "dry_str_calls").rows == 2
            v.shred("Zoë")
            v.shred("alice")
            with engine.connect() as conn:
                t = StrCall.__table__
                cleared = conn.execute(
                    sa.select(t.c.customer).where(t.c.phone_bidx.is_(None))
                ).scalars()
                assert sorted(cleared) == sorted(["alice", zoe_nfd, zoe_nfd])
        finally:
            v.detach(engine)
            StrBase.metadata.drop_all(engine)
            engine.dispose()


# -- the parts: hooks, faults, asyncio ---------------------------------------------------------


def test_the_hook_registry_keeps_each_dry_run_with_its_hook() -> None:
    hooks = AfterShredHooks()

    def sweep_a(_s: object) -> list[str]:
        return []

    def sweep_b(_s: object) -> list[str]:
        return []

    def sweep_c(_s: object) -> list[str]:
        return []

    def preview_a(_s: object) -> str:
        return "a"

    def preview_c(_s: object) -> str:
        return "c"

    hooks.add(sweep_a, preview=preview_a)
    hooks.add(sweep_b)  # no dry run: runs on shred, not on a preview
    hooks.add(sweep_c, preview_c)
    assert list(hooks) == [sweep_a, sweep_b, sweep_c]
    assert hooks.previews() == [preview_a, preview_c]
    hooks.remove(sweep_a)
    assert list(hooks) == [sweep_b, sweep_c]
    assert hooks.previews() == [preview_c]
    hooks.remove(sweep_b)
    hooks.remove(sweep_b)  # not registered: ignored
    assert hooks.previews() == [preview_c]
    hooks.remove(sweep_c)
    assert (len(hooks), hooks.previews()) == (0, [])


def test_a_preview_hook_of_the_wrong_type_is_refused(svault: Vault) -> None:
    def sweep(_s: object) -> list[tuple[str, str]]:
        return []

    svault._ring.after_shred.add(sweep, preview=lambda _s: 42)
    with pytest.raises(TypeError, match="EnginePreview"):
        svault.shred(uuid.uuid4(), dry_run=True)


def test_a_table_that_cannot_be_read_is_named_not_counted(
    svault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqla_models import Base

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    svault.attach(engine)
    real = _subjects.SubjectMatch.count

    def flaky(self: Any, conn: sa.Connection, column: sa.Column[Any]) -> int:
        if column.table.name == "interactions":
            raise sa.exc.OperationalError("SELECT ...", {"p": "secret-subject"}, RuntimeError())
        return real(self, conn, column)

    monkeypatch.setattr(_subjects.SubjectMatch, "count", flaky)
    try:
        preview = svault.shred(uuid.uuid4(), dry_run=True)
    finally:
        svault.detach(engine)
        engine.dispose()
    (found,) = preview.engines
    # (another test module's table named interactions is counted, and fails, too)
    assert {(t.table, t.reason) for t in found.not_counted} == {("interactions", "RuntimeError")}
    assert "secret-subject" not in preview.model_dump_json()
    assert not preview.complete
    assert "customers" in {t.table for t in found.tables}


def test_a_dry_run_through_an_async_engine(kms: LocalKms, sqlite_url: str, tmp_path: Path) -> None:
    from sqla_models import Base

    url = f"sqlite:///{tmp_path / 'app.db'}"
    sync_engine = sa.create_engine(url)
    Base.metadata.create_all(sync_engine)
    sync_engine.dispose()

    async def run() -> tuple[ShredPreview, ShredPreview]:
        vault = Vault(kms, sqlite_url, subject_type="uuid")
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
        try:
            vault.attach(engine)
            from sqlalchemy.ext.asyncio import AsyncSession

            subject = uuid.uuid4()
            async with AsyncSession(engine) as s:
                s.add(Customer(id=subject, name="n", phone="+44 20 7946 0003", email="c@x.org"))
                await s.commit()
            first = await vault.run(vault.shred, subject, dry_run=True)
            await vault.run(vault.shred, subject)
            second = await vault.run(vault.shred, subject, dry_run=True)
            return first, second
        finally:
            await engine.dispose()
            vault.close()

    first, second = asyncio.run(run())
    assert _table(first.engines[0], CUSTOMERS).rows == 1
    assert len(first.keys_to_destroy) == 1
    assert second.already_shredded


def test_shred_keeps_its_types(tmp_path: Path) -> None:
    """``shred(x)`` is an ErasureReceipt and ``shred(x, dry_run=True)`` a ShredPreview, to mypy
    (the overloads) and at run time."""
    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}", subject_type="int") as v:
        assert_type(v.shred(7, dry_run=True), ShredPreview)
        assert_type(v.shred(7), ErasureReceipt)
        assert isinstance(v.shred(8, dry_run=True), ShredPreview)
        assert isinstance(v.shred(8), ErasureReceipt)
        assert isinstance(v.shred(8, dry_run=False), ErasureReceipt)


def test_the_overloads_type_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy sees ``shred(x)`` as an ErasureReceipt and ``shred(x, dry_run=True)`` as a
    ShredPreview (``assert_type`` above is checked only by a type checker)."""
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "uses_shred.py"
    snippet.write_text(
        "from typing_extensions import assert_type\n"
        "from ccvault import ErasureReceipt, ShredPreview, Vault\n"
        "def f(v: Vault, flag: bool) -> None:\n"
        "    assert_type(v.shred(1), ErasureReceipt)\n"
        "    assert_type(v.shred(1, dry_run=False), ErasureReceipt)\n"
        "    assert_type(v.shred(1, dry_run=True), ShredPreview)\n"
        "    assert_type(v.shred(1, dry_run=flag), ErasureReceipt | ShredPreview)\n"
    )
    monkeypatch.setenv("MYPYPATH", str(Path(__file__).parents[1] / "src"))
    monkeypatch.chdir(tmp_path)  # no project config: the flags below
    # ccvault's own errors are mypy --strict's business in CI: only the snippet is checked here
    flags = ["--strict", "--python-version", "3.10", "--follow-imports", "silent"]
    out, err, status = api.run([*flags, "--cache-dir", str(tmp_path / "c"), str(snippet)])
    assert status == 0, out + err


# -- ccvault shred --------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["shred", *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.fixture
def cli_people(
    people: tuple[uuid.UUID, uuid.UUID], vault_settings: None
) -> tuple[uuid.UUID, uuid.UUID]:
    """Customers a and b in the attached application database, and CCVAULT_* naming the
    vault's installation for the commands."""
    return people


def test_cli_dry_run_without_models_says_it_sweeps_nothing(
    vault: Vault,
    app: sa.Engine,
    cli_people: tuple[uuid.UUID, uuid.UUID],
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, _ = cli_people
    before = _snapshot(db_url)
    assert main(["shred", "--dry-run", str(a)]) == 0
    captured = capsys.readouterr()
    assert _snapshot(db_url) == before
    out = json.loads(captured.out)
    preview = ShredPreview.model_validate({k: v for k, v in out.items() if k != "warning"})
    assert preview.keys_to_destroy == vault.shred(a, dry_run=True).keys_to_destroy
    assert preview.engines == ()
    assert "clears no blind index" in out["warning"]
    assert "clears no blind index" in captured.err
    assert str(a) not in captured.err


def test_cli_dry_run_then_shred_with_models(
    vault: Vault,
    app: sa.Engine,
    cli_people: tuple[uuid.UUID, uuid.UUID],
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = cli_people
    where = ["--models", "sqla_models", "--database-url", _app_url(db_url)]
    before = _snapshot(db_url)
    out = _cli(capsys, "--dry-run", *where, str(a))
    assert _snapshot(db_url) == before
    assert "warning" not in out
    preview = ShredPreview.model_validate(out)
    assert _table(preview.engines[0], CUSTOMERS).rows == 1
    assert _table(preview.engines[0], CALLS).rows == 3

    done = _cli(capsys, *where, str(a))
    receipt = ErasureReceipt.model_validate(done["receipt"])
    assert receipt.verify(vault.receipt_public_key, installation_id=vault.installation_id)
    assert receipt.destroyed_keys == preview.keys_to_destroy
    table = CUSTOMERS
    vault._ring.evict_all()  # the command shredded in another vault: past this one's cache_ttl
    (row,) = _read(app, table, "id", a)
    assert (row.phone, row.phone_bidx, row.email_bidx) == (SHREDDED, None, None)
    (other,) = _read(app, table, "id", b)
    assert other.phone_bidx is not None
    again = _cli(capsys, *where, str(a))  # idempotent: the same receipt
    assert again["receipt"] == done["receipt"]


def test_cli_shred_without_models_destroys_keys_and_leaves_blind_indexes(
    vault: Vault,
    app: sa.Engine,
    cli_people: tuple[uuid.UUID, uuid.UUID],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, _ = cli_people
    out = _cli(capsys, str(a))
    assert "clears no blind index" in out["warning"]
    assert ErasureReceipt.model_validate(out["receipt"]).subject_ref == vault.subject_ref(a).hex()
    vault._ring.evict_all()  # the command shredded in another vault: past this one's cache_ttl
    (row,) = _read(app, CUSTOMERS, "id", a)
    assert row.phone is SHREDDED
    assert row.phone_bidx is not None  # what --models and --database-url would have cleared


def test_cli_shred_reports_an_incomplete_sweep_with_the_receipt(
    vault: Vault,
    app: sa.Engine,
    cli_people: tuple[uuid.UUID, uuid.UUID],
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ccvault.sqlalchemy import _attach

    def cannot(*_args: Any) -> None:
        raise _attach._CannotSweep("it has no primary key")

    monkeypatch.setattr(_attach, "_sweep", cannot)
    a, _ = cli_people
    argv = ["--models", "sqla_models", "--database-url", _app_url(db_url), str(a)]
    assert main(["shred", *argv]) == 3
    captured = capsys.readouterr()
    receipt = ErasureReceipt.model_validate(json.loads(captured.out)["receipt"])
    assert receipt.subject_ref == vault.subject_ref(a).hex()
    assert "blind indexes not cleared" in captured.err
    assert str(a) not in captured.err
    assert vault.is_shredded(a)


def test_cli_shred_errors(
    vault: Vault,
    app: sa.Engine,
    vault_settings: None,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    before = _snapshot(db_url)
    for argv in (["secret-customer-7"], ["--dry-run", "secret-customer-7"]):
        assert main(["shred", *argv]) == 1
        err = capsys.readouterr().err
        assert "subject type is uuid" in err
        assert "secret-customer-7" not in err
    with pytest.raises(SystemExit):
        main(["shred", "--models", "sqla_models", str(uuid.uuid4())])  # no --database-url
    assert "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shred", "--dry-run"])  # no SUBJECT
    assert _snapshot(db_url) == before
    # an empty key store: no installation is created, by a shred or by its dry run
    empty = tmp_path / "empty.db"
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{empty}")
    for argv in (["--dry-run", str(uuid.uuid4())], [str(uuid.uuid4())]):
        assert main(["shred", *argv]) == 1
        assert "ccvault shred:" in capsys.readouterr().err
    assert not empty.exists() or _contents(f"sqlite:///{empty}") == {}
