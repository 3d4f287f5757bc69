"""Suite-2 write keys without a second unwrap (issue 15, performance round 2): the key ring
keeps a subject key's material with its cached write key when the material is in hand (the
key just made, or just unwrapped to load it), in a vault with a retention policy, and derives
each period key from it (``KeyRing.period_key_for_write``) instead of unwrapping the subject's
key row again. These tests check that no unwrap happens on those paths and exactly one where
the material was not in hand, that the keys derived open in another vault, that the shred
fence and every eviction drop the material with the write key, that a vault without a
retention policy keeps none, and that nothing shows it.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``).
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ccvault import Vault
from ccvault.keyring import KeyRing
from ccvault.kms import LocalKms
from ccvault.retention import RetentionPolicy
from ccvault.testing import FrozenClock

CTX = "calls.transcript"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
POLICY = RetentionPolicy.from_dict(
    {"categories": {"calls": {"keep_for": "P1Y", "granularity": "month"}}}
)


class Unwraps:
    """Counts ``Epochs.unwrap_record`` calls on subject key rows."""

    def __init__(self, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        epochs = vault._epochs
        real = epochs.unwrap_record

        def counted(rec: Any) -> Any:
            if rec.kind == "subject":
                self.count += 1
            return real(rec)

        monkeypatch.setattr(epochs, "unwrap_record", counted)


@pytest.fixture
def kms() -> LocalKms:
    return LocalKms.ephemeral()


@pytest.fixture
def rvault(kms: LocalKms, db_url: str) -> Iterator[Vault]:
    v = Vault(kms, db_url, create=True, clock=FrozenClock(T0.timestamp()), retention_policy=POLICY)
    yield v
    v.close()


def _encrypt(vault: Vault, subject: object, when: datetime | None = None) -> bytes:
    return vault.encrypt(
        subject, subject.bytes, context=CTX, retention="calls", retention_from=when or T0
    )  # type: ignore[attr-defined]


def _months(n: int) -> list[datetime]:
    return [datetime(2026, 3 - i, 5, tzinfo=timezone.utc) for i in range(n)]


def test_new_subjects_period_keys_need_no_unwrap_and_open_elsewhere(
    rvault: Vault, kms: LocalKms, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subjects = [uuid.uuid4() for _ in range(30)]
    rvault.warm(subjects)  # keys made here: their material was in hand
    unwraps = Unwraps(rvault, monkeypatch)
    blobs = [_encrypt(rvault, s, when) for s in subjects for when in _months(2)]
    assert unwraps.count == 0
    with Vault(kms, db_url, retention_policy=POLICY) as other:
        items = [(blob, CTX, subjects[i // 2]) for i, blob in enumerate(blobs)]
        assert other.decrypt_many(items) == [subjects[i // 2].bytes for i in range(len(blobs))]


def test_loaded_subjects_are_unwrapped_once_when_their_write_key_is_loaded(
    rvault: Vault, kms: LocalKms, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subjects = [uuid.uuid4() for _ in range(10)]
    rvault.warm(subjects)
    with Vault(kms, db_url, clock=FrozenClock(T0.timestamp()), retention_policy=POLICY) as fresh:
        unwraps = Unwraps(fresh, monkeypatch)
        fresh.warm(subjects)  # loads: one unwrap each, the material kept
        assert unwraps.count == 10
        blobs = [_encrypt(fresh, s, when) for s in subjects for when in _months(3)]
        assert unwraps.count == 10
    assert rvault.decrypt_many([(b, CTX, subjects[i // 3]) for i, b in enumerate(blobs)]) == [
        subjects[i // 3].bytes for i in range(30)
    ]


def test_a_write_key_loaded_from_a_cached_value_key_unwraps_once_for_its_periods(
    rvault: Vault, kms: LocalKms, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = uuid.uuid4()
    blob = rvault.encrypt(subject, b"plain", context=CTX)
    with Vault(kms, db_url, clock=FrozenClock(T0.timestamp()), retention_policy=POLICY) as fresh:
        assert fresh.decrypt(blob, context=CTX, subject=subject) == b"plain"  # value key cached
        unwraps = Unwraps(fresh, monkeypatch)
        fresh.warm([subject])  # the write key is the cached value key: no material in hand
        assert unwraps.count == 0
        for when in _months(3):
            _encrypt(fresh, subject, when)
        assert unwraps.count == 1  # once, then kept with the write key


def test_the_shred_fence_and_every_eviction_drop_the_material(
    rvault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring: KeyRing = rvault._ring
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    rvault.warm([a, b, c, d])
    ref_a, ref_b, ref_c, ref_d = rvault.subject_refs([a, b, c, d])
    assert all(ring._write_recs.get(r).material is not None for r in (ref_a, ref_b, ref_c))
    _encrypt(rvault, a)
    rvault.shred(a)
    assert ring._write_recs.get(ref_a) is None
    ring.evict_subject(ref_b)
    assert ring._write_recs.get(ref_b) is None
    ring.evict_subjects({ref_c})
    assert ring._write_recs.get(ref_c) is None
    assert ring._write_recs.get(ref_d) is not None
    ring.evict_all()
    assert ring._write_recs.get(ref_d) is None
    # a subject fenced while its material is unwrapped: the material is not kept
    e = uuid.uuid4()
    rvault.warm([e])
    ref_e = rvault.subject_ref(e)
    entry = ring._write_recs.get(ref_e)
    entry.material = None
    real = rvault._epochs.unwrap_record

    def fenced_meanwhile(rec: Any) -> Any:
        ring.fence(ref_e)
        return real(rec)

    monkeypatch.setattr(rvault._epochs, "unwrap_record", fenced_meanwhile)
    _encrypt(rvault, e)
    assert entry.material is None


def test_a_vault_without_a_retention_policy_keeps_no_material(kms: LocalKms, db_url: str) -> None:
    with Vault(kms, db_url, create=True) as vault:
        subjects = [uuid.uuid4() for _ in range(3)]
        vault.warm(subjects)
        vault.encrypt(subjects[0], b"x", context=CTX)
        for ref in vault.subject_refs(subjects):
            entry = vault._ring._write_recs.get(ref)
            assert entry is not None
            assert entry.material is None


def test_nothing_shows_the_kept_material(rvault: Vault, tmp_path: Path) -> None:
    subject = uuid.uuid4()
    rvault.warm([subject])
    entry = rvault._ring._write_recs.get(rvault.subject_ref(subject))
    material = entry.material.reveal()
    for shown in (repr(entry), str(entry), repr(rvault._ring.__dict__)):
        assert material.hex() not in shown
        assert repr(material) not in shown
    assert repr(entry) == "<write record v1, material kept>"
    with pytest.raises(TypeError):
        pickle.dumps(entry)
