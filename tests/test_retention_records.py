"""Frozen vectors of the retention records (DESIGN.md, lifecycle rule 7;
tests/vectors/retention_records_v1.json): a period row, its tombstone, a held key and a suite-2
value that opens under the held key. Stored data depends on every byte here."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import Aead
from ccvault.crypto._wrap import KeyBinding, UnwrapError, commitment, unwrap_key
from ccvault.keystore._records import KeyKind, State
from ccvault.keystore._sql_keys import destroyed_values
from ccvault.retention import Category, period_label, period_of, period_ref

DOC: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "retention_records_v1.json").read_text()
)
EPOCH = Aead(bytes.fromhex(DOC["epoch_key"]))
INSTALLATION = bytes.fromhex(DOC["installation_id"])
EPOCH_ID = bytes.fromhex(DOC["epoch_id"])


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_the_period_record_binds_its_ref_in_the_wrap():
    p = DOC["period"]
    assert p["kind"] == KeyKind.PERIOD
    category = Category(**p["category"])
    start = datetime.fromisoformat(p["label"].split("/")[1] + "T12:00").replace(
        tzinfo=category.zone
    )
    period = period_of(category, start)
    assert period_label(period) == p["label"]
    assert period_ref(period) == h(p["ref"])
    binding = KeyBinding(INSTALLATION, "period", h(p["key_id"]), 1, EPOCH_ID, h(p["ref"]))
    assert binding.associated_data() == h(p["wrap_associated_data"])
    assert unwrap_key(EPOCH, h(p["wrapped"]), h(p["commitment"]), binding) == h(p["secret"])
    assert commitment(h(p["secret"]), "period", h(p["key_id"]), 1) == h(p["commitment"])
    # the same wrap on a row claiming another period's ref does not open
    other = KeyBinding(INSTALLATION, "period", h(p["key_id"]), 1, EPOCH_ID, bytes(32))
    with pytest.raises(UnwrapError):
        unwrap_key(EPOCH, h(p["wrapped"]), h(p["commitment"]), other)


def test_the_tombstone_keeps_the_rows_identity_and_nothing_else():
    t = DOC["tombstone"]
    values = destroyed_values(0.0)
    assert t["state"] == values["state"] == State.DESTROYED
    for field in ("wrapped", "commitment", "epoch_id"):
        assert t[field] is None
        assert values[field] is None
    assert (t["label"], t["key_id"], t["ref"]) == (
        DOC["period"]["label"],
        DOC["period"]["key_id"],
        DOC["period"]["ref"],
    )


def test_the_held_key_id_and_material_follow_from_the_value_header():
    held, p = DOC["held"], DOC["period"]
    subject = held["subject_key"]
    key_id, version, period_id = h(subject["key_id"]), subject["version"], h(held["period_id"])
    assert hashlib.sha256(h(held["id_message"])).digest()[:16] == h(held["key_id"])
    assert fmt.held_key_id(key_id, version, period_id) == h(held["key_id"])
    material = fmt.derive_period_key(h(subject["key"]), h(p["secret"]), key_id, version, period_id)
    assert material == h(held["material"])
    binding = KeyBinding(
        INSTALLATION, "held", h(held["key_id"]), version, EPOCH_ID, h(held["subject_ref"])
    )
    assert binding.associated_data() == h(held["wrap_associated_data"])
    assert unwrap_key(EPOCH, h(held["wrapped"]), h(held["commitment"]), binding) == material


def test_the_suite2_value_opens_under_the_held_key_alone():
    held, value = DOC["held"], DOC["value"]
    blob = h(value["ciphertext"])
    header, nonce, body = fmt.parse(blob)
    assert header.suite == fmt.SUITE_AES256GCM_PERIOD
    assert header.period_id == h(held["period_id"])
    # a reader derives the held key's id from the header alone
    assert fmt.held_key_id(header.key_id, header.key_version, header.period_id) == h(held["key_id"])
    assert nonce == h(value["nonce"])
    plain = fmt.open_value(
        Aead(h(held["material"])),
        header,
        nonce,
        body,
        value["context"].encode(),
        h(held["subject_ref"]),
    )
    assert plain == h(value["plaintext"])
    key = fmt.ValueKey(
        Aead(h(held["material"])),
        header.key_id,
        header.key_version,
        h(held["subject_ref"]),
        header.period_id,
    )
    assert key.header == header.raw
    assert key.open(blob, fmt.context_lp(value["context"].encode())) == h(value["plaintext"])
