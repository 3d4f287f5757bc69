"""The restore gap (issue 13 item 2; DESIGN.md lifecycle rule 3, as amended in docs/erasure.md,
'A process that was idle across the shreds'): a process that last saw the invalidation channel
at seq N, stayed idle while other processes shredded, and is then served a key store restored
from a backup taken at seq N sees the channel exactly as it last saw it. Nothing goes
backwards; only the comparison of the ledger's head with the store's ``ledger_applied_seq``
shows that the store is behind. The poll makes it every ``ledger_check_interval``.

* the idle process refuses the shredded subjects once the interval has passed, and the store
  has replayed (SQLite key store with a JSONL or a SQLite ledger; PostgreSQL restored with
  ``pg_dump`` and ``psql``); before that it serves them: the documented window;
* the comparison rides on the poll: no ledger read while the interval runs, one head read when
  it has passed, none without a ledger;
* a shred in flight elsewhere (its entry in the ledger, the store's transaction not committed)
  is not taken for a restore;
* an unreachable ledger at the comparison: one WARNING per outage, reads go on,
  ``ledger_unverified``; the ledger back, the comparison catches up;
* a read-only vault does not replay, reads the subjects as shredded, and does not react again
  to the same difference;
* ``ledger_check_interval`` / ``CCVAULT_LEDGER_CHECK_INTERVAL_SECONDS`` are checked.

Time is the vaults' injected clock: nothing sleeps.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from admin_cli import configure
from ccvault import ConfigurationError, SubjectShreddedError, Vault
from ccvault.erasure import LedgerSink, StoredEntry, TornWrite, ledger_from_url
from ccvault.kms import LocalKms
from conftest import _server_db
from ledgers import Raw
from vault_ledgers import (
    Blockable,
    applied_seq,
    blockable,
    dump_store,
    entries,
    restore,
    snapshot,
)

__all__ = ["blockable"]  # a fixture, for pytest

CTX = "customers.phone"
PHONE = b"+1 555 0100"
RESTORED = "was restored under this process"
UNCOMPARED = "could not be compared with the key store"


def _vault(kms: LocalKms, url: str, ledger: str | LedgerSink, **options: Any) -> Vault:
    return Vault(kms, url, ledger=ledger, listen_url="off", **options)


_applied = applied_seq


def _ledger(kind: str, tmp_path: Path) -> str:
    if kind == "jsonl":
        return f"file://{tmp_path / 'ledger.jsonl'}"
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


class Clock:
    """The vault's clock (wall and monotonic), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _installation(
    kms: LocalKms, url: str, ledger: str, *, shredded: int = 1
) -> tuple[uuid.UUID, bytes]:
    """A new installation whose channel has rows; customer X with one value."""
    x = uuid.uuid4()
    with _vault(kms, url, ledger, create=True) as setup:
        blob = setup.encrypt(x, PHONE, context=CTX)
        for _ in range(shredded):
            setup.shred(uuid.uuid4())
    return x, blob


def _shred_elsewhere(kms: LocalKms, url: str, ledger: str, subjects: Sequence[object]) -> None:
    with _vault(kms, url, ledger) as b:
        for subject in subjects:
            b.shred(subject)


# -- the gap, closed -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_an_idle_process_served_a_restored_store_refuses_after_the_check(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger(kind, tmp_path)
    x, blob = _installation(kms, url, ledger)
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock) as a:
        assert a.ledger_check_interval == 60.0
        assert a.decrypt(blob, context=CTX) == PHONE  # warm; the channel polled
        snapshot(url, tmp_path)  # the backup: the channel at the seq A last saw
        _shred_elsewhere(kms, url, ledger, [x, uuid.uuid4(), uuid.uuid4(), uuid.uuid4()])
        restore(url, tmp_path)  # X's keys are live again; the channel is as A last saw it
        assert _applied(url) == 1
        caplog.set_level(logging.INFO, logger="ccvault")
        clock.now += 2  # a poll is due; the channel shows nothing new
        assert a.decrypt(blob, context=CTX) == PHONE  # the window (docs/erasure.md)
        assert _count(caplog, RESTORED) == 0
        clock.now += 60  # past the default ledger_check_interval
        with pytest.raises(SubjectShreddedError):
            a.decrypt(blob, context=CTX)
        assert _count(caplog, RESTORED) == 1
        assert "4 entries replayed (4 subjects shredded again)" in caplog.text
        assert _applied(url) == entries(ledger, a.installation_id)[-1].seq == 5
        assert not a.ledger_unverified
        assert a.verify_erasures().ok


def test_the_check_drops_warm_keys_before_the_next_read(tmp_path: Path) -> None:
    """Keys cached long before the restore (cache_ttl far longer than the interval) are dropped
    by the check: the refusal does not wait for their expiry."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("jsonl", tmp_path)
    x, blob = _installation(kms, url, ledger)
    kept_customer = uuid.uuid4()
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock, cache_ttl=600, ledger_check_interval=30) as a:
        kept = a.encrypt(kept_customer, b"kept", context=CTX)
        assert a.decrypt(blob, context=CTX) == PHONE  # the first poll: at 1000
        snapshot(url, tmp_path)
        _shred_elsewhere(kms, url, ledger, [x])
        restore(url, tmp_path)
        clock.now = 1029.9  # a poll; the check is due at 1030
        assert a.decrypt(blob, context=CTX) == PHONE  # the window, from the warm cache
        clock.now = 1030.5  # the check is due, but it runs inside a poll: due at 1030.7
        assert a.decrypt(blob, context=CTX) == PHONE  # (interval + one poll interval)
        clock.now = 1030.7
        with pytest.raises(SubjectShreddedError):
            a.decrypt(blob, context=CTX)
        assert a.decrypt(kept, context=CTX) == b"kept"
        assert _applied(url) == 2


def test_a_fresh_open_or_a_shred_closes_the_window_at_once(tmp_path: Path) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("sqlite", tmp_path)
    x, blob = _installation(kms, url, ledger)
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock) as a:
        assert a.decrypt(blob, context=CTX) == PHONE
        snapshot(url, tmp_path)
        _shred_elsewhere(kms, url, ledger, [x])
        restore(url, tmp_path)
        _shred_elsewhere(kms, url, ledger, [uuid.uuid4()])  # finds the ledger ahead: replays
        clock.now += 2  # one poll interval, far below the check's
        with pytest.raises(SubjectShreddedError):  # the replay's invalidation rows
            a.decrypt(blob, context=CTX)
        assert a._ring.invalidations.probes == 0


def test_on_postgresql_restored_with_pg_dump_and_psql(pg_url: str, tmp_path: Path) -> None:
    ledgers = _server_db("postgresql")
    ledger = next(ledgers)
    try:
        kms = LocalKms.ephemeral()
        x, blob = _installation(kms, pg_url, ledger)
        others = [uuid.uuid4() for _ in range(3)]
        clock = Clock()
        with _vault(kms, pg_url, ledger, clock=clock, ledger_check_interval=10) as a:
            assert a.decrypt(blob, context=CTX) == PHONE
            snapshot(pg_url, tmp_path)
            _shred_elsewhere(kms, pg_url, ledger, [x, *others])
            restore(pg_url, tmp_path)
            clock.now += 2
            assert a.decrypt(blob, context=CTX) == PHONE  # the window
            clock.now += 10
            with pytest.raises(SubjectShreddedError):
                a.decrypt(blob, context=CTX)
            assert _applied(pg_url) == entries(ledger, a.installation_id)[-1].seq == 5
    finally:
        ledgers.close()


# -- what the check costs --------------------------------------------------------------------------


class CountingSink:
    """A ledger sink that counts the head reads (the check's one ledger call)."""

    def __init__(self, inner: LedgerSink) -> None:
        self.inner = inner
        self.heads = 0

    @property
    def location(self) -> str:
        return self.inner.location

    def head(self, installation_id: str) -> StoredEntry | None:
        self.heads += 1
        return self.inner.head(installation_id)

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        return self.inner.read(installation_id, after, limit)

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        return self.inner.append(installation_id, first_seq, entries)

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        return self.inner.torn(installation_id, repair=repair)

    def close(self) -> None:
        self.inner.close()


def test_the_check_rides_on_the_poll_and_reads_the_ledgers_head_once(tmp_path: Path) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("sqlite", tmp_path)
    _, blob = _installation(kms, url, ledger)
    sink = CountingSink(ledger_from_url(ledger))
    assert isinstance(sink, LedgerSink)
    clock = Clock()
    try:
        with _vault(kms, url, sink, clock=clock, ledger_check_interval=30) as a:
            channel = a._ring.invalidations
            sink.heads = 0  # the open's catch-up read it
            for _ in range(2_900):  # 29 s of reads, a poll every 0.8 s
                assert a.decrypt(blob, context=CTX) == PHONE
                clock.now += 0.01
            assert channel.polls > 30
            assert (sink.heads, channel.probes) == (0, 0)
            clock.now = 1030.0
            assert a.decrypt(blob, context=CTX) == PHONE
            assert (sink.heads, channel.probes) == (1, 1)
            for _ in range(50):  # within the next interval: nothing more
                clock.now += 0.5
                assert a.decrypt(blob, context=CTX) == PHONE
            assert (sink.heads, channel.probes) == (1, 1)
            clock.now = 1090.0  # idle for an hour of intervals: one check at the next read
            assert a.decrypt(blob, context=CTX) == PHONE
            assert (sink.heads, channel.probes) == (2, 2)
    finally:
        sink.close()


def test_without_a_ledger_nothing_is_checked(tmp_path: Path) -> None:
    kms = LocalKms.ephemeral()
    clock = Clock()
    with Vault(kms, f"sqlite:///{tmp_path / 'keys.db'}", listen_url="off", clock=clock) as vault:
        blob = vault.encrypt(uuid.uuid4(), PHONE, context=CTX)
        assert len(vault._ring.store_probes) == 0
        clock.now += 3600
        assert vault.decrypt(blob, context=CTX) == PHONE
        assert vault._ring.invalidations.probes == 0


def test_a_shred_in_flight_elsewhere_is_not_taken_for_a_restore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The check reads the store's applied seq, then the ledger's head: a shred elsewhere
    whose entry reached the ledger in between, its transaction not yet committed, shows the
    store one behind. The read-write vault confirms under the ``ledger_applied_seq`` lock
    (which that shred holds until it commits) and finds no restore."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("jsonl", tmp_path)
    _, blob = _installation(kms, url, ledger)
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock, ledger_check_interval=30) as a:
        assert a.decrypt(blob, context=CTX) == PHONE
        store = a._store
        real = store.ledger_applied
        store.ledger_applied = lambda: (real() or 0) - 1  # type: ignore[method-assign]
        caplog.set_level(logging.INFO, logger="ccvault")
        clock.now += 30
        try:
            assert a.decrypt(blob, context=CTX) == PHONE
        finally:
            store.ledger_applied = real  # type: ignore[method-assign]
        assert a._ring.invalidations.probes == 1
        assert _count(caplog, RESTORED) == 0
        assert "replayed" not in caplog.text
        assert not a.ledger_unverified


def test_other_threads_do_not_wait_for_the_check(tmp_path: Path) -> None:
    """The check runs in the thread whose poll found it due, outside the poll's lock: a slow
    ledger holds up that thread's read, not the other threads' polls and reads."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("jsonl", tmp_path)
    _, blob = _installation(kms, url, ledger)
    clock = Clock()
    entered, release = threading.Event(), threading.Event()

    def slow_probe() -> bool:
        entered.set()
        release.wait(60)
        return False

    with _vault(kms, url, ledger, clock=clock, ledger_check_interval=30) as a:
        assert a.decrypt(blob, context=CTX) == PHONE
        a._ring.store_probes.add(slow_probe)
        clock.now += 30
        results: list[bytes] = []
        slow = threading.Thread(target=lambda: results.append(a.decrypt(blob, context=CTX)))
        slow.start()
        try:
            assert entered.wait(60)
            polls = a._ring.invalidations.polls
            clock.now += 1  # a poll is due for this thread too
            assert a.decrypt(blob, context=CTX) == PHONE  # served while the check runs
            assert a._ring.invalidations.polls == polls + 1
            assert results == []
        finally:
            release.set()
            slow.join(60)
        assert results == [PHONE]
        assert a._ring.invalidations.probes == 1


# -- an unreachable ledger, a read-only vault ------------------------------------------------------


def test_an_unreachable_ledger_at_the_check_warns_once_and_reads_go_on(
    blockable: Blockable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    x, blob = _installation(kms, url, blockable.url)
    clock = Clock()
    with _vault(kms, url, blockable.url, clock=clock, ledger_check_interval=30) as a:
        assert a.decrypt(blob, context=CTX) == PHONE
        snapshot(url, tmp_path)
        _shred_elsewhere(kms, url, blockable.url, [x])
        restore(url, tmp_path)
        blockable.block(a)
        caplog.set_level(logging.INFO, logger="ccvault")
        try:
            for _ in range(3):  # three checks, one outage
                clock.now += 30
                assert a.decrypt(blob, context=CTX) == PHONE  # reads go on
                assert a.ledger_unverified
            assert a._ring.invalidations.probes == 3
            assert _count(caplog, UNCOMPARED) == 1
            assert caplog.records[-1].levelno == logging.WARNING
        finally:
            blockable.unblock()
        clock.now += 30
        with pytest.raises(SubjectShreddedError):
            a.decrypt(blob, context=CTX)
        assert "can be compared again" in caplog.text
        assert _count(caplog, RESTORED) == 1
        assert not a.ledger_unverified
        assert _applied(url) == 2


def test_the_ledger_back_without_a_restore_clears_ledger_unverified(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = Blockable("jsonl", tmp_path)
    _, blob = _installation(kms, url, ledger.url)
    clock = Clock()
    with _vault(kms, url, ledger.url, clock=clock, ledger_check_interval=30) as a:
        assert a.decrypt(blob, context=CTX) == PHONE
        ledger.block()
        caplog.set_level(logging.INFO, logger="ccvault")
        clock.now += 30
        assert a.decrypt(blob, context=CTX) == PHONE
        assert a.ledger_unverified
        ledger.unblock()
        clock.now += 30
        assert a.decrypt(blob, context=CTX) == PHONE
        assert not a.ledger_unverified  # caught up
        assert (_count(caplog, UNCOMPARED), _count(caplog, RESTORED)) == (1, 0)


def test_a_ledger_that_failed_a_check_at_open_is_not_compared_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A vault whose ledger failed a check at open serves reads, unverified (docs/erasure.md,
    'An unverified ledger'): the check does not turn that into failing reads 60 s later (its
    replay would fail the same check)."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("jsonl", tmp_path)
    x, blob = _installation(kms, url, ledger)
    snapshot(url, tmp_path)
    _shred_elsewhere(kms, url, ledger, [x, uuid.uuid4(), uuid.uuid4()])
    restore(url, tmp_path)
    raw = Raw(ledger)
    raw.edit(3, lambda doc: doc["record"].update(epoch_seq=99))  # seq 3 no longer verifies
    caplog.set_level(logging.INFO, logger="ccvault")
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock) as a:
        assert a.ledger_unverified
        assert "failed a check at open" in caplog.text
        assert a.decrypt(blob, context=CTX) == PHONE  # served, as documented
        clock.now += 60
        assert a.decrypt(blob, context=CTX) == PHONE
        assert a._ring.invalidations.probes == 1
        assert (_count(caplog, RESTORED), _count(caplog, UNCOMPARED)) == (0, 0)
        assert a.ledger_unverified
    assert _applied(url) == 1


def test_a_read_only_vault_reads_them_as_shredded_and_replays_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    ledger = _ledger("jsonl", tmp_path)
    x, blob = _installation(kms, url, ledger)
    clock = Clock()
    with _vault(kms, url, ledger, clock=clock, readonly=True, ledger_check_interval=30) as r:
        assert r.decrypt(blob, context=CTX) == PHONE
        assert not r.ledger_unverified
        snapshot(url, tmp_path)
        _shred_elsewhere(kms, url, ledger, [x])
        restore(url, tmp_path)
        restored = dump_store(url)
        caplog.set_level(logging.INFO, logger="ccvault")
        clock.now += 2
        assert r.decrypt(blob, context=CTX) == PHONE  # the window
        clock.now += 30
        with pytest.raises(SubjectShreddedError):
            r.decrypt(blob, context=CTX)
        assert r.ledger_unverified
        assert (_count(caplog, RESTORED), _count(caplog, "does not replay")) == (1, 1)
        clock.now += 30  # the same difference: compared, not acted on again
        with pytest.raises(SubjectShreddedError):
            r.decrypt(blob, context=CTX)
        assert r._ring.invalidations.probes == 2
        assert (_count(caplog, RESTORED), _count(caplog, "does not replay")) == (1, 1)
    assert dump_store(url) == restored  # nothing replayed
    assert _applied(url) == 1


# -- the setting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "ledger_check_interval must be a finite number greater than 0"),
        (-1.0, "ledger_check_interval must be a finite number greater than 0"),
        (math.inf, "ledger_check_interval must be a finite"),
        (math.nan, "ledger_check_interval must be a finite"),
        ("60", "ledger_check_interval must be a number of seconds"),
        (True, "ledger_check_interval must be a number of seconds"),
    ],
)
def test_bad_intervals_are_refused(value: object, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Vault(
            LocalKms.ephemeral(),
            f"sqlite:///{tmp_path / 'keys.db'}",
            ledger_check_interval=value,  # type: ignore[arg-type]
        )
    assert not (tmp_path / "keys.db").exists()  # refused before the store was touched


def test_the_setting_reaches_the_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        tmp_path,
        monkeypatch,
        ledger_url=_ledger("jsonl", tmp_path),
        ledger_check_interval_seconds="5",
        listen_url="off",
    )
    with Vault.from_settings(create=True) as vault:
        assert vault.ledger_check_interval == 5.0
        assert len(vault._ring.store_probes) == 1
    for bad in ("0", "inf", "nan", "soon"):
        monkeypatch.setenv("CCVAULT_LEDGER_CHECK_INTERVAL_SECONDS", bad)
        with pytest.raises(ConfigurationError, match="CCVAULT_LEDGER_CHECK_INTERVAL_SECONDS"):
            Vault.from_settings()
