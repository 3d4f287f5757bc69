"""Generate the golden vectors ONCE. Kept to document how they were made; tests never run it.

Vectors are frozen: once committed, a change of format must still open them. Re-running this
script overwrites them and is only right when adding new vectors, never to "fix" a failing test.

    python tests/vectors/make_vectors.py values refs store heads journal periods holds records \
        policy retention

``store`` (tests/vectors/store_v1) was made by a library of key-store schema 1, ``store2``
(tests/vectors/store_v2) by ccvault at commit 0a22d8e, of schema 2, run from that tree::

    git archive 0a22d8e src | tar -x -C /tmp/ccvault-v2
    PYTHONPATH=/tmp/ccvault-v2/src python tests/vectors/make_vectors.py store2

``store3`` (tests/vectors/store_v3) by ccvault at commit 0fbfd34, of schema 3, the same way;
``store4`` (tests/vectors/store_v4) by ccvault at commit 1fca118, of schema 4, the same way;
``store5`` (tests/vectors/store_v5, with retention: periods, a tombstone, a held key, a
recorded policy, a JSONL ledger) by this script's ``store5`` at the commit that added it.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import Aead, hmac_sha256
from ccvault.crypto._subject import SubjectType

HERE = Path(__file__).parent


def values() -> None:
    key = bytes(range(32))
    out = []
    cases = [
        ("empty", b"", "customers.phone", bytes(32)),
        ("phone", b"+44 20 7946 0018", "customers.phone", bytes.fromhex("aa" * 32)),
        ("unicode", "Zoë Ñúñez — 東京".encode(), "customers.name", bytes.fromhex("bb" * 32)),
        ("vault-wide", b"welcome prompt", "ivr.prompts", b""),
    ]
    for i, (name, pt, ctx, ref) in enumerate(cases):
        key_id = bytes([i + 1]) * 16
        header = fmt.build_header(fmt.SUITE_AES256GCM, key_id, i + 1)
        nonce = bytes([0xC0 + i]) * 12
        blob = fmt.seal_value(Aead(key), header, pt, ctx.encode(), ref, nonce=nonce)
        out.append(
            {
                "name": name,
                "suite": 1,
                "key": key.hex(),
                "key_id": key_id.hex(),
                "key_version": i + 1,
                "context": ctx,
                "subject_ref": ref.hex(),
                "nonce": nonce.hex(),
                "plaintext": pt.hex(),
                "ciphertext": blob.hex(),
            }
        )
    # Suite 2 (retention periods): value key derived from the data key and a period secret.
    period_secret, period_id, key_id = bytes([0x5E]) * 32, bytes([0x9D]) * 16, bytes([0x77]) * 16
    derived = fmt.derive_period_key(key, period_secret, key_id, 3, period_id)
    header = fmt.build_header(fmt.SUITE_AES256GCM_PERIOD, key_id, 3, period_id)
    nonce = bytes([0xD0]) * 12
    blob = fmt.seal_value(
        Aead(derived),
        header,
        b"call transcript",
        b"interactions.transcript",
        bytes.fromhex("cc" * 32),
        nonce=nonce,
    )
    out.append(
        {
            "name": "suite2-period",
            "suite": 2,
            "key": key.hex(),
            "key_id": key_id.hex(),
            "key_version": 3,
            "period_id": period_id.hex(),
            "period_secret": period_secret.hex(),
            "derived_key": derived.hex(),
            "context": "interactions.transcript",
            "subject_ref": "cc" * 32,
            "nonce": nonce.hex(),
            "plaintext": b"call transcript".hex(),
            "ciphertext": blob.hex(),
        }
    )
    (HERE / "values_v1.json").write_text(json.dumps(out, indent=2) + "\n")


def refs() -> None:
    k_ref = bytes.fromhex("0f" * 32)
    cases: list[tuple[str, object, object]] = [
        ("str", "cust-42", {"str": "cust-42"}),
        ("str", "Zoe\u0308", {"str": "Zoe\u0308"}),  # NFC makes it "Zoë"
        ("int", 0, {"int": "0"}),
        ("int", -17, {"int": "-17"}),
        ("int", 12345678901234567890, {"int": "12345678901234567890"}),
        (
            "uuid",
            uuid.UUID("6f1c2a8e-3b7d-4e1f-9a2b-5c6d7e8f9a0b"),
            {"uuid": "6f1c2a8e-3b7d-4e1f-9a2b-5c6d7e8f9a0b"},
        ),
        (
            "tuple[uuid,str]",
            (uuid.UUID(int=1), "c-9"),
            {"tuple": [{"uuid": str(uuid.UUID(int=1))}, {"str": "c-9"}]},
        ),
        ("tuple[int,int]", (1, 23), {"tuple": [{"int": "1"}, {"int": "23"}]}),
    ]
    out = []
    for spec, value, encoded in cases:
        canon = SubjectType.parse(spec).canonical(value)
        out.append(
            {
                "subject_type": spec,
                "subject": encoded,
                "canonical": canon.hex(),
                "k_ref": k_ref.hex(),
                "ref": hmac_sha256(k_ref, canon).hex(),
            }
        )
    (HERE / "subject_refs.json").write_text(json.dumps(out, indent=2) + "\n")


def heads() -> None:
    """Subject-head MACs (schema 2): the message and the MAC of an active and a shredded head."""
    from ccvault.crypto._heads import head_mac_message

    k_head, installation = (
        bytes.fromhex("4e" * 32),
        bytes.fromhex("bc63ed65f5ba4740ab92e9a5acd0d5ba"),
    )
    cases = [
        ("active", bytes.fromhex("46" * 32), bytes.fromhex("8a" * 16), "active", 1),
        ("shredded", bytes.fromhex("23" * 32), bytes.fromhex("0a" * 16), "shredded", 1),
        ("shredded, never seen", bytes.fromhex("99" * 32), bytes.fromhex("5c" * 16), "shredded", 0),
    ]
    out = []
    for name, ref, key_id, state, version in cases:
        message = head_mac_message(installation, ref, key_id, state, version)
        out.append(
            {
                "name": name,
                "k_head": k_head.hex(),
                "installation_id": installation.hex(),
                "ref": ref.hex(),
                "key_id": key_id.hex(),
                "state": state,
                "current_version": version,
                "message": message.hex(),
                "mac": hmac_sha256(k_head, message).hex(),
            }
        )
    (HERE / "heads_v1.json").write_text(json.dumps(out, indent=2) + "\n")


def store(name: str = "store_v1") -> None:
    """A whole installation: master key file, SQLite key store, and values made through Vault."""
    from ccvault import NO_SUBJECT, Vault
    from ccvault.kms import LocalKms

    target = HERE / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    kms = LocalKms.generate(target / "master.key")
    vault = Vault(kms, f"sqlite:///{target / 'keys.db'}", subject_type="uuid")
    alice, bob = uuid.UUID(int=0xA11CE), uuid.UUID(int=0xB0B)
    rows = [
        {
            "subject": str(alice),
            "context": "customers.phone",
            "plaintext": "+1 555 0100",
            "ciphertext": vault.encrypt(alice, b"+1 555 0100", context="customers.phone").hex(),
        },
        {
            "subject": str(bob),
            "context": "customers.email",
            "plaintext": "bob@example.com",
            "ciphertext": vault.encrypt(bob, b"bob@example.com", context="customers.email").hex(),
        },
        {
            "subject": None,
            "context": "ivr.prompts",
            "plaintext": "welcome",
            "ciphertext": vault.encrypt(NO_SUBJECT, b"welcome", context="ivr.prompts").hex(),
        },
    ]
    vault.rotate_epoch()
    rows.append(
        {
            "subject": str(alice),
            "context": "customers.name",
            "plaintext": "Alice",
            "ciphertext": vault.encrypt(alice, b"Alice", context="customers.name").hex(),
        }
    )
    receipt = vault.shred(bob)
    vault.close()
    doc = {"shredded": [str(bob)], "receipt": json.loads(receipt.model_dump_json()), "values": rows}
    (target / "values.json").write_text(json.dumps(doc, indent=2) + "\n")


def _entries_doc(entries: list[Any], records: list[Any], lines: list[str]) -> list[dict[str, Any]]:
    """Journal entries as a vector shows them: the stored line, the entry's hash and the bytes
    the entry's and its record's signatures cover."""
    return [
        {
            "seq": e.seq,
            "kind": e.kind,
            "line": line,
            "hash": e.digest(),
            "signed_bytes": e.signed_bytes().hex(),
            "record_signed_bytes": r.signed_bytes().hex(),
        }
        for e, r, line in zip(entries, records, lines, strict=True)
    ]


def journal() -> None:
    """Journal records and entries (docs/erasure.md, "Journal and ledger"): a genesis, a receipt
    and a completion appended by a Journal with a fixed seed and clock, as the ledger stores them
    (one JSONL line each), with the bytes each signature covers and each entry's hash."""
    import tempfile
    from datetime import datetime, timedelta, timezone

    from ccvault._secret import SecretKey
    from ccvault.audit._receipt import DestroyedKey, ErasureReceipt, sign_receipt
    from ccvault.crypto._primitives import ed25519_public_key
    from ccvault.erasure import CompletionRecord, Journal, JsonlLedger

    seed = bytes(range(0x40, 0x60))
    installation = "bc63ed65f5ba4740ab92e9a5acd0d5ba"
    t0 = datetime(2025, 3, 1, 9, 30, 0, 250000, tzinfo=timezone.utc)
    ticks = iter(t0 + timedelta(seconds=i) for i in range(10))
    receipt = sign_receipt(
        ErasureReceipt(
            receipt_id="5f1c2a8e3b7d4e1f9a2b5c6d7e8f9a0b",
            installation_id=installation,
            subject_ref="46" * 32,
            shredded_at=t0 + timedelta(seconds=1),
            subject_was_known=True,
            destroyed_keys=(DestroyedKey(key_id="8a" * 16, version=2),),
            epoch_seq=7,
            propagation_bound_seconds=1.0,
            erasure_horizon=t0 + timedelta(days=66),
            signing_key="",
        ),
        seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.jsonl"
        clock = lambda: next(ticks)  # noqa: E731
        journal = Journal(JsonlLedger(path), installation, SecretKey(seed), clock=clock)
        entry = journal.append(receipt)
        completion = CompletionRecord.for_receipt(
            receipt,
            ledger_seq=entry.seq,
            completed_at=t0 + timedelta(seconds=3, microseconds=5),
            bound_waited_seconds=1.25,
            tables_swept=("clientes_señal", "customers"),
        )
        journal.append(completion)
        entries = list(journal.entries())
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    records = [e.parsed() for e in entries]
    doc = {
        "seed": seed.hex(),
        "public_key": ed25519_public_key(seed).hex(),
        "installation_id": installation,
        "clock_start": t0.isoformat(),  # each reading of the journal's clock: one second later
        "receipt": json.loads(receipt.model_dump_json()),
        "completion": {
            "completed_at": (t0 + timedelta(seconds=3, microseconds=5)).isoformat(),
            "bound_waited_seconds": 1.25,
            "tables_swept": ["clientes_señal", "customers"],
        },
        "entries": _entries_doc(entries, records, lines),
    }
    (HERE / "journal_v1.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


# Retention periods (docs/format.md, "7. Retention periods"): category, an event time, and what
# the period arithmetic makes of it. Each case is there for a rule: DST inside a month, days of
# 23 and 25 hours, an ISO week 53 across the new year, month-end clamping, a leap day, a
# half-hour offset, a day whose 00:00 a DST change skips. Dates are past ones, whose offsets a
# tz database update will not change.
PERIOD_CASES = [
    ("transcripts", "P90D", "month", "Europe/Paris", "2025-03-15T12:00:00+00:00"),
    ("calls", "P1M", "day", "America/New_York", "2025-03-09T15:00:00+00:00"),
    ("calls", "P1M", "day", "America/New_York", "2025-11-02T15:00:00+00:00"),
    ("chats", "P2W", "week", "UTC", "2020-12-31T23:59:59.999999+00:00"),
    ("emails", "P1M", "day", "UTC", "2025-01-30T08:00:00+00:00"),
    ("leap", "P1Y", "day", "UTC", "2024-02-28T12:00:00+00:00"),
    ("archive", "P7Y", "month", "Asia/Kolkata", "2025-02-28T20:00:00+00:00"),
    ("recordings", "P1Y6M", "day", "America/Sao_Paulo", "2018-11-04T12:00:00+00:00"),
]


def periods() -> None:
    """A policy's canonical JSON and digest, and periods with bounds, label, ref and expiry."""
    from datetime import datetime

    from ccvault.retention import (
        Category,
        RetentionPolicy,
        expires_at,
        period_iso,
        period_label,
        period_of,
        period_ref,
        period_ref_message,
    )

    policy = RetentionPolicy(
        categories=(
            Category(name="transcripts", keep_for="P90D", granularity="month", tz="Europe/Paris"),
            Category(name="chats", keep_for="P2W", granularity="week"),
            Category(name="recordings", keep_for="P18M", granularity="day", tz="America/New_York"),
        )
    )
    out = []
    for name, keep_for, granularity, tz, t in PERIOD_CASES:
        category = Category(name=name, keep_for=keep_for, granularity=granularity, tz=tz)
        period = period_of(category, datetime.fromisoformat(t))
        expiry = expires_at(period)
        out.append(
            {
                "category": category.canonical(),
                "t": t,
                "start": period_iso(period.start),
                "end": period_iso(period.end),
                "start_utc": period_iso(period.start_utc),
                "end_utc": period_iso(period.end_utc),
                "label": period_label(period),
                "ref_message": period_ref_message(period).hex(),
                "ref": period_ref(period).hex(),
                "expires_at": period_iso(expiry),
            }
        )
    doc = {
        "policy": {
            "categories": [c.canonical() for c in policy.categories],
            "canonical_json": policy.canonical_json().decode(),
            "digest": policy.digest(),
        },
        "periods": out,
    }
    (HERE / "retention_periods_v1.json").write_text(json.dumps(doc, indent=2) + "\n")


def holds() -> None:
    """Legal-hold records (docs/erasure.md, "Legal holds"): two holds (one with ``until``), the
    release of the first, and the override of the second by a shred, followed by that shred's
    receipt, appended by a Journal with the seed and clock of ``journal``; as the ledger stores
    them, with the bytes each signature covers and each entry's hash."""
    import tempfile
    from datetime import datetime, timedelta, timezone

    from ccvault._secret import SecretKey
    from ccvault.audit._receipt import DestroyedKey, ErasureReceipt, sign_receipt
    from ccvault.crypto._primitives import ed25519_public_key
    from ccvault.erasure import (
        HoldOverrideRecord,
        HoldRecord,
        HoldReleaseRecord,
        Journal,
        JsonlLedger,
    )

    seed = bytes(range(0x40, 0x60))
    installation = "bc63ed65f5ba4740ab92e9a5acd0d5ba"
    ref = "46" * 32
    t0 = datetime(2025, 3, 1, 9, 30, 0, 250000, tzinfo=timezone.utc)
    ticks = iter(t0 + timedelta(seconds=i) for i in range(20))
    first = HoldRecord(
        hold_id="0c1d2e3f405162738495a6b7c8d9eafb",
        installation_id=installation,
        subject_ref=ref,
        case="LIT-2025-0042",
        by="legal@acme.example",
        placed_at=t0 + timedelta(seconds=1),
    )
    second = HoldRecord(
        hold_id="1a2b3c4d5e6f708192a3b4c5d6e7f809",
        installation_id=installation,
        subject_ref=ref,
        case="Prüfung/7 — §12",
        by="compliance",
        placed_at=t0 + timedelta(seconds=2),
        until=datetime(2031, 6, 30, tzinfo=timezone.utc),
    )
    release = HoldReleaseRecord(
        hold_id=first.hold_id,
        installation_id=installation,
        by="legal@acme.example",
        released_at=t0 + timedelta(seconds=3),
    )
    receipt = sign_receipt(
        ErasureReceipt(
            receipt_id="6a7b8c9d0e1f4a2b8c3d4e5f6a7b8c9d",
            installation_id=installation,
            subject_ref=ref,
            shredded_at=t0 + timedelta(seconds=4),
            subject_was_known=True,
            destroyed_keys=(DestroyedKey(key_id="8a" * 16, version=1),),
            epoch_seq=7,
            propagation_bound_seconds=1.0,
            erasure_horizon=None,
            signing_key="",
        ),
        seed,
    )
    override = HoldOverrideRecord(
        installation_id=installation,
        receipt_id=receipt.receipt_id,
        subject_ref=ref,
        hold_ids=(second.hold_id,),
        by="dpo@acme.example",
        overridden_at=t0 + timedelta(seconds=4),
    )
    records = [first, second, release, override, receipt]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.jsonl"
        clock = lambda: next(ticks)  # noqa: E731
        journal = Journal(JsonlLedger(path), installation, SecretKey(seed), clock=clock)
        for record in records:
            journal.append(record)
        entries = list(journal.entries())
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    parsed = [e.parsed() for e in entries]
    doc = {
        "seed": seed.hex(),
        "public_key": ed25519_public_key(seed).hex(),
        "installation_id": installation,
        "clock_start": t0.isoformat(),  # each reading of the journal's clock: one second later
        "records": [
            json.loads(r.model_dump_json(exclude={"signing_key", "signature"}))
            for r in records[:-1]
        ],
        "receipt": json.loads(receipt.model_dump_json()),
        "entries": _entries_doc(entries, parsed, lines),
    }
    (HERE / "holds_v1.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def records() -> None:
    """Retention records (DESIGN.md rule 7): a period row's wrap (its ref bound in the associated
    data), a held key (id derived from the value header, material = the suite-2 value key) and
    a suite-2 value that opens under it, and the tombstone a period leaves."""
    from datetime import datetime, timezone

    from ccvault.crypto._wrap import KeyBinding, commitment
    from ccvault.retention import Category, period_label, period_of, period_ref

    installation = bytes([0x1A]) * 16
    epoch_id, epoch_key = bytes([0xE0]) * 16, bytes([0xE1]) * 32
    category = Category(name="transcripts", keep_for="P90D", granularity="month", tz="Europe/Paris")
    period = period_of(category, datetime(2025, 3, 15, 12, tzinfo=timezone.utc))
    ref, label = period_ref(period), period_label(period)
    period_id, secret = bytes([0x9D]) * 16, bytes([0x5E]) * 32
    binding = KeyBinding(installation, "period", period_id, 1, epoch_id, ref)
    wrap_nonce = bytes([0xA0]) * 12
    wrapped = wrap_nonce + Aead(epoch_key).seal(wrap_nonce, secret, binding.associated_data())
    data_key, key_id, version = bytes(range(32)), bytes([0x77]) * 16, 3
    subject_ref = bytes([0xCC]) * 32
    value_key = fmt.derive_period_key(data_key, secret, key_id, version, period_id)
    held_id = fmt.held_key_id(key_id, version, period_id)
    held_binding = KeyBinding(installation, "held", held_id, version, epoch_id, subject_ref)
    held_nonce = bytes([0xA1]) * 12
    held_wrapped = held_nonce + Aead(epoch_key).seal(
        held_nonce, value_key, held_binding.associated_data()
    )
    header = fmt.build_header(fmt.SUITE_AES256GCM_PERIOD, key_id, version, period_id)
    nonce = bytes([0xD1]) * 12
    blob = fmt.seal_value(
        Aead(value_key), header, b"held transcript", b"calls.transcript", subject_ref, nonce=nonce
    )
    doc = {
        "installation_id": installation.hex(),
        "epoch_id": epoch_id.hex(),
        "epoch_key": epoch_key.hex(),
        "period": {
            "kind": "period",
            "category": category.canonical(),
            "label": label,
            "key_id": period_id.hex(),
            "version": 1,
            "ref": ref.hex(),
            "secret": secret.hex(),
            "wrap_associated_data": binding.associated_data().hex(),
            "wrapped": wrapped.hex(),
            "commitment": commitment(secret, "period", period_id, 1).hex(),
        },
        "tombstone": {
            "kind": "period",
            "label": label,
            "key_id": period_id.hex(),
            "version": 1,
            "ref": ref.hex(),
            "state": "destroyed",
            "wrapped": None,
            "commitment": None,
            "epoch_id": None,
        },
        "held": {
            "kind": "held",
            "subject_key": {"key_id": key_id.hex(), "version": version, "key": data_key.hex()},
            "subject_ref": subject_ref.hex(),
            "period_id": period_id.hex(),
            "id_message": (
                b"ccvault/held/v1" + key_id + version.to_bytes(4, "big") + period_id
            ).hex(),
            "key_id": held_id.hex(),
            "version": version,
            "material": value_key.hex(),
            "wrap_associated_data": held_binding.associated_data().hex(),
            "wrapped": held_wrapped.hex(),
            "commitment": commitment(value_key, "held", held_id, version).hex(),
        },
        "value": {
            "context": "calls.transcript",
            "nonce": nonce.hex(),
            "plaintext": b"held transcript".hex(),
            "ciphertext": blob.hex(),
        },
    }
    (HERE / "retention_records_v1.json").write_text(json.dumps(doc, indent=2) + "\n")


def policy() -> None:
    """Retention-policy records (docs/erasure.md, "Entries"; docs/retention.md, "Recording the
    policy"): a first recording (two categories added), then one that shortens a category, drops
    one and adds one, planned by ``plan_changes`` and appended by a Journal with the seed and
    clock of ``journal``; as the ledger stores them, with the bytes each signature covers, each
    entry's hash, and the key store's ``ccvault_meta`` rows of the last one."""
    import hashlib
    import tempfile
    from datetime import datetime, timedelta, timezone

    from ccvault._secret import SecretKey
    from ccvault.crypto._primitives import ed25519_public_key
    from ccvault.erasure import Journal, JsonlLedger, RetentionPolicyRecord
    from ccvault.retention import Category, RetentionPolicy, plan_changes

    seed = bytes(range(0x40, 0x60))
    installation = "bc63ed65f5ba4740ab92e9a5acd0d5ba"
    t0 = datetime(2025, 3, 1, 9, 30, 0, 250000, tzinfo=timezone.utc)
    ticks = iter(t0 + timedelta(seconds=i) for i in range(20))
    grace = timedelta(days=7)
    first = RetentionPolicy(
        categories=(
            Category(name="transcripts", keep_for="P1Y", granularity="month", tz="Europe/Paris"),
            Category(name="chats", keep_for="P6M", granularity="week"),
        )
    )
    second = RetentionPolicy(
        categories=(
            Category(name="transcripts", keep_for="P90D", granularity="month", tz="Europe/Paris"),
            Category(name="calls", keep_for="P1M", granularity="day", tz="America/New_York"),
        )
    )
    at1, at2 = t0 + timedelta(seconds=1), t0 + timedelta(days=3)
    records = []
    before = RetentionPolicy()
    previous: RetentionPolicy | None = None
    for policy, at in ((first, at1), (second, at2)):
        changes = plan_changes(
            policy,
            at=at,
            grace=grace,
            before=before,
            has_periods=lambda name: False,
            previous_target=previous,
        )
        records.append(
            RetentionPolicyRecord(
                installation_id=installation,
                categories=policy.categories,
                policy_digest=policy.digest(),
                previous_policy_digest=None if previous is None else previous.digest(),
                recorded_at=at,
                by="ops@acme.example" if previous is None else "Jürgen (DPO)",
                grace_seconds=grace.total_seconds(),
                changes=changes,
            )
        )
        before, previous = policy, policy
    signed = [r.sign(SecretKey(seed)) for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.jsonl"
        clock = lambda: next(ticks)  # noqa: E731
        journal = Journal(JsonlLedger(path), installation, SecretKey(seed), clock=clock)
        for record in signed:
            journal.append(record)
        entries = list(journal.entries())
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    parsed = [e.parsed() for e in entries]
    text = signed[-1].canonical_bytes().decode("utf-8")
    chunks = [text[i : i + 250] for i in range(0, len(text), 250)]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    meta = {"retention_policy": f"{len(chunks)} {digest} {entries[-1].seq}"}
    meta.update({f"retention_policy/{i:04d}": c for i, c in enumerate(chunks)})
    doc = {
        "seed": seed.hex(),
        "public_key": ed25519_public_key(seed).hex(),
        "installation_id": installation,
        "clock_start": t0.isoformat(),  # each reading of the journal's clock: one second later
        "grace_seconds": grace.total_seconds(),
        "policies": [
            {"canonical_json": p.canonical_json().decode(), "digest": p.digest()}
            for p in (first, second)
        ],
        "records": [
            json.loads(r.model_dump_json(exclude={"signing_key", "signature"})) for r in records
        ],
        "entries": _entries_doc(entries, parsed, lines),
        "meta_rows": meta,
    }
    (HERE / "retention_policy_v1.json").write_text(
        json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    )


def retention() -> None:
    """Retention reports (docs/retention.md, "The retention report"): one transaction of an
    enforcement that destroyed periods of two categories after preserving the keys of two held
    subjects, with an erasure horizon; then one that destroyed only the held keys of a subject
    no longer held. Appended by a Journal with the seed and clock of ``journal``, as the ledger
    stores them, with the bytes each signature covers and each entry's hash."""
    import tempfile
    from datetime import datetime, timedelta, timezone

    from ccvault._secret import SecretKey
    from ccvault.crypto._primitives import ed25519_public_key
    from ccvault.erasure import Journal, JsonlLedger, RetentionReportRecord

    seed = bytes(range(0x40, 0x60))
    installation = "bc63ed65f5ba4740ab92e9a5acd0d5ba"
    t0 = datetime(2025, 6, 1, 2, 0, 0, 125000, tzinfo=timezone.utc)
    ticks = iter(t0 + timedelta(seconds=i) for i in range(20))
    digest = "1f991e833127cd48dbce288aba3827c10666cc5ffe64deddbc9514bebb5bb28d"
    first = RetentionReportRecord(
        installation_id=installation,
        run_id="5d41402abc4b2a76b9719d911017c592",
        policy_digest=digest,
        clock=t0,
        periods={
            "chats": ("chats/2025-05-26",),
            "transcripts": ("transcripts/2025-03-01",),
        },
        held_refs=("46" * 32, "a7" * 32),
        held_count=2,
        held_keys=4,
        released_refs=(),
        released_keys=0,
        propagation_bound_seconds=1.0,
        erasure_horizon=datetime(2025, 8, 5, 0, 0, tzinfo=timezone.utc),
    )
    second = RetentionReportRecord(
        installation_id=installation,
        run_id="7d793037a0760186574b0282f2f435e7",
        policy_digest=digest,
        clock=t0 + timedelta(days=1),
        periods={},
        held_refs=(),
        held_count=0,
        held_keys=0,
        released_refs=("a7" * 32,),
        released_keys=2,
        propagation_bound_seconds=1.0,
        erasure_horizon=None,
    )
    records = [first, second]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.jsonl"
        clock = lambda: next(ticks)  # noqa: E731
        journal = Journal(JsonlLedger(path), installation, SecretKey(seed), clock=clock)
        for record in records:
            journal.append(record)
        entries = list(journal.entries())
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    parsed = [e.parsed() for e in entries]
    doc = {
        "seed": seed.hex(),
        "public_key": ed25519_public_key(seed).hex(),
        "installation_id": installation,
        "clock_start": t0.isoformat(),  # each reading of the journal's clock: one second later
        "records": [
            json.loads(r.model_dump_json(exclude={"signing_key", "signature"})) for r in records
        ],
        "entries": _entries_doc(entries, parsed, lines),
    }
    (HERE / "retention_reports_v1.json").write_text(
        json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    )


def store5(name: str = "store_v5") -> None:
    """A whole installation with retention (schema 5): a recorded policy, suite-2 values in
    periods live, expired, and expired but held (a held key), a shredded customer's suite-2
    value, suite-1 values beside them, an enforcement's report in its JSONL ledger. Made by a
    FrozenClock so the periods are fixed; each value's expected outcome is in values.json."""
    from datetime import datetime, timezone

    from ccvault import NO_SUBJECT, Vault
    from ccvault.kms import LocalKms
    from ccvault.retention import load_policy
    from ccvault.testing import FrozenClock

    target = HERE / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    (target / "policy.toml").write_text(
        "[categories.transcripts]\n"
        'keep_for = "P90D"\ngranularity = "month"\ntz = "Europe/Paris"\n\n'
        "[categories.chats]\n"
        'keep_for = "P30D"\ngranularity = "day"\n'
    )
    policy = load_policy(target / "policy.toml")
    kms = LocalKms.generate(target / "master.key")
    t0 = datetime(2025, 1, 15, 10, 0, tzinfo=timezone.utc)
    clock = FrozenClock(t0.timestamp())
    ledger = f"file://{target / 'ledger.jsonl'}"
    vault = Vault(
        kms,
        f"sqlite:///{target / 'keys.db'}",
        subject_type="uuid",
        clock=clock,
        ledger=ledger,
        create=True,
        retention_policy=policy,
        listen_url="off",
    )
    vault.set_retention_policy(policy, by="ops@example.com")
    alice, bob, carol, dave = (uuid.UUID(int=n) for n in (0xA11CE, 0xB0B, 0xCA201, 0xDA7E))
    rows: list[dict[str, Any]] = []

    def put(subject: Any, context: str, text: str, outcome: str, **kw: Any) -> None:
        blob = vault.encrypt(subject, text.encode(), context=context, **kw)
        rows.append(
            {
                "subject": None if subject is NO_SUBJECT else str(subject),
                "context": context,
                "plaintext": text,
                "outcome": outcome,
                "ciphertext": blob.hex(),
            }
        )

    # January 2025 transcripts: expire at 1 May 2025 (Paris); bob is held, carol shredded
    put(alice, "calls.transcript", "alice in January", "EXPIRED", retention="transcripts")
    put(bob, "calls.transcript", "bob in January", "plaintext", retention="transcripts")
    put(carol, "calls.transcript", "carol in January", "SHREDDED", retention="transcripts")
    put(alice, "customers.phone", "+1 555 0100", "plaintext")
    put(NO_SUBJECT, "ivr.prompts", "welcome", "plaintext")
    hold_id = vault.hold(bob, case="LIT-2025-7", by="legal@example.com")
    vault.shred(carol)
    clock.advance((datetime(2025, 5, 2, tzinfo=timezone.utc) - t0).total_seconds())
    # May 2025: a live period, and a chat of 2 May (expires 2 June)
    put(alice, "calls.transcript", "alice in May", "plaintext", retention="transcripts")
    put(dave, "chats.body", "dave on 2 May", "plaintext", retention="chats")
    report = vault.enforce_retention()
    assert report.destroyed == {"transcripts": ("transcripts/2025-01-01",)}, report
    vault.rotate_epoch()
    vault.close()
    doc = {
        "clock": clock(),
        "held": [str(bob)],
        "hold_id": str(hold_id),
        "shredded": [str(carol)],
        "values": rows,
    }
    (target / "values.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    for what in sys.argv[1:]:
        {
            "values": values,
            "refs": refs,
            "store": store,
            "store2": lambda: store("store_v2"),
            "store3": lambda: store("store_v3"),
            "store4": lambda: store("store_v4"),
            "store5": store5,
            "heads": heads,
            "journal": journal,
            "periods": periods,
            "holds": holds,
            "records": records,
            "policy": policy,
            "retention": retention,
        }[what]()
