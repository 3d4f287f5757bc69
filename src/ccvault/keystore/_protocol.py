"""The key-store protocol: durable rows of wrapped keys, epochs and subject heads.

A key store never sees key material in clear and never sees a subject in clear (only its ref).
Key creation and shred both go through the subject head so that a creation racing a shred never
leaves a live key; a shred also appends, in its transaction, a row to the invalidation channel
that every process polls (DESIGN.md, lifecycle rule 5), and every transaction that applies the
erasure journal (a shred with a ledger, a replay, a repair, an outbox flush, a legal hold or its
release, a retention enforcement's batch) runs under the lock of one row,
``ledger_applied_seq`` (rule 3: :class:`JournalTxn`); a shred checks the subject's legal holds
under it (a :data:`ShredGuard`), and an enforcement preserves held subjects' keys and destroys
period secrets under it (rules 7 and 8). Each head carries
a MAC of its state that the vault computes (a :data:`HeadSealer` passed in) and verifies: the
store holds no key and trusts no head.
:class:`~ccvault.keystore.SqlKeyStore` implements it on SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from ..errors import KeyStoreError
from ..kms._protocol import WrappedKey
from ._records import (
    EpochRecord,
    ErasureRow,
    HeadRecord,
    HoldRow,
    Invalidation,
    KeyRecord,
    OutboxEntry,
    QueuedErasure,
)

__all__ = [
    "EpochNotUsableError",
    "HeadSealer",
    "JournalTxn",
    "KeyStore",
    "Listening",
    "ReceiptFactory",
    "RefReceiptFactory",
    "ShredGuard",
    "ShredJournal",
    "ShredManyJournal",
]

T = TypeVar("T")

ReceiptFactory = Callable[[HeadRecord | None, Sequence[KeyRecord]], str]

RefReceiptFactory = Callable[[bytes, HeadRecord | None, Sequence[KeyRecord]], str]
"""The receipt factory of :meth:`KeyStore.shred_many`: a :data:`ReceiptFactory` told the ref."""

HeadSealer = Callable[[bytes, bytes, str, int], bytes]
"""The MAC of a subject head (ref, key id, state, current version), computed by the vault under
the installation's head-MAC key (docs/format.md, section 3a)."""


class JournalTxn(Protocol):
    """One key-store transaction that holds the lock of the ``ledger_applied_seq`` row (taken
    first, before any subject head): what the erasure journal does to the store happens here,
    in one commit with the store's record of the ledger seq it reached. The caller may write to
    the ledger inside it (ledger first): a rollback leaves the ledger ahead, never behind."""

    @property
    def applied(self) -> int | None:
        """The store's ``ledger_applied_seq`` as locked (None: no ledger was ever configured;
        -1: configured, nothing applied)."""
        ...

    def set_applied(self, seq: int) -> None:
        """Record ``seq`` as the last ledger entry applied (creating the row if absent)."""
        ...

    def shred(
        self, ref: bytes, now: float, make_receipt: ReceiptFactory, seal_head: HeadSealer
    ) -> tuple[str, bool]:
        """:meth:`KeyStore.shred` in this transaction (a replay stores the ledger's receipt)."""
        ...

    def outbox(self) -> list[OutboxEntry]:
        """The entries waiting for the ledger, in order."""
        ...

    def enqueue(self, kind: str, receipt_id: str | None, record: str, now: float) -> int:
        """Queue a signed record (JSON) for the ledger; returns its outbox seq."""
        ...

    def dequeue(self, seqs: Sequence[int]) -> None:
        """Remove outbox entries (they are in the ledger now)."""
        ...

    def record_erasures(self, rows: Sequence[ErasureRow]) -> None:
        """Record erasures: a row absent is inserted; one present keeps its origin and takes the
        ``ledger_seq`` given (when not None)."""
        ...

    def erasure_rows(self, receipt_ids: Sequence[str]) -> dict[str, ErasureRow]:
        """The erasure rows of ``receipt_ids`` that exist, by receipt id."""
        ...

    def record_completion(self, receipt_id: str, seq: int) -> None:
        """Mark an erasure completed by the ledger entry ``seq``."""
        ...

    def shredded_receipts(self, after: bytes | None, limit: int) -> list[tuple[bytes, str]]:
        """:meth:`KeyStore.shredded_receipts` in this transaction."""
        ...

    def queue_erasure(self, row: QueuedErasure) -> None:
        """:meth:`KeyStore.queue_erasure` in this transaction."""
        ...

    def queue_erasures(self, rows: Sequence[QueuedErasure]) -> None:
        """:meth:`queue_erasure` of many rows (of distinct receipts), a few statements for all."""
        ...

    def unqueue_erasures(self, receipt_ids: Sequence[str]) -> None:
        """Remove the queued erasures of ``receipt_ids`` (completed: their subjects go)."""
        ...

    def head_state(self, ref: bytes) -> str | None:
        """The state of ``ref``'s subject head, locked (None: it has none)."""
        ...

    def holds(self, refs: Sequence[bytes] | None) -> list[HoldRow]:
        """The hold rows of ``refs`` (None: of every subject) not released (their ``until`` is
        the caller's to judge), locked until the transaction ends: a release or another shred
        waits."""
        ...

    def active_hold_refs(self, now: float) -> set[bytes]:
        """The refs of the subjects held at ``now``: with a hold not released whose ``until``
        is NULL or later than ``now`` (read without row locks: a hold and a release change
        them only under the ``ledger_applied_seq`` lock this transaction holds)."""
        ...

    def hold_rows(self, hold_ids: Sequence[str]) -> dict[str, HoldRow]:
        """The hold rows of ``hold_ids`` that exist, released or not, locked, by hold id."""
        ...

    def record_holds(self, rows: Sequence[HoldRow]) -> None:
        """Record holds: a row absent is inserted; one present takes the ``ledger_seq`` given
        (when not None) and keeps the rest."""
        ...

    def recorded_policy(self) -> tuple[str, int | None] | None:
        """:meth:`KeyStore.recorded_policy`, its rows locked until the transaction ends (created
        empty first when absent): another recording waits."""
        ...

    def record_policy(self, record: str, seq: int | None) -> None:
        """Record ``record`` (a signed ``ccvault-retention-policy/v1`` record's JSON) as the
        retention policy, ``seq`` the seq of its ledger entry (None: in no ledger), replacing
        the one recorded."""
        ...

    def release_holds(
        self,
        hold_ids: Sequence[str],
        *,
        at: float,
        by: str | None,
        seq: int | None,
        override_receipt: str | None = None,
    ) -> None:
        """Mark holds released at ``at`` by ``by`` — by the shred of ``override_receipt`` when
        given — unless already released, with ``seq`` the seq of the entry (None: not in the
        ledger yet); a hold released with no seq yet takes ``seq`` (an outbox flushed)."""
        ...

    # -- retention (DESIGN.md, lifecycle rules 7 and 8): enforcement and its replay ------------

    def period_rows(
        self, *, key_ids: Sequence[bytes] = (), labels: Sequence[str] = ()
    ) -> list[KeyRecord]:
        """The period rows (kind ``period``) of ``key_ids`` (period ids) and of ``labels``, live
        or tombstoned, locked until the transaction ends (taken after ``ledger_applied_seq``
        and the hold rows): a second enforcer re-reads them here and finds them destroyed."""
        ...

    def last_expired(self) -> dict[str, str]:
        """Per category, the label of its latest tombstoned (expired) period (every period of
        the category up to it expired too: expiry never decreases), read in this transaction."""
        ...

    def live_subject_keys(self, refs: Sequence[bytes]) -> dict[bytes, list[KeyRecord]]:
        """The live subject key rows of ``refs`` (every version), by ref."""
        ...

    def held_keys_by_ref(self) -> dict[bytes, int]:
        """How many live held keys (kind ``held``) each subject ref has (refs without any are
        absent)."""
        ...

    def add_held_keys(self, records: Sequence[KeyRecord]) -> None:
        """Insert held keys (kind ``held``) absent by (key id, version); a present one is kept.
        Raises :class:`EpochNotUsableError` (writing nothing) when a record's epoch is not
        active or retired, checked in this transaction (the epoch rows stay locked, shared)."""
        ...

    def expire_periods(self, period_ids: Sequence[bytes], now: float) -> None:
        """Tombstone the live period rows of ``period_ids``: material, commitment and epoch
        NULL, state ``destroyed``; label and ref stay (the row is kept for ever)."""
        ...

    def destroy_held_keys(self, refs: Sequence[bytes], now: float) -> int:
        """Tombstone every live held key of ``refs``; returns how many."""
        ...

    def publish_expiry(
        self, period_ids: Sequence[bytes], refs: Sequence[bytes], now: float
    ) -> None:
        """Append ``expiry`` rows to the invalidation channel, last in the transaction (its
        counter's lock is the last lock taken): one per period of ``period_ids`` (ref NULL,
        period = the id) and one per subject ref of ``refs`` whose held keys were destroyed
        (ref = the subject ref, period NULL: every period)."""
        ...


ShredJournal = Callable[[JournalTxn, str], None]
"""Given to :meth:`KeyStore.shred`: called with the transaction and the new receipt (JSON) once
the subject's keys are destroyed in it and before it commits; it appends the receipt to the
ledger (or queues it) and records where. Raising rolls the shred back: nothing is destroyed."""

ShredManyJournal = Callable[[JournalTxn, Sequence[tuple[str, bool] | None]], None]
"""Given to :meth:`KeyStore.shred_many`: called with the transaction and each ref's (receipt
JSON, newly shredded), in the refs' order (None for a ref its guard left out), once the keys of
the refs newly shredded are destroyed and before the commit (a :data:`ShredJournal` for a batch;
it also sees the repeats). Raising rolls the whole batch back: nothing is destroyed."""

ShredGuard = Callable[[JournalTxn, Sequence[bytes]], Collection[bytes]]
"""Given to :meth:`KeyStore.shred` and :meth:`KeyStore.shred_many`: called in the shred's
transaction once it holds the ``ledger_applied_seq`` lock and before any subject head is read,
with the refs to shred; returns the refs to leave out (``shred_many``: a held subject), or
raises to shred nothing (``shred``'s only way to refuse). What it reads under that lock cannot
change before the commit: a hold and a shred serialise on it."""


class EpochNotUsableError(KeyStoreError):
    """A new key is wrapped under an epoch that is destroyed (or unknown to the store): nothing
    was written. The vault re-reads the active epoch and wraps the key again."""

    def __init__(
        self, message: str = "a new key is wrapped under an epoch that is destroyed or unknown"
    ) -> None:
        super().__init__(message)


class Listening(Protocol):
    """A running listener on the invalidation channel (:meth:`KeyStore.listen`)."""

    def stop(self) -> None:
        """Stop listening and close the listener's connection (idempotent)."""
        ...


class KeyStore(Protocol):
    def close(self) -> None:
        """Release connections this store opened itself."""
        ...

    def ensure_installation(
        self, installation_id: str, subject_type: str, facts: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """Record (installation id, subject type) if absent, with the installation ``facts``
        when this call creates the installation; return the stored pair."""
        ...

    def put_meta_if_absent(self, name: str, value: str) -> bool:
        """Record an installation fact (a short, non-secret string) unless ``name`` is set;
        True if this call recorded it."""
        ...

    def meta(self, prefix: str) -> dict[str, str]:
        """The installation facts whose names start with ``prefix``."""
        ...

    def schema_version(self) -> int | None:
        """The stored schema version (1 for an installation that predates the row); None for
        a store without an installation."""
        ...

    def upgrade_schema(self) -> None:
        """Create the tables and columns of this library's schema that the store lacks
        (idempotent); the schema version is left to :meth:`set_schema_version`."""
        ...

    def set_schema_version(self, version: int) -> None:
        """Record ``version`` unless the store records it or a newer one already."""
        ...

    def installation(self) -> tuple[str, str] | None:
        """The stored (installation id, subject type), or None for an empty store. Writes
        nothing: this is how a read-only vault opens."""
        ...

    def has_subjects(self) -> bool:
        """Whether any subject head or subject key row exists (live, shredded or tombstoned)."""
        ...

    def active_epoch(self) -> EpochRecord | None: ...

    def get_epoch(self, epoch_id: bytes) -> EpochRecord | None: ...

    def epochs(self) -> list[EpochRecord]: ...

    def add_epoch(
        self,
        epoch_id: bytes,
        seq: int,
        commitment: bytes,
        wraps: Sequence[WrappedKey],
        now: float,
        *,
        rewrap_pending: bool = False,
    ) -> EpochRecord:
        """Insert epoch ``seq`` as the active one (retiring the previous active epoch).

        If another process already created epoch ``seq``, nothing is written and the winner is
        returned. ``rewrap_pending`` records, in the same transaction, that a rotation to ``seq``
        has keys to re-wrap (:meth:`rewrap_pending`), until :meth:`rewrap_done`.
        """
        ...

    def destroy_epoch(
        self, epoch_id: bytes, now: float, *, accept_unreadable: bool = False
    ) -> bool:
        """Mark a retired epoch destroyed, in one transaction with the check that no live key is
        wrapped under it; False (and nothing written) when one is, or when it is not retired.

        A quarantined key under it also keeps it, unless ``accept_unreadable``: then the epoch is
        destroyed all the same and, in the same transaction, the decision is recorded (epoch,
        number of quarantined keys, time) among the installation facts.

        Serialised with :meth:`insert_key_if_absent` and :meth:`create_subject_keys` on the epoch:
        a key they insert under it either is seen by the check or sees the epoch destroyed."""
        ...

    def add_epoch_wraps(self, epoch_id: bytes, wraps: Sequence[WrappedKey]) -> None:
        """Store further wraps of an existing epoch key (one per KMS; an existing wrap of the
        same KMS is kept)."""
        ...

    def get_keys(self, refs: Iterable[tuple[bytes, int]]) -> dict[tuple[bytes, int], KeyRecord]:
        """Fetch several keys by (key id, version) in as few round trips as possible."""
        ...

    def value_keys(
        self, refs: Iterable[tuple[bytes, int]]
    ) -> dict[tuple[bytes, int], tuple[KeyRecord, HeadRecord | None]]:
        """:meth:`get_keys`, each key with the head of its ref (None for a vault-wide key or a
        ref without a head), read together (one join, one snapshot)."""
        ...

    def latest_key(self, kind: str, label: str) -> KeyRecord | None: ...

    def period_keys(self, category: str) -> list[KeyRecord]:
        """Every period row (kind ``period``) of retention category ``category`` — label
        ``<category>/<start date>`` — live or tombstoned, in label order (no locking)."""
        ...

    def insert_key_if_absent(self, record: KeyRecord) -> KeyRecord:
        """Insert a labelled key unless (kind, label, version) exists; return the stored row.
        Raises :class:`EpochNotUsableError` (writing nothing) when the record's epoch is not
        active or retired, checked in the same transaction."""
        ...

    def subject_head(self, ref: bytes) -> HeadRecord | None: ...

    def subject_keys(
        self, refs: Sequence[bytes]
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        """Heads and current keys of subjects that have a head, in as few round trips as possible
        (no locking)."""
        ...

    def create_subject_keys(
        self, candidates: Sequence[KeyRecord], now: float, seal_head: HeadSealer
    ) -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
        """Create heads (authenticated by ``seal_head``) and first keys for subjects that have
        none; return the head of every candidate's subject, with its current key where the head
        says active (the existing one where another writer won). No key is created for a
        subject whose head is shredded, nor for one whose ref has no head but key rows (a
        tombstone, or a live key: heads are never deleted): the latter is left out. Raises
        :class:`EpochNotUsableError` (writing nothing) when a candidate's epoch is not active
        or retired, checked in the same transaction."""
        ...

    def keyed_refs(self, refs: Sequence[bytes]) -> set[bytes]:
        """The refs among ``refs`` that have subject key rows (live or tombstones)."""
        ...

    def ref_keys(self, ref: bytes) -> tuple[HeadRecord | None, list[KeyRecord]]:
        """The head of ``ref`` (None when it has none) and every key row naming it (what
        :meth:`shred` would destroy), read together without locking and writing nothing: a
        shred's dry run."""
        ...

    def refs_keys(
        self, refs: Sequence[bytes]
    ) -> dict[bytes, tuple[HeadRecord | None, list[KeyRecord]]]:
        """:meth:`ref_keys` of many refs, in as few reads as possible."""
        ...

    def heads_after(
        self, after: bytes | None, limit: int, *, unsealed: bool = False
    ) -> list[tuple[HeadRecord, KeyRecord | None]]:
        """Up to ``limit`` heads after ref ``after`` in ref order (only those without a MAC
        when ``unsealed``), each with its current key where it says active."""
        ...

    def seal_heads(
        self, updates: Sequence[tuple[HeadRecord, bytes]], now: float
    ) -> tuple[int, int]:
        """Store each MAC on its head if the head has none and is unchanged. A shredded head
        whose ref has no key row also gets a version-0 tombstone. Returns (MACs stored,
        tombstones added)."""
        ...

    def unfenced_key_refs(self) -> dict[bytes, str]:
        """Refs of subject key rows outside what a head allows: ``"headless"`` (no head, a
        destroyed key), ``"orphan"`` (no head, live keys only), ``"restored"`` (a live key under
        a head that does not say active)."""
        ...

    def reserve_uses(self, key_id: bytes, version: int, count: int, budget: int) -> bool:
        """Atomically reserve ``count`` uses of a live key unless that passes ``budget``."""
        ...

    def shred(
        self,
        ref: bytes,
        now: float,
        make_receipt: ReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredJournal | None = None,
        *,
        guard: ShredGuard | None = None,
    ) -> tuple[str, bool]:
        """Fence the subject and destroy its key material, keeping tombstones (a subject never
        seen gets a version-0 one); the head's shredded state is authenticated by
        ``seal_head``.

        A subject newly shredded gets a ``shred`` row in the invalidation channel, written in
        the same transaction. With ``journal`` or ``guard`` the transaction is a
        :class:`JournalTxn`: it locks ``ledger_applied_seq`` first, ``guard`` runs next (it
        refuses by raising) and ``journal`` before the commit.

        Returns (receipt, newly_shredded). A repeat returns the stored receipt (and restores
        the head's MAC of its shredded state if the row lost it) and does not call ``journal``.
        """
        ...

    def shred_many(
        self,
        refs: Sequence[bytes],
        now: float,
        make_receipt: RefReceiptFactory,
        seal_head: HeadSealer,
        journal: ShredManyJournal,
        *,
        guard: ShredGuard | None = None,
    ) -> list[tuple[str, bool] | None]:
        """:meth:`shred` of many distinct refs in one :class:`JournalTxn` (``shred_many``'s
        batches): the ledger lock, then ``guard`` (the refs it returns are left out), then
        every other head (in ref order), a few statements for all of them; ``journal`` runs
        once, before the invalidation rows and the commit. Returns each ref's (receipt,
        newly_shredded) in order, None for a ref left out; one failure rolls back every ref."""
        ...

    def journal_transaction(self, fn: Callable[[JournalTxn], T], *, create: bool = False) -> T:
        """Run ``fn`` in one :class:`JournalTxn` (retried as a whole on a deadlock or a
        serialisation failure). ``create``: record ``ledger_applied_seq`` as -1 first when the
        store has none (the first configuration of a ledger)."""
        ...

    def ledger_applied(self) -> int | None:
        """``ledger_applied_seq`` as committed (None: no ledger was ever configured)."""
        ...

    def outbox(self) -> list[OutboxEntry]:
        """The entries waiting for the ledger, in order (read without locking)."""
        ...

    def erasure(self, receipt_id: str) -> ErasureRow | None:
        """The erasure recorded for a receipt id, or None."""
        ...

    def erasure_rows(self, receipt_ids: Sequence[str]) -> dict[str, ErasureRow]:
        """The erasure rows of ``receipt_ids`` that exist, by receipt id."""
        ...

    def record_erasures(self, rows: Sequence[ErasureRow]) -> None:
        """:meth:`JournalTxn.record_erasures` in a transaction of its own (``upgrade-store``)."""
        ...

    def shredded_receipts(self, after: bytes | None, limit: int) -> list[tuple[bytes, str]]:
        """Up to ``limit`` (ref, receipt JSON) of shredded heads with a receipt, refs after
        ``after`` in ref order."""
        ...

    def holds(
        self, refs: Sequence[bytes] | None = None, *, unreleased: bool = False
    ) -> list[HoldRow]:
        """The legal holds of ``refs`` (None: every one), only those not released when
        ``unreleased``, in the order they were placed (read without locking, schema 5)."""
        ...

    def recorded_policy(self) -> tuple[str, int | None] | None:
        """The retention policy recorded in the store (DESIGN.md, lifecycle rule 8): the signed
        record's JSON and the seq of its ledger entry (None: in no ledger); None when none is
        recorded. Rows that do not add up read as an empty text (read without locking)."""
        ...

    def live_periods(self, category: str, through: str) -> list[KeyRecord]:
        """The live period rows of ``category`` whose label is at most ``through`` (a label of
        that category: ``<category>/<YYYY-MM-DD>``), read through the index on (kind, label,
        version) without locking: the candidates of an enforcement (exact filtering is the
        caller's: a database collation may return a few rows of other categories)."""
        ...

    def period_rows(self, *, labels: Sequence[str]) -> list[KeyRecord]:
        """The period rows of ``labels``, live or tombstoned (read without locking: the check
        of the store against the ledger's retention reports)."""
        ...

    def period_labels_outside(self, categories: Sequence[str]) -> list[str]:
        """The labels of the live period rows whose category is none of ``categories`` (read
        without locking; informational: a case-insensitive collation may leave some out)."""
        ...

    def live_subject_keys(self, refs: Sequence[bytes]) -> dict[bytes, list[KeyRecord]]:
        """:meth:`JournalTxn.live_subject_keys` read without locking (a dry run)."""
        ...

    def held_keys_by_ref(self) -> dict[bytes, int]:
        """:meth:`JournalTxn.held_keys_by_ref` read without locking (a dry run)."""
        ...

    def active_hold_refs(self, now: float) -> set[bytes]:
        """:meth:`JournalTxn.active_hold_refs` read without locking (a dry run)."""
        ...

    def queue_erasure(self, row: QueuedErasure) -> None:
        """Queue an erasure for completion (schema 4), replacing a row of the same receipt."""
        ...

    def queued_erasures(self, due_by: float, after: str | None, limit: int) -> list[QueuedErasure]:
        """Up to ``limit`` queued erasures due at ``due_by``, receipt ids after ``after`` in
        order."""
        ...

    def queue_waiting(self, due_by: float) -> tuple[int, float | None]:
        """How many queued erasures are not due at ``due_by``, and the earliest due time."""
        ...

    def destroy_key_versions(self, kind: str, label: str, below: int, now: float) -> int:
        """Destroy (tombstone) the live key rows of ``kind``/``label`` with a version below
        ``below``; returns how many."""
        ...

    def invalidate(self, kind: str, ref: bytes | None, period: bytes | None, now: float) -> int:
        """Append a row to the invalidation channel in a transaction of its own (``ref`` or
        ``period`` None: every one); returns its seq. Seqs are gap-free and commit in order."""
        ...

    def invalidations(self, since: int, limit: int) -> list[Invalidation]:
        """Up to ``limit`` rows of the channel with ``seq >= since``, in seq order (one
        statement: what every poll costs)."""
        ...

    def latest_invalidation(self) -> Invalidation | None:
        """The channel's latest row; None while it is empty."""
        ...

    def listen(
        self,
        installation_id: str,
        on_notify: Callable[[bool], None],
        *,
        url: str | None = None,
    ) -> Listening | None:
        """Start listening for new rows of the channel where the database can push them
        (PostgreSQL LISTEN/NOTIFY): ``on_notify(can_poll)`` is called from the listener's
        thread at each notification and after each reconnection, ``can_poll`` saying whether
        that thread may read the store. None where the store cannot push: the poll alone
        carries the channel."""
        ...

    def keys_before_epoch(self, seq: int, limit: int) -> list[KeyRecord]:
        """Live keys wrapped under an epoch older than epoch ``seq`` (for re-wrapping), and live
        keys whose epoch id names no epoch (for quarantine)."""
        ...

    def quarantine_keys(self, records: Sequence[KeyRecord]) -> list[KeyRecord]:
        """Set the state of each live key row still exactly as in ``records`` (epoch id, wrapped
        bytes, commitment) to quarantined; return those it changed."""
        ...

    def quarantined_keys_by_epoch(self) -> dict[bytes | None, int]:
        """How many quarantined keys each epoch id names (None: a row with no epoch id)."""
        ...

    def rewrap(self, updates: Sequence[tuple[KeyRecord, bytes, bytes]], epoch_id: bytes) -> int:
        """Replace (record, wrapped, commitment) if still live and unchanged; return the count."""
        ...

    def rewrap_pending(self) -> int | None:
        """The epoch whose rotation has not finished re-wrapping, if any."""
        ...

    def rewrap_done(self, seq: int) -> None:
        """Clear the mark :meth:`add_epoch` set for ``seq`` (a newer epoch's mark stays)."""
        ...

    def live_keys_by_epoch(self) -> dict[bytes, int]:
        """How many live keys each epoch wraps, by epoch id (epochs that wrap none are absent)."""
        ...
