"""AsyncSession and async engines: the column types and the key store on async drivers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from ccvault import SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import SHREDDED
from sqla_models import Base, Customer, Interaction

ASYNC_DRIVERS = {
    "sqlite": ("sqlite://", "sqlite+aiosqlite://"),
    "postgresql": ("postgresql+psycopg://", "postgresql+psycopg_async://"),
    "mysql": ("mysql+pymysql://", "mysql+asyncmy://"),
}


def _async_url(url: str) -> str:
    for sync, async_ in ASYNC_DRIVERS.values():
        if url.startswith(sync):
            return async_ + url[len(sync) :]
    raise AssertionError(url)


@contextlib.asynccontextmanager
async def _attached(kms: LocalKms, db_url: str) -> AsyncIterator[tuple[AsyncEngine, Vault]]:
    """An async application engine with the test models and a vault on an async key store,
    attached; both closed afterwards."""
    keystore_url = _async_url(db_url)
    engine = create_async_engine(keystore_url.replace("keys.db", "app.db"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    vault = await Vault.open_async(kms, keystore_url)
    assert vault._store.engine.dialect.is_async  # type: ignore[attr-defined]
    vault.attach(engine)
    try:
        yield engine, vault
    finally:
        await vault.aclose()
        await engine.dispose()


def test_async_session_round_trip_search_and_shred(kms: LocalKms, db_url: str) -> None:
    async def main() -> None:
        async with _attached(kms, db_url) as (engine, vault):
            await _round_trip_search_and_shred(kms, db_url, engine, vault)

    asyncio.run(main())


async def _round_trip_search_and_shred(
    kms: LocalKms, db_url: str, engine: AsyncEngine, vault: Vault
) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        ada = Customer(name="Ada", phone="+1 555 0100", email="ada@example.com")
        s.add(ada)
        await s.flush()
        s.add_all([Interaction(customer_id=ada.id, transcript=f"call {i}") for i in range(3)])
        s.add(Customer(name="Bob", phone="+1 555 0101"))
        await s.commit()
        ada_id = ada.id
    async with AsyncSession(engine, expire_on_commit=False) as s:
        found = (await s.scalars(select(Customer).where(Customer.phone == "+15550100"))).one()
        assert found.name == "Ada"
        stream = await s.stream_scalars(select(Interaction).execution_options(yield_per=2))
        transcripts = sorted([c.transcript async for c in stream])
        assert transcripts == ["call 0", "call 1", "call 2"]
        found.email = "ada@lovelace.org"
        await s.commit()
    # A second vault, cold, in the same loop: batched key loading through the async driver.
    async with (
        _attached(kms, db_url) as (cold_engine, _cold),
        AsyncSession(cold_engine, expire_on_commit=False) as s,
    ):
        got = await s.get(Customer, ada_id)
        assert got is not None
        assert got.email == "ada@lovelace.org"
    receipt = await vault.run(vault.shred, ada_id)
    assert receipt.verify(vault.receipt_public_key)
    async with AsyncSession(engine, expire_on_commit=False) as s:
        gone = await s.get(Customer, ada_id)
        assert gone is not None
        assert gone.name is SHREDDED
        assert (await s.scalars(select(Customer).where(Customer.phone == "+15550100"))).all() == []
        s.add(Interaction(customer_id=ada_id, transcript="after"))
        with pytest.raises(SubjectShreddedError):
            await s.flush()


def test_event_loop_keeps_running_during_key_store_io(kms: LocalKms, db_url: str) -> None:
    """A ticker coroutine keeps ticking while a flush creates 300 keys through the async store."""

    async def main() -> int:
        async with _attached(kms, db_url) as (engine, _vault):
            return await _tick_while_flushing(engine)

    async def _tick_while_flushing(engine: AsyncEngine) -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        async with AsyncSession(engine, expire_on_commit=False) as s:
            for i in range(300):
                s.add(Customer(id=uuid.uuid4(), name=f"c{i}", phone=str(i)))
                await s.flush()  # one new subject key per flush, each a key-store transaction
            await s.commit()
        stop.set()
        await task
        return ticks

    ticks = asyncio.run(main())
    if not db_url.startswith("sqlite"):  # aiosqlite runs in a thread; servers talk over sockets
        assert ticks > 300
    assert ticks > 0
    _ = sa
