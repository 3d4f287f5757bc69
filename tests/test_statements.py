"""What a statement may do with an encrypted column: ``== None`` is IS NULL on the value column,
and ordering, grouping, deduplicating or aggregating ciphertext is refused before it runs.
On SQLite, PostgreSQL and MariaDB, each construct through Core, the ORM and the Query API."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, Text, except_, func, intersect, select, union, union_all
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from ccvault import Vault
from ccvault.sqlalchemy import SHREDDED, Encrypted, StatementRefused
from sqla_models import Customer, Everything, Interaction

T = Customer.__table__
E = Everything.__table__


class _Base(DeclarativeBase):
    pass


class Agent(_Base):
    """A relationship ordered by an encrypted column: every load of it would sort ciphertext."""

    __tablename__ = "stmt_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    notes: Mapped[list[Note]] = relationship(order_by="Note.body")


class Note(_Base):
    __tablename__ = "stmt_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stmt_agents.id"))
    body: Mapped[str] = mapped_column(Encrypted(Text, subject="agent_id"))


@pytest.fixture
def people(app: sa.Engine, vault: Vault) -> dict[str, uuid.UUID]:
    """no_email: email NULL; shredded: email set, then shredded (its blind indexes NULL, its
    values still there); plain: email set."""
    with Session(app) as s:
        rows = {
            "no_email": Customer(name="Ann", phone="+1 555 0101", email=None),
            "shredded": Customer(name="Bob", phone="+1 555 0102", email="bob@example.com"),
            "plain": Customer(name="Cy", phone="+1 555 0103", email="cy@example.com"),
        }
        s.add_all(rows.values())
        s.commit()
        ids = {k: c.id for k, c in rows.items()}
    vault.shred(ids["shredded"])
    return ids


def _names(ids: dict[str, uuid.UUID], found: Any) -> set[str]:
    by_id = {v: k for k, v in ids.items()}
    return {by_id[i] for i in found}


# -- == None / != None ---------------------------------------------------------------------------


def test_none_compares_the_value_column_not_the_blind_index(
    app: sa.Engine, people: dict[str, uuid.UUID]
) -> None:
    with app.connect() as conn:  # the shred NULLed the blind indexes, not the values
        row = conn.execute(
            select(T.c.phone_bidx, T.c.email_bidx, T.c.phone.is_(None), T.c.email.is_(None)).where(
                T.c.id == people["shredded"]
            )
        ).one()
    assert tuple(row) == (None, None, False, False)
    assert str((Customer.phone == None).compile()) == "customers.phone IS NULL"  # noqa: E711
    assert str((Customer.phone != None).compile()) == "customers.phone IS NOT NULL"  # noqa: E711

    is_null = [
        Customer.email == None,  # noqa: E711
        None == Customer.email,  # noqa: E711, SIM300
        Customer.email == sa.null(),
        Customer.email.is_(None),
    ]
    not_null = [
        Customer.email != None,  # noqa: E711
        None != Customer.email,  # noqa: E711, SIM300
        Customer.email.is_not(None),
    ]
    with Session(app) as s:
        for crit in is_null:
            assert _names(people, s.scalars(select(Customer.id).where(crit))) == {"no_email"}
            assert _names(people, [c.id for c in s.query(Customer).filter(crit)]) == {"no_email"}
        for crit in not_null:
            found = _names(people, s.scalars(select(Customer.id).where(crit)))
            assert found == {"shredded", "plain"}
        # a searchable column that is never NULL: no row, shredded or not
        assert s.scalars(select(Customer).where(Customer.phone == None)).all() == []  # noqa: E711
        assert len(s.scalars(select(Customer).where(Customer.phone != None)).all()) == 3  # noqa: E711
        # a column that is not searchable
        assert s.scalars(select(Customer.id).where(Customer.name == None)).all() == []  # noqa: E711
        assert len(s.scalars(select(Customer.id).where(Customer.name != None)).all()) == 3  # noqa: E711
        # the shredded customer is found by != None, and reads as SHREDDED
        shredded = s.get(Customer, people["shredded"])
        assert shredded is not None
        assert shredded.email is SHREDDED
        # in_() with None: NULL never equals anything in SQL, as with plain columns
        found = s.scalars(select(Customer.id).where(Customer.email.in_([None, "cy@example.com"])))
        assert _names(people, found) == {"plain"}
    with app.connect() as conn:  # Core
        found = conn.scalars(select(T.c.id).where(T.c.email == None))  # noqa: E711
        assert _names(people, found) == {"no_email"}
        found = conn.scalars(select(T.c.id).where(T.c.email != None))  # noqa: E711
        assert _names(people, found) == {"shredded", "plain"}


def test_other_comparisons_name_the_column_and_what_works() -> None:
    with pytest.raises(TypeError) as info:
        Customer.phone != "+1 555 0100"  # noqa: B015
    message = str(info.value)
    assert "customers.phone" in message
    assert "== None / != None (IS NULL / IS NOT NULL)" in message
    assert "555" not in message
    with pytest.raises(TypeError, match=r"customers\.name.*declare searchable="):
        Customer.name == "Ann"  # noqa: B015


# -- refused statements --------------------------------------------------------------------------

# (construct expected in the message, the column, Core statement, ORM statement)
Build = Callable[[], Any]


def _distinct_count() -> Any:  # count(DISTINCT col), built as SQLAlchemy's distinct() does
    return func.count(UnaryExpression(T.c.phone, operator=operators.distinct_op))


REFUSED: list[tuple[str, str, Build, Build]] = [
    (
        "ORDER BY",
        "customers.phone",
        lambda: select(T).order_by(T.c.phone),
        lambda: select(Customer).order_by(Customer.phone),
    ),
    (
        "ORDER BY",
        "customers.phone",
        lambda: select(T).order_by("phone"),
        lambda: select(Customer).order_by("phone"),
    ),
    (
        "ORDER BY",
        "customers.name",
        lambda: select(T.c.name.label("n")).order_by("n"),
        lambda: select(Customer.name.label("n")).order_by("n"),
    ),
    (
        "ORDER BY",
        "customers.name",
        lambda: select(T.c.id).order_by(
            UnaryExpression(T.c.name, modifier=operators.nulls_first_op)
        ),
        lambda: select(Customer.id, Customer.name.label("n")).order_by(sa.desc("n")),
    ),
    (
        "GROUP BY",
        "customers.phone",
        lambda: select(T.c.phone_bidx, func.count()).group_by(T.c.phone_bidx, T.c.phone),
        lambda: select(Customer.id).group_by(Customer.id, Customer.phone),
    ),
    (
        "SELECT DISTINCT",
        "customers.email",
        lambda: select(T.c.email).distinct(),
        lambda: select(Customer.id, Customer.email).distinct(),
    ),
    (
        "the SQL function max()",
        "customers.phone",
        lambda: select(func.max(T.c.phone)),
        lambda: select(func.max(Customer.phone)),
    ),
    (
        "the SQL function min()",
        "customers.name",
        lambda: select(func.min(T.c.name)),
        lambda: select(Customer.id).where(func.min(Customer.name) != None),  # noqa: E711
    ),
    (
        "the SQL function coalesce()",
        "customers.email",
        lambda: select(func.coalesce(T.c.email, b"")),
        lambda: select(func.coalesce(Customer.email, Customer.name)),
    ),
    (
        "the SQL function length()",
        "customers.phone",
        lambda: select(T.c.id).where(func.length(T.c.phone) > 10),
        lambda: select(Customer).having(func.length(Customer.phone) > 10).group_by(Customer.id),
    ),
    (
        "count(DISTINCT)",
        "customers.phone",
        lambda: select(_distinct_count()),
        lambda: select(_distinct_count()).select_from(Customer),
    ),
    (
        "UNION",
        "customers.name",
        lambda: union(select(T.c.name), select(T.c.name)),
        lambda: select(Customer).from_statement(union(select(Customer), select(Customer))),
    ),
    (
        "INTERSECT",
        "customers.email",
        lambda: intersect(select(T.c.email), select(T.c.email)),
        lambda: intersect(select(Customer.id, Customer.email), select(Customer.id, Customer.email)),
    ),
    (
        "EXCEPT",
        "customers.email",
        lambda: except_(select(T.c.email), select(T.c.email)),
        lambda: except_(select(Customer.email), select(Customer.email)),
    ),
    (
        "PARTITION BY of a window function",
        "customers.phone",
        lambda: select(T.c.id, func.row_number().over(partition_by=T.c.phone)),
        lambda: select(Customer.id, func.count().over(partition_by=Customer.phone)),
    ),
    (
        "ORDER BY of a window function",
        "customers.name",
        lambda: select(T.c.id, func.row_number().over(order_by=T.c.name)),
        lambda: select(Customer.id, func.rank().over(order_by=Customer.name)),
    ),
    (
        "ORDER BY",  # in a subquery
        "customers.phone",
        lambda: select(select(T.c.id).order_by(T.c.phone).limit(2).subquery()),
        lambda: select(Customer).where(
            Customer.id.in_(select(Customer.id).order_by(Customer.phone).limit(2))
        ),
    ),
    (
        "SELECT DISTINCT",  # in a CTE
        "customers.email",
        lambda: select(select(T.c.email).distinct().cte("emails")),
        lambda: select(func.count()).select_from(select(Customer.email).distinct().cte("emails")),
    ),
    (
        "the SQL function max()",  # in a scalar subquery
        "customers.name",
        lambda: select(T.c.id).where(select(func.max(T.c.name)).scalar_subquery() != None),  # noqa: E711
        lambda: select(Customer.id, select(func.max(Customer.name)).scalar_subquery()),
    ),
    (
        "the operator eq",  # comparisons that do not go through the column's comparator
        "customers.name",
        lambda: select(T.c.id).where(sa.literal(b"x") == T.c.name),
        lambda: select(Customer.id).where(
            Customer.phone_bidx == select(Customer.name).limit(1).scalar_subquery()
        ),
    ),
    (
        "the operator eq",  # two columns: built (SQLAlchemy compares columns itself), refused here
        "customers.name",
        lambda: select(T.c.id).where(T.c.name == T.c.phone),
        lambda: select(Customer).join(Interaction, T.c.name == Interaction.__table__.c.transcript),
    ),
    (
        "the operator ne",  # a searchable column against another: never its blind index
        "customers.phone",
        lambda: select(T.c.id).where(T.c.phone != T.c.email),
        lambda: select(Customer).where(T.c.phone != T.c.email),
    ),
    (
        "CAST",
        "customers.name",
        lambda: select(sa.cast(T.c.name, sa.String)),
        lambda: select(sa.cast(Customer.name, sa.String)),
    ),
    (
        "a condition",
        "everything.flag",
        lambda: select(E.c.id).where(E.c.flag),
        lambda: select(Everything).where(sa.or_(Everything.flag, Everything.id == None)),  # noqa: E711
    ),
]


def _queries(s: Session) -> list[tuple[str, str, Any]]:
    """The same constructs through the legacy Query API."""
    return [
        ("ORDER BY", "customers.phone", s.query(Customer).order_by(Customer.phone)),
        ("ORDER BY", "customers.phone", s.query(Customer).order_by("phone")),
        ("GROUP BY", "customers.name", s.query(Customer.id).group_by(Customer.id, Customer.name)),
        ("SELECT DISTINCT", "customers.name", s.query(Customer).distinct()),
        ("SELECT DISTINCT", "customers.email", s.query(Customer.email).distinct()),
        ("the SQL function max()", "customers.phone", s.query(func.max(Customer.phone))),
        ("UNION", "customers.name", s.query(Customer).union(s.query(Customer))),
        (
            "ORDER BY of a window function",
            "customers.phone",
            s.query(Customer.id, func.row_number().over(order_by=Customer.phone)),
        ),
    ]


@contextmanager
def _refused(construct: str, column: str, what: str) -> Iterator[None]:
    """The block raises ccvault's own StatementRefused (not wrapped by SQLAlchemy), naming the
    construct and the column, and nothing of the statement's values."""
    with pytest.raises(StatementRefused) as info:
        yield
    assert type(info.value) is StatementRefused, f"{what}: {type(info.value)!r}"
    message = str(info.value)
    assert message.startswith(f"{construct} on the encrypted column {column}:"), (what, message)
    assert "ciphertext" in message
    assert "555" not in message
    assert "@" not in message


@pytest.fixture
def sent(app: sa.Engine) -> list[str]:
    """Every SQL string the driver is asked to run on ``app``."""
    statements: list[str] = []

    def record(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        statements.append(statement)

    for name in ("do_execute", "do_execute_no_params", "do_executemany"):
        sa.event.listen(app, name, record)
    return statements


def test_ciphertext_computations_are_refused_before_they_run(
    app: sa.Engine, people: dict[str, uuid.UUID], sent: list[str]
) -> None:
    sent.clear()
    for construct, column, core, orm in REFUSED:
        what = f"{construct} / {column}"
        with app.connect() as conn:
            for attempt in ("Core", "Core again (cached verdict)"):
                with _refused(construct, column, f"{attempt}: {what}"):
                    conn.execute(core())
        with Session(app) as s:
            with _refused(construct, column, f"ORM execute: {what}"):
                s.execute(orm()).all()
            with _refused(construct, column, f"ORM scalars: {what}"):
                s.scalars(orm()).all()
    with Session(app) as s:
        for construct, column, query in _queries(s):
            with _refused(construct, column, f"Query: {construct}"):
                query.all()
    assert sent == []  # nothing reached the database
    with Session(app) as s:  # the session and connection stay usable
        assert len(s.scalars(select(Customer)).all()) == 3


def test_distinct_on_an_encrypted_column_is_refused(
    app: sa.Engine, people: dict[str, uuid.UUID]
) -> None:
    if app.dialect.name != "postgresql":
        pytest.skip("DISTINCT ON is PostgreSQL's")
    with Session(app) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SADeprecationWarning)  # distinct(*cols) in 2.1
        with _refused("DISTINCT ON", "customers.phone", "distinct(column)"):
            s.scalars(select(Customer).distinct(Customer.phone)).all()
        try:  # SQLAlchemy 2.1
            from sqlalchemy.dialects.postgresql import distinct_on
        except ImportError:
            return
        with _refused("DISTINCT ON", "customers.phone", "ext(distinct_on())"):
            s.scalars(select(Customer).ext(distinct_on(Customer.phone))).all()
        with _refused("the SQL function lower()", "customers.name", "distinct_on(lower())"):
            s.execute(select(T).ext(distinct_on(sa.func.lower(T.c.name)))).all()
        # DISTINCT ON a plain column deduplicates by that column only: allowed
        rows = s.scalars(select(Customer).ext(distinct_on(Customer.id)).order_by(Customer.id))
        assert len(rows.all()) == 3


def test_relationship_ordered_by_an_encrypted_column_is_refused_on_load(app: sa.Engine) -> None:
    _Base.metadata.create_all(app)
    with Session(app) as s:
        agent = Agent()
        s.add(agent)
        s.flush()
        s.add(Note(agent_id=agent.id, body="call back"))
        s.commit()
        agent_id = agent.id
    with Session(app) as s:
        loaded = s.get(Agent, agent_id)
        assert loaded is not None
        with _refused("ORDER BY", "stmt_notes.body", "lazy load"):
            _ = loaded.notes
    for option in (selectinload(Agent.notes), joinedload(Agent.notes)):
        with Session(app) as s, _refused("ORDER BY", "stmt_notes.body", repr(option)):
            s.scalars(select(Agent).options(option)).unique().all()


def test_what_stays_allowed(app: sa.Engine, people: dict[str, uuid.UUID]) -> None:
    with Session(app) as s:
        # count(col) counts the values that are not NULL, ciphertext or not
        assert s.scalar(select(func.count(Customer.email))) == 2
        assert s.query(func.count(Customer.email)).scalar() == 2
        with app.connect() as conn:
            assert conn.scalar(select(func.count(T.c.email))) == 2
            assert conn.scalar(select(func.count(T.c.email)).where(T.c.email == None)) == 0  # noqa: E711
        # IS NULL inside an aggregate or an ORDER BY: no ciphertext compared
        nulls = select(func.sum(sa.case((Customer.email == None, 1), else_=0)))  # noqa: E711
        assert s.scalar(nulls) == 1
        ordered = s.scalars(
            select(Customer).order_by(Customer.email == None, Customer.id)  # noqa: E711
        ).all()
        assert ordered[-1].id == people["no_email"]
        # UNION ALL keeps every row and compares nothing
        both = union_all(
            select(Customer.id, Customer.email).where(Customer.id == people["plain"]),
            select(Customer.id, Customer.email).where(Customer.id == people["plain"]),
        )
        assert [r.email for r in s.execute(both)] == ["cy@example.com"] * 2
        # the blind index is not encrypted: GROUP BY / DISTINCT / ORDER BY on it run
        groups = s.execute(
            select(Customer.email_bidx, func.count()).group_by(Customer.email_bidx)
        ).all()
        assert sorted(n for _, n in groups) == [1, 2]  # no_email and shredded share NULL
        assert len(s.scalars(select(Customer).order_by(Customer.phone_bidx)).all()) == 3
        assert len(s.scalars(select(Customer.email_bidx).distinct()).all()) == 2
        # DISTINCT and ORDER BY on plain columns of a table with encrypted columns
        assert len(s.scalars(select(Customer.id).distinct().order_by(Customer.id)).all()) == 3
        assert len(s.scalars(s.query(Customer).order_by(Customer.id).statement).all()) == 3
        # a window function over plain columns, and count() over an encrypted one
        windows = s.execute(
            select(Customer.id, func.count(Customer.email).over(partition_by=Customer.id))
        ).all()
        assert sorted(n for _, n in windows) == [0, 1, 1]


def test_async_sessions_get_the_same_refusal(svault: Vault, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from sqla_models import Base

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        svault.attach(engine)
        try:
            async with AsyncSession(engine) as s:
                with _refused("ORDER BY", "customers.phone", "AsyncSession"):
                    await s.scalars(select(Customer).order_by(Customer.phone))
                assert (await s.scalars(select(Customer).order_by(Customer.id))).all() == []
        finally:
            await engine.dispose()

    asyncio.run(main())
