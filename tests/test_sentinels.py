"""Read sentinels render in web APIs and are never taken for data."""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
import uuid
from typing import Any, Final

import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccvault import Vault
from ccvault.sqlalchemy import (
    SHREDDED,
    UNREADABLE,
    Sentinel,
    Shredded,
    StatementRefused,
    Unreadable,
)
from ccvault.sqlalchemy._read import Search, _matches
from ccvault.sqlalchemy._types import Sealed
from raw_values import get_raw, set_raw
from sqla_models import Customer, Interaction, Migrating


class Expired(Sentinel, name="EXPIRED", text="[expired]"):
    """What the retention issue will add: the base class is all it takes."""

    __slots__ = ()


EXPIRED: Final = Expired()
SENTINELS = [SHREDDED, UNREADABLE, EXPIRED]
RENDERING = {SHREDDED: "[shredded]", UNREADABLE: "[unreadable]", EXPIRED: "[expired]"}


@pytest.mark.parametrize("value", SENTINELS, ids=repr)
def test_a_sentinel_is_a_falsy_str_singleton(value: Sentinel) -> None:
    text = RENDERING[value]
    assert isinstance(value, str)
    assert not value
    assert repr(value) == text.strip("[]").upper()
    assert str(value) == f"{value}" == text
    assert type(str(value)) is str  # str() gives plain text, no sentinel
    assert type(value)() is value
    assert pickle.loads(pickle.dumps(value)) is value
    assert copy.copy(value) is value
    assert copy.deepcopy({"v": value})["v"] is value


def test_the_base_class_is_abstract_and_each_subclass_its_own() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Sentinel()
    assert Shredded() is SHREDDED
    assert Unreadable() is UNREADABLE
    assert SHREDDED is not UNREADABLE
    with pytest.raises(ValueError, match="identifier"):

        class Bad(Sentinel, name="not a name", text="[x]"):
            pass


@pytest.mark.parametrize("value", SENTINELS, ids=repr)
def test_json_and_pydantic_render_sentinels(value: Sentinel) -> None:
    text = RENDERING[value]
    assert json.dumps({"phone": value}) == json.dumps({"phone": text})

    class Out(pydantic.BaseModel):
        phone: str
        optional: str | None = None

    class Strict(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(strict=True)
        phone: str

    class Mixed(pydantic.BaseModel):  # the docs' advice for a non-str column
        visits: int | str
        born: dt.date | str | None = None
        profile: dict[str, Any] | str | None = None

    assert Out(phone=value, optional=value).model_dump_json() == (
        f'{{"phone":"{text}","optional":"{text}"}}'
    )
    assert Out.model_validate({"phone": value}).model_dump() == {"phone": text, "optional": None}
    assert Strict(phone=value).model_dump_json() == f'{{"phone":"{text}"}}'
    assert json.loads(Mixed(visits=value, born=value, profile=value).model_dump_json()) == {
        "visits": text,
        "born": text,
        "profile": text,
    }
    kept = Mixed(visits=7, born=dt.date(2001, 2, 3), profile={"a": 1})
    assert (kept.visits, kept.born, kept.profile) == (7, dt.date(2001, 2, 3), {"a": 1})


def test_sqlmodel_response_models_accept_sentinels() -> None:
    sqlmodel = pytest.importorskip("sqlmodel")

    class CustomerOut(sqlmodel.SQLModel):  # type: ignore[misc,name-defined]
        id: uuid.UUID
        phone: str

    out = CustomerOut(id=uuid.UUID(int=1), phone=SHREDDED)
    assert json.loads(out.model_dump_json())["phone"] == "[shredded]"


# -- never data: every write path refuses every sentinel ------------------------------------------


@pytest.mark.parametrize("value", SENTINELS, ids=repr)
def test_writes_refuse_every_sentinel(app: sa.Engine, value: Sentinel) -> None:
    name = repr(value)
    with Session(app) as s:  # ORM insert, into a str column and a text column
        s.add(Customer(name=value, phone="+1"))
        with pytest.raises(TypeError, match=f"\\({name}\\) cannot be written back"):
            s.flush()
    with Session(app) as s:
        c = Customer(name="A", phone="+1")
        s.add(c)
        s.commit()
        cid = c.id
        c.phone = value  # ORM update of a searchable column
        with pytest.raises(TypeError, match="cannot be written back"):
            s.flush()
    with app.begin() as conn, pytest.raises(TypeError, match="cannot be written back"):
        conn.execute(sa.insert(Interaction), [{"customer_id": cid, "transcript": value}])
    t = Customer.__table__
    with app.begin() as conn, pytest.raises(TypeError, match="cannot be written back"):
        conn.execute(sa.update(t).where(t.c.id == cid).values(name=value))
    with Session(app) as s:  # the legacy-plaintext migration flag encrypts writes as well
        s.add(Migrating(phone=value))
        with pytest.raises(TypeError, match="cannot be written back"):
            s.flush()
    with Session(app) as s:
        assert s.get(Customer, cid).name == "A"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", SENTINELS, ids=repr)
def test_bind_processors_refuse_every_sentinel(value: Sentinel) -> None:
    dialect = sa.create_engine("sqlite://").dialect
    encrypted = Customer.__table__.c.phone.type.bind_processor(dialect)
    with pytest.raises(TypeError, match="cannot be written back"):
        encrypted(value)
    assert encrypted(Sealed(b"\x01")) == b"\x01"
    index = Customer.__table__.c.phone_bidx.type.bind_processor(dialect)
    with pytest.raises(TypeError, match="no search value"):
        index(value)


@pytest.mark.parametrize("value", SENTINELS, ids=repr)
def test_a_sentinel_is_no_search_argument(app: sa.Engine, value: Sentinel) -> None:
    with Session(app) as s:
        s.add(Customer(name="A", phone=str(value), email=str(value)))  # data that looks alike
        s.commit()
    for clause in (
        Customer.phone == value,
        Customer.email.in_([value]),
        Customer.email.in_(["x@example.com", value]),
    ):
        with Session(app) as s, pytest.raises(TypeError) as info:
            s.scalars(select(Customer).where(clause)).all()
        # ccvault's own error, never wrapped in a StatementError that lists the parameters
        assert not isinstance(info.value, sa.exc.StatementError)
        assert "no search value" in str(info.value)
    with Session(app) as s:  # the same text as data is found as data
        (found,) = s.scalars(select(Customer).where(Customer.email == str(value))).all()
        assert found.email == str(value)
        assert found.email is not value
        assert found.email  # truthy: data


def test_the_post_filter_never_matches_a_sentinel(app: sa.Engine, vault: Vault) -> None:
    # A shredded customer whose blind index is still there (a sweep that has not reached this
    # table, or a truncated-index collision) must not be returned for the text "[shredded]".
    with Session(app) as s:
        data = Customer(name="D", phone="+1", email="[shredded]")  # a customer's real value
        gone = Customer(name="G", phone="+2", email="g@example.com")
        s.add_all([data, gone])
        s.commit()
        data_id, gone_id = data.id, gone.id
    t = Customer.__table__
    vault.shred(gone_id)
    set_raw(app, t, "email_bidx", gone_id, get_raw(app, t, "email_bidx", data_id))
    with Session(app) as s:
        found = s.scalars(select(Customer).where(Customer.email == "[shredded]")).all()
        assert [c.id for c in found] == [data_id]

    def norm(value: str) -> bytes:
        return value.lower().encode()

    # neither through the normaliser nor as equal to an argument given as such
    text = str(SHREDDED)
    assert not _matches([SHREDDED], [Search(0, norm, [text], {text})])
    assert _matches([text], [Search(0, norm, [text], {text})])
    assert _matches([text.upper()], [Search(0, norm, [text], {text})])  # normalised

    def exploding(value: str) -> bytes:
        raise AssertionError("a sentinel reached the normaliser")

    for value in SENTINELS:
        assert not _matches([value], [Search(0, exploding, [str(value)], {str(value)})])


def test_legacy_plaintext_that_reads_like_a_sentinel_is_data(app: sa.Engine) -> None:
    mid = uuid.uuid4()
    with app.begin() as conn:  # a row from before the column was encrypted
        conn.execute(
            sa.text("INSERT INTO migrating (id, phone) VALUES (:i, :p)").bindparams(
                sa.bindparam("i", type_=sa.Uuid()), sa.bindparam("p", type_=sa.LargeBinary())
            ),
            {"i": mid, "p": b"[shredded]"},
        )
    with Session(app) as s:
        row = s.get(Migrating, mid)
        assert row is not None
        assert row.phone == "[shredded]"
        assert row.phone is not SHREDDED
        assert type(row.phone) is str
        assert row.phone  # data, truthy
        row.phone = "+44 20 7946 0000"  # and rewritten as any data
        s.commit()


def test_a_subject_change_of_a_row_holding_a_sentinel_is_refused(
    app: sa.Engine, vault: Vault
) -> None:
    with Session(app) as s:
        a, b = Customer(name="A", phone="+1"), Customer(name="B", phone="+2")
        s.add_all([a, b])
        s.flush()
        call = Interaction(customer_id=a.id, transcript="hello")
        s.add(call)
        s.commit()
        a_id, b_id, call_id = a.id, b.id, call.id
    vault.shred(a_id)
    with Session(app) as s:
        moved = s.get(Interaction, call_id)
        assert moved is not None
        assert moved.transcript is SHREDDED
        moved.customer_id = b_id  # a CRM merge must not write "[shredded]" as B's transcript
        with pytest.raises(
            StatementRefused, match=r"interactions\.transcript holds a read sentinel"
        ):
            s.flush()
