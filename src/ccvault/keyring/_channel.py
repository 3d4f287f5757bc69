"""Owns this process's view of the key store's invalidation channel: when to poll, the last row
seen, the outage warning, the LISTEN accelerator, the store probes and the store-restored hooks.
Must not cache or evict keys itself (the key ring hands it what to do with a shredded ref and
with "everything"), nor know what a probe compares (the erasure ledger's link registers one).

DESIGN.md, lifecycle rule 5: every process polls the channel at most every
``propagation_interval`` seconds, only when about to use a cached key; on PostgreSQL a
notification makes the poll immediate, but the poll stays the guarantee. A channel whose last
row seen is gone or changed went *backwards*: the key store was restored under this process.
A process that was idle while others shredded, then served a store restored from a backup taken
at the row it last saw, finds the channel as it left it: the store probes catch that (at most
every ``ledger_check_interval``, inside a poll; docs/erasure.md, 'A process that was idle across
the shreds').
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Final

from ..errors import KeyStoreError
from ..keystore._protocol import KeyStore, Listening
from ..keystore._records import Invalidation, InvalidationKind
from ._hooks import Hooks
from ._options import Installation, VaultOptions

__all__ = [
    "POLL_SHARE",
    "Invalidations",
    "StoreProbe",
    "StoreProbes",
    "StoreRestored",
    "StoreRestoredHooks",
]

log = logging.getLogger("ccvault")

POLL_SHARE: Final = 0.8
"""Polls start every ``POLL_SHARE * propagation_interval``: the rest of the interval is left for
the poll's own round trip and the batch it guards, so that a shred committed just after a poll
began is still honoured within the interval."""

_LIMIT = 1000  # rows read by one poll; more than that since the last poll: every key is dropped
_NEVER = float("-inf")

StoreRestored = Callable[[], None]
"""A store-restored hook: called, before this process serves another read, when the poll finds
that the key store went backwards (restored from a backup under a running process). The ledger
replay plugs in here; a hook that raises makes reads raise until it succeeds."""


class StoreRestoredHooks(Hooks[StoreRestored]):
    """The registry of store-restored hooks, run in the order added."""

    __slots__ = ()


StoreProbe = Callable[[], bool]
"""A store probe: called by a poll at most every ``ledger_check_interval`` seconds (the vault's
setting), it returns True when the key store is behind something kept outside it, as a store
restored from a backup is (the ledger's link compares the ledger's head with the store's applied
seq). True makes this process drop every cached key and run the store-restored hooks before it
serves another read. A probe logs why it said True, and reports its own outages (it returns
False then): it must not raise for one, and what it raises fails the read that polled."""


class StoreProbes(Hooks[StoreProbe]):
    """The registry of store probes, run in the order added (none: no probe is ever due)."""

    __slots__ = ()


class Invalidations:
    """The poll of the invalidation channel and what it found.

    ``check()`` is the key ring's gate before it uses a cached key: one clock reading, and a
    poll when the last one started ``POLL_SHARE * propagation_interval`` ago or more (or a
    notification made one due). A poll reads the rows after the last one seen and calls
    ``evict_refs`` with the refs they name, or ``evict_all`` for a row naming every subject,
    for more rows than one poll reads, and for a store that went backwards (then the
    store-restored hooks run). A poll that fails (the key store is down) is logged at WARNING
    once per outage; cached keys keep serving until their own ``cache_ttl`` expiry.

    A poll that read the channel also runs the store probes when ``ledger_check_interval``
    seconds have passed since they last ran (a second deadline, read only inside the poll: the
    check before each use of a cached key stays one clock reading), in the polling thread but
    outside the poll's lock. A probe that says the store is behind is a restore, handled as one
    that went backwards. While the store-restored hooks run, every check waits for them.
    """

    def __init__(
        self,
        store: KeyStore,
        installation: Installation,
        options: VaultOptions,
        *,
        evict_refs: Callable[[set[bytes]], None],
        evict_all: Callable[[], None],
        evict_periods: Callable[[set[bytes] | None], None],
        evict_derived: Callable[[set[bytes]], None],
    ) -> None:
        self._store = store
        self._installation = installation
        self._monotonic = options.monotonic
        self._period = options.propagation_interval * POLL_SHARE
        self._probe_period = options.ledger_check_interval
        self._probe_next = _NEVER  # set by the first poll, which follows the vault's open
        self._evict_refs = evict_refs
        self._evict_all = evict_all
        self._evict_periods = evict_periods
        self._evict_derived = evict_derived
        # The clock reading from which check() polls (_NEVER: the next check). Public for the
        # single-value paths, which compare their own clock reading with it and call check()
        # only when it is due: one call fewer on every use of a cached key.
        self.next_poll = _NEVER  # the first use polls: it records where the channel stands
        self._seen: Invalidation | None = None
        self._started = False
        self._failing = False
        self._restore_pending = False
        self._lock = threading.Lock()
        self._listener: Listening | None = None
        self.store_restored = StoreRestoredHooks()
        self.store_probes = StoreProbes()
        self.polls = 0  # polls that read the channel (for tests and figures)
        self.probes = 0  # times the store probes ran (for tests and figures)

    @property
    def last_seq(self) -> int:
        """The seq of the last row this process has seen (0: none)."""
        return 0 if self._seen is None else self._seen.seq

    def check(self) -> float:
        """Poll if one is due (the key ring calls this before it uses a cached key); returns
        the clock's reading after it (the caller's "now" for cache deadlines)."""
        now = self._monotonic()
        if now >= self.next_poll:
            self.poll()
            return self._monotonic()
        return now

    def due(self) -> None:
        """Make the next :meth:`check` poll, whatever the time (a notification arrived)."""
        self.next_poll = _NEVER

    def poll(self, *, force: bool = False) -> None:
        """Read the channel from the last row seen and act on what changed; then run the store
        probes if theirs is due. Without ``force`` a poll that another thread ran meanwhile is
        not repeated."""
        with self._lock:
            if not self._poll(force):
                return
        self._probe()

    def _poll(self, force: bool) -> bool:
        """The poll, under the lock; returns whether the store probes are due (and claims
        them: their deadline moves now, so one thread runs them)."""
        start = self._monotonic()
        if self._restore_pending:
            self.on_store_restored()
        if not force and start < self.next_poll:
            return False
        try:
            if self._started:
                self._apply(self._store.invalidations(self.last_seq, _LIMIT))
            else:
                # The first poll of this process: nothing is cached before it (every cache
                # fill comes after a check), so it only records where the channel stands.
                # The vault's open has just compared the store with the ledger: the first
                # probe is one interval away.
                self._seen = self._store.latest_invalidation()
                self._started = True
                self._probe_next = start + self._probe_period
        except KeyStoreError as exc:
            self.next_poll = start + self._period
            if not self._failing:
                self._failing = True
                log.warning(
                    "the key store's invalidation channel cannot be read (%s): this "
                    "process keeps serving its cached keys until their cache_ttl expiry, "
                    "and shreds made elsewhere meanwhile reach it only then",
                    exc,
                )
            return False
        self.next_poll = start + self._period
        self.polls += 1
        if self._failing:
            self._failing = False
            log.info("the key store's invalidation channel is readable again")
        if self._restore_pending:
            self.on_store_restored()
            return False
        if start < self._probe_next or not len(self.store_probes):
            return False
        self._probe_next = start + self._probe_period
        return True

    def _probe(self) -> None:
        """Run the store probes (their deadline passed and this thread claimed them), outside
        the poll's lock: the other threads' polls and reads do not wait for the ledger. One
        that says the store is behind is a restore: every cached key is dropped and the
        store-restored hooks run, under the lock, before this thread serves its read; from
        then on every check waits for them. A probe that raises fails this read only (the
        deadline moved already)."""
        self.probes += 1
        if any(probe() for probe in list(self.store_probes)):
            with self._lock:
                self._evict_all()
                self._restore_pending = True
                self.on_store_restored()

    def _apply(self, rows: list[Invalidation]) -> None:
        """Act on the rows from the last one seen on (one statement read them)."""
        seen = self._seen
        if seen is not None and (not rows or rows[0] != seen):
            self._restored(seen, self._store.latest_invalidation())
            return
        new = rows[1:] if seen is not None else rows
        if not new:
            return
        if len(rows) >= _LIMIT:  # more rows than one poll reads: drop everything, go to the end
            latest = self._store.latest_invalidation()
            self._evict_all()
            self._seen = latest
            return
        expiries = [row for row in new if row.kind == InvalidationKind.EXPIRY]
        shreds = [row for row in new if row.kind != InvalidationKind.EXPIRY] if expiries else new
        if any(row.ref is None for row in shreds):
            self._evict_all()
        else:
            if shreds:
                self._evict_refs({row.ref for row in shreds if row.ref is not None})
            if expiries:
                # a period destroyed: its keys and outcomes, in every subject's cache; a held
                # subject released (its ref, no period): that subject's period keys; a row
                # naming neither (``*``): every period's
                periods = {row.period for row in expiries if row.period is not None}
                refs = {row.ref for row in expiries if row.period is None and row.ref is not None}
                every = any(row.period is None and row.ref is None for row in expiries)
                if every:
                    self._evict_periods(None)
                else:
                    if periods:
                        self._evict_periods(periods)
                    if refs:
                        self._evict_derived(refs)
        self._seen = new[-1]

    def _restored(self, seen: Invalidation, latest: Invalidation | None) -> None:
        log.warning(
            "the key store's invalidation channel went backwards (this process had seen seq "
            "%d; the store's latest is %s): the key store was restored under a running "
            "process. Every cached key is dropped",
            seen.seq,
            "none" if latest is None else latest.seq,
        )
        self._evict_all()
        self._seen = latest
        self._restore_pending = True  # the hooks run once the poll is done

    def on_store_restored(self) -> None:
        """What this process does once its key store was found restored under it, after its
        cached keys were dropped and before it serves another read: the registered
        store-restored hooks, in order (the ledger replay of DESIGN.md rule 3 is one). A hook
        that raises fails the read that polled, and every check runs the hooks again until they
        all succeed. Called with the poll's lock held."""
        # Meanwhile every check polls, so waits on the lock; a hook that raises leaves it so:
        # the next check runs the hooks again.
        next_poll, self.next_poll = self.next_poll, _NEVER
        for hook in self.store_restored:
            hook()
        self._restore_pending = False
        self.next_poll = next_poll
        # The hooks brought the store up to date: the next probe is one interval away.
        self._probe_next = self._monotonic() + self._probe_period

    # -- the LISTEN accelerator ------------------------------------------------------------------

    def listen(self, url: str | None) -> None:
        """Start the key store's listener, if it has one (PostgreSQL); ``url`` "off": none."""
        if url is not None and url.strip().lower() == "off":
            return
        me = weakref.ref(self)

        def notified(can_poll: bool) -> None:
            channel = me()  # the listener never keeps a vault alive
            if channel is not None:
                channel.notified(can_poll)

        self._listener = self._store.listen(self._installation.id, notified, url=url)
        if self._listener is not None:
            # Collected without close(): stop it. At interpreter exit the daemon thread simply
            # ends with the process.
            weakref.finalize(self, self._listener.stop).atexit = False

    def notified(self, can_poll: bool) -> None:
        """The listener saw a new row (or reconnected): poll now where this thread may read
        the store, else make the next check poll."""
        if can_poll:
            self.poll(force=True)
        else:
            self.due()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        """Stop the listener (the poll needs nothing closed)."""
        if self._listener is not None:
            self._listener.stop()
