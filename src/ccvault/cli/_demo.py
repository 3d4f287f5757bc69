"""``ccvault demo``: a contact center's customers and calls, encrypted, read back and shredded.

Runs on a local master key and a SQLite key store of its own, in a temporary folder. It ignores
``CCVAULT_*`` entirely: it never touches a configured (production) key store or KMS. The
application is two SQLAlchemy ORM models with :class:`~ccvault.sqlalchemy.Encrypted` columns on an
engine the vault is attached to: the code below never calls encrypt or decrypt itself.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, Text, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .. import SubjectShreddedError, Vault
from ..kms import LocalKms
from ..sqlalchemy import SHREDDED, Encrypted

_FIRST = [
    "Ada",
    "Bo",
    "Chidi",
    "Dana",
    "Émile",
    "Farah",
    "Goran",
    "Hana",
    "Iker",
    "Jun",
    "Kemi",
    "Luca",
    "Mei",
    "Nour",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Yara",
]
_LAST = [
    "Okafor",
    "Larsen",
    "Nakamura",
    "Silva",
    "Haddad",
    "Kowalski",
    "Moreau",
    "Singh",
    "García",
    "Novak",
    "Byrne",
    "Tanaka",
    "Adeyemi",
    "Rossi",
    "Jansen",
    "Ivanova",
]
_TOPICS = [
    "a double charge on the last invoice",
    "a router that drops every evening",
    "moving the contract to a new address",
    "a parcel marked delivered but missing",
    "cancelling the premium plan",
    "a refund that has not arrived",
]


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Encrypted(String(100), subject="id"))
    phone: Mapped[str] = mapped_column(Encrypted(String(32), subject="id"))
    email: Mapped[str] = mapped_column(Encrypted(String(254), subject="id"))


class Interaction(Base):
    __tablename__ = "interactions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(8))
    transcript: Mapped[str] = mapped_column(Encrypted(Text, subject="customer_id"))


@contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="ccvault-demo-") as tmp:
            yield Path(tmp)


def _show(label: str, value: object) -> None:
    print(f"  {label:<14} {value}")


def run_demo(*, customers: int = 3000, seed: int = 7, keep: str | None = None) -> int:
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    with _workdir(keep) as work:
        if (work / "contact_center.db").exists():
            print(
                f"ccvault demo: {work} already holds a demo; --keep an empty or new folder",
                file=sys.stderr,
            )
            return 2
        print(f"ccvault demo — working in {work}\n")
        home = work / ".ccvault"
        print(
            "note: the demo ignores CCVAULT_* settings and never touches a configured key store: "
            f"its own master key and key store live in {home}.\n"
        )
        home.mkdir(mode=0o700, exist_ok=True)
        kms = LocalKms.from_file(home / "master.key", create=True)
        vault = Vault(kms, f"sqlite:///{home / 'keys.db'}")
        app = sa.create_engine(f"sqlite:///{work / 'contact_center.db'}")
        Base.metadata.create_all(app)
        vault.attach(app)  # from here on the ORM encrypts every write and decrypts every read

        # 1. Write: ORM bulk inserts; each value is sealed under its customer's own key.
        started = time.perf_counter()
        ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(customers)]
        vault.warm(ids)  # create the customers' keys in batches, not one transaction each
        people: list[tuple[uuid.UUID, str]] = []
        cust_rows: list[dict[str, object]] = []
        int_rows: list[dict[str, object]] = []
        for cid in ids:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            name = f"{first} {last}"
            people.append((cid, name))
            cust_rows.append(
                {
                    "id": cid,
                    "name": name,
                    "phone": f"+1 555 01{rng.randrange(100):02d} {rng.randrange(10000):04d}",
                    "email": f"{first.lower()}.{last.lower()}{rng.randrange(100)}@example.com",
                }
            )
            for _ in range(2):
                text = (
                    f"Agent: How can I help, {first}? Customer: It's about {rng.choice(_TOPICS)}."
                )
                int_rows.append(
                    {
                        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                        "customer_id": cid,
                        "channel": rng.choice(["voice", "chat"]),
                        "transcript": text,
                    }
                )
        with Session(app) as session:
            session.execute(insert(Customer), cust_rows)
            session.execute(insert(Interaction), int_rows)
            session.commit()
        elapsed = time.perf_counter() - started
        print(
            f"1. Stored {customers} customers and {len(int_rows)} interactions through the ORM, "
            f"each value encrypted\n   under its customer's key ({elapsed:.2f} s, "
            f"{customers} keys created)."
        )

        victim, victim_name = people[0]
        neighbour, neighbour_name = people[1]

        # 2. What the database holds: a raw SQL query, past the ORM.
        query = "SELECT id, name, phone, email FROM customers WHERE id = :id"
        with app.connect() as conn:
            raw = conn.execute(sa.text(query), {"id": victim.hex}).one()
        print("\n2. What the database holds for one customer (raw SQL, past the ORM):")
        print(f"   {query}")
        _show("id", raw.id)
        for col in ("name", "phone", "email"):
            blob = bytes(getattr(raw, col))
            _show(col, f"{blob[:24].hex()}… ({len(blob)} bytes of ciphertext)")

        # 3. Read back through the ORM.
        print("\n3. Read back through the ORM (each value checked against its row's customer):")
        with Session(app) as session:
            customer = session.get_one(Customer, victim)
            for col in ("name", "phone", "email"):
                _show(col, getattr(customer, col))

        # 4. Erase the customer: one call, no table is touched.
        print(f"\n4. GDPR Art. 17 request from {victim_name}: vault.shred({victim})")
        started = time.perf_counter()
        receipt = vault.shred(victim)
        print(
            f"   shredded in {(time.perf_counter() - started) * 1000:.1f} ms; "
            "the rows are still there, but unreadable:"
        )
        with Session(app) as session:
            customer = session.get_one(Customer, victim)
            for col in ("name", "phone"):
                _show(col, getattr(customer, col))
            calls = session.scalars(select(Interaction).where(Interaction.customer_id == victim))
            for call in calls:
                _show(f"{call.channel} call", call.transcript)
            everyone = session.execute(select(Interaction.customer_id, Interaction.transcript))
            transcripts = [row.transcript for row in everyone]
            shredded = sum(1 for t in transcripts if t is SHREDDED)
            readable = len(transcripts) - shredded
            print(
                f"   all interactions: {readable} readable, {shredded} shredded "
                f"(only {victim_name}'s); {neighbour_name} still reads fine:"
            )
            _show("name", session.get_one(Customer, neighbour).name)
        refused = False
        try:
            with Session(app) as session:
                session.add(
                    Interaction(
                        customer_id=victim, channel="voice", transcript="Agent: Hello again"
                    )
                )
                session.commit()
        except SubjectShreddedError:
            refused = True
            print("   a new call for the erased customer is refused (SubjectShreddedError).")
        else:
            print("   error: a new call for the erased customer was written.")

        # 5. The receipt.
        print("\n5. Signed erasure receipt (a repeat shred returns this same receipt):")
        print("   " + receipt.model_dump_json(indent=2).replace("\n", "\n   "))
        valid = receipt.verify(vault.receipt_public_key) and vault.shred(victim) == receipt
        print(f"\n   signature valid: {valid}")
        if receipt.erasure_horizon is not None:
            print(
                f"   backups that still hold today's key store stop mattering after "
                f"{receipt.erasure_horizon:%Y-%m-%d} (the erasure horizon)."
            )
        else:
            print(
                "   the embedded default wraps every epoch with one master key, so a backup of "
                "today's key store\n   stays decryptable while that key exists: no erasure "
                "horizon is promised (see docs/security.md)."
            )
        vault.close()
        app.dispose()
    return 0 if valid and refused and shredded == 2 else 1
