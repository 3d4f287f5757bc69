"""vault.scrub / `ccvault scrub`: every unreadable value found by location, read-only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_models
from ccvault import ConfigurationError, Vault
from ccvault.cli import main
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted, ScrubReport
from ccvault.sqlalchemy._scrub import tables_of
from raw_values import get_raw, set_raw, tampered, truncated
from sqla_models import Base, Customer, Interaction


def _snapshot(url: str) -> list[str]:
    """Copy the key store's tables aside, as a backup taken now would."""
    engine = sa.create_engine(url)
    names = [n for n in sa.inspect(engine).get_table_names() if n.startswith("ccvault_")]
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f"CREATE TABLE bak_{name} AS SELECT * FROM {name}")
    engine.dispose()
    return names


def _restore(url: str, names: list[str]) -> None:
    """Put the copied key store back (the application database stays as it is)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f"DELETE FROM {name}")
            conn.exec_driver_sql(f"INSERT INTO {name} SELECT * FROM bak_{name}")
            conn.exec_driver_sql(f"DROP TABLE bak_{name}")
    engine.dispose()


def _customer(s: Session, name: str) -> Customer:
    c = Customer(name=name, phone=f"+1 555 {len(name):04}")
    s.add(c)
    s.flush()
    s.add(Interaction(customer_id=c.id, transcript=f"call of {name}"))
    s.commit()
    return c


class Damage:
    """An application database with every kind of value the scrub must tell apart."""

    def __init__(self, app: sa.Engine, vault: Vault, db_url: str) -> None:
        with Session(app) as s:
            ok, shredded, cut, moved, _ = (_customer(s, f"c{i}").id for i in range(5))
        vault.shred(shredded)
        names = _snapshot(db_url)  # the key store backup
        with Session(app) as s:  # a customer the restored key store will know nothing about
            late = _customer(s, "late").id
            self.late_call = s.scalars(
                sa.select(Interaction.id).where(Interaction.customer_id == late)
            ).one()
        _restore(db_url, names)
        t = Customer.__table__
        set_raw(app, t, "phone", cut, truncated(get_raw(app, t, "phone", cut)))  # truncation
        set_raw(app, t, "phone", moved, get_raw(app, t, "phone", ok))  # another customer's
        self.ids = {"ok": ok, "shredded": shredded, "cut": cut, "moved": moved, "late": late}
        self.expected = {
            ("customers", "name", (late,)),
            ("customers", "phone", (late,)),
            ("customers", "phone", (cut,)),
            ("customers", "phone", (moved,)),
            ("interactions", "transcript", (self.late_call,)),
        }


@pytest.fixture
def damage(app: sa.Engine, vault: Vault, db_url: str) -> Damage:
    return Damage(app, vault, db_url)


@pytest.fixture
def restored(kms: LocalKms, db_url: str, damage: Damage) -> Iterator[Vault]:
    """A process started on the restored key store."""
    with Vault(kms, db_url) as v:
        yield v


def _counts(report: ScrubReport) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return {
        (c.table, c.column): (c.rows, c.readable, c.shredded, c.unreadable) for c in report.columns
    }


def test_scrub_finds_truncated_moved_and_restore_mismatched_values(
    app: sa.Engine, damage: Damage, restored: Vault, db_url: str
) -> None:
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    keys = sa.create_engine(db_url)
    with keys.connect() as conn:
        before = conn.exec_driver_sql("SELECT count(*) FROM ccvault_keys").scalar()
    progress: list[tuple[str, int, int]] = []
    sa.event.listen(app, "before_cursor_execute", record)
    try:
        report = restored.scrub(app, sqla_models, batch=2, progress=lambda *a: progress.append(a))
    finally:
        sa.event.remove(app, "before_cursor_execute", record)
    counts = _counts(report)
    assert counts[("customers", "name")] == (6, 4, 1, 1)
    assert counts[("customers", "phone")] == (6, 2, 1, 3)
    assert counts[("customers", "email")] == (6, 0, 0, 0)  # all NULL
    assert counts[("interactions", "transcript")] == (6, 4, 1, 1)
    assert counts[("everything", "s")] == (0, 0, 0, 0)
    assert {(u.table, u.column, u.primary_key) for u in report.unreadable} == damage.expected
    assert not report.clean
    assert [p for p in progress if p[0] == "customers"] == [
        ("customers", 2, 6),
        ("customers", 4, 6),
        ("customers", 6, 6),
    ]
    # read-only, paged by key: SELECTs only, no OFFSET, nothing written to the key store either
    assert statements
    assert all(sql.lstrip().upper().startswith("SELECT") for sql, _ in statements)
    pages = [(sql, p) for sql, p in statements if "customers.id >" in sql]
    assert len(pages) == 3  # after the first page: WHERE id > the last key seen
    for sql, params in statements:
        if "OFFSET" in sql:  # SQLite writes LIMIT ? OFFSET ?, always with offset 0
            assert app.dialect.name == "sqlite"
            assert params[-1] == 0
    with keys.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ccvault_keys").scalar() == before
    keys.dispose()
    as_json = json.loads(json.dumps(report.as_dict()))
    assert {"table": "customers", "column": "phone", "primary_key": [str(damage.ids["cut"])]} in (
        as_json["unreadable"]
    )


def test_scrub_of_a_clean_database(app: sa.Engine, vault: Vault) -> None:
    with Session(app) as s:
        for i in range(3):
            _customer(s, f"c{i}")
    report = vault.scrub(app, [Customer, Interaction.__table__], batch=1000)
    assert report.clean
    assert _counts(report)[("customers", "phone")] == (3, 3, 0, 0)
    assert [c.table for c in report.columns] == ["customers"] * 3 + ["interactions"]
    with app.connect() as conn:  # a Connection works as the bind too
        assert vault.scrub(conn, Base).clean


class _Keyed(DeclarativeBase):
    pass


class TenantNote(_Keyed):
    __tablename__ = "tenant_notes"
    tenant: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner: Mapped[uuid.UUID] = mapped_column()
    body: Mapped[str] = mapped_column(Encrypted(String(50), subject="owner"))


def test_scrub_pages_through_a_composite_primary_key(app: sa.Engine, vault: Vault) -> None:
    _Keyed.metadata.create_all(app)
    rows = [
        {"tenant": t, "id": uuid.uuid4(), "owner": uuid.uuid4(), "body": f"note {t}/{i}"}
        for t in (1, 2, 3)
        for i in range(3)
    ]
    with Session(app) as s:
        s.execute(sa.insert(TenantNote), rows)
        s.commit()
    bad = rows[4]
    stmt = sa.text("UPDATE tenant_notes SET body = :b WHERE id = :i").bindparams(
        sa.bindparam("b", type_=sa.LargeBinary()), sa.bindparam("i", type_=sa.Uuid())
    )
    t = TenantNote.__table__
    raw = sa.select(sa.type_coerce(t.c.body, sa.LargeBinary())).where(t.c.id == bad["id"])
    with app.begin() as conn:
        blob = bytes(conn.execute(raw).scalar_one())
        conn.execute(stmt, {"b": tampered(blob), "i": bad["id"]})
    report = vault.scrub(app, TenantNote, batch=2)
    assert _counts(report)[("tenant_notes", "body")] == (9, 8, 0, 1)
    assert [u.primary_key for u in report.unreadable] == [(bad["tenant"], bad["id"])]


def test_what_scrub_accepts(svault: Vault, tmp_path: Path) -> None:
    everything = {t.name for t in Base.metadata.tables.values()}
    assert {t.name for t in tables_of(sqla_models)} == everything
    assert {t.name for t in tables_of(Base)} == everything
    assert {t.name for t in tables_of(Base.metadata)} == everything
    assert [t.name for t in tables_of([Customer, Interaction.__table__])] == [
        "customers",
        "interactions",
    ]
    for bad in ("sqla_models", 42, int):
        with pytest.raises(TypeError, match=r"scrub|mapped"):
            tables_of(bad)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    plain = sa.MetaData()
    sa.Table("plain", plain, sa.Column("id", sa.Integer, primary_key=True))
    keyless = sa.MetaData()
    sa.Table(
        "keyless",
        keyless,
        sa.Column("owner", sa.Uuid),
        sa.Column("v", Encrypted(String(5), subject="owner")),
    )
    keyless.create_all(engine)
    with pytest.raises(ConfigurationError, match="no table with encrypted columns"):
        svault.scrub(engine, plain)
    with pytest.raises(ConfigurationError, match="'keyless' has no primary key"):
        svault.scrub(engine, keyless)
    for batch in (0, -1, True, 1.5):
        with pytest.raises(ConfigurationError, match="batch"):
            svault.scrub(engine, Base, batch=batch)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="synchronous"):
        svault.scrub(str(engine.url), Base)
    engine.dispose()


def test_cli_scrub(
    app: sa.Engine, damage: Damage, vault_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    url = app.url.render_as_string(hide_password=False)
    status = main(["scrub", "--models", "sqla_models", "--database-url", url, "--batch", "2"])
    out, err = capsys.readouterr()
    assert status == 3
    report = json.loads(out)
    found = {(u["table"], u["column"], tuple(u["primary_key"])) for u in report["unreadable"]}
    assert found == {(t, c, tuple(str(v) for v in pk)) for t, c, pk in damage.expected}
    assert "ccvault scrub: customers: 6/6 rows" in err
    assert "interactions: 6/6 rows" in err


def test_cli_scrub_clean_and_errors(
    app: sa.Engine, vault_settings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    url = app.url.render_as_string(hide_password=False)
    with Session(app) as s:
        _customer(s, "c")
    assert main(["scrub", "--models", "sqla_models", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable"] == []
    assert main(["scrub", "--models", "no_such_module_x", "--database-url", url]) == 1
    assert "cannot import the models" in capsys.readouterr().err
    assert main(["scrub", "--models", "sqla_models", "--database-url", "nonsense://"]) == 1
    assert "--database-url" in capsys.readouterr().err
    for bad in ("nonsense://app:s3cr3t-pw@h/x", "postgresql://app:s3cr3t-pw@h:port/x"):
        assert main(["scrub", "--models", "sqla_models", "--database-url", bad]) == 1
        err = capsys.readouterr().err
        assert "--database-url" in err
        assert "s3cr3t-pw" not in err
    with pytest.raises(SystemExit):
        main(["scrub", "--models", "sqla_models", "--database-url", url, "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["scrub", "--database-url", url])  # --models is required


def test_cli_scrub_on_an_empty_key_store_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped key-store URL is reported; scrub opens the vault read-only."""
    from ccvault.kms import LocalKms

    LocalKms.generate(tmp_path / "m.key")
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'm.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'typo.db'}")
    app = f"sqlite:///{tmp_path / 'app.db'}"
    assert main(["scrub", "--models", "sqla_models", "--database-url", app]) == 1
    assert "no ccvault installation" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()
