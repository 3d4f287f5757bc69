"""Rows of the key store as frozen value objects. Wrapped keys only: no key here is in clear."""

from __future__ import annotations

from dataclasses import dataclass

from .._repr import safe_repr
from ..kms._protocol import WrappedKey

__all__ = [
    "EpochRecord",
    "ErasureOrigin",
    "ErasureRow",
    "HeadRecord",
    "HoldRow",
    "Invalidation",
    "InvalidationKind",
    "KeyKind",
    "KeyRecord",
    "OutboxEntry",
    "QueuedErasure",
    "State",
]


class KeyKind:
    SUBJECT = "subject"
    VAULTWIDE = "vaultwide"
    SUBJECT_REF = "ref"
    RECEIPT_SIGNING = "receipt"
    BLIND_INDEX = "bidx"
    HEAD_MAC = "head"  # long-lived: authenticates subject heads (schema 2)
    ERASURE_QUEUE = "queue"  # seals the subjects of erasures awaiting completion (schema 4)
    # a retention period's secret: key id = the period id, version 1, label
    # "<category>/<start date>", ref = the period ref (DESIGN.md, lifecycle rule 7)
    PERIOD = "period"
    # a held subject's suite-2 value key of an expired period: key id = held_key_id(...),
    # version = the subject key's, ref = the subject ref (rule 7)
    HELD = "held"


class State:
    ACTIVE = "active"  # subject heads, epochs
    SHREDDED = "shredded"  # subject heads
    RETIRED = "retired"  # epochs
    LIVE = "live"  # keys
    # keys whose row failed authentication (wrap, commitment, bound ids) or names no usable
    # epoch: never read, re-wrapped or made live again by ccvault; the row is kept as found
    QUARANTINED = "quarantined"
    DESTROYED = "destroyed"  # keys (tombstone) and epochs


@dataclass(frozen=True, slots=True)
class EpochRecord:
    epoch_id: bytes
    seq: int
    state: str
    commitment: bytes
    created_at: float
    retired_at: float | None
    wraps: tuple[WrappedKey, ...]

    @safe_repr
    def __repr__(self) -> str:
        return f"EpochRecord(seq={self.seq}, id={self.epoch_id.hex()}, state={self.state!r})"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: bytes
    version: int
    kind: str
    label: str | None
    ref: bytes | None
    epoch_id: bytes | None
    wrapped: bytes | None
    commitment: bytes | None
    state: str
    created_at: float

    @property
    def is_live(self) -> bool:
        return self.state == State.LIVE and self.wrapped is not None

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"KeyRecord(kind={self.kind!r}, id={self.key_id.hex()}, v={self.version}, "
            f"state={self.state!r})"
        )


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """The one row per data subject (by ref) through which key creation and shred both go."""

    ref: bytes
    key_id: bytes
    state: str
    current_version: int
    created_at: float
    shredded_at: float | None
    receipt: str | None
    # HMAC over (installation, ref, key id, state, current version) under the head-MAC key,
    # computed by the vault (the store holds no key); None in a row of schema 1
    mac: bytes | None = None


class InvalidationKind:
    """What a row of the invalidation channel says changed (DESIGN.md, lifecycle rule 5)."""

    SHRED = "shred"  # a subject's keys were destroyed: evict and fence its ref
    EXPIRY = "expiry"  # a retention period's secret was destroyed: evict its derived keys
    # later: "hold", "lockdown", "policy"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One row of the key store's invalidation channel (schema 3): ``seq`` is gap-free in
    commit order; ``ref`` or ``period`` None means every one (``*``)."""

    seq: int
    kind: str
    ref: bytes | None
    period: bytes | None
    at: float

    @safe_repr
    def __repr__(self) -> str:
        ref = "*" if self.ref is None else self.ref.hex()[:16]
        return f"Invalidation(seq={self.seq}, kind={self.kind!r}, ref={ref})"


class ErasureOrigin:
    """How an erasure came to be recorded in the key store (``erasures.origin``)."""

    LEDGER = "ledger"  # its receipt went to the ledger first (or was replayed from it)
    OUTBOX = "outbox"  # ledger_mode="best-effort": destroyed first, its entry queued
    LEGACY = "legacy"  # shredded without a ledger (none configured, or before one was)


@dataclass(frozen=True, slots=True)
class ErasureRow:
    """One erasure as the key store records it (schema 3): its receipt's id, the subject ref,
    its origin (:class:`ErasureOrigin`), the seq of its receipt's ledger entry (None: not in
    the ledger yet, or no ledger) and of its completion's entry (None: not completed)."""

    receipt_id: str
    ref: bytes
    origin: str
    ledger_seq: int | None
    shredded_at: float
    completion_seq: int | None = None

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"ErasureRow(receipt={self.receipt_id}, ref={self.ref.hex()[:16]}, "
            f"origin={self.origin!r}, ledger_seq={self.ledger_seq})"
        )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A signed record waiting in the key store for the ledger (``ledger_mode="best-effort"``):
    ``seq`` orders the outbox (it is not a ledger seq), ``record`` is the record's JSON."""

    seq: int
    kind: str
    receipt_id: str | None
    record: str
    at: float

    @safe_repr
    def __repr__(self) -> str:
        return f"OutboxEntry(seq={self.seq}, kind={self.kind!r}, receipt={self.receipt_id})"


@dataclass(frozen=True, slots=True)
class QueuedErasure:
    """An erasure waiting for its completion (schema 4): its receipt's id, the subject ref, the
    subject sealed under version ``key_version`` of the erasure-queue key ``key_id`` (AES-256-GCM:
    ``sealed`` is nonce, ciphertext and tag; the subject is never stored in clear), and ``due``,
    the time from which its completion may run (the shred plus the propagation bound)."""

    receipt_id: str
    ref: bytes
    key_id: bytes
    key_version: int
    sealed: bytes
    due: float
    queued_at: float

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"QueuedErasure(receipt={self.receipt_id}, ref={self.ref.hex()[:16]}, "
            f"key_version={self.key_version}, due={self.due})"
        )


@dataclass(frozen=True, slots=True)
class HoldRow:
    """One legal hold as the key store records it (schema 5): its id, the subject ref (never the
    subject), the case (an opaque reference), who placed it and when, until when it lasts (None:
    until released), the seq of its ledger entry; once released, when, by whom (None for an
    override that named no one), the receipt id of the shred that overrode it (None for a
    release) and the seq of the release's or override's ledger entry. Times are seconds since
    the epoch (UTC)."""

    hold_id: str
    ref: bytes
    case: str
    by: str
    placed_at: float
    until: float | None
    ledger_seq: int | None
    released_at: float | None = None
    released_by: str | None = None
    override_receipt: str | None = None
    release_seq: int | None = None

    def active(self, now: float) -> bool:
        """Whether the hold holds at ``now``: not released, and its ``until`` not passed."""
        return self.released_at is None and (self.until is None or self.until > now)

    @safe_repr
    def __repr__(self) -> str:  # never the case: an opaque reference, kept out of logs all the same
        return (
            f"HoldRow(hold={self.hold_id}, ref={self.ref.hex()[:16]}, "
            f"released={self.released_at is not None}, ledger_seq={self.ledger_seq})"
        )
