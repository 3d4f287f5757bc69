"""Models shared by the SQLAlchemy integration tests."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ccvault.sqlalchemy import Encrypted


class Base(DeclarativeBase):
    pass


class Tier(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(String(100), subject="id"))
    phone: Mapped[str] = mapped_column(Encrypted(String(32), subject="id", searchable="phone:1"))
    email: Mapped[str | None] = mapped_column(
        Encrypted(String(254), subject="id", searchable="email"), nullable=True
    )
    interactions: Mapped[list[Interaction]] = relationship(back_populates="customer")


class Interaction(Base):
    __tablename__ = "interactions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(8), default="voice")
    transcript: Mapped[str] = mapped_column(Encrypted(Text, subject="customer_id"))
    customer: Mapped[Customer] = relationship(back_populates="interactions")


class Migrating(Base):
    """A table whose columns held plaintext before they were encrypted: the migration flag."""

    __tablename__ = "migrating"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    phone: Mapped[str | None] = mapped_column(
        Encrypted(String(32), subject="id", searchable="phone", legacy_plaintext=True)
    )
    note: Mapped[bytes | None] = mapped_column(
        Encrypted(sa.LargeBinary, subject="id", legacy_plaintext=True)
    )
    visits: Mapped[int | None] = mapped_column(
        Encrypted(sa.Integer, subject="id", legacy_plaintext=True)
    )


class Everything(Base):
    """One encrypted column of every supported type."""

    __tablename__ = "everything"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[uuid.UUID] = mapped_column()
    s: Mapped[str | None] = mapped_column(Encrypted(String(50), subject="owner"))
    text: Mapped[str | None] = mapped_column(Encrypted(Text, subject="owner"))
    blob: Mapped[bytes | None] = mapped_column(Encrypted(sa.LargeBinary, subject="owner"))
    doc: Mapped[Any] = mapped_column(Encrypted(sa.JSON, subject="owner"), nullable=True)
    i: Mapped[int | None] = mapped_column(Encrypted(sa.Integer, subject="owner"))
    big: Mapped[int | None] = mapped_column(Encrypted(sa.BigInteger, subject="owner"))
    num: Mapped[decimal.Decimal | None] = mapped_column(
        Encrypted(sa.Numeric(38, 10), subject="owner")
    )
    flag: Mapped[bool | None] = mapped_column(Encrypted(sa.Boolean, subject="owner"))
    day: Mapped[dt.date | None] = mapped_column(Encrypted(sa.Date, subject="owner"))
    at: Mapped[dt.time | None] = mapped_column(Encrypted(sa.Time, subject="owner"))
    naive: Mapped[dt.datetime | None] = mapped_column(Encrypted(sa.DateTime, subject="owner"))
    aware: Mapped[dt.datetime | None] = mapped_column(
        Encrypted(sa.DateTime(timezone=True), subject="owner")
    )
    tier: Mapped[Tier | None] = mapped_column(Encrypted(sa.Enum(Tier), subject="owner"))
    ref: Mapped[uuid.UUID | None] = mapped_column(Encrypted(sa.Uuid, subject="owner"))
