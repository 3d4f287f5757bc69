"""``among()``: the key store's ``column IN (values)`` for binary columns (issue 15, round 2).

On PostgreSQL it is ``column = ANY(:values)``, one array parameter, bound in psycopg's binary
format: the statement's text is the same for any number of values. Elsewhere it is ``IN``. Both
select exactly the rows whose value is among the values (a NULL among them selects nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from ccvault.keystore._sql_base import _binary_arrays, _Values, among


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    t = sa.Table(
        "among_refs",
        md,
        sa.Column(
            "ref",
            sa.LargeBinary(32).with_variant(sa.dialects.mysql.VARBINARY(32), "mariadb", "mysql"),
            primary_key=True,
        ),
    )
    md.create_all(engine)
    yield engine, t
    md.drop_all(engine)
    engine.dispose()


def test_among_selects_exactly_the_rows_of_its_values(table: tuple[sa.Engine, sa.Table]) -> None:
    engine, t = table
    _binary_arrays()
    refs = [os.urandom(32) for _ in range(700)]
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"ref": r} for r in refs])
    with engine.connect() as conn:

        def found(values: list[bytes | None]) -> set[bytes]:
            query = sa.select(t.c.ref).where(among(t.c.ref, values, dialect))
            return {bytes(r) for r in conn.execute(query).scalars()}

        assert found(refs[:3]) == set(refs[:3])
        assert found(refs[100:600]) == set(refs[100:600])  # more than one IN batch
        assert found([refs[5], refs[5], None, os.urandom(32)]) == {refs[5]}
        assert found([]) == set()
        assert found([None]) == set()


def test_on_postgresql_the_statement_is_the_same_for_any_number_of_values(
    table: tuple[sa.Engine, sa.Table],
) -> None:
    engine, t = table
    if engine.dialect.name != "postgresql":
        pytest.skip("ANY(array) is PostgreSQL's; elsewhere IN")
    few = sa.select(t.c.ref).where(among(t.c.ref, [b"a"], "postgresql"))
    many = sa.select(t.c.ref).where(among(t.c.ref, [b"a"] * 500, "postgresql"))
    assert str(few.compile(engine)) == str(many.compile(engine))
    assert "ANY" in str(few.compile(engine))


def test_psycopg_dumps_the_values_in_binary() -> None:
    psycopg = pytest.importorskip("psycopg")
    from psycopg.adapt import PyFormat
    from psycopg.pq import Format

    _binary_arrays()
    dumper = psycopg.adapters.get_dumper(_Values, PyFormat.AUTO)
    assert dumper.format == Format.BINARY
    assert psycopg.adapters.get_dumper(list, PyFormat.AUTO).format == Format.TEXT  # unchanged
