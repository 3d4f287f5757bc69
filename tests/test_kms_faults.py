"""KMS faults: bounded jittered retries, fail closed, and the epoch-key grace period."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from ccvault import (
    ConfigurationError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
    SubjectShreddedError,
    Vault,
)
from ccvault._secret import SecretKey
from ccvault.kms import LocalKms, RetryPolicy
from ccvault.kms._protocol import WrappedKey
from ccvault.kms._retry import call_with_retries
from ccvault.testing import FaultyKms, FrozenClock
from ccvault.testing._basics import KmsWrapper

T = TypeVar("T")
CTX = "chats.transcript"
CONTEXT = {"ccvault:purpose": "test"}


def _wrapped(kms: FaultyKms) -> WrappedKey:
    return kms.wrap(SecretKey(b"k" * 32), context=CONTEXT)


def test_retry_policy_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=0.5)
    delays = [policy.delay(n) for n in range(8) for _ in range(50)]
    assert all(0 <= d <= 0.5 for d in delays)
    assert len(set(delays)) > 100  # jittered, not a fixed schedule
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_call_with_retries_retries_only_unavailability() -> None:
    attempts: list[str] = []
    slept: list[float] = []

    def flaky() -> str:
        attempts.append("x")
        if len(attempts) < 3:
            raise TimeoutError("read timed out")
        return "ok"

    def translate(exc: Exception) -> KmsUnavailableError | None:
        return KmsUnavailableError("timeout") if isinstance(exc, TimeoutError) else None

    assert (
        call_with_retries(flaky, translate=translate, policy=RetryPolicy(), sleep=slept.append)
        == "ok"
    )
    assert len(attempts) == 3
    assert len(slept) == 2

    def refused() -> None:
        attempts.append("refused")
        raise PermissionError("denied")

    attempts.clear()
    with pytest.raises(ConfigurationError):
        call_with_retries(
            refused,
            translate=lambda exc: ConfigurationError("denied"),
            policy=RetryPolicy(),
            sleep=slept.append,
        )
    assert attempts == ["refused"]  # a refusal is never retried

    attempts.clear()  # untranslated: a programming error passes through
    with pytest.raises(ValueError, match="invalid literal"):
        call_with_retries(
            lambda: attempts.append("bug") or int("x"),
            translate=lambda exc: None,
            policy=RetryPolicy(),
        )
    assert attempts == ["bug"]


def test_translated_errors_keep_no_trace_of_the_sdk_exception() -> None:
    """The SDK's exception (request URL, server text, frames holding request data) is neither
    the __cause__ nor the __context__ of the error raised, whether refused or given up on."""

    class SdkError(Exception):
        pass

    def failing() -> None:
        request = {"plaintext": "c2VjcmV0LWtleS1tYXRlcmlhbA=="}  # noqa: F841 - a frame local
        raise SdkError("POST https://kms.example/v1/encrypt: denied")

    def refused(exc: Exception) -> KmsError:
        return KmsAccessDeniedError("denied")

    for translate, error in (
        (refused, KmsAccessDeniedError),
        (lambda exc: KmsUnavailableError("down"), KmsUnavailableError),
    ):
        with pytest.raises(error) as info:
            call_with_retries(
                failing, translate=translate, policy=RetryPolicy(2, 0.0, 0.0), sleep=lambda s: None
            )
        assert info.value.__cause__ is None
        assert info.value.__context__ is None
        assert info.value.__suppress_context__
        tb = info.value.__traceback__
        while tb is not None:
            assert tb.tb_frame.f_code.co_name != "failing"
            tb = tb.tb_next

    # A ccvault error raised by the operation itself passes through as the same object.
    own = KmsAccessDeniedError("own")

    def raising_own() -> None:
        raise own

    with pytest.raises(KmsAccessDeniedError) as info:
        call_with_retries(raising_own, translate=refused, policy=RetryPolicy())
    assert info.value is own
    assert own.__context__ is None


def test_short_throttling_is_absorbed_long_throttling_fails_closed() -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, policy=RetryPolicy(max_attempts=4))
    wrapped = _wrapped(kms)
    kms.throttle(3)
    start = clock()
    assert kms.unwrap(wrapped, context=CONTEXT).reveal() == b"k" * 32
    assert kms.calls["unwrap"] == 4
    assert kms.delegated["unwrap"] == 1
    assert clock() >= start  # the backoff waited on the injected clock, not the wall clock
    kms.throttle(4)
    with pytest.raises(KmsUnavailableError, match="gave up after 4 attempts"):
        kms.unwrap(wrapped, context=CONTEXT)
    assert kms.delegated["unwrap"] == 1


def test_hang_times_out_on_the_injected_clock() -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, timeout=5.0, policy=RetryPolicy(2))
    wrapped = _wrapped(kms)
    kms.hang()
    start = clock()
    with pytest.raises(KmsUnavailableError):
        kms.unwrap(wrapped, context=CONTEXT)
    assert clock() - start >= 10.0  # two attempts, each ran into the 5 s timeout
    kms.heal()
    kms.latency(1.5)
    start = clock()
    assert kms.unwrap(wrapped, context=CONTEXT).reveal() == b"k" * 32
    assert clock() - start == pytest.approx(1.5)


def test_inner_errors_pass_through_unretried() -> None:
    inner = LocalKms.ephemeral()
    kms = FaultyKms(inner, clock=FrozenClock())
    wrapped = _wrapped(kms)
    inner.destroy_root(wrapped.root_id)
    with pytest.raises(KmsKeyNotFoundError):
        kms.unwrap(wrapped, context=CONTEXT)
    assert kms.calls["unwrap"] == 1


def _vault(kms: FaultyKms, url: str, clock: FrozenClock, grace: float = 300.0) -> Vault:
    return Vault(kms, url, cache_ttl=60, kms_grace_period=grace, clock=clock)


def test_cached_epoch_key_serves_through_an_outage_for_the_grace_period(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, policy=RetryPolicy(2, 0.0, 0.0))
    subjects = [uuid.uuid4() for _ in range(50)]
    with _vault(kms, sqlite_url, clock) as vault:
        blobs = [vault.encrypt(s, b"call notes", context=CTX) for s in subjects]
        kms.outage()
        clock.advance(61)  # past the cache period: the epoch key is stale, the KMS is down
        assert vault.decrypt(blobs[0], context=CTX, subject=subjects[0]) == b"call notes"
        # The vault created the epoch (a wrap, no unwrap); now one failed call of two tries.
        assert kms.calls["unwrap"] == 2
        # Every other subject key is unwrapped with the stale epoch key; the KMS is asked at
        # most about once a second meanwhile, not once per key.
        for s, blob in zip(subjects, blobs, strict=True):
            assert vault.decrypt(blob, context=CTX, subject=s) == b"call notes"
        vault.encrypt(uuid.uuid4(), b"new customer during the outage", context=CTX)
        assert kms.calls["unwrap"] == 2
        clock.advance(2)
        vault.decrypt(blobs[1], context=CTX)  # cached subject key: no epoch key needed
        vault.encrypt(uuid.uuid4(), b"another new customer", context=CTX)
        assert kms.calls["unwrap"] == 4  # a second later the KMS is asked again
        clock.advance(300)  # 363 s after the unwrap: past cache period + grace
        with pytest.raises(KmsUnavailableError):
            vault.decrypt(blobs[0], context=CTX)
        kms.heal()
        assert vault.decrypt(blobs[0], context=CTX) == b"call notes"


def test_no_grace_period_fails_closed_at_once(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, policy=RetryPolicy(1))
    with _vault(kms, sqlite_url, clock, grace=0) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        kms.outage()
        clock.advance(61)
        with pytest.raises(KmsUnavailableError):
            vault.decrypt(blob, context=CTX)


def test_a_cold_process_gets_no_grace(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, policy=RetryPolicy(1))
    with _vault(kms, sqlite_url, clock):
        pass
    kms.outage()
    with pytest.raises(KmsUnavailableError):
        _vault(kms, sqlite_url, clock)


def test_a_refusal_is_not_covered_by_the_grace_period(sqlite_url: str) -> None:
    clock = FrozenClock()
    inner = LocalKms.ephemeral()
    kms = FaultyKms(inner, clock=clock)
    with _vault(kms, sqlite_url, clock) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        inner.destroy_root(inner.current_root())  # the epoch's root is destroyed, not unreachable
        clock.advance(61)
        with pytest.raises(KmsKeyNotFoundError):
            vault.decrypt(blob, context=CTX)


def test_shred_elsewhere_is_honoured_during_an_outage(sqlite_url: str) -> None:
    """The grace period covers epoch keys only: subject keys still expire after cache_ttl, so a
    shred by another process reaches this one within the same bound while the KMS is down."""
    inner = LocalKms.ephemeral()
    clock = FrozenClock()
    kms = FaultyKms(inner, clock=clock, policy=RetryPolicy(1))
    subject = uuid.uuid4()
    with _vault(kms, sqlite_url, clock) as reader, Vault(inner, sqlite_url) as admin:
        blob = reader.encrypt(subject, b"erase me", context=CTX)
        assert reader.decrypt(blob, context=CTX) == b"erase me"
        kms.outage()
        admin.shred(subject)
        clock.advance(61)
        with pytest.raises(SubjectShreddedError):
            reader.decrypt(blob, context=CTX)


def test_grace_period_must_not_be_negative(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError):
        Vault(LocalKms.ephemeral(), sqlite_url, kms_grace_period=-1)


class _GatedKms(KmsWrapper):
    """Unwraps wait until the test opens the gate: a KMS that hangs for as long as we like."""

    def __init__(self, inner: LocalKms) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def _call(self, name: str, op: Callable[[], T]) -> T:
        if name == "unwrap" and not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(timeout=30)
        return op()


def test_a_slow_refresh_blocks_one_thread_not_all(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = _GatedKms(LocalKms.ephemeral())
    subjects = [uuid.uuid4() for _ in range(2)]
    with _vault(kms, sqlite_url, clock) as vault:  # type: ignore[arg-type]
        blobs = [vault.encrypt(s, b"v", context=CTX) for s in subjects]
        clock.advance(61)  # epoch and subject keys stale: each decrypt needs the epoch key
        kms.gate.clear()
        refresher = threading.Thread(target=lambda: vault.decrypt(blobs[0], context=CTX))
        refresher.start()
        assert kms.waiting.wait(timeout=10)  # the refresh is stuck in the KMS
        other: list[bytes] = []
        reader = threading.Thread(target=lambda: other.append(vault.decrypt(blobs[1], context=CTX)))
        reader.start()
        reader.join(timeout=10)
        assert other == [b"v"]  # served from the cached epoch key while the refresh hangs
        assert refresher.is_alive()
        kms.gate.set()
        refresher.join(timeout=10)
        assert not refresher.is_alive()


def test_backoff_between_attempts_grows_during_an_outage(sqlite_url: str) -> None:
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock, policy=RetryPolicy(1))
    subjects = [uuid.uuid4() for _ in range(40)]
    with _vault(kms, sqlite_url, clock) as vault:
        blobs = [vault.encrypt(s, b"v", context=CTX) for s in subjects]
        kms.outage()
        clock.advance(61)
        asked = []
        for blob in blobs:  # one decrypt per simulated second, each needing the epoch key
            vault.decrypt(blob, context=CTX)
            asked.append(kms.calls["unwrap"])
            clock.advance(1)
        # Attempts after 0, 1, 3, 7, 15, 31 s: backoff 1, 2, 4, 8, 16 s (capped at 60 s).
        assert asked[-1] == 6
        assert [i for i in range(1, len(asked)) if asked[i] != asked[i - 1]] == [1, 3, 7, 15, 31]


def test_a_refusal_ends_the_cached_key_even_if_an_outage_follows(sqlite_url: str) -> None:
    clock = FrozenClock()
    inner = LocalKms.ephemeral()
    kms = FaultyKms(inner, clock=clock, policy=RetryPolicy(1))
    with _vault(kms, sqlite_url, clock) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        inner.destroy_root(inner.current_root())  # the admin revokes the root...
        clock.advance(61)
        with pytest.raises(KmsKeyNotFoundError):
            vault.decrypt(blob, context=CTX)
        kms.outage()  # ...and then the KMS becomes unreachable: nothing stale is served
        with pytest.raises(KmsUnavailableError):
            vault.decrypt(blob, context=CTX)
