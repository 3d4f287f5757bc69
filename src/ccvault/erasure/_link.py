"""Owns the vault's link to its ledger: opening it, the ``strict`` and ``best-effort`` modes,
the ledger-first step of every shred (with the override entry of a held subject's), of every
legal hold and release and of every retention report, catching the key store up (at open, after
a restore, before a shred),
the periodic check that the store is not behind the ledger (the store probe the invalidation
poll runs), ``ledger_unverified`` and the guard of the operations that need a verified ledger.
Must not destroy keys itself (the key store's shred does), judge entries (the journal does) nor
decide when to check (the poll does).

DESIGN.md, lifecycle rule 3, with its trigger amended in docs/erasure.md ('A process that was
idle across the shreds'). A vault with no ledger configured records each receipt as a
``legacy`` erasure and refuses to shred in a key store that records a ledger. The shred's
ledger step holds the failpoints ``before-intent`` and ``after-intent`` (ccvault/_failpoints.py,
a test hook; docs/erasure.md, 'Crash safety').
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, Literal, TypeVar

from .._failpoints import failpoint
from .._secret import SecretKey
from ..audit._receipt import RECEIPT_FORMAT, ErasureReceipt
from ..crypto._primitives import ed25519_public_key
from ..errors import (
    ConfigurationError,
    KeyStoreError,
    LedgerIntegrityError,
    LedgerUnavailableError,
)
from ..keyring import Heads, Installation, VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import ErasureOrigin
from ..keystore._sql import SqlKeyStore
from ._hold_records import HoldOverrideRecord, apply_hold_record
from ._journal import Journal, JournalMoved
from ._ledger import LedgerSink, ledger_from_url
from ._ledger_sql import SqlLedger
from ._reconcile import CompletionDraft, Reconciler, ReportApplier, receipt_row
from ._records import CompletionRecord, Record, SignedRecord
from ._status import ErasureCheck, ErasureStatus, Reconciliation

__all__ = ["MODES", "LedgerLink", "LedgerMode", "check_new_installation"]

log = logging.getLogger("ccvault")

LedgerMode = Literal["strict", "best-effort"]
MODES: Final = ("strict", "best-effort")
_ROUNDS: Final = 20  # catch-up rounds that may each find another process moved the ledger
_MOVES: Final = 5  # shreds that find the ledger moved (caught up each time) before giving up
T = TypeVar("T")


_PROBE_FAILURES: Final = (LedgerUnavailableError, LedgerIntegrityError, KeyStoreError)


def _foreign(exc: LedgerIntegrityError) -> bool:
    return any(getattr(p, "kind", None) == "foreign" for p in exc.problems)


class LedgerLink:
    """The ledger of one vault (or none); see the module docstring."""

    def __init__(
        self,
        store: KeyStore,
        installation: Installation,
        options: VaultOptions,
        heads: Heads,
        *,
        seed: SecretKey,
        ledger: LedgerSink | str | None,
        mode: str,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError("ledger_mode must be 'strict' or 'best-effort'")
        if ledger is not None and not isinstance(ledger, str | LedgerSink):
            raise ConfigurationError("ledger must be a LedgerSink, a ledger URL (str) or None")
        self._store = store
        self._id = installation.id
        self._options = options
        self._seed = seed
        self._source = ledger
        self._mode = mode
        self._sink: LedgerSink | None = ledger if isinstance(ledger, LedgerSink) else None
        self._journal: Journal | None = None
        self._unverified = False
        self._probe_failing = False  # the store probe's outage (one WARNING per outage)
        self._check_failed = False  # the ledger failed a check at open: no probe until fixed
        self._covered: tuple[int, int] | None = None  # read-only: the (applied, head) compared
        self._lock = threading.RLock()
        self._heads = heads
        self._reconciler = Reconciler(
            store, installation.id, ed25519_public_key(seed.reveal()), heads.seal, options.now
        )

    @property
    def configured(self) -> bool:
        return self._source is not None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def unverified(self) -> bool:
        """True while this vault has not brought its key store and its ledger into agreement
        (the ledger was unreachable or failed a check, or the store records a ledger this vault
        has none of); cleared by the next catch-up that succeeds."""
        return self._unverified

    def close(self) -> None:
        if isinstance(self._source, str) and self._sink is not None:
            self._sink.close()

    # -- opening -----------------------------------------------------------------------------------

    def open(self) -> None:
        """At the vault's open: connect and catch the store up (read-only: compare only).
        Unreachable or failing a check: the vault opens, logs ERROR and reports
        :attr:`unverified`; a ledger of another installation is refused (raised)."""
        if not self.configured:
            if self._store.ledger_applied() is not None:
                self._unverified = True
                level = logging.WARNING if self._options.readonly else logging.ERROR
                log.log(
                    level,
                    "the key store records an erasure ledger but this vault has none "
                    "configured (CCVAULT_LEDGER_URL): it cannot replay erasures after a restore "
                    "and refuses to shred (docs/operations.md, 'Configuring the erasure ledger')",
                )
            return
        try:
            self._connect()
            if self._options.readonly:
                self._compare()
            else:
                self.catch_up()
        except LedgerIntegrityError as exc:
            if _foreign(exc):
                raise
            self._failed("failed a check", exc)
        except LedgerUnavailableError as exc:
            self._failed("could not be reached", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self._unverified = True
        self._probe_failing = True  # the probe reports the ledger's return, not this outage
        self._check_failed = isinstance(exc, LedgerIntegrityError)
        log.error(
            "the erasure ledger %s at open: %s. The vault serves reads, but erasures made "
            "since the key store's backup may not be replayed yet (ledger_unverified); "
            "destroy_epochs refuses until `ccvault reconcile-erasures` succeeds",
            what,
            " ".join(str(exc).split()),
        )

    def _open_sink(self) -> LedgerSink:
        if self._sink is None:
            assert isinstance(self._source, str)  # configured, and not a sink: a URL
            sink = ledger_from_url(self._source)
            _refuse_same_file(sink, self._store)
            self._sink = sink
        return self._sink

    def _connect(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(
                self._open_sink(),
                self._id,
                self._seed,
                create=not self._options.readonly,
            )
        return self._journal

    def _compare(self) -> None:
        """Read-only: no replay (DESIGN.md rule 2). Refs the ledger says are shredded and the
        store does not apply yet read as shredded in this process."""
        journal = self._connect()
        applied = self._store.ledger_applied()
        tip = journal.tip()
        head = -1 if tip is None else tip.seq
        start = -1 if applied is None else applied
        self._unverified = head != start
        if head > start:
            refs = {
                bytes.fromhex(str(e.record.get("subject_ref", "")))
                for e in journal.entries(after=start)
                if e.kind == RECEIPT_FORMAT
            }
            self._heads.treat_as_shredded(refs)
            log.error(
                "the key store has applied the erasure ledger up to seq %d, the ledger is at "
                "seq %d: this read-only vault does not replay, and reads the %d subjects of the "
                "entries after it as shredded. A read-write vault replays them at open",
                start,
                head,
                len(refs),
            )
        elif head < start:
            log.error(
                "the erasure ledger is behind the key store (seq %d < %d): a read-write vault "
                "repairs it (`ccvault reconcile-erasures`)",
                head,
                start,
            )
        self._covered = (start, head)  # what the probe need not report again
        self._check_failed = False

    # -- catching up -------------------------------------------------------------------------------

    def catch_up(self) -> Reconciliation:
        """Replay what the store has not applied, repair a ledger behind it, import the store's
        receipts when the ledger is new to it, and append the outbox. Clears :attr:`unverified`."""
        with self._lock:
            journal = self._connect()
            total = Reconciliation()
            for _ in range(_ROUNDS):
                try:
                    total += self._round(journal)
                    break
                except JournalMoved:
                    continue  # another process moved the store or the ledger: look again
            else:
                raise LedgerUnavailableError(
                    f"the ledger at {journal.location} and the key store kept moving while "
                    "this vault caught up",
                    location=journal.location,
                )
            self._unverified = False
            self._check_failed = False
        if total.replayed or total.imported or total.repaired or total.flushed:
            log.warning(
                "the key store caught up with the erasure ledger: %d entries replayed (%d "
                "subjects shredded again), %d receipts imported, %d repaired, %d flushed",
                total.replayed,
                total.shredded,
                total.imported,
                total.repaired,
                total.flushed,
            )
        return total

    def _round(self, journal: Journal) -> Reconciliation:
        applied = self._store.ledger_applied()
        tip = journal.tip()
        if tip is None:  # emptied under a running vault: a new genesis, then the repair
            self._journal = None
            journal = self._connect()
            tip = journal.tip()
        head = -1 if tip is None else tip.seq
        total = Reconciliation()
        if applied is None or applied < 0:
            total += self._reconciler.replay(journal, -1)
            total += self._reconciler.repair(journal, "genesis-import")
        elif head > applied:
            total += self._reconciler.replay(journal, applied)
        elif head < applied:
            log.error(
                "the erasure ledger at %s is behind the key store (its last entry is seq %d, "
                "the store applied seq %d): it lost entries (restored from an older copy, or "
                "cut off). Re-adding the store's receipts after a signed repair entry",
                journal.location,
                head,
                applied,
            )
            self._journal = None  # this journal has seen the lost seqs: a fresh one
            journal = self._connect()
            total += self._reconciler.repair(journal, "ledger-behind")
        return total + self._reconciler.flush(journal)

    def reconcile(self) -> Reconciliation:
        """:meth:`catch_up`, then shred again every subject a ledger receipt names that the
        store holds as live, re-add every receipt the store holds and the ledger lacks, then
        :meth:`check`, cutting a torn write from the ledger's end (a crash mid-line, which the
        check reports ``repaired``)."""
        self._options.writable("reconcile the key store with the erasure ledger")
        self.require_configured("reconcile_erasures")
        with self._lock:
            total = self.catch_up()
            total += self._reconciler.reapply(self._connect())
            for _ in range(_ROUNDS):
                try:
                    total += self._reconciler.repair(self._connect(), "ledger-behind")
                    break
                except JournalMoved:
                    total += self.catch_up()
            check = self._reconciler.check(self._connect(), repair_torn=True)
            return total + Reconciliation(check=check)

    def check(self) -> ErasureCheck:
        self.require_configured("verify_erasures")
        return self._reconciler.check(self._connect())

    def require_configured(self, operation: str) -> None:
        if not self.configured:
            raise ConfigurationError(
                f"{operation} needs an erasure ledger: configure ledger= (CCVAULT_LEDGER_URL)"
            )

    def on_store_restored(self) -> None:
        """The store-restored hook: replay before the next read (raising keeps reads refused
        until it succeeds: the ledger must be reachable to know what the restore undid)."""
        if not self.configured:
            if self._store.ledger_applied() is not None:
                log.error(
                    "the key store was restored under this process and records an erasure "
                    "ledger, which this vault has none of: erasures made since the backup are "
                    "not replayed here"
                )
            return
        self._unverified = True
        if self._options.readonly:
            self._compare()
        else:
            self.catch_up()

    # -- the store probe: a restore the invalidation channel does not show ------------------------

    def store_behind(self) -> bool:
        """The store probe the invalidation poll runs every ``ledger_check_interval``: whether
        the key store has applied less of the ledger than the ledger holds (restored under this
        process from a backup: docs/erasure.md, 'A process that was idle across the shreds').
        True makes the poll drop every cached key and run :meth:`on_store_restored` before the
        next read. Costs one key-store read and the ledger's head (SQL: one SELECT of the head
        row and one of its entry; JSONL: the file's last block; S3: a few HEADs from the last
        seq seen, one LIST, one GET) and one signature check.

        A read-write vault confirms a store behind under the key store's ``ledger_applied_seq``
        lock, so a shred in flight elsewhere (its entry in the ledger, its transaction not yet
        committed) is not taken for a restore. A read-only vault, which never replays, answers
        True only when the store or the ledger moved since it last compared them. A ledger or
        key store that cannot be read is logged at WARNING once per outage, sets
        :attr:`unverified`, and answers False: reads go on. A ledger that failed a check at open
        (logged at ERROR then; the vault serves reads, as documented for an unverified ledger)
        is not compared until a catch-up succeeds (a shred, ``reconcile_erasures``): the
        replay a True would start would fail the same check, and every read with it."""
        if not self.configured or self._check_failed:
            return False
        with self._lock:
            try:
                journal = self._connect()
                start, head = self._applied(), self._head(journal)
                if head > start:  # confirm: read the store again after the ledger
                    start = self._applied(locked=not self._options.readonly)
                behind = head > start and not self._known(start, head)
                if not behind and self._probe_failing and self._unverified:
                    if self._options.readonly:
                        self._compare()
                    else:
                        self.catch_up()
            except _PROBE_FAILURES as exc:
                self._probe_failed(exc)
                return False
            if self._probe_failing:
                self._probe_failing = False
                log.info("the erasure ledger and the key store can be compared again")
        if behind:
            log.warning(
                "the key store has applied the erasure ledger up to seq %d, the ledger is at "
                "seq %d: the key store was restored under this process (or a shred elsewhere "
                "stopped between the ledger and the store). Every cached key is dropped and %s",
                start,
                head,
                "the entries after it read as shredded"
                if self._options.readonly
                else "the ledger is replayed before the next read",
            )
        return behind

    def _applied(self, *, locked: bool = False) -> int:
        if locked:
            applied = self._store.journal_transaction(lambda txn: txn.applied)
        else:
            applied = self._store.ledger_applied()
        return -1 if applied is None else applied

    @staticmethod
    def _head(journal: Journal) -> int:
        tip = journal.tip()
        return -1 if tip is None else tip.seq

    def _known(self, start: int, head: int) -> bool:
        """Read-only: whether the last :meth:`_compare` already read every entry in
        (``start``, ``head``] as shredded."""
        covered = self._covered
        return (
            self._options.readonly
            and covered is not None
            and covered[0] <= start
            and head <= covered[1]
        )

    def _probe_failed(self, exc: Exception) -> None:
        self._unverified = True
        if self._probe_failing:
            return
        self._probe_failing = True
        log.warning(
            "the erasure ledger could not be compared with the key store (%s): this process "
            "goes on serving reads, but a key store restored under it is not noticed until the "
            "ledger can be read again (ledger_unverified)",
            " ".join(str(exc).split()),
        )

    # -- the guard ---------------------------------------------------------------------------------

    def require_verified_ledger(self, operation: str) -> None:
        """The one guard of the operations that must not run while the ledger is unverified
        (``destroy_epochs``, ``complete_erasures``, ``enforce_retention``):
        it tries to catch up first, and raises :class:`LedgerUnavailableError` if it cannot."""
        if not self._unverified:
            return
        if not self.configured:
            raise ConfigurationError(
                f"{operation} refuses to run: the key store records an erasure ledger and this "
                "vault has none configured (CCVAULT_LEDGER_URL)"
            )
        try:
            self.catch_up()
        except (LedgerUnavailableError, LedgerIntegrityError) as exc:
            raise LedgerUnavailableError(
                f"{operation} refuses to run while the erasure ledger is unverified: "
                f"{' '.join(str(exc).split())}",
                location=getattr(exc, "location", None),
            ) from exc

    # -- the shred's ledger-first step -------------------------------------------------------------

    def before_shred(self) -> None:
        """Catch up first when unverified: strict mode raises if the ledger is unreachable
        (nothing is destroyed); best-effort goes on (the receipt will wait in the outbox)."""
        if not self.configured or not self._unverified:
            return
        try:
            self.catch_up()
        except LedgerUnavailableError:
            if self._mode == "strict":
                raise

    def journal_receipts(
        self,
        txn: JournalTxn,
        receipts: Sequence[ErasureReceipt],
        overrides: Mapping[str, HoldOverrideRecord] | None = None,
    ) -> None:
        """The shred's journal step: inside the shred's key-store transaction, after the keys
        are destroyed and before the commit, one append of ``receipts`` (one for ``shred``, a
        batch's for ``shred_many``) after the outbox, in order, each right after its hold
        override (``overrides``, by receipt id), at most 500 entries per sink write; or,
        best-effort with the ledger unreachable, all of them queued in the outbox."""
        overrides = overrides or {}
        records: list[Record] = []
        for r in receipts:
            if r.receipt_id in overrides:
                records.append(overrides[r.receipt_id])
            records.append(r)
        if not self.configured:
            if txn.applied is not None or overrides:
                raise ConfigurationError(
                    "the key store records an erasure ledger and this vault has none "
                    "configured (CCVAULT_LEDGER_URL): a shred here would destroy keys with no "
                    "ledger entry, so it refuses (nothing was destroyed)"
                )
            txn.record_erasures([receipt_row(r, ErasureOrigin.LEGACY, None) for r in receipts])
            return
        try:
            journal = self._journal
            if journal is None:
                raise LedgerUnavailableError(
                    "the erasure ledger could not be reached when the vault opened"
                )
            failpoint("before-intent")
            self._reconciler.append(txn, journal, records)
            failpoint("after-intent")
        except LedgerUnavailableError as exc:
            if self._mode == "strict":
                raise
            now = self._options.now()
            for record in records:
                if isinstance(record, HoldOverrideRecord):
                    signed = record.sign(self._seed)
                    txn.enqueue(signed.format, record.receipt_id, signed.model_dump_json(), now)
                    apply_hold_record(txn, signed, None)
                else:
                    assert isinstance(record, ErasureReceipt)
                    txn.enqueue(RECEIPT_FORMAT, record.receipt_id, record.model_dump_json(), now)
            txn.record_erasures([receipt_row(r, ErasureOrigin.OUTBOX, None) for r in receipts])
            self._unverified = True
            which = (
                f"subject ref {receipts[0].subject_ref[:16]} is shredded but its receipt "
                f"{receipts[0].receipt_id} is"
                if len(receipts) == 1
                else f"{len(receipts)} subjects are shredded but their receipts are"
            )
            log.warning(
                "%s not in the erasure ledger yet (ledger_mode='best-effort'; %s): waiting in the "
                "key store's outbox until the next shred, open or reconcile appends them",
                which,
                " ".join(str(exc).split()),
            )

    def journal_entries(self, operation: str, step: Callable[[JournalTxn, Journal], T]) -> T:
        """Ledger first for the entries that are not a shred's (a hold, a release): ``step``
        runs in one key-store journal transaction (the ``ledger_applied_seq`` lock) with the
        journal, appends its records (:meth:`append`) and writes what follows from them; retried
        after a catch-up when the ledger moved. Strict whatever the ``ledger_mode``: an
        unreachable ledger raises :class:`LedgerUnavailableError` and nothing is recorded (such
        an entry is no emergency that must go on without the ledger). ConfigurationError
        without a ledger, or in a read-only vault."""
        self._options.writable(operation)
        self.require_configured(operation)
        with self._lock:
            if self._unverified or self._journal is None:
                self.catch_up()  # raises when the ledger cannot be reached

        def attempt() -> T:
            journal = self._connect()
            return self._store.journal_transaction(lambda txn: step(txn, journal))

        return self.ledger_first(attempt)

    def set_report_applier(self, apply: ReportApplier) -> None:
        """How the replay applies a retention report (the vault's enforcer; before :meth:`open`,
        which replays)."""
        self._reconciler.report_applier = apply

    def journal_run(self, step: Callable[[JournalTxn, Journal], T]) -> T:
        """Run ``step`` in one key-store journal transaction (the ``ledger_applied_seq`` lock)
        with the journal, caught up and retried when the ledger moved past the store (a
        restore, another process's crash after its append): the retention enforcer's batches.
        The caller has checked the ledger (:meth:`require_verified_ledger`)."""

        def attempt() -> T:
            journal = self._connect()
            return self._store.journal_transaction(lambda txn: step(txn, journal))

        return self.ledger_first(attempt)

    def append_or_queue(
        self, txn: JournalTxn, journal: Journal, records: Sequence[SignedRecord], what: str
    ) -> int | None:
        """Ledger first for records that destroy (a retention report): appended after the
        outbox in ``txn``, before anything it destroys is committed; returns the seq of the last
        one. An unreachable ledger raises :class:`LedgerUnavailableError` in ``strict`` mode
        (the transaction rolls back, nothing is destroyed) and, in ``best-effort`` mode, queues
        them signed in the key store's outbox (returns None; the next shred, open, reconcile or
        enforcement appends them) and logs a WARNING naming ``what``."""
        try:
            self._reconciler.append(txn, journal, records)
        except LedgerUnavailableError as exc:
            if self._mode == "strict":
                raise
            now = self._options.now()
            for record in records:
                signed = record.sign(self._seed)
                txn.enqueue(signed.format, None, signed.model_dump_json(), now)
            self._unverified = True
            log.warning(
                "%s: its entry is not in the erasure ledger yet (ledger_mode='best-effort'; %s): "
                "waiting in the key store's outbox until the next shred, open, reconcile or "
                "enforcement appends it",
                what,
                " ".join(str(exc).split()),
            )
            return None
        return txn.applied

    def append(self, txn: JournalTxn, journal: Journal, records: Sequence[Record]) -> None:
        """Append ``records`` after the outbox in ``txn`` (the step of :meth:`journal_entries`)
        and record where they went; JournalMoved when the ledger is not where the store says."""
        self._reconciler.append(txn, journal, records)

    def ledger_first(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` (a key-store transaction whose journal step appends to the ledger);
        when the ledger has moved past the store (another process crashed after its append, or
        a restore), catch up and run it again: the replay may shred subjects of the attempt
        with the ledger's receipts, which the next attempt then finds. LedgerUnavailableError
        when the ledger keeps moving (nothing was destroyed by the attempts)."""
        for _ in range(_MOVES):
            try:
                return attempt()
            except JournalMoved:
                self.catch_up()
        raise LedgerUnavailableError(
            "the erasure ledger kept moving past the key store during a shred: nothing was "
            "destroyed by this call; retry it"
        )

    # -- completion ------------------------------------------------------------------------------

    def complete(
        self, drafts: Sequence[CompletionDraft], stale: Sequence[str] = ()
    ) -> list[CompletionRecord]:
        """Append the completions of ``drafts`` (those not completed yet, whose receipt is in
        the ledger) in one key-store journal transaction: ledger first, then each erasure
        marked completed and its queue row dropped, in the same commit."""
        self.require_configured("complete_erasures")
        with self._lock:
            for _ in range(_ROUNDS):
                journal = self._connect()
                try:
                    done = self._store.journal_transaction(
                        functools.partial(
                            self._reconciler.complete, journal=journal, drafts=drafts, stale=stale
                        )
                    )
                    failpoint("after-completion")  # the crash tests: committed
                    return done
                except JournalMoved:
                    self.catch_up()
        raise LedgerUnavailableError(
            "the erasure ledger kept moving past the key store while completions were "
            "appended: none was recorded by this call; run it again"
        )

    # -- status ------------------------------------------------------------------------------------

    def status(self, receipt_id: str) -> ErasureStatus | None:
        if not isinstance(receipt_id, str):
            raise TypeError("receipt_id must be a str")
        row = self._store.erasure(receipt_id)
        if row is None:
            return None
        phase: Literal["destroyed", "completed", "legacy"] = (
            "completed"
            if row.completion_seq is not None
            else "legacy"
            if row.origin == ErasureOrigin.LEGACY
            else "destroyed"
        )
        return ErasureStatus(
            receipt_id=row.receipt_id,
            phase=phase,
            in_ledger=row.ledger_seq is not None,
            ledger_seq=row.ledger_seq,
            completion_seq=row.completion_seq,
            subject_ref=row.ref.hex(),
            shredded_at=datetime.fromtimestamp(row.shredded_at, tz=timezone.utc),
        )


def check_new_installation(ledger: LedgerSink | str, proposed_id: str) -> None:
    """Before a new installation is created beside ``ledger``: it must hold nothing for it (a
    JSONL file or an S3 prefix is one installation's; a SQL ledger keeps one sequence per id).
    An unreachable ledger is raised: no installation starts with an unverified ledger."""
    sink = ledger if isinstance(ledger, LedgerSink) else ledger_from_url(ledger)
    try:
        first = next(iter(sink.read(proposed_id, -1, 1)), None)
    finally:
        if isinstance(ledger, str):
            sink.close()
    if first is not None:
        raise LedgerIntegrityError(
            f"the ledger at {sink.location} holds another installation's entries: a new "
            "installation is not created beside them (is CCVAULT_LEDGER_URL right?)"
        )


def _refuse_same_file(sink: LedgerSink, store: KeyStore) -> None:
    """A SQLite ledger in the key store's own file would wait on the shred's own write lock."""
    if not (isinstance(sink, SqlLedger) and isinstance(store, SqlKeyStore)):
        return
    a, b = sink.engine.url, store.engine.url
    if (
        a.get_backend_name() == b.get_backend_name() == "sqlite"
        and Path(a.database or "").resolve() == Path(b.database or "").resolve()
    ):
        sink.close()
        raise ConfigurationError(
            "the ledger is the key store's own SQLite file: keep it apart (another file, "
            "another database), or a restore of the key store takes the ledger with it"
        )
