"""The writers of tests/test_shred_race_completion.py: a process of its own, on a real clock,
that writes notes of one customer (``Note.phone`` has a blind index) through an attached engine
as fast as it can, each in its own transaction, until its vault refuses the customer; then it
tries ``REFUSALS`` more times (every one must be refused) and reports on its pipe
``("done", [ids committed], refusals, [error types])``, or ``("timeout", [ids])``.
"""

from __future__ import annotations

import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ccvault import SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted

REFUSALS = 20


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "race_notes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[uuid.UUID] = mapped_column(index=True)
    phone: Mapped[str] = mapped_column(
        Encrypted(sa.String(32), subject="customer_id", searchable="phone")
    )


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: SQLAlchemy wraps errors of the write hook) is the
    vault refusing a shredded customer."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SubjectShreddedError):
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False


def run(
    key_path: str,
    url: str,
    app_url: str,
    ledger: str,
    customer: str,
    pipe: Connection,
    options: dict[str, Any],
    timeout: float = 20.0,
) -> None:
    vault = Vault(LocalKms.from_file(key_path), url, ledger=ledger, cache_ttl=60.0, **options)
    engine = sa.create_engine(app_url)
    vault.attach(engine)
    subject = uuid.UUID(customer)
    written: list[str] = []
    try:
        with Session(engine) as s:  # warm: the customer's key is cached from here on
            s.add(Note(customer_id=subject, phone="+1 555 0100"))
            s.commit()
        pipe.send(("ready",))
        refusals = 0
        errors: list[str] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end and refusals < REFUSALS:
            note_id = uuid.uuid4()
            note = Note(id=note_id, customer_id=subject, phone="+1 555 0199")
            try:
                with Session(engine) as s:
                    s.add(note)
                    s.commit()
            except Exception as exc:  # the refusal, as the ORM raises it
                if not _refused(exc):
                    errors.append(type(exc).__name__)
                refusals += 1
                continue
            if refusals:
                errors.append("a write succeeded after a refusal")
            written.append(str(note_id))
        if refusals < REFUSALS:
            pipe.send(("timeout", written))
        else:
            pipe.send(("done", written, refusals, errors))
    finally:
        vault.detach(engine)
        engine.dispose()
        vault.close()
        pipe.close()
