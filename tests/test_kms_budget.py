"""KMS call budget: a warm process makes no KMS call per value; a cold one O(1) per epoch."""

from __future__ import annotations

import uuid

from ccvault import Vault
from ccvault.kms import LocalKms
from ccvault.testing import CountingKms, FrozenClock

CTX = "interactions.transcript"


def test_kms_calls_are_per_epoch_and_cache_period(kms: LocalKms, sqlite_url: str) -> None:
    with Vault(kms, sqlite_url) as first:  # creates the installation and epoch 1
        subjects = [uuid.uuid4() for _ in range(200)]
        blobs = [first.encrypt(s, b"hello", context=CTX) for s in subjects]
    clock = FrozenClock()
    counting = CountingKms(kms)
    with Vault(counting, sqlite_url, cache_ttl=60, clock=clock) as vault:
        assert counting.calls["unwrap"] == 1  # the epoch key, once
        for s, blob in zip(subjects, blobs, strict=True):
            assert vault.decrypt(blob, context=CTX, subject=s) == b"hello"
            vault.encrypt(s, b"again", context=CTX)
        vault.warm(uuid.uuid4() for _ in range(300))
        assert counting.calls == {"unwrap": 1}
        clock.advance(61)  # the cache period is over: one more unwrap, then warm again
        for blob in blobs:
            vault.decrypt(blob, context=CTX)
        assert counting.calls == {"unwrap": 2}
        vault.rotate_epoch()  # wraps the new epoch key: one wrap, no unwrap of it
        assert counting.calls == {"unwrap": 2, "wrap": 1}
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        assert counting.calls == {"unwrap": 2, "wrap": 1}
