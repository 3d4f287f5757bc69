"""The bind step of the encrypted and blind-index columns (issue 15, performance round 2).

A ciphertext (``Sealed``) or blind index (``IndexValue``) the statement hook made reaches the
driver as a copy of an exact type it binds as binary: a ``bytearray`` for the sqlite3 module,
which binds one without its adaptation step, and ``bytes`` for every other driver. Everything
else is refused as before, and what is stored is the same BLOB on each backend.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from ccvault.errors import ConfigurationError
from ccvault.sqlalchemy import SHREDDED
from ccvault.sqlalchemy._types import BindRefused, IndexValue, Sealed, driver_bytes
from sqla_models import Customer

# (dialect, the exact type the driver is given)
DIALECTS: list[tuple[Any, type]] = [
    (sqlite.pysqlite.dialect(), bytearray),
    (sqlite.aiosqlite.dialect(), bytearray),
    (sqlite.pysqlcipher.dialect(), bytes),  # another module than sqlite3: bytes
    (postgresql.psycopg.dialect(), bytes),
    (postgresql.psycopg2.dialect(), bytes),
    (postgresql.asyncpg.dialect(), bytes),
    (mysql.pymysql.dialect(), bytes),
    (mysql.mysqldb.dialect(), bytes),
]
IDS = [f"{d.name}+{d.driver}" for d, _ in DIALECTS]
BLOB = b"\x01" + bytes(range(60))


@pytest.mark.parametrize(("dialect", "kind"), DIALECTS, ids=IDS)
def test_a_ciphertext_reaches_the_driver_as_a_copy_of_exact_type(dialect: Any, kind: type) -> None:
    process = Customer.__table__.c.phone.type.bind_processor(dialect)
    value = Sealed(BLOB)
    out = process(value)
    assert type(out) is kind
    assert out == BLOB
    assert out is not value
    assert process(value) is not out  # a fresh copy each time (a bytearray is mutable)
    assert process(None) is None
    assert driver_bytes(dialect)(Sealed(b"")) == b""


@pytest.mark.parametrize(("dialect", "kind"), DIALECTS, ids=IDS)
def test_a_blind_index_reaches_the_driver_as_a_copy_of_exact_type(dialect: Any, kind: type) -> None:
    process = Customer.__table__.c.phone_bidx.type.bind_processor(dialect)
    value = IndexValue(BLOB[:8])
    out = process(value)
    assert type(out) is kind
    assert out == BLOB[:8]
    assert out is not value
    assert process(None) is None


@pytest.mark.parametrize(("dialect", "kind"), DIALECTS, ids=IDS)
@pytest.mark.parametrize(
    "value",
    [BLOB, bytearray(BLOB), memoryview(BLOB), "text", 5, IndexValue(BLOB)],
    ids=["bytes", "bytearray", "memoryview", "str", "int", "index"],
)
def test_anything_but_a_ciphertext_is_still_refused(dialect: Any, kind: type, value: Any) -> None:
    process = Customer.__table__.c.phone.type.bind_processor(dialect)
    with pytest.raises(ConfigurationError, match="without being encrypted"):
        process(value)
    with pytest.raises(BindRefused, match="cannot be written back"):
        process(SHREDDED)


@pytest.mark.parametrize(("dialect", "kind"), DIALECTS, ids=IDS)
@pytest.mark.parametrize(
    "value",
    [BLOB, bytearray(BLOB), memoryview(BLOB), 5, Sealed(BLOB)],
    ids=["bytes", "bytearray", "memoryview", "int", "sealed"],
)
def test_a_search_value_is_still_a_str(dialect: Any, kind: type, value: Any) -> None:
    process = Customer.__table__.c.phone_bidx.type.bind_processor(dialect)
    with pytest.raises(BindRefused, match="search values are str"):
        process(value)
    with pytest.raises(BindRefused, match="no search value"):
        process(SHREDDED)
    with pytest.raises(ConfigurationError, match=r"needs vault\.attach"):
        process("+1 555 0100")  # no vault on this dialect


def test_a_search_value_hashed_at_bind_time_is_of_the_drivers_type(app: sa.Engine) -> None:
    """A str searched for is hashed by the bind step into the same exact type, and found."""
    process = Customer.__table__.c.phone_bidx.type.bind_processor(app.dialect)
    kind = bytearray if app.dialect.name == "sqlite" else bytes
    assert type(process("+1 555 0100")) is kind
    with Session(app) as s:
        s.add(Customer(name="A", phone="+1 555 0100", email="a@example.com"))
        s.commit()
    with Session(app) as s:
        found = s.scalars(sa.select(Customer).where(Customer.phone == "(555) 0100")).one()
        assert found.name == "A"


def test_what_is_stored_is_a_blob_of_the_ciphertext(app: sa.Engine) -> None:
    """Bound as a bytearray or as bytes, the database holds the ciphertext's bytes (a BLOB on
    SQLite, never text), and they read back as the values written."""
    cid = uuid.uuid4()
    with Session(app) as s:
        s.add(Customer(id=cid, name="Ann", phone="+1 555 0101", email="ann@example.com"))
        s.commit()
    t = Customer.__table__
    with app.connect() as conn:
        row = conn.execute(
            sa.select(
                sa.type_coerce(t.c.name, sa.LargeBinary),
                sa.type_coerce(t.c.phone_bidx, sa.LargeBinary),
            ).where(t.c.id == cid)
        ).one()
        if app.dialect.name == "sqlite":
            kinds = conn.exec_driver_sql(
                "SELECT typeof(name), typeof(phone), typeof(email), typeof(phone_bidx), "
                "typeof(email_bidx) FROM customers"
            ).one()
            assert set(kinds) == {"blob"}
    assert type(row[0]) is bytes
    assert row[0][:2] == b"\x01\x01"  # format 1, suite 1
    assert len(row[1]) == 8
    with Session(app) as s:
        got = s.get(Customer, cid)
        assert got is not None
        assert (got.name, got.phone, got.email) == ("Ann", "+1 555 0101", "ann@example.com")
