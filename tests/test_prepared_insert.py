"""INSERTs of many rows bind their encrypted columns without a bind step (issue 15, item 4).

When the generated write loop encrypts a statement's rows, it writes each ciphertext and blind
index as the driver's own bytes (``bytearray`` for the sqlite3 module, ``bytes`` otherwise), and
the hook binds those columns through ``Prepared``, a type with no bind processor, in a copy of the
statement. Rows it hands to the generic function pass through the columns' own bind steps in
the hook. Everything else — single rows, ``.values()``, an engine without the vault — keeps the
bind step that refuses plaintext. What is stored, found and refused is the same either way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import Vault
from ccvault.errors import ConfigurationError
from ccvault.sqlalchemy import Encrypted
from ccvault.sqlalchemy._types import BindRefused, IndexValue, Prepared, Sealed, encrypted_tables
from leaks import chain_text
from sqla_models import Customer

CUSTOMERS = Customer.__table__
BOUND = ("name", "phone", "email", "phone_bidx", "email_bidx")


class _Binds:
    """The bind types and parameters of each INSERT INTO ``table`` the engine sends."""

    def __init__(self, engine: sa.Engine, table: str) -> None:
        self.seen: list[tuple[dict[str, Any], Any]] = []
        self.prefix = f"INSERT INTO {table} "

        @sa.event.listens_for(engine, "before_cursor_execute")
        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, _: Any):  # type: ignore[no-untyped-def]
            if statement.startswith(self.prefix):
                binds = {k: type(b.type) for k, b in context.compiled.binds.items()}
                self.seen.append((binds, parameters))

    def values(self) -> list[Any]:
        """Every parameter value sent, whatever the driver's parameter shape."""
        out: list[Any] = []

        def walk(p: Any) -> None:
            if isinstance(p, dict):
                for v in p.values():
                    walk(v)
            elif isinstance(p, list | tuple):
                for v in p:
                    walk(v)
            else:
                out.append(p)

        for _, parameters in self.seen:
            walk(parameters)
        return out


def _kind(engine: sa.Engine) -> type:
    return bytearray if engine.dialect.name == "sqlite" else bytes


def _rows(n: int, tag: str = "c") -> list[dict[str, Any]]:
    return [
        {
            "id": uuid.uuid4(),
            "name": f"{tag}-name-{i}",
            "phone": f"+1 555 01{i:02d}",
            "email": f"{tag}{i}@example.com" if i % 3 else None,
        }
        for i in range(n)
    ]


def test_many_rows_bind_the_drivers_bytes_and_read_back(app: sa.Engine) -> None:
    binds = _Binds(app, "customers")
    rows = _rows(7)
    with Session(app) as s:  # an ORM flush: one executemany
        s.add_all(Customer(**r) for r in rows)
        s.commit()
    with app.begin() as conn:  # a Core executemany
        more = _rows(5, "k")
        conn.execute(sa.insert(CUSTOMERS), more)
    assert binds.seen
    for types, _ in binds.seen:
        assert {types[k] for k in BOUND} == {Prepared}
    values = binds.values()
    kind = _kind(app)
    # the three ciphertexts and two indexes of each row; no e-mail: NULL and NULL
    expected = sum(5 if r["email"] is not None else 3 for r in rows + more)
    assert sum(type(v) is kind for v in values) == expected
    assert not [v for v in values if isinstance(v, Sealed | IndexValue | str) and "name" in v]
    with Session(app) as s:
        got = {c.id: (c.name, c.phone, c.email) for c in s.scalars(sa.select(Customer))}
        assert got == {r["id"]: (r["name"], r["phone"], r["email"]) for r in rows + more}
        found = s.scalars(sa.select(Customer).where(Customer.phone == "(555) 0103")).all()
        assert sorted(c.name for c in found) == ["c-name-3", "k-name-3"]
        found = s.scalars(sa.select(Customer).where(Customer.email == "K4@example.com")).one()
        assert found.name == "k-name-4"


def test_a_single_row_keeps_the_bind_step(app: sa.Engine) -> None:
    binds = _Binds(app, "customers")
    with app.begin() as conn:
        conn.execute(sa.insert(CUSTOMERS), _rows(1))
        conn.execute(sa.insert(CUSTOMERS).values(_rows(1)[0]))
        conn.execute(sa.insert(CUSTOMERS).values(_rows(2)))  # multi-row VALUES
    assert len(binds.seen) == 3
    for types, _ in binds.seen:
        assert Prepared not in types.values()


def test_the_statement_on_an_engine_without_the_vault_still_refuses(
    app: sa.Engine, tmp_path: Any
) -> None:
    """The prepared copy belongs to the hook's execution: the statement object the application
    holds, run where no vault is attached, meets the bind step and is refused."""
    stmt = sa.insert(CUSTOMERS)
    with app.begin() as conn:
        conn.execute(stmt, _rows(3))
        conn.execute(stmt, _rows(3))  # the prepared copy, made once for the statement
    bare = sa.create_engine(f"sqlite:///{tmp_path / 'bare.db'}")
    CUSTOMERS.create(bare)
    secret = "SECRET-4111-1111"
    rows = [{**r, "name": secret} for r in _rows(3)]
    with bare.begin() as conn, pytest.raises(ConfigurationError, match="without being encrypted"):
        conn.execute(stmt, rows)
    with bare.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CUSTOMERS)).scalar() == 0
    bare.dispose()


def test_a_later_row_without_a_column_of_the_first_is_refused_by_name(app: sa.Engine) -> None:
    secret = "SECRET-4111-1111"
    rows = _rows(3)
    rows[0]["name"] = secret
    del rows[2]["phone"]
    with app.begin() as conn, pytest.raises(sa.exc.StatementError) as info:
        conn.execute(sa.insert(CUSTOMERS), rows)
    text = chain_text(info.value)
    assert "A value is required for bind parameter 'phone" in text
    assert "parameter group 2" in text
    assert secret not in text
    assert "+1 555" not in text


def test_a_blind_index_given_without_its_value_is_hashed_by_its_bind_step(
    app: sa.Engine, vault: Vault
) -> None:
    """As the bind step does for a search: the str is normalised and hashed, never stored."""
    rows = _rows(3)
    for r in rows:
        r.pop("email")
        r["email_bidx"] = "Someone@Example.com"
    with app.begin() as conn:
        conn.execute(sa.insert(CUSTOMERS), rows)
        stored = conn.execute(
            sa.select(sa.type_coerce(CUSTOMERS.c.email_bidx, sa.LargeBinary)).where(
                CUSTOMERS.c.id == rows[1]["id"]
            )
        ).scalar_one()
    index = CUSTOMERS.c.email_bidx.type
    hashed = vault.blind_indexer(index.context, index.norm, index.length)("someone@example.com")
    assert bytes(stored) == hashed
    bad = [{k: v for k, v in r.items() if k != "id"} | {"id": uuid.uuid4()} for r in rows]
    bad[1]["email_bidx"] = 5
    with app.begin() as conn, pytest.raises(BindRefused, match="search values are str"):
        conn.execute(sa.insert(CUSTOMERS), bad)


def test_plaintext_never_reaches_the_log(app: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows(4, "logged")
    with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"), app.begin() as conn:
        conn.execute(sa.insert(CUSTOMERS), rows)
    assert "INSERT INTO customers" in caplog.text
    for r in rows:
        assert r["name"] not in caplog.text
        assert r["phone"] not in caplog.text


@pytest.fixture
def calls(app: sa.Engine) -> Iterator[sa.Table]:
    """A table with a server-generated key, so that the INSERT returns it: insertmanyvalues."""
    meta = sa.MetaData()
    table = sa.Table(
        "prepared_calls",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.Uuid, nullable=False),
        sa.Column("note", Encrypted(sa.String(40), subject="owner")),
    )
    meta.create_all(app)
    yield table
    encrypted_tables.discard(table)


def test_an_insert_returning_the_keys_it_made(app: sa.Engine, calls: sa.Table) -> None:
    owners = [uuid.uuid4() for _ in range(25)]
    rows = [{"owner": o, "note": f"note {i}"} for i, o in enumerate(owners)]
    binds = _Binds(app, "prepared_calls")
    with app.begin() as conn:
        made = conn.execute(
            sa.insert(calls).returning(calls.c.id, calls.c.owner, sort_by_parameter_order=True),
            rows,
        ).all()
    assert [m.owner for m in made] == owners
    assert binds.seen
    assert all(types["note"] is Prepared for types, _ in binds.seen)
    with app.connect() as conn:
        got = dict(conn.execute(sa.select(calls.c.id, calls.c.note)).all())
    assert [got[m.id] for m in made] == [r["note"] for r in rows]


@pytest.mark.parametrize("ordered", [True, False])
def test_an_insert_of_many_rows_returns_its_encrypted_columns_decrypted(
    app: sa.Engine, calls: sa.Table, caplog: pytest.LogCaptureFixture, ordered: bool
) -> None:
    """RETURNING of an encrypted column from an INSERT of many rows (SQLAlchemy's
    insertmanyvalues, in batches: a page of 7 rows here) gives the values as written, as a
    single row's RETURNING and a select do; before, it gave their ciphertexts. SQLAlchemy's DEBUG
    log shows no plaintext of them."""
    owners = [uuid.uuid4() for _ in range(25)]
    rows = [{"owner": o, "note": f"returned note {i}"} for i, o in enumerate(owners)]
    stmt = sa.insert(calls).returning(
        calls.c.id, calls.c.owner, calls.c.note, sort_by_parameter_order=ordered
    )
    with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"), app.begin() as conn:
        made = conn.execution_options(insertmanyvalues_page_size=7).execute(stmt, rows).all()
    got = [(m.owner, m.note) for m in made]
    expected = [(r["owner"], r["note"]) for r in rows]
    assert got == expected if ordered else sorted(got) == sorted(expected)
    assert "returned note" not in caplog.text
    with app.connect() as conn:
        stored = dict(conn.execute(sa.select(calls.c.id, calls.c.note)).all())
    assert {m.id: m.note for m in made} == stored


def test_an_orm_bulk_insert_returning_entities_decrypts_them(app: sa.Engine) -> None:
    rows = _rows(9, "bulk")
    with Session(app) as s:
        made = s.scalars(sa.insert(Customer).returning(Customer), rows).all()
        assert sorted((c.name, c.phone, c.email) for c in made) == sorted(
            (r["name"], r["phone"], r["email"]) for r in rows
        )


def test_a_prepared_statement_cannot_run_again(app: sa.Engine, vault: Vault, tmp_path: Any) -> None:
    """The copy the hook prepared for one execution reaches the application through the
    result's context (and ``after_execute`` listeners): run again — on the same engine, on it
    detached, or on an engine that never had the vault — it is refused and stores nothing."""
    secret = "SECRET-4111-1111"
    with app.begin() as conn:
        result = conn.execute(sa.insert(CUSTOMERS), _rows(2))
        prepared = result.context.invoked_statement
    assert any(getattr(v, "type", None) is not None for v in (prepared._values or {}).values())
    rows = [{**r, "name": secret, "phone_bidx": secret, "email_bidx": secret} for r in _rows(2)]
    with app.begin() as conn, pytest.raises(ConfigurationError, match="cannot run again"):
        conn.execute(prepared, rows)
    bare = sa.create_engine(f"sqlite:///{tmp_path / 'bare.db'}")
    CUSTOMERS.create(bare)
    with bare.begin() as conn, pytest.raises(ConfigurationError, match="without the vault"):
        conn.execute(prepared, rows)
    with bare.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CUSTOMERS)).scalar() == 0
    bare.dispose()
    vault.detach(app)
    try:
        with app.begin() as conn, pytest.raises(ConfigurationError, match="cannot run again"):
            conn.execute(prepared, rows)
    finally:
        vault.attach(app)
    with app.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CUSTOMERS)).scalar() == 2


class _Disagreeing(dict):  # type: ignore[type-arg]
    """A mapping whose lookup of ``name`` says None while its items hold a value."""

    def __getitem__(self, key: str) -> Any:
        return None if key == "name" else super().__getitem__(key)


def test_what_the_statement_sends_is_what_the_loop_read(app: sa.Engine) -> None:
    secret = "SECRET-4111-1111"
    rows = [_Disagreeing({**r, "name": secret}) for r in _rows(3)]
    with app.begin() as conn:
        conn.execute(sa.insert(CUSTOMERS), rows)
        stored = (
            conn.execute(sa.select(sa.type_coerce(CUSTOMERS.c.name, sa.LargeBinary)))
            .scalars()
            .all()
        )
    assert len(stored) == 3
    assert all(secret.encode() not in bytes(v) for v in stored)
    with Session(app) as s:
        assert {c.name for c in s.scalars(sa.select(Customer))} == {secret}


def test_an_upsert_keeps_the_bind_step(app: sa.Engine) -> None:
    """An upsert's SET clause may hold bind parameters named like encrypted columns: the
    statement is not prepared (its columns keep their bind steps), and works as before."""
    if app.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert_insert
    elif app.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert_insert  # type: ignore[assignment]
    else:
        pytest.skip("ON DUPLICATE KEY UPDATE needs a column to set, and customers has none plain")
    binds = _Binds(app, "customers")
    stmt = upsert_insert(CUSTOMERS).on_conflict_do_nothing()
    rows = _rows(3)
    with app.begin() as conn:
        conn.execute(stmt, rows)
        conn.execute(stmt, rows)  # the same rows again: ignored
    assert len(binds.seen) == 2
    assert all(Prepared not in types.values() for types, _ in binds.seen)
    with Session(app) as s:
        assert {c.name for c in s.scalars(sa.select(Customer))} == {r["name"] for r in rows}
