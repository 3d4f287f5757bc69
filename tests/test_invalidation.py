"""The invalidation channel in one process (DESIGN.md, lifecycle rule 5), on a frozen clock.

Two vaults on one key store stand for two processes: ``shredder`` shreds, ``reader`` has the
subject's keys cached (``cache_ttl`` 60 s) and polls the channel at most every
``POLL_SHARE * propagation_interval`` of its own clock, only when about to use a cached key. The
listener is off here (``listen_url="off"``): tests/test_listen.py covers it, and
tests/test_propagation.py the whole with real processes and real clocks.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import ConfigurationError, KeyStoreError, SubjectShreddedError, Vault
from ccvault.keyring import Tombstone
from ccvault.keyring._channel import POLL_SHARE
from ccvault.keystore._schema import build_metadata
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import SHREDDED
from conftest import run_sql
from keyring_doubles import Clock, CountingStore
from sqla_models import Base, Customer

CTX = "customers.phone"
INV = build_metadata().tables["ccvault_invalidations"]
META = build_metadata().tables["ccvault_meta"]
STEP = POLL_SHARE * 1.0  # the reader's poll period at the default interval


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pair(kms: LocalKms, db_url: str, clock: Clock) -> Iterator[tuple[Vault, Vault]]:
    """(shredder, reader): the reader runs on the frozen clock, without a listener."""
    shredder = Vault(kms, db_url, listen_url="off")
    reader = Vault(kms, db_url, clock=clock, listen_url="off")
    yield shredder, reader
    reader.close()
    shredder.close()


def _rows(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(INV).order_by(INV.c.seq)))
    finally:
        engine.dispose()


def _warm(reader: Vault, subject: uuid.UUID) -> bytes:
    blob = reader.encrypt(subject, b"+1 555 0100", context=CTX)
    assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"  # the read key is cached
    return blob


# -- the channel's rows ------------------------------------------------------------------------


def test_a_shred_writes_one_row_in_its_transaction(pair: tuple[Vault, Vault], db_url: str) -> None:
    shredder, _ = pair
    a, b = uuid.uuid4(), uuid.uuid4()
    shredder.encrypt(a, b"x", context=CTX)
    shredder.shred(a)
    shredder.shred(a)  # a repeat changes nothing
    shredder.shred(b)  # a never-seen subject is fenced: a row too
    rows = _rows(db_url)
    assert [(r.seq, r.kind, r.period) for r in rows] == [(1, "shred", None), (2, "shred", None)]
    assert [bytes(r.ref) for r in rows] == [shredder.subject_ref(a), shredder.subject_ref(b)]
    assert all(math.isfinite(r.at) for r in rows)


def test_a_lost_counter_row_never_hands_out_a_seq_twice(
    pair: tuple[Vault, Vault], db_url: str
) -> None:
    """The counter row is where writers queue; the seq also never falls behind the table."""
    shredder, _ = pair
    shredder.shred(uuid.uuid4())
    run_sql(db_url, sa.delete(META).where(META.c.name == "invalidation_seq"))
    shredder.shred(uuid.uuid4())
    run_sql(db_url, sa.update(META).where(META.c.name == "invalidation_seq").values(value="x1"))
    shredder.shred(uuid.uuid4())
    assert [r.seq for r in _rows(db_url)] == [1, 2, 3]


def test_the_receipt_states_the_installations_bound(kms: LocalKms, db_url: str) -> None:
    """Never this process's interval, never NOTIFY's latency: the bound recorded at creation."""
    with Vault(kms, db_url, propagation_interval=2.0, listen_url="off") as creator:
        assert creator.propagation_bound == 2.0
    with Vault(kms, db_url, propagation_interval=0.25, listen_url="off") as vault:
        assert (vault.propagation_interval, vault.propagation_bound) == (0.25, 2.0)
        assert vault.shred(uuid.uuid4()).propagation_bound_seconds == 2.0


# -- the poll --------------------------------------------------------------------------------


def test_a_cached_key_is_used_until_the_next_poll_and_refused_after_it(
    pair: tuple[Vault, Vault], clock: Clock
) -> None:
    shredder, reader = pair
    customer = uuid.uuid4()
    blob = _warm(reader, customer)
    polls = reader._ring.invalidations.polls
    shredder.shred(customer)
    clock.t += STEP - 0.01
    # Within the period no poll runs: the cached key still serves (the bound allows it).
    assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"
    assert reader._ring.invalidations.polls == polls
    clock.t += 0.01
    with pytest.raises(SubjectShreddedError):
        reader.decrypt(blob, context=CTX)
    assert reader._ring.invalidations.polls == polls + 1
    with pytest.raises(SubjectShreddedError):
        reader.encrypt(customer, b"new", context=CTX)
    assert reader._ring.invalidations.polls == polls + 1  # one poll per period, not per use


ENTRY_POINTS: dict[str, Callable[[Vault, uuid.UUID, bytes], bool]] = {
    # each returns whether the subject's cached key is gone (it polled and evicted)
    "lookup": lambda v, s, blob: v._ring.lookup()(blob[:22]) is None,
    "keys": lambda v, s, blob: isinstance(v._ring.keys([blob[:22]])[blob[:22]], Tombstone),
    "key_for_write": lambda v, s, blob: _raises(lambda: v._ring.key_for_write(s, CTX)),
    "keys_for_write": lambda v, s, blob: v._ring.keys_for_write([s]) == {},
    "keys_for_rows": lambda v, s, blob: v._ring.keys_for_rows([s]) == [None],
    "warm": lambda v, s, blob: v.warm([s]) == 0,
}


def _raises(call: Callable[[], object]) -> bool:
    try:
        call()
    except SubjectShreddedError:
        return True
    return False


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_use_of_a_cached_key_checks_the_channel(
    kms: LocalKms, sqlite_url: str, clock: Clock, entry: str
) -> None:
    with (
        Vault(kms, sqlite_url, listen_url="off") as shredder,
        Vault(kms, sqlite_url, clock=clock, listen_url="off") as reader,
    ):
        customer = uuid.uuid4()
        blob = _warm(reader, customer)
        assert reader._ring.keys_for_write([customer])  # the write key is cached too
        polls = reader._ring.invalidations.polls
        shredder.shred(customer)
        clock.t += STEP
        assert ENTRY_POINTS[entry](reader, customer, blob)
        assert reader._ring.invalidations.polls == polls + 1


def test_the_read_path_polls_once_per_batch(kms: LocalKms, tmp_path: Path, clock: Clock) -> None:
    """The column types' read loop binds lookup() once per batch of rows: a subject shredded
    elsewhere reads SHREDDED from the first batch after the period, others still decrypt."""
    keys_url = f"sqlite:///{tmp_path / 'keys.db'}"
    with (
        Vault(kms, keys_url, listen_url="off") as shredder,
        Vault(kms, keys_url, clock=clock, listen_url="off") as reader,
    ):
        app = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        Base.metadata.create_all(app)
        reader.attach(app)
        with Session(app) as s:
            gone = Customer(name="Gone", phone="1")
            kept = Customer(name="Kept", phone="2")
            s.add_all([gone, kept])
            s.commit()
            gone_id = gone.id
        with Session(app) as s:
            assert sorted(c.name for c in s.scalars(sa.select(Customer))) == ["Gone", "Kept"]
        shredder.shred(gone_id)
        clock.t += STEP
        polls = reader._ring.invalidations.polls
        with Session(app) as s:
            names = {c.id: c.name for c in s.scalars(sa.select(Customer))}
        assert names[gone_id] is SHREDDED
        assert sorted(n for n in names.values() if n is not SHREDDED) == ["Kept"]
        assert reader._ring.invalidations.polls == polls + 1
        app.dispose()


def test_a_row_for_every_subject_drops_every_cached_key(
    pair: tuple[Vault, Vault], db_url: str, clock: Clock
) -> None:
    shredder, reader = pair
    subjects = [uuid.uuid4() for _ in range(3)]
    blobs = [_warm(reader, s) for s in subjects]
    assert len(reader._ring._read_keys) == 3
    store: SqlKeyStore = shredder._store  # type: ignore[assignment]
    assert store.invalidate("lockdown", None, None, 0.0) == 1
    clock.t += STEP
    assert reader.decrypt(blobs[0], context=CTX) == b"+1 555 0100"  # read again from the store
    assert len(reader._ring._read_keys) == 1  # the other two were dropped
    assert len(reader._ring._write_keys) == 0


def test_more_rows_than_one_poll_reads_drop_every_key(
    pair: tuple[Vault, Vault], db_url: str, clock: Clock
) -> None:
    _, reader = pair
    blob = _warm(reader, uuid.uuid4())
    reader._ring.lookup()  # the first poll: where the channel stands
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(INV),
            [
                {"seq": n, "kind": "shred", "ref": n.to_bytes(32, "big"), "period": None, "at": 0}
                for n in range(1, 1_501)
            ],
        )
    engine.dispose()
    clock.t += STEP
    assert reader._ring.lookup()(blob[:22]) is None  # dropped, though its ref is not listed
    assert reader._ring.invalidations.last_seq == 1_500
    assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"


# -- a key store that went backwards -----------------------------------------------------------


@pytest.mark.parametrize("how", ["rows deleted", "row replaced"])
def test_a_channel_that_went_backwards_drops_every_key_and_runs_the_hooks(
    pair: tuple[Vault, Vault],
    db_url: str,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """A restore under a running process: the last row this process saw is gone (the store's
    sequence is lower) or is another row (the restored store has written as many since)."""
    shredder, reader = pair
    victims = [uuid.uuid4() for _ in range(2)]
    for victim in victims:
        shredder.encrypt(victim, b"x", context=CTX)
    shredder.shred(victims[0])
    kept = uuid.uuid4()
    blob = _warm(reader, kept)
    shredder.shred(victims[1])
    clock.t += STEP
    reader.decrypt(blob, context=CTX)  # polls: sees seq 2
    assert reader._ring.invalidations.last_seq == 2
    restored: list[int] = []
    reader._ring.store_restored.add(lambda: restored.append(len(reader._ring._read_keys)))
    if how == "rows deleted":
        run_sql(db_url, sa.delete(INV).where(INV.c.seq == 2))
    else:
        run_sql(db_url, sa.update(INV).where(INV.c.seq == 2).values(at=INV.c.at + 1))
    caplog.set_level(logging.WARNING, logger="ccvault")
    clock.t += STEP
    assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"  # read again, from the store
    assert restored == [0]  # the hook ran after every key was dropped, before the read
    assert any("went backwards" in r.getMessage() for r in caplog.records)
    assert reader._ring.invalidations.last_seq == (1 if how == "rows deleted" else 2)
    clock.t += STEP
    reader.decrypt(blob, context=CTX)
    assert restored == [0]  # once per restore


def test_a_failing_store_restored_hook_fails_reads_until_it_succeeds(
    pair: tuple[Vault, Vault], db_url: str, clock: Clock
) -> None:
    shredder, reader = pair
    shredder.shred(uuid.uuid4())
    blob = _warm(reader, uuid.uuid4())
    failures = [RuntimeError("ledger unreachable")] * 2

    def replay() -> None:
        if failures:
            raise failures.pop()

    reader._ring.store_restored.add(replay)
    run_sql(db_url, sa.delete(INV))
    clock.t += STEP
    for _ in range(2):
        with pytest.raises(RuntimeError, match="ledger unreachable"):
            reader.decrypt(blob, context=CTX)
    assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"  # no clock step needed


# -- a key store that cannot be read -----------------------------------------------------------


class _Down:
    """The real store, except that the channel cannot be read while ``down``."""

    def __init__(self, inner: SqlKeyStore) -> None:
        self._inner = inner
        self.down = False

    def invalidations(self, *args: Any) -> Any:
        if self.down:
            raise KeyStoreError("the key store could not be read")
        return self._inner.invalidations(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_failing_poll_serves_cached_keys_until_cache_ttl(
    kms: LocalKms, sqlite_url: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _Down(SqlKeyStore(sqlite_url))
    with Vault(kms, store, clock=clock, cache_ttl=10, listen_url="off") as reader:  # type: ignore[arg-type]
        blob = _warm(reader, uuid.uuid4())
        caplog.set_level(logging.INFO, logger="ccvault")
        store.down = True
        for _ in range(5):  # five polls fail: one WARNING
            clock.t += STEP
            assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"
        warnings = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert [r.levelno for r in warnings] == [logging.WARNING]
        clock.t = clock.t + 10  # past cache_ttl: the key is no longer served from the cache
        assert reader._ring.lookup()(blob[:22]) is None
        store.down = False
        clock.t += STEP
        assert reader.decrypt(blob, context=CTX) == b"+1 555 0100"
        assert any("readable again" in r.getMessage() for r in caplog.records)
    store._inner.close()


def test_a_load_under_way_when_every_key_is_dropped_caches_nothing(
    pair: tuple[Vault, Vault], clock: Clock
) -> None:
    """A key read from the store before a `*` row was applied is returned to its reader but not
    cached: the next use reads the store again."""
    shredder, reader = pair
    customer = uuid.uuid4()
    blob = shredder.encrypt(customer, b"x", context=CTX)
    reader._ring.lookup()  # the first poll
    store: SqlKeyStore = shredder._store  # type: ignore[assignment]
    ring = reader._ring
    real = ring._store.value_keys  # type: ignore[attr-defined]

    def meanwhile(pairs: Any) -> Any:
        found = real(pairs)
        store.invalidate("lockdown", None, None, 0.0)
        ring.invalidations.poll(force=True)
        return found

    ring._store.value_keys = meanwhile  # type: ignore[attr-defined]
    assert reader.decrypt(blob, context=CTX) == b"x"
    ring._store.value_keys = real  # type: ignore[attr-defined]
    assert ring.lookup()(blob[:22]) is None


# -- the bound recorded in the key store ---------------------------------------------------------


def test_a_longer_interval_than_the_installations_bound_is_refused(
    kms: LocalKms, db_url: str
) -> None:
    Vault(kms, db_url, propagation_interval=1.5, listen_url="off").close()
    for readonly in (False, True):
        with pytest.raises(ConfigurationError) as caught:
            Vault(kms, db_url, propagation_interval=2, readonly=readonly)
        assert "propagation_interval (CCVAULT_PROPAGATION_INTERVAL_SECONDS) is 2 s" in str(
            caught.value
        )
        assert "bound of 1.5 s" in str(caught.value)
    for interval in (1.5, 0.1):
        with Vault(kms, db_url, propagation_interval=interval, listen_url="off") as vault:
            assert vault.propagation_bound == 1.5


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "records no propagation bound"), ("soon", "not a positive"), ("-1", "not a pos")],
)
def test_a_missing_or_damaged_bound_is_refused(
    kms: LocalKms, sqlite_url: str, value: str | None, match: str
) -> None:
    Vault(kms, sqlite_url, listen_url="off").close()
    name = META.c.name == "propagation_bound_seconds"
    run_sql(
        sqlite_url,
        sa.delete(META).where(name)
        if value is None
        else sa.update(META).where(name).values(value=value),
    )
    with pytest.raises(ConfigurationError, match=match):
        Vault(kms, sqlite_url)
    if value is None:
        Vault.upgrade_store(kms, sqlite_url)  # records it again
        with Vault(kms, sqlite_url, listen_url="off") as vault:
            assert vault.propagation_bound == 1.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"propagation_interval": 0}, "propagation_interval must be a finite number greater"),
        ({"propagation_interval": math.inf}, "propagation_interval must be a finite"),
        ({"propagation_interval": "1"}, "propagation_interval must be a number of seconds"),
        ({"listen_url": 5}, "listen_url must be"),
        ({"listen_url": "postgresql://u@h/db"}, "the key store is not on PostgreSQL"),
    ],
)
def test_bad_options_are_refused(
    kms: LocalKms, sqlite_url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Vault(kms, sqlite_url, **options)


def test_the_settings_reach_the_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kms: LocalKms
) -> None:
    from admin_cli import configure

    configure(tmp_path, monkeypatch, propagation_interval_seconds="0.5", listen_url="off")
    with Vault.from_settings() as vault:
        assert (vault.propagation_interval, vault.propagation_bound) == (0.5, 0.5)
        assert not vault._ring.invalidations.listening
    monkeypatch.setenv("CCVAULT_PROPAGATION_INTERVAL_SECONDS", "0")
    with pytest.raises(ConfigurationError, match="CCVAULT_PROPAGATION_INTERVAL_SECONDS"):
        Vault.from_settings()
    monkeypatch.setenv("CCVAULT_PROPAGATION_INTERVAL_SECONDS", "0.75")
    with pytest.raises(ConfigurationError, match=r"0\.75 s, longer than .* 0\.5 s"):
        Vault.from_settings()


def test_a_write_key_remembered_by_subject_expires_with_cache_ttl(
    kms: LocalKms, sqlite_url: str, clock: Clock
) -> None:
    """``encrypt`` finds a warm subject's write key by the subject itself, but no longer than the
    write-key cache keeps it: past ``cache_ttl`` the key store is read again."""
    store = CountingStore(SqlKeyStore(sqlite_url))
    with Vault(kms, store, clock=clock, cache_ttl=10, listen_url="off") as vault:  # type: ignore[arg-type]
        customer = uuid.uuid4()
        vault.encrypt(customer, b"x", context=CTX)
        reads = store.reads
        for _ in range(int(9.9 / STEP)):
            clock.t += STEP
            vault.encrypt(customer, b"x", context=CTX)
        assert store.reads == reads
        clock.t += 10
        vault.encrypt(customer, b"x", context=CTX)
        assert store.reads == reads + 1
    store._inner.close()
