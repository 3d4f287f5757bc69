"""``ccvault demo``: a contact center's customers and calls, encrypted, read back and shredded.

Runs on the embedded default (local master key + SQLite key store) in a temporary folder. The
application tables are plain SQLAlchemy Core tables holding ``vault.encrypt`` output.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from .. import CcvaultSettings, DevelopmentDefaultWarning, SubjectShreddedError, Vault

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


def _tables() -> tuple[sa.MetaData, sa.Table, sa.Table]:
    md = sa.MetaData()
    customers = sa.Table(
        "customers",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.LargeBinary, nullable=False),
        sa.Column("phone", sa.LargeBinary, nullable=False),
        sa.Column("email", sa.LargeBinary, nullable=False),
    )
    interactions = sa.Table(
        "interactions",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("customer_id", sa.Uuid, sa.ForeignKey("customers.id"), index=True),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("transcript", sa.LargeBinary, nullable=False),
    )
    return md, customers, interactions


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
        print(f"ccvault demo — working in {work}\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DevelopmentDefaultWarning)
            vault = Vault.from_settings(CcvaultSettings(home=str(work / ".ccvault")))
        for w in caught:
            print(f"note: {w.message}\n")
        app = sa.create_engine(f"sqlite:///{work / 'contact_center.db'}")
        md, t_cust, t_int = _tables()
        md.create_all(app)

        # 1. Write: every value sealed under its customer's own key.
        started = time.perf_counter()
        ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(customers)]
        vault.warm(ids)  # create the customers' keys in batches, not one transaction each
        people = []
        cust_rows, int_rows = [], []
        for cid in ids:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            name = f"{first} {last}"
            phone = f"+1 555 01{rng.randrange(100):02d} {rng.randrange(10000):04d}"
            email = f"{first.lower()}.{last.lower()}{rng.randrange(100)}@example.com"
            people.append((cid, name))
            cust_rows.append(
                {
                    "id": cid,
                    "name": vault.encrypt(cid, name.encode(), context="customers.name"),
                    "phone": vault.encrypt(cid, phone.encode(), context="customers.phone"),
                    "email": vault.encrypt(cid, email.encode(), context="customers.email"),
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
                        "transcript": vault.encrypt(
                            cid, text.encode(), context="interactions.transcript"
                        ),
                    }
                )
        with app.begin() as conn:
            conn.execute(sa.insert(t_cust), cust_rows)
            conn.execute(sa.insert(t_int), int_rows)
        elapsed = time.perf_counter() - started
        print(
            f"1. Stored {customers} customers and {len(int_rows)} interactions, each value "
            f"encrypted under its customer's key ({elapsed:.2f} s, {customers} keys created).\n"
        )

        victim, victim_name = people[0]
        neighbour, neighbour_name = people[1]

        # 2. What the database holds.
        with app.connect() as conn:
            row = conn.execute(sa.select(t_cust).where(t_cust.c.id == victim)).one()
        print("2. What the database holds for one customer (ciphertext, 50 bytes of overhead):")
        _show("id", row.id)
        for col in ("name", "phone", "email"):
            blob = getattr(row, col)
            _show(col, f"{blob[:24].hex()}… ({len(blob)} bytes)")

        # 3. Read back through the vault.
        print("\n3. Read back through the vault (context and customer checked):")
        for col in ("name", "phone", "email"):
            clear = vault.decrypt(getattr(row, col), context=f"customers.{col}", subject=row.id)
            _show(col, clear.decode())

        # 4. Erase the customer: one call, no table is touched.
        print(f"\n4. GDPR Art. 17 request from {victim_name}: vault.shred({victim})")
        started = time.perf_counter()
        receipt = vault.shred(victim)
        print(
            f"   shredded in {(time.perf_counter() - started) * 1000:.1f} ms; "
            "the rows are still there, but unreadable:"
        )
        with app.connect() as conn:
            row = conn.execute(sa.select(t_cust).where(t_cust.c.id == victim)).one()
            calls = conn.execute(sa.select(t_int).where(t_int.c.customer_id == victim)).all()
            everyone = conn.execute(sa.select(t_int.c.customer_id, t_int.c.transcript)).all()
        for col in ("name", "phone"):
            try:
                vault.decrypt(getattr(row, col), context=f"customers.{col}")
            except SubjectShreddedError:
                _show(col, "[shredded]")
        for call in calls:
            try:
                vault.decrypt(call.transcript, context="interactions.transcript")
            except SubjectShreddedError:
                _show(f"{call.channel} call", "[shredded]")
        readable = shredded = 0
        for cid, blob in everyone:
            try:
                vault.decrypt(blob, context="interactions.transcript", subject=cid)
                readable += 1
            except SubjectShreddedError:
                shredded += 1
        print(
            f"   all interactions: {readable} readable, {shredded} shredded "
            f"(only {victim_name}'s); {neighbour_name} still reads fine:"
        )
        with app.connect() as conn:
            other = conn.execute(sa.select(t_cust).where(t_cust.c.id == neighbour)).one()
        _show(
            "name", vault.decrypt(other.name, context="customers.name", subject=neighbour).decode()
        )
        try:
            vault.encrypt(victim, b"new data", context="customers.phone")
        except SubjectShreddedError:
            print("   writing new data for the erased customer is refused (SubjectShreddedError).")

        # 5. The receipt.
        print("\n5. Signed erasure receipt (a repeat shred returns this same receipt):")
        print("   " + receipt.model_dump_json(indent=2).replace("\n", "\n   "))
        ok = receipt.verify(vault.receipt_public_key) and vault.shred(victim) == receipt
        print(f"\n   signature valid: {ok}")
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
    return 0 if ok else 1
