"""Models of the data-map and subject-export tests (tables ``dm_*``, their own MetaData).

* ``dm_customers``: encrypted, searchable, subject = primary key; plaintext columns of several
  types beside them;
* ``dm_calls``: encrypted, subject ``customer_id`` (indexed foreign key);
* ``dm_tickets``: searchable, but its subject column has no index (the data map flags it);
* ``dm_addresses``: plaintext, registered as personal by :func:`register_personal_tables`
  (the hook ``ccvault data-map`` / ``export-subject`` call);
* ``dm_notes``: plaintext with a foreign key to ``dm_customers.id``, not registered (a warning);
* ``dm_legacy``: encrypted under an ``int`` subject column (not the tests' uuid installation);
* ``dm_archive``: encrypted, never created in the test databases.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccvault.sqlalchemy import Encrypted


class Base(DeclarativeBase):
    pass


class DmCustomer(Base):
    __tablename__ = "dm_customers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(String(100), subject="id"))
    phone: Mapped[str] = mapped_column(Encrypted(String(32), subject="id", searchable="phone:44"))
    segment: Mapped[str] = mapped_column(String(20), default="retail")
    joined: Mapped[dt.datetime] = mapped_column(sa.DateTime)
    avatar: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)


class DmCall(Base):
    __tablename__ = "dm_calls"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dm_customers.id"), index=True)
    transcript: Mapped[str] = mapped_column(Encrypted(Text, subject="customer_id"))
    meta: Mapped[Any] = mapped_column(Encrypted(sa.JSON, subject="customer_id"), nullable=True)


class DmTicket(Base):
    __tablename__ = "dm_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column()  # no index: the sweep would scan
    email: Mapped[str | None] = mapped_column(
        Encrypted(String(254), subject="customer_id", searchable="email"), nullable=True
    )


class DmAddress(Base):
    __tablename__ = "dm_addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dm_customers.id"), index=True)
    street: Mapped[str] = mapped_column(String(100))


class DmNote(Base):
    __tablename__ = "dm_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dm_customers.id"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(nullable=True)
    body: Mapped[str] = mapped_column(String(200))


class DmLegacy(Base):
    __tablename__ = "dm_legacy"
    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[int] = mapped_column(sa.Integer, autoincrement=False)
    memo: Mapped[str | None] = mapped_column(Encrypted(String(50), subject="account"))


class DmArchive(Base):
    __tablename__ = "dm_archive"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    summary: Mapped[str | None] = mapped_column(Encrypted(Text, subject="id"))


CREATED = [t for name, t in Base.metadata.tables.items() if name not in ("dm_archive", "dm_legacy")]
"""The tables the tests create (dm_archive stays missing; dm_legacy is never searched)."""


def register_personal_tables(vault: Any) -> None:
    """What the application calls at startup, and the ccvault commands call for it."""
    vault.register_personal_table(DmAddress, "customer_id")
