"""The examples of docs/erasure.md ("Showing an auditor", "Out of scope (for now)"), run as they
are written: after a shred and its completion on a real SQLite key store with a JSONL or SQLite
ledger, the operator's hand-over and the auditor's checks pass — and fail on a forged receipt,
another key, another erasure's completion or an edited ledger; the re-shred after a restore of
the application database clears the blind indexes the restore brought back.

Time is the vault's clock (``clock=``); ``shred(wait=True)`` waits through it, never sleeps.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import Vault
from ccvault.erasure import _complete
from ccvault.kms import LocalKms
from ccvault.testing import FrozenClock
from sqla_models import Base, Customer
from vault_ledgers import entries

DOCS = Path(__file__).parents[1] / "docs" / "erasure.md"


def snippet(name: str) -> str:
    """The fenced python block right after ``<!-- tested: name -->``, dedented."""
    marker = f"<!-- tested: {name} -->"
    text = DOCS.read_text()
    assert text.count(marker) == 1, f"docs/erasure.md needs exactly one {marker}"
    found = re.match(r"\s*```python\n(.*?)\n\s*```", text.split(marker, 1)[1], re.DOTALL)
    assert found is not None, f"{marker} must be followed by a ```python block"
    return textwrap.dedent(found.group(1))


def run(name: str, **namespace: Any) -> dict[str, Any]:
    exec(compile(snippet(name), f"{DOCS}:{name}", "exec"), namespace)
    return namespace


class Installation:
    """A vault with a ledger and the application's tables attached."""

    def __init__(self, tmp_path: Path, ledger: str) -> None:
        self.clock = FrozenClock()
        self.ledger = (
            f"file://{tmp_path / 'ledger.jsonl'}"
            if ledger == "jsonl"
            else f"sqlite:///{tmp_path / 'ledger.db'}"
        )
        self.app_db = tmp_path / "app.db"
        self.engine = sa.create_engine(f"sqlite:///{self.app_db}")
        Base.metadata.create_all(self.engine)
        self.kms = LocalKms.ephemeral()
        self.keys = f"sqlite:///{tmp_path / 'keys.db'}"
        self.vault = Vault(
            self.kms,
            self.keys,
            subject_type="uuid",
            ledger=self.ledger,
            create=True,
            clock=self.clock,
            listen_url="off",
        )
        self.vault.attach(self.engine)

    def customer(self, phone: str) -> uuid.UUID:
        with Session(self.engine) as s:
            c = Customer(name="C", phone=phone, email=f"{phone[-4:]}@example.com")
            s.add(c)
            s.commit()
            return c.id

    def bidx(self, customer: uuid.UUID) -> tuple[Any, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(Customer.__table__.c.phone_bidx, Customer.__table__.c.email_bidx).where(
                    Customer.__table__.c.id == customer
                )
            ).one()
        return row[0], row[1]

    def handover(self, customer: uuid.UUID) -> dict[str, Any]:
        return run("erasure-docs-handover", vault=self.vault, customer_id=customer)


@pytest.fixture(params=["jsonl", "sqlite"])
def inst(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Installation]:
    i = Installation(tmp_path, request.param)
    monkeypatch.setattr(_complete, "_sleep", i.clock.advance)
    yield i
    i.vault.close()
    i.engine.dispose()


def audit(inst: Installation, handover: str, pinned: dict[str, str]) -> dict[str, Any]:
    return run("erasure-docs-audit", handover=handover, pinned=pinned, ledger_url=inst.ledger)


def test_the_auditor_checks_a_receipt_and_its_completion(
    inst: Installation, capsys: pytest.CaptureFixture[str]
) -> None:
    a = inst.customer("+1 202 555 0101")
    receipt = inst.vault.shred(a, wait=True)
    with Vault(inst.kms, inst.keys, ledger=inst.ledger, readonly=True, listen_url="off") as ro:
        given = run("erasure-docs-handover", vault=ro, customer_id=a)  # read-only is enough
    assert given["receipt"] == receipt
    sent = json.loads(given["handover"])
    assert str(a) not in given["handover"]  # the hand-over names the subject by its ref only
    assert (sent["ledger_seq"], sent["completion_seq"]) == (1, 2)

    done = audit(inst, given["handover"], given["pinned"])
    assert done["report"].ok
    assert done["report"].head_seq == 2
    assert done["completion"].tables_swept == ("customers", "migrating")
    assert done["completion"].completes(receipt)
    printed = capsys.readouterr().out
    assert "('customers', 'migrating')" in printed


def test_the_auditor_refuses_a_forged_receipt_another_key_or_another_completion(
    inst: Installation, tmp_path: Path
) -> None:
    a, b = inst.customer("+1 202 555 0102"), inst.customer("+1 202 555 0103")
    inst.vault.shred(a, wait=True)
    inst.vault.shred(b, wait=True)
    given = inst.handover(a)
    sent = json.loads(given["handover"])
    pinned = given["pinned"]
    audit(inst, given["handover"], pinned)  # genuine: passes

    forged = {**sent, "receipt": {**sent["receipt"], "shredded_at": "2020-01-01T00:00:00Z"}}
    with pytest.raises(AssertionError):
        audit(inst, json.dumps(forged), pinned)

    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'other.db'}") as other:
        wrong_key = {**pinned, "public_key": other.receipt_public_key.hex()}
    with pytest.raises(AssertionError):
        audit(inst, given["handover"], wrong_key)

    b_sent = json.loads(inst.handover(b)["handover"])
    swapped = {**sent, "completion_seq": b_sent["completion_seq"]}  # b's completion for a
    with pytest.raises(AssertionError):
        audit(inst, json.dumps(swapped), pinned)
    not_a_completion = {**sent, "completion_seq": sent["ledger_seq"]}
    with pytest.raises(AssertionError):
        audit(inst, json.dumps(not_a_completion), pinned)


@pytest.mark.parametrize("inst", ["jsonl"], indirect=True)
def test_the_auditor_refuses_an_edited_ledger(inst: Installation) -> None:
    a = inst.customer("+1 202 555 0104")
    inst.vault.shred(a, wait=True)
    given = inst.handover(a)
    path = Path(inst.ledger.removeprefix("file://"))
    lines = path.read_bytes().splitlines(keepends=True)
    assert b'"tables_swept":["customers","migrating"]' in lines[2]
    lines[2] = lines[2].replace(b'"customers","migrating"', b'"customers","migratinh"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AssertionError, match="tampered"):
        audit(inst, given["handover"], given["pinned"])


def test_a_reshred_clears_the_blind_indexes_an_app_restore_brought_back(
    inst: Installation, tmp_path: Path
) -> None:
    a, b = inst.customer("+1 202 555 0105"), inst.customer("+1 202 555 0106")
    inst.engine.dispose()
    shutil.copy(inst.app_db, tmp_path / "app-backup.db")  # the application's backup
    receipt = inst.vault.shred(a, wait=True)
    status = inst.vault.erasure_status(receipt.receipt_id)
    assert status is not None
    assert status.phase == "completed"
    assert inst.bidx(a) == (None, None)
    inst.engine.dispose()
    shutil.copy(tmp_path / "app-backup.db", inst.app_db)  # the application database restored
    assert inst.bidx(a)[0] is not None  # the restore brought a's blind indexes back
    before = entries(inst.ledger, inst.vault.installation_id)

    run("erasure-docs-app-restore", engine=inst.engine, vault=inst.vault, Customer=Customer)

    assert inst.bidx(a) == (None, None)
    assert None not in inst.bidx(b)  # nobody else's
    assert inst.vault.erasure_receipt(a) == receipt  # the same receipt
    assert entries(inst.ledger, inst.vault.installation_id) == before  # nothing new in the ledger
