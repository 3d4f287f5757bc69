"""Alembic autogenerate and upgrade of ``Encrypted`` columns on SQLite, PostgreSQL and MariaDB.

The ``env.py`` hooks are read from docs/sqlalchemy.md (section "Alembic"), so these tests run the
exact recipe users copy.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.dialects import mysql, postgresql

import ccvault.sqlalchemy
from ccvault import Vault
from ccvault.sqlalchemy import Encrypted

DOC = Path(__file__).resolve().parents[1] / "docs" / "sqlalchemy.md"

# Storage the docs promise (docs/sqlalchemy.md, "Types"); MariaDB sizes String(n) as 4n + 51.
STORAGE = {
    "sqlite": {"phone": "BLOB", "notes": "BLOB", "profile": "BLOB"},
    "postgresql": {"phone": "BYTEA", "notes": "BYTEA", "profile": "BYTEA"},
    "mariadb": {"phone": f"VARBINARY({4 * 32 + 51})", "notes": "LONGBLOB", "profile": "LONGBLOB"},
}


def _doc_recipe() -> tuple[str, str]:
    """The hooks block and the ``context.configure(...)`` block of the docs' Alembic section."""
    section = DOC.read_text(encoding="utf-8").split("\n## Alembic\n", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    hooks = [b for b in blocks if "def render_item" in b and "def include_name" in b]
    configure = [b for b in blocks if b.startswith("context.configure(")]
    assert len(hooks) == 1, "docs/sqlalchemy.md: one Alembic hooks block expected"
    assert len(configure) == 1, "docs/sqlalchemy.md: one context.configure block expected"
    return hooks[0], configure[0]


def _doc_hooks() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(_doc_recipe()[0], namespace)
    return namespace


def _env_py() -> str:
    """A migrations/env.py made of the docs' hooks and configure call, plus the usual glue."""
    hooks, configure = _doc_recipe()
    return (
        hooks
        + "\n\nimport sqlalchemy as sa\n"
        + "from alembic import context\n\n"
        + "config = context.config\n"
        + 'target_metadata = config.attributes["target_metadata"]\n'
        + 'engine = sa.create_engine(config.attributes["url"])\n'
        + "try:\n"
        + "    with engine.connect() as connection:\n"
        + textwrap.indent(configure, " " * 8)
        + "        with context.begin_transaction():\n"
        + "            context.run_migrations()\n"
        + "finally:\n"
        + "    engine.dispose()\n"
    )


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "contacts",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("region", sa.String(8)),
        sa.Column("phone", Encrypted(sa.String(32), subject="id"), nullable=False),
        sa.Column("notes", Encrypted(sa.Text, subject="id", context="contacts.remarks")),
        sa.Column("profile", Encrypted(sa.JSON, subject="id")),
        sa.Column("email", Encrypted(sa.String(254), subject="id", searchable="email")),
    )
    return md


def _alembic(tmp_path: Path, url: str, md: sa.MetaData) -> Config:
    cfg = Config(str(tmp_path / "alembic.ini"))
    cfg.print_stdout = lambda *a, **kw: None  # type: ignore[method-assign]
    script_dir = tmp_path / "migrations"
    command.init(cfg, str(script_dir), template="generic")
    (script_dir / "env.py").write_text(_env_py(), encoding="utf-8")
    cfg.set_main_option("script_location", str(script_dir))
    cfg.attributes["url"] = url
    cfg.attributes["target_metadata"] = md
    return cfg


def _column_types(engine: sa.Engine, table: str) -> dict[str, str]:
    cols = sa.inspect(engine).get_columns(table)
    return {c["name"]: str(c["type"].compile(dialect=engine.dialect)) for c in cols}


def test_autogenerate_upgrade_write_read(
    vault: Vault, db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["db_url"]
    url = db_url.replace("keys.db", "app.db") if backend == "sqlite" else db_url
    engine = sa.create_engine(url)
    md = _metadata()
    cfg = _alembic(tmp_path, url, md)
    try:
        if backend != "sqlite":  # the key store shares the database: include_name must skip it
            assert "ccvault_keys" in sa.inspect(engine).get_table_names()

        # 1. Autogenerate against the empty database, with the docs' hooks.
        script = command.revision(cfg, message="contacts", autogenerate=True)
        assert script is not None
        assert not isinstance(script, list)
        assert script.path is not None
        code = Path(script.path).read_text(encoding="utf-8")
        assert "from ccvault.sqlalchemy import Encrypted" in code
        assert "Encrypted(sa.String(length=32), subject='id')" in code
        assert "Encrypted(sa.Text(), subject='id', context='contacts.remarks')" in code
        assert "Encrypted(sa.JSON(), subject='id')" in code
        assert "Encrypted(sa.String(length=254), subject='id', searchable='email')" in code
        assert "BlindIndex('email', context='contacts.email', length=8)" in code
        assert "ccvault.sqlalchemy._types" not in code
        assert "ccvault_" not in code  # no drop_table for the key store

        # 2. Run it: the columns are binary, as docs/sqlalchemy.md says.
        command.upgrade(cfg, "head")
        types = _column_types(engine, "contacts")
        for name, expected in STORAGE[backend].items():
            assert types[name] == expected, (name, types)
        command.check(cfg)  # a second autogenerate finds nothing to change

        # 3. An attached engine writes and reads through the migrated table.
        vault.attach(engine)
        contacts = md.tables["contacts"]
        rows = [
            {
                "id": uuid.uuid4(),
                "region": "eu",
                "phone": f"+44 20 7946 00{i:02d}",
                "notes": f"asked about invoice {i} — «urgent»",
                "profile": {"tier": "gold", "calls": i, "tags": ["vip"]},
                "email": f"c{i}@example.com",
            }
            for i in range(3)
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(contacts), rows)
        with engine.connect() as conn:
            got = {
                r.id: {k: v for k, v in r._asdict().items() if k != "email_bidx"}
                for r in conn.execute(sa.select(contacts))
            }
            found = conn.execute(
                sa.select(contacts.c.id).where(contacts.c.email == " C1@example.com")
            ).scalar_one()
            assert found == rows[1]["id"]
            raw = conn.exec_driver_sql("SELECT phone, notes, profile FROM contacts").all()
        assert got == {r["id"]: r for r in rows}
        for cells in raw:
            for cell in cells:
                assert isinstance(cell, bytes | memoryview)
                assert b"+44" not in bytes(cell)
                assert b"invoice" not in bytes(cell)
                assert b"gold" not in bytes(cell)

        # 4. Downgrade drops the application's table and nothing of the key store.
        command.downgrade(cfg, "base")
        tables = sa.inspect(engine).get_table_names()
        assert "contacts" not in tables
        if backend != "sqlite":
            assert "ccvault_keys" in tables
        assert vault.decrypt(vault.encrypt(rows[0]["id"], b"x", context="c.x"), context="c.x")
    finally:
        engine.dispose()


class PhoneNumber(sa.String):
    """An application's own String subclass, for the recipe's third branch."""

    cache_ok = True


@pytest.mark.parametrize(
    ("type_", "rendered", "imports"),
    [
        (
            Encrypted(sa.Numeric(12, 2), subject="customer_id", on_null_subject="vaultwide"),
            "Encrypted(sa.Numeric(precision=12, scale=2), subject='customer_id', "
            "on_null_subject='vaultwide')",
            set(),
        ),
        (
            Encrypted(postgresql.CITEXT(), subject="id", context="people.mail", strict=True),
            "Encrypted(postgresql.CITEXT(), subject='id', context='people.mail', strict=True)",
            {"from sqlalchemy.dialects import postgresql"},
        ),
        (
            Encrypted(mysql.VARCHAR(20), subject="id"),
            "Encrypted(mysql.VARCHAR(length=20), subject='id')",
            {"from sqlalchemy.dialects import mysql"},
        ),
        (
            Encrypted(PhoneNumber(32), subject="id"),
            f"Encrypted({__name__}.PhoneNumber(length=32), subject='id')",
            {f"import {__name__}"},
        ),
    ],
    ids=["sqlalchemy", "postgresql", "mysql", "own-type"],
)
def test_recipe_renders_runnable_code(type_: Encrypted, rendered: str, imports: set[str]) -> None:
    hooks = _doc_hooks()
    ctx = AutogenContext(MigrationContext.configure(dialect_name="sqlite"))
    out = hooks["render_item"]("type", type_, ctx)
    assert out == rendered
    assert ctx.imports == {"from ccvault.sqlalchemy import Encrypted", *imports}
    namespace: dict[str, Any] = {"sa": sa}  # what every migration file imports
    for line in sorted(ctx.imports):
        exec(line, namespace)
    again = eval(out, namespace)
    assert isinstance(again, Encrypted)
    assert repr(again) == repr(type_)
    assert type(again.wrapped) is type(type_.wrapped)
    assert hooks["render_item"]("type", sa.String(5), ctx) is False  # the rest: Alembic's


def test_recipe_keeps_key_store_tables_out() -> None:
    include_name = _doc_hooks()["include_name"]
    assert include_name("ccvault_keys", "table", {"schema_name": None}) is False
    assert include_name("ccvault_subject_heads", "table", {"schema_name": None}) is False
    assert include_name("contacts", "table", {"schema_name": None}) is True
    assert include_name("ccvault_keys_ref_ix", "index", {"table_name": "x"}) is True


def test_default_rendering_needs_the_recipe() -> None:
    """Why docs/sqlalchemy.md has the hooks: Alembic's own rendering names a private module the
    migration does not import, and the wrapped type without its ``sa.`` prefix. If this starts
    failing, the default works and the docs' recipe can shrink."""
    md = _metadata()
    with sa.create_engine("sqlite://").connect() as conn:
        ops = produce_migrations(MigrationContext.configure(conn), md)
    code = render_python_code(ops.upgrade_ops)
    line = next(ln.strip() for ln in code.splitlines() if "'phone'" in ln)
    assert "ccvault.sqlalchemy._types.Encrypted(String(length=32), subject='id')" in line
    with pytest.raises(NameError, match="ccvault"):
        eval(line.rstrip(","), {"sa": sa})
    # Importing ccvault in script.py.mako is not enough: the wrapped type is still unqualified.
    with pytest.raises(NameError, match="String"):
        eval(line.rstrip(","), {"sa": sa, "ccvault": ccvault})
