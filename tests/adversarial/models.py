"""Tables of the adversarial value tests: one encrypted column of every codec type, a second
table for moves between tables, and a table still migrating from plaintext."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccvault.sqlalchemy import Encrypted


class Base(DeclarativeBase):
    pass


class Tier(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


# column name -> (the type Encrypted wraps, a value of it)
CODECS: dict[str, tuple[sa.types.TypeEngine[Any], Any]] = {
    "s": (sa.String(60), "+44 20 7946 0000"),
    "raw": (sa.LargeBinary(), b"\x00\x01recording\xff"),
    "i": (sa.Integer(), -1234567),
    "n": (sa.Numeric(38, 10), decimal.Decimal("1234.5678901234")),
    "f": (sa.Float(), 2.718281828),
    "flag": (sa.Boolean(), True),
    "day": (sa.Date(), dt.date(2024, 2, 29)),
    "at": (sa.Time(), dt.time(23, 59, 58, 999999)),
    "ts": (sa.DateTime(timezone=True), dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)),
    "tier": (sa.Enum(Tier), Tier.GOLD),
    "choice": (sa.Enum("red", "green", name="adv_choice"), "green"),
    "ref": (sa.Uuid(), uuid.UUID("12345678-1234-5678-1234-567812345678")),
    "doc": (sa.JSON(), {"call": [1, 2.5, None, "x"], "ok": True}),
}


def _encrypted(name: str, **options: Any) -> Mapped[Any]:
    return mapped_column(Encrypted(CODECS[name][0], subject="owner", **options), nullable=True)


class _Row:
    """A row's id, its owner (the data subject) and a tag the tests select rows by."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[uuid.UUID | None] = mapped_column()
    tag: Mapped[str | None] = mapped_column(sa.String(64))


class Values(_Row, Base):
    __tablename__ = "adv_values"
    s: Mapped[Any] = _encrypted("s")
    raw: Mapped[Any] = _encrypted("raw")
    i: Mapped[Any] = _encrypted("i")
    n: Mapped[Any] = _encrypted("n")
    f: Mapped[Any] = _encrypted("f")
    flag: Mapped[Any] = _encrypted("flag")
    day: Mapped[Any] = _encrypted("day")
    at: Mapped[Any] = _encrypted("at")
    ts: Mapped[Any] = _encrypted("ts")
    tier: Mapped[Any] = _encrypted("tier")
    choice: Mapped[Any] = _encrypted("choice")
    ref: Mapped[Any] = _encrypted("ref")
    doc: Mapped[Any] = _encrypted("doc")


class Other(_Row, Base):
    """Another table with a column like ``adv_values.s``: values moved between tables."""

    __tablename__ = "adv_other"
    s: Mapped[Any] = _encrypted("s")


class Legacy(_Row, Base):
    """Columns still migrating from plaintext (``legacy_plaintext=True``)."""

    __tablename__ = "adv_legacy"
    s: Mapped[Any] = _encrypted("s", legacy_plaintext=True)
    raw: Mapped[Any] = _encrypted("raw", legacy_plaintext=True)
    doc: Mapped[Any] = _encrypted("doc", legacy_plaintext=True)


def raw_table(table: sa.Table) -> sa.Table:
    """``table`` with its encrypted columns as plain binary: writes and reads the stored bytes
    as they are, behind the column types' back (what an attacker with database access does)."""
    md = sa.MetaData()
    columns = [
        sa.Column(c.name, sa.LargeBinary() if isinstance(c.type, Encrypted) else c.type)
        for c in table.columns
    ]
    return sa.Table(table.name, md, *columns)
