"""Retention-bound columns (issue 14, items 2, 8 and 9; DESIGN.md lifecycle rules 6 to 8):
``Encrypted(..., retention=, retention_from=, retention_tz=)`` on SQLite, PostgreSQL and MariaDB.

Values go into the period of their row's ``retention_from`` (the write time when NULL or not
declared); the ORM re-encrypts them when it changes; Core statements that cannot name it are
refused. Expiry is done here by tombstoning the period row as enforcement does (its own tests
cover when and how)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import flag_modified

from ccvault import (
    EXPIRED,
    SHREDDED,
    ConfigurationError,
    RetentionExpiredError,
    Vault,
)
from ccvault.crypto import _format as fmt
from ccvault.keystore._records import KeyKind
from ccvault.kms import LocalKms
from ccvault.retention import Category, RetentionPolicy
from ccvault.sqlalchemy import Encrypted, StatementRefused
from ccvault.sqlalchemy._types import encrypted_tables
from ccvault.testing import FrozenClock

UTC = dt.timezone.utc
NY = "America/New_York"
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # the vault clock
TRANSCRIPTS = Category(name="transcripts", keep_for="P90D", granularity="month")  # UTC
CHATS = Category(name="chats", keep_for="P30D", granularity="day", tz="Europe/Paris")
POLICY = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))
SUITE2_HEADER = fmt.SUITE2_HEADER_BYTES

# 2026-02-28 19:30 in New York is 2026-03-01 00:30 UTC and 01:30 in Paris: March's transcripts
# period and Paris' 1 March chats period. Read as UTC it would be February's and 28 February's.
STARTED_NY = dt.datetime(2026, 2, 28, 19, 30)
LATER_NY = dt.datetime(2026, 3, 5, 9, 0)  # 2026-03-05 14:00 UTC: chats 5 March
EXPIRED_NY = dt.datetime(2025, 6, 1, 12, 0)  # June 2025 expired on 2025-09-29: before T0


# -- models, made per test and forgotten afterwards (attach() checks every table it knows) --------


class Models:
    def __init__(self, *, retention: bool = True) -> None:
        class Base(DeclarativeBase):
            pass

        keep: dict[str, Any] = (
            {"retention_from": "started_at", "retention_tz": NY} if retention else {}
        )

        class Call(Base):
            """Naive started_at read in New York; two categories; one suite-1 column."""

            __tablename__ = "r_calls"
            id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
            customer_id: Mapped[uuid.UUID] = mapped_column(index=True)
            channel: Mapped[str] = mapped_column(sa.String(8), default="voice")
            started_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(), nullable=True)
            transcript: Mapped[str | None] = mapped_column(
                Encrypted(
                    sa.Text,
                    subject="customer_id",
                    **({"retention": "transcripts", **keep} if retention else {}),
                ),
                nullable=True,
            )
            summary: Mapped[str | None] = mapped_column(
                Encrypted(
                    sa.Text,
                    subject="customer_id",
                    **({"retention": "chats", **keep} if retention else {}),
                ),
                nullable=True,
            )
            note: Mapped[str | None] = mapped_column(
                Encrypted(sa.Text, subject="customer_id"), nullable=True
            )

        class Chat(Base):
            """An aware started_at (DateTime(timezone=True))."""

            __tablename__ = "r_chats"
            id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
            customer_id: Mapped[uuid.UUID] = mapped_column(index=True)
            started_at: Mapped[dt.datetime | None] = mapped_column(
                sa.DateTime(timezone=True), nullable=True
            )
            body: Mapped[str | None] = mapped_column(
                Encrypted(
                    sa.Text,
                    subject="customer_id",
                    **({"retention": "chats", "retention_from": "started_at"} if retention else {}),
                ),
                nullable=True,
            )

        class Memo(Base):
            """No retention_from: the write time."""

            __tablename__ = "r_memos"
            id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
            customer_id: Mapped[uuid.UUID] = mapped_column(index=True)
            body: Mapped[str | None] = mapped_column(
                Encrypted(
                    sa.Text,
                    subject="customer_id",
                    **({"retention": "transcripts"} if retention else {}),
                ),
                nullable=True,
            )

        self.Base, self.Call, self.Chat, self.Memo = Base, Call, Chat, Memo
        self.tables = [Call.__table__, Chat.__table__, Memo.__table__]

    def forget(self) -> None:
        for table in self.tables:
            encrypted_tables.discard(table)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0.timestamp())


def retention_vault(kms: LocalKms, url: str, clock: FrozenClock) -> Vault:
    return Vault(kms, url, subject_type="uuid", clock=clock, retention_policy=POLICY)


@pytest.fixture
def rvault(kms: LocalKms, db_url: str, clock: FrozenClock) -> Iterator[Vault]:
    v = retention_vault(kms, db_url, clock)
    yield v
    v.close()


@pytest.fixture
def models() -> Iterator[Models]:
    m = Models()
    yield m
    m.forget()


def app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


@pytest.fixture
def rapp(rvault: Vault, db_url: str, models: Models) -> Iterator[sa.Engine]:
    engine = sa.create_engine(app_url(db_url))
    models.Base.metadata.create_all(engine)
    rvault.attach(engine)
    yield engine
    rvault.detach(engine)
    engine.dispose()


def period_label(db_url: str, blob: bytes) -> str:
    """The label of the period a stored suite-2 value names (its header's period id)."""
    blob = bytes(blob)
    assert blob[1] == fmt.SUITE_AES256GCM_PERIOD, "a suite-1 value"
    engine = sa.create_engine(db_url)
    keys = sa.Table("ccvault_keys", sa.MetaData(), autoload_with=engine)
    try:
        with engine.connect() as conn:
            label: str = conn.execute(
                sa.select(keys.c.label).where(
                    keys.c.kind == KeyKind.PERIOD, keys.c.key_id == blob[22:SUITE2_HEADER]
                )
            ).scalar_one()
            return label
    finally:
        engine.dispose()


def tombstone(db_url: str, blob: bytes) -> None:
    """What enforcement does to the period row a value names."""
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE ccvault_keys SET state='destroyed', wrapped=NULL, commitment=NULL, "
                    "epoch_id=NULL WHERE kind='period' AND key_id=:k"
                ),
                {"k": bytes(blob)[22:SUITE2_HEADER]},
            )
    finally:
        engine.dispose()


def stored(engine: sa.Engine, table: sa.Table, row_id: uuid.UUID, *names: str) -> tuple[Any, ...]:
    """The stored bytes of ``names`` (through a column coerced to bytes: nothing decrypts)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*(sa.type_coerce(table.c[n], sa.LargeBinary()) for n in names)).where(
                table.c.id == row_id
            )
        ).one()
    return tuple(None if v is None else bytes(v) for v in row)


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# -- round trips ------------------------------------------------------------------------------


def test_orm_round_trip_seals_each_column_in_its_period(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    Call = models.Call
    customer = uuid.uuid4()
    with Session(rapp) as s:
        call = Call(
            customer_id=customer,
            started_at=STARTED_NY,
            transcript="hello",
            summary="brief",
            note="free",
        )
        s.add(call)
        s.commit()
        call_id = call.id
    transcript, summary, note = stored(
        rapp, Call.__table__, call_id, "transcript", "summary", "note"
    )
    # naive started_at read in New York: March (UTC month), 1 March (a Paris day)
    assert period_label(db_url, transcript) == "transcripts/2026-03-01"
    assert period_label(db_url, summary) == "chats/2026-03-01"
    assert note[1] == fmt.SUITE_AES256GCM  # not retention-bound: suite 1
    assert len(transcript) == len("hello") + 1 + fmt.OVERHEAD[fmt.SUITE_AES256GCM_PERIOD]
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        assert (call.transcript, call.summary, call.note) == ("hello", "brief", "free")
        assert call.started_at == STARTED_NY


def test_core_round_trip_executemany_and_values(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    T = models.Call.__table__
    customers = [uuid.uuid4() for _ in range(3)]
    ids = [uuid.uuid4() for _ in range(4)]
    with rapp.begin() as conn:
        conn.execute(
            sa.insert(T),
            [
                {
                    "id": ids[0],
                    "customer_id": customers[0],
                    "started_at": STARTED_NY,
                    "transcript": "one",
                    "summary": "a",
                },
                {
                    "id": ids[1],
                    "customer_id": customers[1],
                    "started_at": LATER_NY,
                    "transcript": "two",
                    "summary": "b",
                },
                {
                    "id": ids[2],
                    "customer_id": customers[2],
                    "started_at": None,
                    "transcript": "three",
                    "summary": None,
                },
            ],
        )
        # retention_from in .values(), the values in the execution's parameters
        conn.execute(
            sa.insert(T).values(id=ids[3], customer_id=customers[0], started_at=LATER_NY),
            {"transcript": "four", "summary": "d"},
        )
    labels = [
        tuple(
            period_label(db_url, b) if b else None
            for b in stored(rapp, T, i, "transcript", "summary")
        )
        for i in ids
    ]
    assert labels == [
        ("transcripts/2026-03-01", "chats/2026-03-01"),
        ("transcripts/2026-03-01", "chats/2026-03-05"),
        ("transcripts/2026-03-01", None),  # NULL: the write time, 2026-03-10 (vault clock)
        ("transcripts/2026-03-01", "chats/2026-03-05"),
    ]
    with rapp.connect() as conn:
        got = conn.execute(sa.select(T.c.id, T.c.transcript, T.c.summary)).all()
    assert {(r.id, r.transcript, r.summary) for r in got} == {
        (ids[0], "one", "a"),
        (ids[1], "two", "b"),
        (ids[2], "three", None),
        (ids[3], "four", "d"),
    }


def test_null_and_absent_retention_from_mean_the_write_time(
    rapp: sa.Engine, models: Models, db_url: str, clock: FrozenClock
) -> None:
    Chat, Memo = models.Chat, models.Memo
    customer = uuid.uuid4()
    clock.advance(3 * 86_400)  # 2026-03-13 12:00 UTC
    with Session(rapp) as s:
        chats = [
            Chat(customer_id=customer, body="null", started_at=None),
            Chat(customer_id=customer, body="absent"),
        ]
        memo = Memo(customer_id=customer, body="memo")
        s.add_all([*chats, memo])
        s.commit()
        ids = [c.id for c in chats]
        memo_id = memo.id
    for i in ids:
        (body,) = stored(rapp, Chat.__table__, i, "body")
        assert period_label(db_url, body) == "chats/2026-03-13"
    (body,) = stored(rapp, Memo.__table__, memo_id, "body")
    assert period_label(db_url, body) == "transcripts/2026-03-01"


def test_an_aware_retention_from_column(rapp: sa.Engine, models: Models, db_url: str) -> None:
    Chat = models.Chat
    customer = uuid.uuid4()
    # 23:30 on 4 March at UTC-05:00 is 5:30 on 5 March in Paris
    at = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    with Session(rapp) as s:
        chat = Chat(customer_id=customer, started_at=at, body="bonjour")
        s.add(chat)
        s.flush()
        # changed in the session (its value aware): moved to 4 March in Paris
        chat.started_at = dt.datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
        s.flush()
        (body,) = stored_in(s, Chat.__table__, chat.id, "body")
        assert period_label(db_url, body) == "chats/2026-03-04"
        chat.started_at = at
        s.commit()
        chat_id = chat.id
    (body,) = stored(rapp, Chat.__table__, chat_id, "body")
    assert period_label(db_url, body) == "chats/2026-03-05"
    with Session(rapp) as s:
        assert s.get(Chat, chat_id).body == "bonjour"  # type: ignore[union-attr]


def stored_in(s: Session, table: sa.Table, row_id: uuid.UUID, *names: str) -> tuple[Any, ...]:
    row = s.execute(
        sa.select(*(sa.type_coerce(table.c[n], sa.LargeBinary()) for n in names)).where(
            table.c.id == row_id
        )
    ).one()
    return tuple(None if v is None else bytes(v) for v in row)


# -- changing retention_from ------------------------------------------------------------------


def test_changing_retention_from_moves_every_retention_bound_value(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    Call = models.Call
    with Session(rapp) as s:
        call = Call(
            customer_id=uuid.uuid4(), started_at=STARTED_NY, transcript="t", summary="s", note="n"
        )
        s.add(call)
        s.commit()
        call_id = call.id
    before = stored(rapp, Call.__table__, call_id, "transcript", "summary", "note")
    with Session(rapp) as s:  # a fresh session: the values are loaded (decrypted) to move
        call = s.get(Call, call_id)
        assert call is not None
        call.started_at = dt.datetime(2026, 2, 20, 8, 0)  # February; 20 February in Paris
        s.commit()
    after = stored(rapp, Call.__table__, call_id, "transcript", "summary", "note")
    assert period_label(db_url, after[0]) == "transcripts/2026-02-01"
    assert period_label(db_url, after[1]) == "chats/2026-02-20"
    assert after[0][:SUITE2_HEADER] != before[0][:SUITE2_HEADER]
    assert after[1][:SUITE2_HEADER] != before[1][:SUITE2_HEADER]
    assert after[2] == before[2]  # a suite-1 column is not touched
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        assert (call.transcript, call.summary, call.note) == ("t", "s", "n")
    # to NULL: the write time (the vault clock's 10 March)
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        call.started_at = None
        s.commit()
    after = stored(rapp, Call.__table__, call_id, "transcript", "summary")
    assert [period_label(db_url, b) for b in after] == [
        "transcripts/2026-03-01",
        "chats/2026-03-10",
    ]


def test_an_orm_update_of_one_column_uses_the_rows_retention_from(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    Call = models.Call
    with Session(rapp) as s:
        call = Call(customer_id=uuid.uuid4(), started_at=LATER_NY, transcript="t", summary="s")
        s.add(call)
        s.commit()
        call_id = call.id
    before = stored(rapp, Call.__table__, call_id, "summary")
    with Session(rapp) as s:  # started_at expired by the commit: loaded by the write hook
        call = s.get(Call, call_id)
        assert call is not None
        s.expire(call, ["started_at"])
        call.transcript = "t2"
        s.commit()
    transcript, summary = stored(rapp, Call.__table__, call_id, "transcript", "summary")
    assert period_label(db_url, transcript) == "transcripts/2026-03-01"
    assert summary == before[0]


def test_core_updates_name_their_retention_from_or_are_refused(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    T = models.Call.__table__
    customer, row_id = uuid.uuid4(), uuid.uuid4()
    with rapp.begin() as conn:
        conn.execute(
            sa.insert(T).values(
                id=row_id,
                customer_id=customer,
                started_at=STARTED_NY,
                transcript="t",
                summary="s",
                note="n",
            )
        )
    before = stored(rapp, T, row_id, "transcript", "summary")
    who = (T.c.id == row_id) & (T.c.customer_id == customer)
    with rapp.begin() as conn, pytest.raises(StatementRefused) as refused:
        conn.execute(sa.update(T).where(who).values(transcript="x"))
    assert "retention_from (started_at)" in str(refused.value)
    assert "filter on started_at ==" in str(refused.value)
    with rapp.begin() as conn, pytest.raises(StatementRefused) as refused:
        conn.execute(sa.update(T).where(who).values(started_at=LATER_NY))
    assert "without re-encrypting" in str(refused.value)
    with rapp.begin() as conn, pytest.raises(StatementRefused):
        conn.execute(sa.update(T).where(who).values(started_at=LATER_NY, transcript="x"))
    assert stored(rapp, T, row_id, "transcript", "summary") == before  # nothing written
    # the ORM entity's columns, and a bind parameter, name it too
    C = models.Call
    with rapp.begin() as conn:
        conn.execute(
            sa.update(C)
            .where(C.id == row_id, C.customer_id == customer, C.started_at == sa.bindparam("at"))
            .values(transcript=sa.bindparam("t")),
            {"at": STARTED_NY, "t": "named"},
        )
        # a suite-1 column needs no retention_from
        conn.execute(sa.update(T).where(who).values(note="n2"))
    transcript, summary = stored(rapp, T, row_id, "transcript", "summary")
    assert period_label(db_url, transcript) == "transcripts/2026-03-01"
    assert summary == before[1]
    # setting it with every retention-bound column moves them
    with rapp.begin() as conn:
        conn.execute(
            sa.update(T)
            .where(who)
            .values(started_at=dt.datetime(2026, 2, 10, 12, 0), transcript="moved", summary="too")
        )
    after = stored(rapp, T, row_id, "transcript", "summary")
    assert [period_label(db_url, b) for b in after] == [
        "transcripts/2026-02-01",
        "chats/2026-02-10",
    ]
    with rapp.connect() as conn:
        assert conn.execute(sa.select(T.c.transcript, T.c.summary, T.c.note)).one() == (
            "moved",
            "too",
            "n2",
        )
    # NULL values need no period: no retention_from needed
    with rapp.begin() as conn:
        conn.execute(sa.update(T).where(who).values(transcript=None))
    # an SQL expression for retention_from is no client-side value
    with rapp.begin() as conn, pytest.raises(StatementRefused, match="SQL expression"):
        conn.execute(
            sa.insert(T).values(customer_id=customer, started_at=sa.func.now(), transcript="t")
        )


# -- bad values, expired periods ----------------------------------------------------------------


def test_bad_retention_from_values_are_refused_and_write_nothing(
    rapp: sa.Engine, models: Models
) -> None:
    Call, Chat = models.Call, models.Chat
    customer = uuid.uuid4()
    cases: list[tuple[Any, Any, type[Exception], str]] = [
        (
            Chat,
            dt.datetime(2026, 3, 1, 12, 0),
            ValueError,
            "r_chats.started_at is DateTime(timezone=True) but holds a naive",
        ),
        (
            Call,
            dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            ValueError,
            "r_calls.started_at is a DateTime without a time zone, read in America/New_York",
        ),
        (
            Chat,
            "2026-03-01",
            TypeError,
            "r_chats.started_at (the retention_from of retention-bound columns) takes datetime "
            "values, not str",
        ),
        (Chat, dt.datetime(2026, 6, 1, tzinfo=UTC), ValueError, "period"),
    ]
    for model, at, error, message in cases:
        body = {"body": "secret text"} if model is Chat else {"transcript": "secret text"}
        with Session(rapp) as s:
            s.add(model(customer_id=customer, started_at=at, **body))
            with pytest.raises(error) as refused:
                s.commit()
        assert message in str(refused.value)
        assert "secret text" not in str(refused.value)
    with rapp.begin() as conn, pytest.raises(ValueError, match="naive"):
        conn.execute(
            sa.insert(Chat.__table__),
            [{"customer_id": customer, "body": "x", "started_at": dt.datetime(2026, 3, 1)}],
        )
    assert count(rapp, Call.__table__) == count(rapp, Chat.__table__) == 0


def test_a_write_into_an_expired_period_writes_nothing(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    Call = models.Call
    customer = uuid.uuid4()
    with Session(rapp) as s:
        s.add(Call(customer_id=customer, started_at=EXPIRED_NY, transcript="late"))
        with pytest.raises(RetentionExpiredError, match="already expired"):
            s.commit()
    T = Call.__table__
    with rapp.begin() as conn, pytest.raises(RetentionExpiredError):
        conn.execute(
            sa.insert(T),
            [
                {"customer_id": customer, "started_at": STARTED_NY, "transcript": "fine"},
                {"customer_id": customer, "started_at": EXPIRED_NY, "transcript": "late"},
            ],
        )
    assert count(rapp, T) == 0
    # a move into an expired period: the row keeps its values where they were
    with Session(rapp) as s:
        call = Call(customer_id=customer, started_at=STARTED_NY, transcript="t")
        s.add(call)
        s.commit()
        call_id = call.id
    before = stored(rapp, T, call_id, "transcript")
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        call.started_at = EXPIRED_NY
        with pytest.raises(RetentionExpiredError):
            s.commit()
    assert stored(rapp, T, call_id, "transcript") == before


def test_a_null_subject_takes_no_retention(rapp: sa.Engine, models: Models) -> None:
    T = models.Memo.__table__
    with rapp.begin() as conn, pytest.raises(StatementRefused, match="is NULL"):
        conn.execute(sa.insert(T).values(customer_id=None, body="x"))


# -- expired reads, sentinels never written back --------------------------------------------------


def test_an_expired_period_reads_expired_and_strict_raises_located(
    rapp: sa.Engine, models: Models, db_url: str, kms: LocalKms, clock: FrozenClock
) -> None:
    Call = models.Call
    with Session(rapp) as s:
        call = Call(
            customer_id=uuid.uuid4(),
            started_at=STARTED_NY,
            transcript="gone",
            summary="kept",
            note="suite one",
        )
        s.add(call)
        s.commit()
        call_id = call.id
    (transcript,) = stored(rapp, Call.__table__, call_id, "transcript")
    tombstone(db_url, transcript)  # March's transcripts; the chats day stays live
    fresh = retention_vault(kms, db_url, clock)
    engine = sa.create_engine(app_url(db_url))
    try:
        fresh.attach(engine)
        with Session(engine) as s:
            call = s.get(Call, call_id)
            assert call is not None
            assert call.transcript is EXPIRED
            assert (call.summary, call.note) == ("kept", "suite one")
        with engine.connect() as conn:
            row = conn.execute(sa.select(Call.__table__)).one()
            assert row.transcript is EXPIRED
            assert row.summary == "kept"
        fresh.detach(engine)
        fresh.attach(engine, strict=True)
        with Session(engine) as s, pytest.raises(RetentionExpiredError) as raised:
            s.get(Call, call_id)
        assert raised.value.table == "r_calls"
        assert raised.value.column == "transcript"
        assert raised.value.primary_key == (call_id,)
        assert "gone" not in str(raised.value)
        assert "gone" not in repr(raised.value.args)
    finally:
        fresh.detach(engine)
        fresh.close()
        engine.dispose()


def test_an_expired_value_is_never_written_back(
    rapp: sa.Engine, models: Models, db_url: str, kms: LocalKms, clock: FrozenClock
) -> None:
    Call = models.Call
    customer = uuid.uuid4()
    with Session(rapp) as s:
        call = Call(customer_id=customer, started_at=STARTED_NY, transcript="gone", summary="kept")
        s.add(call)
        s.commit()
        call_id = call.id
    (before,) = stored(rapp, Call.__table__, call_id, "transcript")
    tombstone(db_url, before)
    fresh = retention_vault(kms, db_url, clock)
    engine = sa.create_engine(app_url(db_url))
    refusals: list[tuple[Callable[[Any], None], type[Exception], str]] = [
        (lambda c: flag_modified(c, "transcript"), TypeError, "EXPIRED"),
        (lambda c: setattr(c, "summary", EXPIRED), TypeError, "EXPIRED"),  # (same: no change)
        (lambda c: setattr(c, "started_at", LATER_NY), StatementRefused, "another period"),
        (lambda c: setattr(c, "customer_id", uuid.uuid4()), StatementRefused, "another subject"),
    ]
    try:
        fresh.attach(engine)
        with Session(engine) as s:  # a flush of the object that does not touch it: untouched
            call = s.get(Call, call_id)
            assert call is not None
            assert call.transcript is EXPIRED
            call.channel = "chat"
            call.summary = "kept, edited"
            s.commit()
        assert stored(engine, Call.__table__, call_id, "transcript") == (before,)
        for change, error, message in refusals:
            with Session(engine) as s:
                call = s.get(Call, call_id)
                assert call is not None
                change(call)
                with pytest.raises(error, match=message):
                    s.commit()
        assert stored(engine, Call.__table__, call_id, "transcript") == (before,)
        T = Call.__table__
        for sentinel in (EXPIRED, SHREDDED):  # Core: refused by the write hook
            with engine.begin() as conn, pytest.raises(TypeError, match=sentinel._name):
                conn.execute(
                    sa.update(T)
                    .where(T.c.id == call_id, T.c.customer_id == customer)
                    .values(started_at=STARTED_NY, transcript=sentinel, summary="s")
                )
        assert stored(engine, T, call_id, "transcript") == (before,)
    finally:
        fresh.detach(engine)
        fresh.close()
        engine.dispose()


# -- suite-1 and suite-2 values side by side ------------------------------------------------------


def test_a_column_that_gains_retention_reads_its_suite1_values(rvault: Vault, db_url: str) -> None:
    old, new = Models(retention=False), Models()
    engine = sa.create_engine(app_url(db_url))
    try:
        old.Base.metadata.create_all(engine)
        rvault.attach(engine)
        customer = uuid.uuid4()
        with Session(engine) as s:
            first = old.Call(
                customer_id=customer, started_at=STARTED_NY, transcript="before", summary="s1"
            )
            s.add(first)
            s.commit()
            first_id = first.id
        with Session(engine) as s:  # the same table, now declared with retention=
            second = new.Call(
                customer_id=customer, started_at=STARTED_NY, transcript="after", summary="s2"
            )
            s.add(second)
            s.commit()
            second_id = second.id
        (a,) = stored(engine, new.Call.__table__, first_id, "transcript")
        (b,) = stored(engine, new.Call.__table__, second_id, "transcript")
        assert (a[1], b[1]) == (fmt.SUITE_AES256GCM, fmt.SUITE_AES256GCM_PERIOD)
        with Session(engine) as s:  # one select, both suites
            got = sorted(s.scalars(sa.select(new.Call)).all(), key=lambda c: c.transcript or "")
            assert [(c.transcript, c.summary) for c in got] == [("after", "s2"), ("before", "s1")]
            # a new write of the old row goes into its period
            got[1].transcript = "rewritten"
            s.commit()
        (a,) = stored(engine, new.Call.__table__, first_id, "transcript")
        assert period_label(db_url, a) == "transcripts/2026-03-01"
        # and removing retention=: the suite-2 values still read, new writes are suite 1
        with Session(engine) as s:
            got = s.scalars(sa.select(old.Call)).all()
            assert sorted(c.transcript for c in got) == ["after", "rewritten"]
            s.add(old.Call(customer_id=customer, started_at=STARTED_NY, transcript="plain again"))
            s.commit()
        with engine.connect() as conn:
            T = old.Call.__table__
            raw = (
                conn.execute(sa.select(sa.type_coerce(T.c.transcript, sa.LargeBinary())))
                .scalars()
                .all()
            )
        assert sorted(bytes(v)[1] for v in raw) == [1, 2, 2]
    finally:
        rvault.detach(engine)
        engine.dispose()
        old.forget()
        new.forget()


# -- the data map and the subject export --------------------------------------------------------


def test_the_data_map_and_the_export_show_retention(
    rapp: sa.Engine, rvault: Vault, models: Models, db_url: str
) -> None:
    found = rvault.data_map([models.Call, models.Chat, models.Memo]).as_dict()
    columns = {(t["table"], c["name"]): c for t in found["tables"] for c in t["columns"]}
    assert columns[("r_calls", "transcript")]["retention"] == {
        "category": "transcripts",
        "retention_from": "started_at",
        "retention_tz": NY,
    }
    assert columns[("r_chats", "body")]["retention"] == {
        "category": "chats",
        "retention_from": "started_at",
        "retention_tz": None,
    }
    assert columns[("r_memos", "body")]["retention"] == {
        "category": "transcripts",
        "retention_from": None,
        "retention_tz": None,
    }
    assert columns[("r_calls", "note")]["retention"] is None
    text = rvault.data_map([models.Call]).as_markdown()
    assert (
        "| `transcript` | encrypted | `r_calls.transcript` |  | error | `transcripts` from "
        "`started_at` (America/New_York) |" in text
    )

    customer = uuid.uuid4()
    with Session(rapp) as s:
        calls = [
            models.Call(
                customer_id=customer, started_at=STARTED_NY, transcript="t1", summary="s1", note="n"
            ),
            models.Call(customer_id=customer, started_at=LATER_NY, transcript="t2"),
        ]
        s.add_all(calls)
        s.commit()
        ids = [c.id for c in calls]
    (summary,) = stored(rapp, models.Call.__table__, ids[0], "summary")
    tombstone(db_url, summary)  # chats 1 March
    rvault._ring.evict_periods(None)  # type: ignore[attr-defined]  # what the expiry's poll does
    exported = rvault.export_subject(customer, rapp, models=[models.Call]).as_dict()
    (table,) = exported["tables"]
    by_id = {
        row["id"]: (row, states)
        for row, states in zip(table["rows"], table["retention"], strict=True)
    }
    row, states = by_id[str(ids[0])]
    assert (row["transcript"], row["summary"], row["note"]) == ("t1", "[expired]", "n")
    assert states == {"transcript": "live", "summary": "expired"}
    row, states = by_id[str(ids[1])]
    assert states == {"transcript": "live"}


# -- configuration refused at declaration and at attach ------------------------------------------


def test_searchable_with_retention_is_refused_and_says_why() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Encrypted(sa.String(32), subject="id", searchable="phone", retention="transcripts")
    assert "blind index" in str(refused.value)
    assert "outlive" in str(refused.value)
    with pytest.raises(ConfigurationError, match="vault-wide values take no retention"):
        Encrypted(sa.Text, subject="id", retention="transcripts", on_null_subject="vaultwide")
    with pytest.raises(ConfigurationError, match="need retention="):
        Encrypted(sa.Text, subject="id", retention_from="started_at")
    with pytest.raises(ConfigurationError, match="IANA"):
        Encrypted(sa.Text, subject="id", retention="t", retention_from="at", retention_tz="Mars")
    with pytest.raises(ConfigurationError, match="IANA"):
        Encrypted(
            sa.Text, subject="id", retention="t", retention_from="at", retention_tz="localtime"
        )
    with pytest.raises(ConfigurationError, match="naive retention_from"):
        Encrypted(sa.Text, subject="id", retention="t", retention_tz="UTC")
    e = Encrypted(sa.String(10), subject="id", retention="t", retention_from="at", retention_tz=NY)
    assert repr(e) == (
        "Encrypted(String(length=10), subject='id', retention='t', retention_from='at', "
        "retention_tz='America/New_York')"
    )
    assert repr(e.copy()) == repr(e)
    plain = Encrypted(sa.String(10), subject="id")
    assert e.storage_length() == plain.storage_length() + 16  # type: ignore[operator]  # period id


@pytest.fixture
def broken() -> Iterator[list[sa.Table]]:
    made: list[sa.Table] = []
    yield made
    for table in made:
        encrypted_tables.discard(table)


def _retained_table(md: sa.MetaData, started_at: sa.Column[Any], **kw: Any) -> sa.Table:
    return sa.Table(
        "r_broken",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        started_at,
        sa.Column(
            "body",
            Encrypted(
                sa.Text,
                subject="id",
                retention=kw.pop("retention", "transcripts"),
                retention_from="started_at",
                **kw,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("column", "kw", "message"),
    [
        (
            lambda: sa.Column(
                "started_at", sa.DateTime(timezone=True), server_default=sa.func.now()
            ),
            {},
            "r_broken.started_at gets its value from the database",
        ),
        (
            lambda: sa.Column(
                "started_at", sa.DateTime(timezone=True), server_onupdate=sa.FetchedValue()
            ),
            {},
            "r_broken.started_at gets its value from the database",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime(timezone=True), sa.FetchedValue()),
            {},
            "r_broken.started_at gets its value from the database",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime(timezone=True), sa.Computed("now()")),
            {},
            "r_broken.started_at gets its value from the database",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime(timezone=True), onupdate=lambda: T0),
            {},
            "r_broken.started_at has onupdate=",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime()),
            {},
            "r_broken.started_at is a DateTime without a time zone: give the Encrypted columns "
            "retention_tz=",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime(timezone=True)),
            {"retention_tz": "UTC"},
            "naive column only",
        ),
        (
            lambda: sa.Column("started_at", sa.Date()),
            {},
            "r_broken.started_at is Date: retention_from names a DateTime column",
        ),
        (
            lambda: sa.Column("started_at", Encrypted(sa.DateTime(), subject="id")),
            {},
            "never encrypted",
        ),
        (
            lambda: sa.Column("other", sa.DateTime(timezone=True)),
            {},
            "no retention_from column 'started_at'",
        ),
        (
            lambda: sa.Column("started_at", sa.DateTime(timezone=True)),
            {"retention": "recordings"},
            "r_broken.body: retention='recordings' names no category of the retention policy "
            "(it has: chats, transcripts)",
        ),
    ],
    ids=[
        "server_default",
        "server_onupdate",
        "fetched_value",
        "computed",
        "onupdate",
        "naive",
        "tz_on_aware",
        "date",
        "encrypted",
        "missing",
        "unknown_category",
    ],
)
def test_a_retention_from_that_cannot_work_is_refused_at_attach(
    kms: LocalKms,
    tmp_path: Path,
    clock: FrozenClock,
    broken: list[sa.Table],
    column: Callable[[], sa.Column[Any]],
    kw: dict[str, Any],
    message: str,
) -> None:
    broken.append(_retained_table(sa.MetaData(), column(), **kw))
    vault = retention_vault(kms, f"sqlite:///{tmp_path / 'keys.db'}", clock)
    try:
        with pytest.raises(ConfigurationError) as refused:
            vault.attach(sa.create_engine("sqlite://"))
        assert message in str(refused.value)
    finally:
        vault.close()


def test_two_retention_from_columns_in_one_table_are_refused(
    kms: LocalKms, tmp_path: Path, clock: FrozenClock, broken: list[sa.Table]
) -> None:
    broken.append(
        sa.Table(
            "r_two",
            sa.MetaData(),
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("a", sa.DateTime(timezone=True)),
            sa.Column("b", sa.DateTime(timezone=True)),
            sa.Column("x", Encrypted(sa.Text, subject="id", retention="chats", retention_from="a")),
            sa.Column("y", Encrypted(sa.Text, subject="id", retention="chats", retention_from="b")),
        )
    )
    vault = retention_vault(kms, f"sqlite:///{tmp_path / 'keys.db'}", clock)
    try:
        with pytest.raises(ConfigurationError, match="the same retention_from"):
            vault.attach(sa.create_engine("sqlite://"))
    finally:
        vault.close()


def test_a_vault_without_a_policy_reads_but_refuses_to_write_retention_bound_columns(
    models: Models, svault: Vault, tmp_path: Path
) -> None:
    """A reading service needs no policy (reads never consult one): it attaches; a write of a
    retention-bound column is refused, naming the column."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    models.Base.metadata.create_all(engine)
    svault.attach(engine)
    try:
        with engine.begin() as conn:  # a row another service wrote (its value NULL here)
            conn.execute(
                sa.text("INSERT INTO r_memos (id, customer_id) VALUES (:i, :c)"),
                {"i": uuid.uuid4().hex, "c": uuid.uuid4().hex},
            )
        with Session(engine) as s:
            assert [m.body for m in s.scalars(sa.select(models.Memo))] == [None]
        with (
            pytest.raises(ConfigurationError, match="needs a retention policy") as refused,
            Session(engine) as s,
            s.begin(),
        ):
            s.add(models.Memo(customer_id=uuid.uuid4(), body="said"))
        assert "r_memos.body" in str(refused.value)
    finally:
        svault.detach(engine)
        engine.dispose()


def test_a_model_mapped_after_attach_is_checked_at_its_first_write(
    kms: LocalKms, tmp_path: Path, clock: FrozenClock, broken: list[sa.Table]
) -> None:
    vault = retention_vault(kms, f"sqlite:///{tmp_path / 'keys.db'}", clock)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        vault.attach(engine)
        table = sa.Table(
            "r_late",
            sa.MetaData(),
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("body", Encrypted(sa.Text, subject="id", retention="recordings")),
        )
        broken.append(table)
        table.create(engine)
        with engine.begin() as conn, pytest.raises(ConfigurationError, match=r"r_late\.body"):
            conn.execute(sa.insert(table).values(id=uuid.uuid4(), body="x"))
        assert count(engine, table) == 0
    finally:
        vault.detach(engine)
        vault.close()
        engine.dispose()


def test_a_subject_change_reseals_retention_bound_values_in_their_period(
    rapp: sa.Engine, models: Models, db_url: str
) -> None:
    Call = models.Call
    with Session(rapp) as s:
        call = Call(customer_id=uuid.uuid4(), started_at=STARTED_NY, transcript="t", summary="s")
        s.add(call)
        s.commit()
        call_id = call.id
    before = stored(rapp, Call.__table__, call_id, "transcript", "summary")
    other = uuid.uuid4()
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        call.customer_id = other
        s.commit()
    after = stored(rapp, Call.__table__, call_id, "transcript", "summary")
    assert [period_label(db_url, b) for b in after] == [
        "transcripts/2026-03-01",
        "chats/2026-03-01",
    ]
    assert after[0][2:22] != before[0][2:22]  # another subject's key
    with Session(rapp) as s:
        call = s.get(Call, call_id)
        assert call is not None
        assert (call.customer_id, call.transcript, call.summary) == (other, "t", "s")


def test_an_upsert_that_sets_retention_from_is_refused(rapp: sa.Engine, models: Models) -> None:
    if rapp.dialect.name == "mariadb" or rapp.dialect.name == "mysql":
        from sqlalchemy.dialects.mysql import insert
    elif rapp.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    T = models.Call.__table__
    stmt: Any = insert(T).values(customer_id=uuid.uuid4(), started_at=STARTED_NY, note="n")
    if rapp.dialect.name == "postgresql" or rapp.dialect.name == "sqlite":
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"started_at": LATER_NY})
    else:
        stmt = stmt.on_duplicate_key_update(started_at=LATER_NY)
    with rapp.begin() as conn, pytest.raises(StatementRefused, match="upsert"):
        conn.execute(stmt)


def test_a_client_side_default_of_retention_from_is_the_event_time(
    kms: LocalKms, db_url: str, clock: FrozenClock, rvault: Vault
) -> None:
    class Base(DeclarativeBase):
        pass

    class Ticket(Base):
        __tablename__ = "r_tickets"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        customer_id: Mapped[uuid.UUID] = mapped_column()
        opened_at: Mapped[dt.datetime] = mapped_column(
            sa.DateTime(), default=lambda: dt.datetime(2026, 3, 4, 23, 30)
        )
        body: Mapped[str | None] = mapped_column(
            Encrypted(
                sa.Text,
                subject="customer_id",
                retention="chats",
                retention_from="opened_at",
                retention_tz="UTC",
            ),
            nullable=True,
        )

    engine = sa.create_engine(app_url(db_url))
    try:
        Base.metadata.create_all(engine)
        rvault.attach(engine)
        T = Ticket.__table__
        customer = uuid.uuid4()
        with engine.begin() as conn:  # executemany: rows with and without a body
            conn.execute(
                sa.insert(T),
                [
                    {"customer_id": customer, "body": "one"},
                    {"customer_id": customer, "body": None},
                    {"customer_id": customer, "body": "three"},
                ],
            )
        with Session(engine) as s:
            s.add(Ticket(customer_id=customer, body="orm"))
            s.commit()
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(T.c.opened_at, sa.type_coerce(T.c.body, sa.LargeBinary()))
            ).all()
        assert len(rows) == 4
        for opened_at, body in rows:
            assert opened_at == dt.datetime(2026, 3, 4, 23, 30)
            if body is not None:  # 23:30 UTC is 00:30 on 5 March in Paris
                assert period_label(db_url, body) == "chats/2026-03-05"
    finally:
        rvault.detach(engine)
        engine.dispose()
        encrypted_tables.discard(Ticket.__table__)  # type: ignore[arg-type]
