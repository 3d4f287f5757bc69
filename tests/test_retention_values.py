"""Suite-2 values (issue 14, items 2, 3 and 5; DESIGN.md lifecycle rules 6 and 7):
``vault.encrypt(..., retention=, retention_from=)``, the period rows it creates, and what reads
return once a period is tombstoned (EXPIRED), held (a held key) or its subject shredded.

Expiry is done here by tombstoning the period row as enforcement does (the enforcement's own
tests cover when and how): these tests are about what the value path makes of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ccvault import (
    EXPIRED,
    NO_SUBJECT,
    SHREDDED,
    ConfigurationError,
    DecryptionError,
    KeyStoreError,
    RetentionExpiredError,
    SubjectShreddedError,
    Vault,
)
from ccvault.crypto import _format as fmt
from ccvault.keystore._records import InvalidationKind, KeyKind
from ccvault.kms import LocalKms
from ccvault.retention import Category, RetentionPolicy, period_label, period_of, period_ref
from ccvault.testing import FrozenClock

UTC = timezone.utc
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TRANSCRIPTS = Category(name="transcripts", keep_for="P90D", granularity="month")
CHATS = Category(name="chats", keep_for="P30D", granularity="day", tz="Europe/Paris")
POLICY = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0.timestamp())


@pytest.fixture
def rvault(kms: LocalKms, db_url: str, clock: FrozenClock) -> Iterator[Vault]:
    v = Vault(kms, db_url, subject_type="uuid", clock=clock, retention_policy=POLICY)
    yield v
    v.close()


def reopen(kms: LocalKms, db_url: str, clock: FrozenClock) -> Vault:
    return Vault(kms, db_url, subject_type="uuid", clock=clock, retention_policy=POLICY)


def keys_table(url: str) -> tuple[sa.Engine, sa.Table]:
    engine = sa.create_engine(url)
    return engine, sa.Table("ccvault_keys", sa.MetaData(), autoload_with=engine)


def period_row(url: str, label: str) -> sa.Row[object]:
    engine, k = keys_table(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(k).where(k.c.kind == KeyKind.PERIOD, k.c.label == label)
            ).one()
    finally:
        engine.dispose()


def tombstone_period(url: str, period_id: bytes) -> None:
    """What enforcement does to a period row (and the expiry it publishes)."""
    engine, k = keys_table(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(k)
                .where(k.c.kind == KeyKind.PERIOD, k.c.key_id == period_id)
                .values(
                    wrapped=None,
                    commitment=None,
                    epoch_id=None,
                    state="destroyed",
                    destroyed_at=T0.timestamp(),
                )
            )
    finally:
        engine.dispose()


def test_a_retention_value_is_suite_2_in_its_period_and_reads_back(rvault: Vault, db_url: str):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"hello", context="calls.transcript", retention="transcripts")
    header, _nonce, _body = fmt.parse(blob)
    assert header.suite == fmt.SUITE_AES256GCM_PERIOD
    assert len(header.raw) == 38
    assert len(blob) == len(b"hello") + fmt.OVERHEAD[fmt.SUITE_AES256GCM_PERIOD] == 5 + 66
    row = period_row(db_url, "transcripts/2026-03-01")
    assert row.key_id == header.period_id
    assert row.version == 1
    assert row.ref == period_ref(period_of(TRANSCRIPTS, T0))
    assert rvault.decrypt(blob, context="calls.transcript", subject=customer) == b"hello"
    assert rvault.decrypt_many([(blob, "calls.transcript", customer)]) == [b"hello"]
    # the same subject and period: one period row, the same derived key id in the header
    again = rvault.encrypt(
        customer, b"x", context="calls.transcript", retention="transcripts", retention_from=T0
    )
    assert again[:38] == blob[:38]


def test_a_new_vault_reads_retention_values_cold(rvault: Vault, kms: LocalKms, db_url: str,
                                                  clock: FrozenClock):  # fmt: skip
    customers = [uuid.uuid4() for _ in range(5)]
    items = [
        (
            rvault.encrypt(
                c,
                str(i).encode(),
                context="chats.body",
                retention="chats",
                retention_from=T0 - timedelta(days=i),
            ),
            "chats.body",
            c,
        )
        for i, c in enumerate(customers)
    ]
    with reopen(kms, db_url, clock) as other:
        assert other.decrypt_many(items) == [str(i).encode() for i in range(5)]


def test_event_time_decides_the_period_in_the_categorys_zone(rvault: Vault, db_url: str):
    customer = uuid.uuid4()
    # 23:30 UTC on 9 March is 00:30 on 10 March in Paris
    late = datetime(2026, 3, 9, 23, 30, tzinfo=UTC)
    blob = rvault.encrypt(
        customer, b"a", context="chats.body", retention="chats", retention_from=late
    )
    assert period_row(db_url, "chats/2026-03-10").key_id == fmt.parse(blob)[0].period_id
    assert period_label(period_of(CHATS, late)) == "chats/2026-03-10"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"retention": "transcript"}, ConfigurationError, "no category"),
        ({"retention": 3}, TypeError, "category name"),
        ({"retention": "transcripts", "retention_from": datetime(2026, 3, 1)}, ValueError, "naive"),
        ({"retention": "transcripts", "retention_from": "2026-03-01"}, TypeError, "datetime"),
        ({"retention_from": T0}, TypeError, "needs retention"),
        (
            {"retention": "transcripts", "retention_from": T0 + timedelta(days=70)},
            ValueError,
            "future",
        ),
        (
            {"retention": "transcripts", "retention_from": T0 - timedelta(days=200)},
            RetentionExpiredError,
            "expired",
        ),
    ],
)
def test_bad_retention_arguments_are_refused_and_write_nothing(
    rvault: Vault, db_url: str, kwargs: dict[str, object], error: type[Exception], words: str
):
    with pytest.raises(error, match=words):
        rvault.encrypt(uuid.uuid4(), b"x", context="calls.transcript", **kwargs)  # type: ignore[arg-type]
    engine, k = keys_table(db_url)
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(k).where(k.c.kind == KeyKind.PERIOD)
            ).scalar_one()
            == 0
        )
    engine.dispose()


def test_vaultwide_values_take_no_retention(rvault: Vault):
    with pytest.raises(TypeError, match="vault-wide"):
        rvault.encrypt(NO_SUBJECT, b"x", context="ivr.prompts", retention="transcripts")


def test_retention_needs_a_policy(svault: Vault):
    with pytest.raises(ConfigurationError, match="retention policy"):
        svault.encrypt(uuid.uuid4(), b"x", context="calls.transcript", retention="transcripts")


def test_a_period_row_whose_ref_was_edited_is_never_written_under(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock
):
    rvault.encrypt(uuid.uuid4(), b"x", context="calls.transcript", retention="transcripts")
    engine, k = keys_table(db_url)
    with engine.begin() as conn:
        conn.execute(sa.update(k).where(k.c.kind == KeyKind.PERIOD).values(ref=bytes(32)))
    engine.dispose()
    with reopen(kms, db_url, clock) as other, pytest.raises(KeyStoreError, match="ref differs"):
        other.encrypt(uuid.uuid4(), b"x", context="calls.transcript", retention="transcripts")


def test_a_moved_value_does_not_open(rvault: Vault):
    alice, bob = uuid.uuid4(), uuid.uuid4()
    march = rvault.encrypt(alice, b"a", context="calls.transcript", retention="transcripts")
    feb = rvault.encrypt(
        alice,
        b"b",
        context="calls.transcript",
        retention="transcripts",
        retention_from=T0 - timedelta(days=30),
    )
    chats = rvault.encrypt(alice, b"c", context="calls.transcript", retention="chats")
    bobs = rvault.encrypt(bob, b"d", context="calls.transcript", retention="transcripts")
    # another period (or category) id in the header: the derived key differs
    for other in (feb, chats):
        moved = march[:22] + other[22:38] + march[38:]
        with pytest.raises(DecryptionError):
            rvault.decrypt(moved, context="calls.transcript", subject=alice)
    # an unknown period id
    with pytest.raises(DecryptionError):
        rvault.decrypt(march[:22] + bytes(16) + march[38:], context="calls.transcript")
    # another subject, another column
    with pytest.raises(DecryptionError):
        rvault.decrypt(bobs, context="calls.transcript", subject=alice)
    with pytest.raises(DecryptionError):
        rvault.decrypt(march, context="calls.summary", subject=alice)
    # suite byte flipped to 1: a suite-1 header names the data key, which never sealed it
    with pytest.raises(DecryptionError):
        rvault.decrypt(march[:1] + b"\x01" + march[2:], context="calls.transcript")


def test_a_tombstoned_period_reads_expired_never_plaintext(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock
):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"secret", context="calls.transcript", retention="transcripts")
    live = rvault.encrypt(customer, b"live", context="calls.summary")
    tombstone_period(db_url, fmt.parse(blob)[0].period_id)
    with reopen(kms, db_url, clock) as other:
        with pytest.raises(RetentionExpiredError) as info:
            other.decrypt(blob, context="calls.transcript", subject=customer)
        assert "secret" not in str(info.value)
        out = other.decrypt_many(
            [(blob, "calls.transcript", customer), (live, "calls.summary", customer)]
        )
        assert out == [EXPIRED, b"live"]
        assert out[0] is EXPIRED
        # a moved value is still a failure, never EXPIRED
        with pytest.raises(DecryptionError):
            other.decrypt(blob, context="calls.transcript", subject=uuid.uuid4())
        # no write into a tombstoned period, even before its time has come by the clock
        with pytest.raises(RetentionExpiredError):
            other.encrypt(customer, b"x", context="calls.transcript", retention="transcripts")


def test_the_expiry_invalidation_evicts_cached_period_keys_in_a_running_process(
    rvault: Vault, db_url: str, clock: FrozenClock
):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"secret", context="calls.transcript", retention="transcripts")
    assert rvault.decrypt(blob, context="calls.transcript") == b"secret"  # cached
    period_id = fmt.parse(blob)[0].period_id
    assert period_id is not None
    tombstone_period(db_url, period_id)
    rvault._ring.evict_periods({period_id})  # what the expiry row on the channel does
    with pytest.raises(RetentionExpiredError):
        rvault.decrypt(blob, context="calls.transcript")
    assert InvalidationKind.EXPIRY == "expiry"


def test_a_held_key_keeps_a_held_subjects_value_readable(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock
):
    held, other = uuid.uuid4(), uuid.uuid4()
    blob = rvault.encrypt(held, b"kept", context="calls.transcript", retention="transcripts")
    gone = rvault.encrypt(other, b"gone", context="calls.transcript", retention="transcripts")
    header = fmt.parse(blob)[0]
    assert header.period_id is not None
    # the held key enforcement stores: the suite-2 value key, under the derived id
    key = rvault._ring.period_key_for_write(held, rvault._periods.for_write(TRANSCRIPTS, None))
    epochs = rvault._epochs
    secret = epochs.unwrap_record(
        rvault._store.get_keys([(header.period_id, 1)])[(header.period_id, 1)]
    )
    data = epochs.unwrap_record(
        rvault._store.get_keys([(header.key_id, header.key_version)])[
            (header.key_id, header.key_version)
        ]
    )
    material = fmt.derive_period_key(
        data.reveal(), secret.reveal(), header.key_id, header.key_version, header.period_id
    )
    assert key.header == header.raw
    rec, _ = epochs.new_record(
        KeyKind.HELD,
        fmt.held_key_id(header.key_id, header.key_version, header.period_id),
        header.key_version,
        ref=rvault.subject_ref(held),
        material=material,
    )
    rvault._store.insert_key_if_absent(rec)
    tombstone_period(db_url, header.period_id)
    with reopen(kms, db_url, clock) as fresh:
        out = fresh.decrypt_many(
            [(blob, "calls.transcript", held), (gone, "calls.transcript", other)]
        )
        assert out == [b"kept", EXPIRED]
        # the held key is the held subject's only: another subject's header never finds it
        with pytest.raises(DecryptionError):
            fresh.decrypt(blob, context="calls.transcript", subject=other)
        # a shred of the held subject destroys its held key with its subject keys
        fresh.shred(held)
        assert fresh.decrypt_many([(blob, "calls.transcript", held)]) == [SHREDDED]
    engine, k = keys_table(db_url)
    with engine.connect() as conn:
        states = conn.execute(sa.select(k.c.state).where(k.c.kind == KeyKind.HELD)).scalars()
        assert list(states) == ["destroyed"]
    engine.dispose()


def test_a_shred_ranks_above_expiry_and_evicts_derived_keys_at_once(rvault: Vault, db_url: str):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"secret", context="calls.transcript", retention="transcripts")
    assert rvault.decrypt(blob, context="calls.transcript") == b"secret"  # cached, read & write
    rvault.shred(customer)
    # in the shredding process, at once: no poll, no cache age
    with pytest.raises(SubjectShreddedError):
        rvault.decrypt(blob, context="calls.transcript")
    with pytest.raises(SubjectShreddedError):
        rvault.encrypt(customer, b"x", context="calls.transcript", retention="transcripts")
    tombstone_period(db_url, fmt.parse(blob)[0].period_id)  # type: ignore[arg-type]
    rvault._ring.evict_periods(None)
    assert rvault.decrypt_many([(blob, "calls.transcript", customer)]) == [SHREDDED]


def test_rotation_rewraps_period_secrets_and_values_keep_reading(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock
):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"secret", context="calls.transcript", retention="transcripts")
    before = period_row(db_url, "transcripts/2026-03-01")
    rvault.rotate_epoch()
    after = period_row(db_url, "transcripts/2026-03-01")
    assert after.key_id == before.key_id  # re-wrapped, never regenerated
    assert after.epoch_id != before.epoch_id
    assert after.wrapped != before.wrapped
    with reopen(kms, db_url, clock) as other:
        assert other.decrypt(blob, context="calls.transcript", subject=customer) == b"secret"


def test_reprs_name_no_period_secret(rvault: Vault, tmp_path: Path):
    period = rvault._periods.for_write(TRANSCRIPTS, None)
    key = rvault._ring.period_key_for_write(uuid.uuid4(), period)
    for text in (repr(period), repr(key)):
        assert period.secret.reveal().hex() not in text
        assert "transcripts" in text or "suite=2" in text


def test_another_process_sees_an_expiry_at_its_next_poll_and_nothing_else_is_dropped(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock
):
    customer = uuid.uuid4()
    blob = rvault.encrypt(customer, b"secret", context="calls.transcript", retention="transcripts")
    plain = rvault.encrypt(customer, b"plain", context="calls.summary")
    with reopen(kms, db_url, clock) as other:
        assert other.decrypt(blob, context="calls.transcript") == b"secret"  # cached there
        assert other.decrypt(plain, context="calls.summary") == b"plain"
        period_id = fmt.parse(blob)[0].period_id
        assert period_id is not None
        tombstone_period(db_url, period_id)
        rvault._store.invalidate(InvalidationKind.EXPIRY, None, period_id, clock())  # type: ignore[attr-defined]
        assert other.decrypt(blob, context="calls.transcript") == b"secret"  # before its poll
        clock.advance(other.propagation_interval)
        with pytest.raises(RetentionExpiredError):
            other.decrypt(blob, context="calls.transcript")
        # an expiry is no shred: the subject's other keys stay cached and usable
        assert not other.is_shredded(customer)
        assert other.decrypt(plain, context="calls.summary") == b"plain"
        assert other._ring.lookup()(plain[:22]) is not None


def test_the_retention_value_path_logs_no_plaintext_subject_or_key_at_debug(
    rvault: Vault, kms: LocalKms, db_url: str, clock: FrozenClock, caplog: pytest.LogCaptureFixture
):
    import logging

    customer = uuid.UUID("0badc0de-0000-4000-8000-00000000beef")
    caplog.set_level(logging.DEBUG)
    blob = rvault.encrypt(customer, b"pin 4711", context="calls.transcript", retention="chats")
    period = rvault._ring.periods.for_write(CHATS, None)
    assert rvault.decrypt(blob, context="calls.transcript", subject=customer) == b"pin 4711"
    tombstone_period(db_url, period.period_id)
    with reopen(kms, db_url, clock) as other:
        assert other.decrypt_many([(blob, "calls.transcript", customer)]) == [EXPIRED]
        with pytest.raises(RetentionExpiredError):
            other.decrypt(blob, context="calls.transcript", subject=customer)
    text = caplog.text
    for secret in ("pin 4711", str(customer), customer.hex, period.secret.reveal().hex()):
        assert secret not in text
