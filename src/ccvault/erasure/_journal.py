"""Owns the erasure journal: signed, hash-chained, gap-free entries appended to a ledger sink.
Must not destroy keys nor touch the key store; the ledger link appends before anything is destroyed.

``Journal(sink, installation_id, signing_seed)`` opens the installation's ledger, writing the
genesis entry on an empty one (unless ``create=False``) and refusing one whose genesis names
another installation. Appends are conditional on the expected seq; when another writer took it,
:meth:`Journal.append` re-reads the head and tries again (bounded), while
:meth:`Journal.append_after` (the vault's ledger-first shred) raises :class:`JournalMoved`.
Records are signed with the installation's receipt-signing key, the same that signs
:class:`~ccvault.ErasureReceipt` v1.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Final

from .._repr import safe_repr
from .._secret import SecretKey
from ..audit._receipt import ErasureReceipt
from ..crypto._primitives import ed25519_public_key
from ..errors import LedgerIntegrityError, LedgerUnavailableError
from ._chain import Fault, LedgerProblem, LedgerReport, analyse, integrity_error, judge
from ._ledger import MAX_BATCH, LedgerSink, StoredEntry
from ._records import ZERO_HASH, GenesisRecord, JournalEntry, Record, SignedRecord

__all__ = ["Journal", "JournalMoved", "read_entry", "verify_ledger"]

log = logging.getLogger("ccvault")

CONFLICT_RETRIES: Final = 100
"""Appends that lose their seq to another writer this many times in a row give up
(``LedgerUnavailableError``): each loss means another writer made progress."""


class JournalMoved(Exception):
    """The ledger's last entry is not the one an :meth:`Journal.append_after` expected:
    ``head`` is the seq it holds (None: the ledger is empty), ``expected`` the caller's.
    ``head > expected``: the caller is behind the ledger (replay first); lower: the ledger is
    behind the caller (repair)."""

    def __init__(self, head: int | None, expected: int) -> None:
        super().__init__(f"the ledger's last entry is seq {head}, not {expected}")
        self.head = head
        self.expected = expected


class Journal:
    """The installation's append-only journal on ``sink``; see the module docstring.

    Thread-safe: appends of one journal are serialised in-process; several journals (threads,
    processes, hosts) on one sink serialise through the sink's conditional append.
    """

    def __init__(
        self,
        sink: LedgerSink,
        installation_id: str,
        signing_seed: SecretKey,
        *,
        clock: Callable[[], datetime] | None = None,
        create: bool = True,
    ) -> None:
        if not isinstance(signing_seed, SecretKey):
            raise TypeError("signing_seed must be a SecretKey (the receipt-signing seed)")
        if not isinstance(installation_id, str) or not 1 <= len(installation_id) <= 64:
            raise ValueError("installation_id must be a non-empty string of at most 64 characters")
        self._sink = sink
        self._id = installation_id
        self._seed = signing_seed
        self._public = ed25519_public_key(signing_seed.reveal())
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._tip: JournalEntry | None = None
        self._high = -1  # the highest seq this journal has written or verified: never lost
        self.conflicts = 0  # appends that lost their seq to another writer (and were retried)
        with self._lock:
            if self._read_tip() is None:
                if not create:
                    raise self._error("missing", 0, self.location, "the ledger is empty")
                genesis = GenesisRecord(installation_id=installation_id, created_at=self._now())
                self._write([genesis.sign(signing_seed, public_key=self._public)], genesis=True)
            self._check_genesis()

    @safe_repr
    def __repr__(self) -> str:
        return f"Journal({self._sink.location!r}, installation={self._id!r})"

    @property
    def installation_id(self) -> str:
        return self._id

    @property
    def public_key(self) -> bytes:
        """The Ed25519 key every entry verifies with (the installation's receipt key)."""
        return self._public

    @property
    def location(self) -> str:
        return self._sink.location

    @property
    def sink(self) -> LedgerSink:
        """Where the entries are stored (for readers that judge entries one by one)."""
        return self._sink

    def _now(self) -> datetime:
        now = self._clock()
        return now.astimezone(timezone.utc)

    # -- appending ---------------------------------------------------------------------------------

    def append(self, record: Record) -> JournalEntry:
        """Append one record: a v1 receipt (verified, never re-signed) or a
        :class:`SignedRecord` (signed here when unsigned, else verified). Durable on return."""
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Record]) -> list[JournalEntry]:
        """Append records in order, at most 500 per sink write; durable on return. A record of
        another installation raises :class:`LedgerIntegrityError` before anything is written."""
        prepared = [self._prepare(r) for r in records]
        with self._lock:
            return self._write(prepared)

    def append_after(self, after: int, records: Sequence[Record]) -> list[JournalEntry]:
        """Append ``records`` only where the ledger's last entry is seq ``after``: the first
        goes in at ``after + 1``. Raises :class:`JournalMoved` when the ledger's head is another
        (nothing written, or the batches of 500 before it: durable, the caller's to apply) and
        never retries: whoever serialises its appends (the key store's ledger lock) decides."""
        prepared = [self._prepare(r) for r in records]
        done: list[JournalEntry] = []
        with self._lock:
            for i in range(0, len(prepared), MAX_BATCH):
                tip = self._tip
                if tip is None or tip.seq != after:
                    tip = self._peek_tip()
                if tip is None or tip.seq != after:
                    raise JournalMoved(None if tip is None else tip.seq, after)
                built, data = self._entries_after(tip, prepared[i : i + MAX_BATCH])
                written = self._sink.append(self._id, after + 1, data)
                if written:
                    self._tip = built[written - 1]
                    self._high = max(self._high, self._tip.seq)
                done += built[:written]
                if written < len(built):  # another writer took a seq: see where the head is
                    moved = self._peek_tip()
                    raise JournalMoved(None if moved is None else moved.seq, after + written)
                after = built[-1].seq
        return done

    def tip(self) -> JournalEntry | None:
        """The sink's last entry, read now and checked on its own, wherever it is (None: the
        ledger is empty). Unlike :meth:`head` it does not refuse a ledger shorter than this
        journal has seen: the caller compares it with what it expects."""
        with self._lock:
            return self._peek_tip()

    def _peek_tip(self) -> JournalEntry | None:
        item = self._sink.head(self._id)
        if item is None:
            self._tip = None
            return None
        entry = self._checked(item)
        if item.seq is not None and item.seq != entry.seq:
            raise self._error("tampered", entry.seq, item.where, f"stored as seq {item.seq}")
        self._tip = entry
        return entry

    def _prepare(self, record: Record) -> Record:
        if isinstance(record, GenesisRecord):
            raise ValueError("the journal writes its own genesis entry")
        named = getattr(record, "installation_id", None)
        if named is not None and named != self._id:
            raise LedgerIntegrityError(
                f"refused a {record.format} record of installation {named} for the ledger of "
                f"installation {self._id}"
            )
        if isinstance(record, SignedRecord) and not record.signature:
            record = record.sign(self._seed, public_key=self._public)
        elif not isinstance(record, SignedRecord | ErasureReceipt):
            raise TypeError("a journal record is a SignedRecord or an ErasureReceipt")
        if not record.verify(self._public):
            raise ValueError(f"the {record.format} record does not verify with this journal's key")
        return record

    def _write(self, records: list[Record], *, genesis: bool = False) -> list[JournalEntry]:
        done: list[JournalEntry] = []
        losses = 0
        while len(done) < len(records):
            tip = self._tip if self._tip is not None else self._read_tip()
            if genesis and tip is not None:
                return done  # another process created the ledger first
            batch = records[len(done) : len(done) + MAX_BATCH]
            built, data = self._entries_after(tip, batch)
            written = self._sink.append(self._id, built[0].seq, data)
            done += built[:written]
            if written:
                self._tip = built[written - 1]
                self._high = max(self._high, self._tip.seq)
            if written < len(built):
                self._tip = None  # someone else appended: re-read the head
                losses += 1
                self.conflicts += 1
                if losses >= CONFLICT_RETRIES:
                    raise LedgerUnavailableError(
                        f"the ledger at {self.location} kept taking the next seq: {losses} "
                        "appends in a row lost to other writers",
                        location=self.location,
                    )
                time.sleep(random.uniform(0.0, 0.002) * min(losses, 10))  # noqa: S311
        return done

    def _entries_after(
        self, tip: JournalEntry | None, records: list[Record]
    ) -> tuple[list[JournalEntry], list[bytes]]:
        """The signed entries for ``records`` after ``tip``, and their canonical bytes."""
        seq, prev = (0, ZERO_HASH) if tip is None else (tip.seq + 1, tip.digest())
        built, data = [], []
        now = self._now()
        for record in records:
            entry = JournalEntry(
                installation_id=self._id,
                seq=seq,
                prev_hash=prev,
                appended_at=now,
                kind=record.format,
                record=record.model_dump(mode="json"),
            ).sign(self._seed, public_key=self._public)
            stored = entry.canonical_bytes()
            built.append(entry)
            data.append(stored)
            seq, prev = seq + 1, hashlib.sha256(stored).hexdigest()
        return built, data

    # -- reading -----------------------------------------------------------------------------------

    def _read_tip(self) -> JournalEntry | None:
        """The sink's last entry, checked on its own (an append chains to it)."""
        item = self._sink.head(self._id)
        if item is None:
            if self._high >= 0:
                raise self._error("truncated", self._high, self.location, "the ledger is empty")
            return None
        entry = self._checked(item)
        if item.seq is not None and item.seq != entry.seq:
            raise self._error("tampered", entry.seq, item.where, f"stored as seq {item.seq}")
        if entry.seq < self._high:
            raise self._error(
                "truncated",
                entry.seq + 1,
                self.location,
                f"its head went back from seq {self._high}",
            )
        self._tip = entry
        self._high = entry.seq
        return entry

    def _check_genesis(self) -> None:
        first = next(iter(self._sink.read(self._id, -1, 1)), None)
        if first is None:
            raise self._error("missing", 0, self.location, "the genesis entry is gone")
        entry = self._checked(first, 0)
        if entry.seq != 0:
            raise self._error("missing", 0, first.where, "the genesis entry is gone")

    def _checked(self, item: StoredEntry, place: int | None = None) -> JournalEntry:
        try:
            return judge(item, self._id, self._public)
        except Fault as fault:
            seq = (
                item.seq if item.seq is not None else place if place is not None else fault.claimed
            )
            raise self._error(fault.kind, seq, item.where, fault.detail) from None

    def _error(self, kind: str, seq: int | None, where: str, detail: str) -> LedgerIntegrityError:
        return _one_problem(self.location, kind, seq, where, detail)

    def head(self) -> JournalEntry:
        """The last entry, read from the sink now and checked on its own."""
        with self._lock:
            tip = self._read_tip()
        if tip is None:  # pragma: no cover - the constructor wrote the genesis entry
            raise self._error("missing", 0, self.location, "the ledger is empty")
        return tip

    def entries(self, after: int = -1) -> Iterator[JournalEntry]:
        """The entries with seq > ``after`` in order, each verified and chained to the one
        before (the first to entry ``after``). Raises :class:`LedgerIntegrityError` at the
        first entry that is not genuine, out of place, or missing, naming its seq; and at the
        end when the ledger stops short of what this journal has seen."""
        start = max(after - 1, -1)  # read entry `after` too: the first yielded chains to it
        expected, prev = start + 1, None
        for item in self._sink.read(self._id, start):
            entry = self._checked(item, expected)
            if entry.seq != expected or (item.seq is not None and item.seq != entry.seq):
                kind = "missing" if entry.seq > expected else "reordered"
                raise self._error(kind, expected, item.where, f"found seq {entry.seq} in its place")
            if prev is not None and entry.prev_hash != prev.digest():
                raise self._error(
                    "tampered",
                    entry.seq,
                    item.where,
                    f"its prev_hash is not the hash of seq {prev.seq}",
                )
            self._high = max(self._high, entry.seq)
            if entry.seq > after:
                yield entry
            prev, expected = entry, expected + 1
        if expected <= self._high:
            raise self._error(
                "truncated",
                expected,
                self.location,
                f"the ledger is known to have held seq {self._high}",
            )

    def verify(self, *, expect_head: int | None = None, repair: bool = True) -> LedgerReport:
        """Check the whole ledger and name by seq every tampered, missing, reordered, foreign
        or truncated entry, and every torn write (repaired unless ``repair=False``).
        ``expect_head``: a seq the ledger is known to hold (the key store's applied seq)."""
        report = verify_ledger(
            self._sink,
            self._id,
            self._public,
            expect_head=max(self._high, -1 if expect_head is None else expect_head),
            repair=repair,
        )
        if report.head_seq is not None:
            self._high = max(self._high, report.head_seq)
        return report


def verify_ledger(
    sink: LedgerSink,
    installation_id: str,
    public_key: bytes,
    *,
    expect_head: int | None = None,
    repair: bool = False,
) -> LedgerReport:
    """Verify a ledger with the installation's public receipt key alone (an auditor's check);
    see :meth:`Journal.verify`. Torn writes are reported, and removed only with ``repair``."""
    torn = sink.torn(installation_id, repair=repair)
    # Read before the entries, so never ahead of them. The SQL head row is a record of its own:
    # entries cut from the end below it are truncated. Elsewhere the head is just the last place
    # holding something, which counts only when it holds the genuine entry of that seq.
    recorded = sink.head(installation_id)
    floor = -1 if expect_head is None else expect_head
    if (
        recorded is not None
        and recorded.seq is not None
        and (recorded.data is None or _claims(recorded, installation_id, public_key))
    ):
        floor = max(floor, recorded.seq)
    return analyse(
        sink.read(installation_id),
        installation_id=installation_id,
        public_key=public_key,
        location=sink.location,
        floor=floor,
        torn=torn,
    )


def _claims(item: StoredEntry, installation_id: str, public_key: bytes) -> bool:
    try:
        return judge(item, installation_id, public_key).seq == item.seq
    except Fault:
        return False


def _one_problem(
    location: str, kind: str, seq: int | None, where: str, detail: str
) -> LedgerIntegrityError:
    """The error of a ledger with one problem, at one seq."""
    problem = LedgerProblem.model_validate(
        {"kind": kind, "seq": seq, "last_seq": seq, "where": where, "detail": detail}
    )
    return integrity_error(location, [problem])


def read_entry(sink: LedgerSink, installation_id: str, public_key: bytes, seq: int) -> Record:
    """The record of the ledger's entry at ``seq``, with the installation's public receipt key
    alone (an auditor's reading): the entry and its record must verify under that key, name this
    installation and sit at ``seq``, or :class:`LedgerIntegrityError` names what is wrong. It
    checks that one entry; the chain around it is :func:`verify_ledger`'s to check. ValueError
    for a seq below 0 and for a kind this library does not know (a newer ccvault wrote it)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("seq is a ledger sequence number (an int, 0 or more)")
    found = next(iter(sink.read(installation_id, after=seq - 1, limit=1)), None)

    def failed(kind: str, detail: str) -> LedgerIntegrityError:
        return _one_problem(sink.location, kind, seq, sink.location, detail)

    if found is None:
        raise failed("missing", "the ledger holds no entry there")
    try:
        entry = judge(found, installation_id, public_key)
    except Fault as fault:
        raise failed(fault.kind, fault.detail) from None
    if entry.seq != seq:
        raise failed("tampered", f"the entry stored there claims seq {entry.seq}")
    record = entry.parsed()
    if record is None:
        raise ValueError(f"the entry at seq {seq} is of a kind this ccvault does not know")
    return record
