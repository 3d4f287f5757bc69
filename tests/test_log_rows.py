"""Result rows in SQLAlchemy's DEBUG log show no decrypted value (review finding).

SQLAlchemy logs each result row at DEBUG ("Row (...)") after the fetch strategy decrypted it.
An attached engine logs the values of encrypted columns as ``<encrypted>`` and everything else
as SQLAlchemy would, whichever way DEBUG was turned on, whatever handlers the application set
up; rows of statements without encrypted columns are logged in full.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload

from ccvault import Vault
from sqla_models import Base, Customer, Interaction
from test_log_leaks import _Capture as LogCapture

T = Customer.__table__
_ROW = re.compile(r" DEBUG ((?:\[\w+\] )?Row \(.*)")


class _Capture(LogCapture):
    def rows(self) -> list[str]:
        found = (_ROW.search(line) for line in self.lines)
        return [match.group(1) for match in found if match is not None]


@pytest.fixture
def captured() -> Iterator[_Capture]:
    """A handler on the root logger only: what an application's logging set-up receives."""
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    level = logging.getLogger("sqlalchemy.engine").level
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        logging.getLogger("sqlalchemy.engine").setLevel(level)


def _workload(engine: sa.Engine) -> tuple[list[str], list[str]]:
    """Customers and a transcript written and read back in many shapes; the plaintexts, and
    the values of unencrypted columns that must still show."""
    # distinctive values that fit their columns (phone: String(32))
    name, phone, email = (f"{w}-{uuid.uuid4().hex[:24]}" for w in ("name", "phone", "email"))
    transcript = f"transcript {uuid.uuid4().hex}"
    cid = uuid.uuid4()
    with Session(engine) as s:
        s.add(Customer(id=cid, name=name, phone=phone, email=email))
        s.flush()
        s.add(Interaction(customer_id=cid, channel="chat", transcript=transcript))
        s.commit()
    with Session(engine) as s:
        s.scalars(sa.select(Customer)).all()
        s.scalars(sa.select(Customer).where(Customer.phone == phone)).one()
        s.scalars(sa.select(Interaction).options(joinedload(Interaction.customer))).all()
        s.execute(sa.select(Customer.name.label("n"), Customer.id)).all()
        sub = sa.select(Customer).subquery()
        s.execute(sa.select(sub.c.email, sub.c.id)).all()
    with engine.connect() as conn:
        conn.execute(sa.select(T)).scalars(1).all()
        conn.execute(sa.select(T)).columns("phone", "id").all()
        list(conn.execute(sa.select(T.c.email)))
        conn.execute(sa.select(Interaction.channel)).all()  # nothing encrypted
    return [name, phone, email, transcript], [cid.hex, "chat"]


def _check(captured: _Capture, plain: list[str], shown: list[str]) -> None:
    text = "\n".join(captured.lines)
    assert [p for p in plain if p in text] == []
    rows = captured.rows()
    assert len(rows) >= 9
    assert sum("<encrypted>" in row for row in rows) >= 8
    # the other columns show as SQLAlchemy shows them, ids and all
    assert "Row ('chat',)" in rows
    joined = "\n".join(rows)
    assert "'chat'" in joined
    assert f"UUID('{uuid.UUID(shown[0])}')" in joined


def _engine(tmp_path: Path, echo: Any) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}", echo=echo)
    Base.metadata.create_all(engine)
    return engine


SETUPS: dict[str, Callable[[Path], sa.Engine]] = {
    'echo="debug"': lambda tmp: _engine(tmp, "debug"),
    "the sqlalchemy.engine logger at DEBUG": lambda tmp: _engine(tmp, False),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_debug_rows_show_no_decrypted_value(
    setup: str, svault: Vault, captured: _Capture, tmp_path: Path
) -> None:
    engine = SETUPS[setup](tmp_path)
    if setup.startswith("the sqlalchemy.engine logger"):
        logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    svault.attach(engine)
    plain, shown = _workload(engine)
    engine.dispose()
    _check(captured, plain, shown)


def test_echo_turned_on_after_attach_and_option_engines(
    svault: Vault, captured: _Capture, tmp_path: Path
) -> None:
    """``engine.echo = ...`` builds a new logger; ``execution_options()`` makes an engine with
    a logger of its own and a message formatter (``logging_token``) that share the listeners."""
    engine = _engine(tmp_path, False)
    svault.attach(engine)
    engine.echo = "debug"
    plain, shown = _workload(engine)
    tokened = engine.execution_options(logging_token="tok")
    more, _ = _workload(tokened)  # type: ignore[arg-type]
    engine.dispose()
    _check(captured, plain + more, shown)
    assert any(row.startswith("[tok] Row (") for row in captured.rows())


def test_async_engine_at_debug(svault: Vault, captured: _Capture, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", echo="debug")
    name = f"name-{uuid.uuid4().hex}"

    async def run() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        svault.attach(engine)
        async with AsyncSession(engine) as s:
            s.add(Customer(name=name, phone="+1 555 0100"))
            await s.commit()
        async with AsyncSession(engine) as s:
            assert [c.name for c in (await s.scalars(sa.select(Customer))).all()] == [name]
        await engine.dispose()

    asyncio.run(run())
    assert name not in "\n".join(captured.lines)
    assert any("<encrypted>" in row for row in captured.rows())


def test_rows_without_encrypted_columns_are_logged_in_full(
    svault: Vault, captured: _Capture, tmp_path: Path
) -> None:
    engine = _engine(tmp_path, "debug")
    svault.attach(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE plain (k TEXT, v INTEGER)"))
        conn.execute(sa.text("INSERT INTO plain VALUES ('visible', 7)"))
        assert conn.execute(sa.text("SELECT k, v FROM plain")).all() == [("visible", 7)]
        stored = sa.table("plain", sa.column("k"), sa.column("v"))
        assert conn.execute(sa.select(stored)).all() == [("visible", 7)]
    engine.dispose()
    assert captured.rows().count("Row ('visible', 7)") == 2


def test_a_long_value_is_cut_as_sqlalchemy_cuts_it(
    svault: Vault, captured: _Capture, tmp_path: Path
) -> None:
    engine = _engine(tmp_path, "debug")
    svault.attach(engine)
    with Session(engine) as s:
        s.add(Interaction(customer_id=uuid.uuid4(), channel="x", transcript="t"))
        s.commit()
    with engine.connect() as conn:
        conn.execute(sa.select(Interaction.transcript, sa.literal("y" * 1000).label("long"))).all()
    engine.dispose()
    (row,) = [r for r in captured.rows() if "truncated" in r]
    assert row.startswith("Row (<encrypted>, 'yyy")
    assert "characters truncated" in row
    assert len(row) < 400
