"""Reading and planting stored ciphertexts behind the column types' back (tests of bad values)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

HEADER = 22  # version, suite, key id (16), key version (4)


def get_raw(engine: sa.Engine, table: sa.Table, column: str, pk: uuid.UUID) -> bytes:
    """The stored bytes of one value (no read hook: the column is read as plain binary)."""
    stmt = sa.select(sa.type_coerce(table.c[column], sa.LargeBinary())).where(table.c.id == pk)
    with engine.connect() as conn:
        return bytes(conn.execute(stmt).scalar_one())


def set_raw(engine: sa.Engine, table: sa.Table, column: str, pk: uuid.UUID, blob: Any) -> None:
    """Store ``blob`` as it is (a text statement: the write hook leaves it alone)."""
    stmt = sa.text(f"UPDATE {table.name} SET {column} = :b WHERE id = :i").bindparams(
        sa.bindparam("b", type_=sa.LargeBinary()), sa.bindparam("i", type_=sa.Uuid())
    )
    with engine.begin() as conn:
        conn.execute(stmt, {"b": blob, "i": pk})


def tampered(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


def truncated(blob: bytes) -> bytes:
    return blob[:-5]  # what a too-narrow column keeps: part of the tag is gone


def unknown_key(blob: bytes) -> bytes:
    return blob[:2] + uuid.uuid4().bytes + blob[18:]  # a key id the key store never had
