"""Every Core form that can carry an encrypted value reads back what was written, or is refused
before it runs — never a silent NULL (issue 11, item 5)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import bindparam, insert, literal, select, update

from ccvault import Vault
from ccvault.sqlalchemy import StatementRefused
from sqla_models import Customer

T = Customer.__table__


def _stored(engine: sa.Engine) -> dict[uuid.UUID, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(T.c.id, T.c.phone, T.c.email)).all()
    return {r.id: (r.phone, r.email) for r in rows}


def _found(engine: sa.Engine, phone: str) -> list[uuid.UUID]:
    """Through the blind index: the write filled it."""
    with engine.connect() as conn:
        return list(conn.execute(select(T.c.id).where(T.c.phone == phone)).scalars())


A, B = uuid.uuid4(), uuid.uuid4()
FORMS: dict[str, Callable[[sa.Connection], None]] = {
    "values literals": lambda c: [
        c.execute(insert(T).values(id=A, name="a", phone="+1 555 0101")),
        c.execute(insert(T).values(id=B, name="b", phone="+1 555 0102")),
    ],
    "executemany": lambda c: c.execute(
        insert(T),
        [
            {"id": A, "name": "a", "phone": "+1 555 0101"},
            {"id": B, "name": "b", "phone": "+1 555 0102"},
        ],
    ),
    "values(bindparam) executemany": lambda c: c.execute(
        insert(T).values(id=bindparam("i"), name=bindparam("n"), phone=bindparam("p")),
        [{"i": A, "n": "a", "p": "+1 555 0101"}, {"i": B, "n": "b", "p": "+1 555 0102"}],
    ),
    "values(bindparam) one at a time": lambda c: [
        c.execute(insert(T).values(id=A, name="a", phone=bindparam("p")), {"p": "+1 555 0101"}),
        c.execute(
            insert(T).values(id=bindparam("b_id"), name="b", phone=bindparam("b_phone")),
            {"b_id": B, "b_phone": "+1 555 0102"},
        ),
    ],
    "bindparam with a default value": lambda c: c.execute(
        insert(T).values(id=bindparam("i"), name="x", phone=bindparam("p", value="+1 555 0101")),
        [{"i": A}, {"i": B, "p": "+1 555 0102"}],
    ),
    "multi-row VALUES": lambda c: c.execute(
        insert(T).values(
            [
                {"id": A, "name": "a", "phone": "+1 555 0101"},
                {"id": B, "name": "b", "phone": "+1 555 0102"},
            ]
        )
    ),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_insert_form_reads_back(app: sa.Engine, form: str) -> None:
    with app.begin() as conn:
        FORMS[form](conn)
    assert _stored(app) == {A: ("+1 555 0101", None), B: ("+1 555 0102", None)}
    assert _found(app, "+1 555 0102") == [B]


UPDATES: dict[str, Callable[[sa.Connection], Any]] = {
    "where(bindparam) values(bindparam) executemany": lambda c: c.execute(
        update(T).where(T.c.id == bindparam("i")).values(phone=bindparam("p")),
        [{"i": A, "p": "+1 555 0199"}, {"i": B, "p": "+1 555 0198"}],
    ),
    "where(literal) values(bindparam)": lambda c: [
        c.execute(update(T).where(T.c.id == A).values(phone=bindparam("p")), {"p": "+1 555 0199"}),
        c.execute(update(T).where(T.c.id == B).values(phone=bindparam("p")), {"p": "+1 555 0198"}),
    ],
    "where(bindparam) with column-keyed parameters": lambda c: c.execute(
        update(T).where(T.c.id == bindparam("i")),
        [{"i": A, "phone": "+1 555 0199"}, {"i": B, "phone": "+1 555 0198"}],
    ),
}


@pytest.mark.parametrize("form", UPDATES)
def test_every_update_form_reads_back(app: sa.Engine, form: str) -> None:
    with app.begin() as conn:
        FORMS["executemany"](conn)
    with app.begin() as conn:
        UPDATES[form](conn)
    assert _stored(app) == {A: ("+1 555 0199", None), B: ("+1 555 0198", None)}
    assert _found(app, "+1 555 0198") == [B]


REFUSED: dict[str, Callable[[sa.Connection], Any]] = {
    "a bind parameter no parameter set gives": lambda c: c.execute(
        insert(T).values(id=A, name="a", phone=bindparam("p"))
    ),
    "a parameter set without the bind parameter": lambda c: c.execute(
        insert(T).values(id=bindparam("i"), name="a", phone=bindparam("p")),
        [{"i": A, "p": "+1 555 0101"}, {"i": B}],
    ),
    "a value given twice": lambda c: c.execute(
        insert(T).values(id=A, name="a", phone=bindparam("p")),
        {"p": "+1 555 0101", "phone": "+1 555 0102"},
    ),
    "insert from select": lambda c: c.execute(
        insert(T).from_select(["id", "name", "phone"], select(literal(A), T.c.name, T.c.phone))
    ),
    "a multi-row VALUES row from a bind parameter": lambda c: c.execute(
        insert(T).values([{"id": A, "name": "a", "phone": bindparam("p")}]), {"p": "+1"}
    ),
}


@pytest.mark.parametrize("form", REFUSED)
def test_forms_that_cannot_be_encrypted_are_refused(
    app: sa.Engine, vault: Vault, form: str
) -> None:
    with app.begin() as conn, pytest.raises(StatementRefused):
        REFUSED[form](conn)
    assert _stored(app) == {}  # nothing written, in particular no NULL
