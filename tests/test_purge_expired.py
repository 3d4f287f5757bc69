"""``vault.purge_expired`` (issue 14, item 7): rows whose every encrypted value is NULL, EXPIRED
or SHREDDED are deleted in batches, decided from headers and tombstones without decrypting;
rows with a live (or held) value, all-NULL rows and rows with a foreign or unknown value stay.

Suite-2 values are planted with ``vault.encrypt(..., retention=)`` under the column's context
label, and a period expires by tombstoning its row as enforcement does (its own tests cover
when)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import EXPIRED, ConfigurationError, Vault
from ccvault.crypto import _format as fmt
from ccvault.kms import LocalKms
from ccvault.retention import Category, RetentionPolicy
from ccvault.sqlalchemy import Encrypted
from ccvault.testing import FrozenClock
from test_retention_values import tombstone_period

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
POLICY = RetentionPolicy(
    categories=(Category(name="transcripts", keep_for="P90D", granularity="month"),)
)
STR_TAG = b"\x01"


class Base(DeclarativeBase):
    pass


class Call(Base):
    __tablename__ = "purge_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    transcript: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, subject="customer_id"), nullable=True
    )
    summary: Mapped[str | None] = mapped_column(
        Encrypted(sa.Text, subject="customer_id"), nullable=True
    )


@pytest.fixture
def setup(kms: LocalKms, db_url: str) -> Iterator[tuple[Vault, sa.Engine]]:
    vault = Vault(
        kms,
        db_url,
        subject_type="uuid",
        clock=FrozenClock(T0.timestamp()),
        retention_policy=POLICY,
    )
    url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    vault.attach(engine)
    yield vault, engine
    vault.detach(engine)
    Base.metadata.drop_all(engine)
    engine.dispose()
    vault.close()


def sealed(vault: Vault, subject: uuid.UUID, column: str, text: str, retention: bool) -> bytes:
    return vault.encrypt(
        subject,
        STR_TAG + text.encode(),
        context=f"purge_calls.{column}",
        retention="transcripts" if retention else None,
    )


def plant(engine: sa.Engine, rows: list[dict[str, object]]) -> None:
    """Insert stored bytes as they are (a plain table: no write hook)."""
    raw = sa.Table(
        "purge_calls",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Uuid),
        sa.Column("transcript", sa.LargeBinary),
        sa.Column("summary", sa.LargeBinary),
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(raw), rows)


def test_purge_deletes_only_rows_with_nothing_readable(setup: tuple[Vault, sa.Engine], db_url):
    vault, engine = setup
    expired_c, live_c, shredded_c, other = (uuid.uuid4() for _ in range(4))
    e1 = sealed(vault, expired_c, "transcript", "old call", True)
    e2 = sealed(vault, expired_c, "summary", "old summary", True)
    live = sealed(vault, live_c, "summary", "recent", False)
    s1 = sealed(vault, shredded_c, "transcript", "gone", False)
    foreign = sealed(vault, other, "transcript", "moved", True)
    rows: list[dict[str, object]] = [
        {"id": 1, "customer_id": expired_c, "transcript": e1, "summary": e2},  # deleted
        {"id": 2, "customer_id": expired_c, "transcript": e1, "summary": None},  # deleted
        {"id": 3, "customer_id": live_c, "transcript": sealed(vault, live_c, "transcript",
                                                               "x", True), "summary": live},
        {"id": 4, "customer_id": shredded_c, "transcript": s1, "summary": None},  # deleted
        {"id": 5, "customer_id": shredded_c, "transcript": None, "summary": None},  # empty
        {"id": 6, "customer_id": expired_c, "transcript": foreign, "summary": None},  # moved
        {"id": 7, "customer_id": expired_c, "transcript": e1,
         "summary": sealed(vault, expired_c, "summary", "kept", False)},  # a live value
    ]  # fmt: skip
    plant(engine, rows)
    vault.shred(shredded_c)
    period = fmt.parse(e1)[0].period_id
    assert period is not None
    tombstone_period(db_url, period)
    vault._ring.evict_periods({period})
    # a dry run counts and deletes nothing
    (dry,) = vault.purge_expired(engine, Call, dry_run=True, batch=3)
    assert (dry.deleted, dry.live, dry.empty, dry.unreadable, dry.rows) == (3, 2, 1, 1, 7)
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Call)) == 7
        # the ORM sees what the purge decided on
        assert session.get(Call, 1).transcript is EXPIRED  # type: ignore[union-attr]
    seen: list[tuple[str, int, int]] = []
    with Session(engine) as session:
        (report,) = vault.purge_expired(session, Call, batch=3, progress=lambda *a: seen.append(a))
    assert (report.deleted, report.live, report.empty, report.unreadable) == (3, 2, 1, 1)
    assert report.changed == 0
    assert not report.dry_run
    assert seen[-1] == ("purge_calls", 7, 7)
    with engine.connect() as conn:
        left = conn.execute(sa.select(Call.__table__.c.id).order_by("id")).scalars().all()
    assert left == [3, 5, 6, 7]
    # again: nothing more to do
    (again,) = vault.purge_expired(engine, Call)
    assert again.deleted == 0
    assert again.rows == 4


def test_a_row_rewritten_after_the_decision_is_kept(setup: tuple[Vault, sa.Engine], db_url):
    vault, engine = setup
    customer = uuid.uuid4()
    old = sealed(vault, customer, "transcript", "old", True)
    plant(engine, [{"id": 1, "customer_id": customer, "transcript": old, "summary": None}])
    period = fmt.parse(old)[0].period_id
    assert period is not None
    tombstone_period(db_url, period)
    vault._ring.evict_periods({period})
    from ccvault.sqlalchemy import _purge

    decide = _purge._dead_rows

    def rewritten_meanwhile(*args: object, **kwargs: object) -> object:
        dead = decide(*args, **kwargs)  # type: ignore[arg-type]
        with Session(engine) as session, session.begin():
            session.get(Call, 1).summary = "written after the decision"  # type: ignore[union-attr]
        return dead

    _purge._dead_rows = rewritten_meanwhile  # type: ignore[assignment]
    try:
        (report,) = vault.purge_expired(engine, Call)
    finally:
        _purge._dead_rows = decide
    assert (report.deleted, report.changed) == (0, 1)
    with Session(engine) as session:
        assert session.get(Call, 1).summary == "written after the decision"  # type: ignore[union-attr]


def test_bad_arguments(setup: tuple[Vault, sa.Engine]):
    vault, engine = setup
    with pytest.raises(ConfigurationError, match="Session"):
        vault.purge_expired("sqlite://", Call)
    with pytest.raises(ConfigurationError, match="batch"):
        vault.purge_expired(engine, Call, batch=0)
    with pytest.raises(ConfigurationError, match="no table"):
        vault.purge_expired(engine, sa.Table("plain", sa.MetaData(), sa.Column("id", sa.Integer)))
