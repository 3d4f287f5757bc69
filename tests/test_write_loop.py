"""The INSERT row loop generated per table plan (issue 15, item 4, write side).

The generated loop writes every row the generic row function (``_write._encrypt_row``) writes,
to the same parameters, blind indexes and ciphertexts (nonces drawn from a fixed source, so the
ciphertexts are compared byte for byte), and raises the same errors: each statement is written
both ways and compared.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from ccvault import SHREDDED, Vault
from ccvault.errors import ValueRejectedError
from ccvault.kms import LocalKms
from ccvault.retention import Category, RetentionPolicy
from ccvault.sqlalchemy import Encrypted, _write
from ccvault.sqlalchemy._plan import plan_for
from ccvault.sqlalchemy._types import VAULT, Prepared, Sealed
from leaks import chain_text

_DEFAULTS = [itertools.count(1_000)]  # reset before each statement: the same subjects each way


def _default_subject() -> uuid.UUID:
    return uuid.UUID(int=next(_DEFAULTS[0]))


def _table(meta: sa.MetaData, name: str, *, searchable: bool, retained: bool, **kw: Any) -> Any:
    """Encrypted columns of every kind: str (searchable or not), short str, JSON, int, bytes,
    and a retention-bound str. (No table is both searchable and retention-bound: every shred's
    sweep visits the searchable tables of the process, and would find the retention category
    missing from its vault's policy.)"""

    def enc(kind: Any, **more: Any) -> Encrypted:
        return Encrypted(kind, subject="owner", **more, **kw)

    return sa.Table(
        name,
        meta,
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Uuid, default=_default_subject if kw else None, nullable=True),
        sa.Column("started", sa.DateTime(), nullable=True),
        sa.Column("email", enc(sa.String(30), searchable="email" if searchable else None)),
        sa.Column("note", enc(sa.String(8)), nullable=True),
        sa.Column("data", enc(sa.JSON), nullable=True),
        sa.Column("count", enc(sa.Integer), nullable=True),
        sa.Column("blob", enc(sa.LargeBinary), nullable=True),
        *(
            (
                sa.Column(
                    "kept",
                    enc(
                        sa.String(20),
                        retention="transcripts",
                        retention_from="started",
                        retention_tz="UTC",
                    ),
                    nullable=True,
                ),
            )
            if retained
            else ()
        ),
    )


@pytest.fixture(scope="module")
def tables() -> dict[str, Any]:
    """Made when the tests run (not at import): an encrypted table lives as long as the process,
    and ``attach()`` checks the retention categories of every one against its vault's policy."""
    meta = sa.MetaData()
    return {
        "meta": meta,
        "strict": _table(meta, "wloop_strict", searchable=True, retained=False),
        "vaultwide": _table(
            meta, "wloop_vaultwide", searchable=True, retained=False, on_null_subject="vaultwide"
        ),
        "retained": _table(meta, "wloop_retained", searchable=False, retained=True),
    }


COLUMNS = ("email", "note", "data", "count", "blob", "kept")


class _Str(str):
    """A str subclass that is no sentinel (not the common ``type(v) is str``)."""


_VALUES: dict[str, Callable[[int], Any]] = {
    "str": lambda i: f"c{i}@example.com",
    "short": lambda i: f"n{i}",
    "none": lambda i: None,
    "edge": lambda i: "x" * 30,  # the most characters of email
    "long": lambda i: "é" * 31,  # one more
    "surrogate": lambda i: "a\ud800b",
    "sentinel": lambda i: SHREDDED,
    "sealed": lambda i: Sealed(b"\x01" * 40),
    "int": lambda i: i,
    "bool": lambda i: True,
    "bytes": lambda i: bytes([i % 256]) * 3,
    "dict": lambda i: {"n": i},
    "nan": lambda i: float("nan"),
    "substr": lambda i: _Str(f"s{i}"),
    "missing": lambda i: _MISSING,
}
_MISSING = object()
_SUBJECTS = ("known", "known2", "new", "none", "missing", "shredded", "wrong")
_EVENTS = ("missing", "none", "naive")


@pytest.fixture(scope="module")
def wvault(tmp_path_factory: Any) -> Iterator[tuple[Vault, list[uuid.UUID]]]:
    path = tmp_path_factory.mktemp("wloop")
    vault = Vault(
        LocalKms.ephemeral(),
        f"sqlite:///{path / 'keys.db'}",
        subject_type="uuid",
        retention_policy=RetentionPolicy(
            categories=(Category(name="transcripts", keep_for="P90D", granularity="month"),)
        ),
    )
    ids = [uuid.uuid4() for _ in range(3)]
    vault.warm(ids)
    vault.shred(ids[2])
    yield vault, ids
    vault.close()


def _fixed_nonces(count: int) -> Callable[[], bytes]:
    counter = itertools.count()
    return lambda: next(counter).to_bytes(12, "big")


def _generic(plan: Any) -> Any:
    """A stand-in for the generated loop that hands every row to the generic function, with the
    key the statement found for it."""
    return lambda rows, keys, nonces, indexers, slow: [
        slow(d, key) for d, key in zip(rows, keys, strict=True)
    ]


def _row(
    table: sa.Table, i: int, subject: str, event: str, shapes: dict[str, str], ids: list[uuid.UUID]
) -> dict[str, Any]:
    row: dict[str, Any] = {"pk": i}
    owner = {
        "known": ids[0],
        "known2": ids[1],
        "new": uuid.UUID(int=i + 1),
        "none": None,
        "shredded": ids[2],
        "wrong": "not a uuid",
    }.get(subject, _MISSING)
    if owner is not _MISSING:
        row["owner"] = owner
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    started = {
        "none": None,
        "aware": now,  # refused: the column is naive, in UTC (an odd row's)
        "naive": now.replace(tzinfo=None),
    }.get(event, _MISSING)
    if started is not _MISSING:
        row["started"] = started
    for name, shape in shapes.items():
        if name not in table.c:
            continue
        value = "Someone@Example.com" if name == "email_bidx" else _VALUES[shape](i)
        if value is not _MISSING:
            row[name] = value
    return row


def _written(vault: Vault, table: sa.Table, rows: list[dict[str, Any]], dialect: Any = None) -> Any:
    """The statement and rows the hook makes of ``rows`` (with ``dialect``: the statement it
    prepares for that dialect), or its error."""
    plan = plan_for(table)
    assert plan is not None
    _DEFAULTS[0] = itertools.count(1_000)
    try:
        stmt, out, _ = _write._insert(
            vault._ring,
            plan,
            sa.insert(table),
            [dict(r) for r in rows],
            None,
            vault._periods,
            dialect,
        )
    except Exception as exc:
        return (type(exc), str(exc), getattr(exc, "column", None))
    return stmt, out


def _outcome(vault: Vault, table: sa.Table, rows: list[dict[str, Any]]) -> Any:
    written = _written(vault, table, rows)
    if len(written) == 3:
        return written
    # the types too: Sealed, IndexValue, str, None
    return [{k: (type(v), v) for k, v in d.items()} for d in written[1]]


def _bound_columns(table: sa.Table) -> list[str]:
    return [k for c in table.c if isinstance(c.type, Encrypted) for k in (c.key, f"{c.key}_bidx")]


def _as_sent(table: sa.Table, written: Any, dialect: Any) -> Any:
    """What reaches the driver: each row's values of the columns the statement binds (those of
    its first row), through the bind step of each unless the statement binds it through
    ``Prepared``; the other values of the encrypted columns and their indexes are not sent."""
    if len(written) == 3:
        return written
    stmt, out = written
    columns = [k for k in _bound_columns(table) if k in table.c and k in out[0]]
    prepared = {c.key for c, v in (stmt._values or {}).items() if isinstance(v.type, Prepared)}
    sent = []
    for d in out:
        row = {}
        for k, v in d.items():
            if k in columns and k not in prepared:
                v = table.c[k].type.bind_processor(dialect)(v)
            if k in columns or k not in _bound_columns(table):
                row[k] = (type(v), v)
        sent.append(row)
    return sorted(prepared), sent


# The values each column takes; a row is made of these, and an odd row has one column (or its
# subject) of any shape.
_VALID = {
    "email": ("str", "edge", "none", "missing", "sealed"),
    "note": ("short", "none", "missing", "substr"),
    "data": ("dict", "int", "str", "none", "missing"),
    "count": ("int", "none", "missing"),
    "blob": ("bytes", "none", "missing", "sealed"),
    "kept": ("short", "none", "missing"),
}
_valid = st.fixed_dictionaries({name: st.sampled_from(shapes) for name, shapes in _VALID.items()})
_odd = st.one_of(
    st.tuples(st.sampled_from(COLUMNS), st.sampled_from(sorted(_VALUES))),
    st.tuples(st.just("subject"), st.sampled_from(_SUBJECTS)),
    st.tuples(st.just("event"), st.just("aware")),
    st.tuples(st.just("email_bidx"), st.just("str")),  # an index given: its bind step's
)
_DIALECTS = {"sqlite": sqlite.pysqlite.dialect(), "postgresql": postgresql.psycopg.dialect()}


@pytest.mark.parametrize("which", ["strict", "vaultwide", "retained"])
@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(("known", "known2", "new")), st.sampled_from(_EVENTS), _valid),
        min_size=2,
        max_size=6,
    ),
    # a few odd rows (one is enough for the statement's outcome to be its own)
    odds=st.lists(st.tuples(st.integers(0, 5), _odd), max_size=2),
)
def test_the_generated_loop_writes_as_the_generic_function(
    wvault: tuple[Vault, list[uuid.UUID]],
    tables: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    rows: list[tuple[str, str, dict[str, str]]],
    odds: list[tuple[int, tuple[str, str]]],
) -> None:
    vault, ids = wvault
    table = tables[which]
    made = [[subject, event, dict(shapes)] for subject, event, shapes in rows]
    for at, (what, how) in odds:
        row = made[at % len(made)]
        if what == "email_bidx":
            row[2]["email_bidx"] = how  # type: ignore[index]
        elif what == "subject":
            row[0] = how
        elif what == "event":
            row[1] = how
        else:
            row[2][what] = how  # type: ignore[index]
    params = [_row(table, i, *row, ids) for i, row in enumerate(made)]  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(_write, "nonce_batch", _fixed_nonces)
        fast = _outcome(vault, table, params)
        marked = _written(vault, table, params)
        prepared = {name: _written(vault, table, params, d) for name, d in _DIALECTS.items()}
        m.setattr(_write, "_write_loop", _generic)
        generic = _outcome(vault, table, params)
    assert fast == generic
    # prepared for a dialect: the driver is sent the same bytes, of the same type, or the
    # statement raises the same error
    for name, dialect in _DIALECTS.items():
        setattr(dialect, VAULT, vault)  # the blind-index bind step hashes a str given as index
        once, before = _as_sent(table, prepared[name], dialect), _as_sent(table, marked, dialect)
        if len(before) == 3:  # an error
            assert once == before, name
            continue
        assert once[1] == before[1], name
        assert before[0] == []  # without a dialect: every column through its bind step
        # with one: every such column the statement binds, through Prepared; but a statement
        # with a subject of a wrong type finds no keys up front, and every row is the generic
        # function's, through the bind steps
        wrong = any(r.get("owner") == "not a uuid" for r in params)
        bound = sorted(k for k in _bound_columns(table) if k in once[1][0])
        assert once[0] == ([] if wrong else bound)


def test_common_rows_never_reach_the_generic_function(
    wvault: tuple[Vault, list[uuid.UUID]], tables: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, ids = wvault
    strict = tables["strict"]
    calls = []
    real = _write._encrypt_row

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(_write, "_encrypt_row", counted)
    shapes = {"email": "str", "note": "short", "data": "dict", "count": "int", "blob": "bytes"}
    params = [_row(strict, i, "known", "missing", shapes, ids) for i in range(4)]
    params.append(_row(strict, 4, "known2", "none", {"email": "none"}, ids))
    params.append(_row(strict, 5, "known", "missing", {"note": "sealed"}, ids))
    # not the common str: the generic function's
    odd = _row(strict, 6, "known", "missing", {"email": "substr"}, ids)
    plan = plan_for(tables["strict"])
    assert plan is not None
    _, out, _ = _write._insert(
        vault._ring, plan, sa.insert(tables["strict"]), [*params, odd], None, vault._periods
    )
    assert calls == [odd]
    assert len(out) == 7
    assert all(type(d["email"]) is Sealed for d in out[:4])
    assert out[4]["email"] is None
    assert out[4]["email_bidx"] is None
    assert out[5]["note"] == params[5]["note"]
    assert "email_bidx" not in out[5]


def test_a_lone_surrogate_in_the_generated_loop_is_chained_to_nothing(
    wvault: tuple[Vault, list[uuid.UUID]],
    tables: dict[str, Any],
) -> None:
    vault, ids = wvault
    strict = tables["strict"]
    params = [_row(strict, 0, "known", "missing", {"email": "str"}, ids)]
    params.append(_row(strict, 1, "known", "missing", {"email": "short", "note": "surrogate"}, ids))
    plan = plan_for(tables["strict"])
    assert plan is not None
    with pytest.raises(ValueRejectedError) as err:
        _write._insert(vault._ring, plan, sa.insert(tables["strict"]), params, None, None)
    assert err.value.__context__ is None
    assert "UnicodeEncodeError" not in chain_text(err.value)
    assert "lone surrogate" in str(err.value)


@pytest.fixture
def strict_app(
    wvault: tuple[Vault, list[uuid.UUID]], tables: dict[str, Any], tmp_path: Any
) -> Iterator[tuple[Any, sa.Engine]]:
    """The strict table on a SQLite file of its own, the test vault attached."""
    vault, _ = wvault
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    tables["meta"].create_all(engine)
    vault.attach(engine)
    yield tables["strict"], engine
    engine.dispose()


def test_rows_written_through_the_generated_loop_read_back(
    strict_app: tuple[Any, sa.Engine],
) -> None:
    table, engine = strict_app
    owners = [uuid.uuid4() for _ in range(5)]
    written = [
        {"owner": o, "email": f"c{i}@example.com", "note": f"n{i}", "data": {"i": i}, "count": i}
        for i, o in enumerate(owners)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), written)
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(table.c.owner, table.c.email, table.c.note, table.c.data, table.c.count)
        ).all()
        assert sorted(map(tuple, got)) == sorted(
            (o, f"c{i}@example.com", f"n{i}", {"i": i}, i) for i, o in enumerate(owners)
        )
        found = conn.execute(sa.select(table.c.owner).where(table.c.email == "c3@example.com"))
        assert found.scalar_one() == owners[3]


def test_a_first_row_without_subject_or_values_keeps_the_later_rows_indexes(
    strict_app: tuple[Any, sa.Engine],
) -> None:
    """An executemany takes its columns from its first row. A first row with a NULL subject and
    only NULL values (nothing to encrypt, so allowed) must still name the blind-index column:
    before, it did not, and the later rows' indexes were silently not written (search missed
    them)."""
    table, engine = strict_app
    owners = [uuid.uuid4() for _ in range(3)]
    written = [{"pk": 1, "owner": None, "email": None}] + [
        {"pk": 2 + i, "owner": o, "email": f"late{i}@example.com"} for i, o in enumerate(owners)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), written)
    with engine.connect() as conn:
        for i, o in enumerate(owners):
            found = conn.execute(
                sa.select(table.c.owner).where(table.c.email == f"LATE{i}@example.com")
            )
            assert found.scalar_one() == o
        indexes = conn.execute(sa.select(table.c.pk, table.c.email_bidx).order_by(table.c.pk))
        assert [(pk, b is None) for pk, b in indexes] == [
            (1, True),
            (2, False),
            (3, False),
            (4, False),
        ]
