"""Owns legal holds (DESIGN.md, lifecycle rule 8; docs/erasure.md, 'Legal holds'): placing one,
releasing one, listing them, and the guard a shred runs inside its transaction — a held
subject's shred is refused, or overridden with an entry of its own. Must not destroy keys (the
key store's shred does) nor talk to the ledger itself (the ledger link does).

A hold, a release and an override are ledger entries first: each is appended in the key-store
journal transaction that then writes its rows, under the ``ledger_applied_seq`` lock that every
shred (and, later, each retention period's preserve-then-destroy transaction) takes first, so a
hold committed before a shred is always seen by it, and a shred committed before a hold makes
the hold refuse the subject. Holds need a ledger: without one they are refused
(``ConfigurationError``), as ``complete_erasures`` and ``shred(wait=True)`` are. Whether a hold
is active is decided from the vault's clock: not released, and its ``until`` not passed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Final

from ..errors import HoldNotFoundError, SubjectHeldError, SubjectShreddedError
from ..keyring import KeyRing, VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import State
from ._hold_records import (
    Hold,
    HoldOverrideRecord,
    HoldRecord,
    HoldReleaseRecord,
    check_text,
    hold_of,
)
from ._journal import Journal
from ._link import LedgerLink

__all__ = ["HeldGuard", "HoldId", "Holds"]

_HOLD_ID_LEN: Final = 32


def _utc(value: datetime, now: float) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError("until must be a datetime (aware) or None")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("until must be an aware datetime (a naive one names no instant)")
    until = value.astimezone(timezone.utc)
    if until.timestamp() <= now:
        raise ValueError("until must be later than now (the vault's clock)")
    return until


def _check_hold_id(hold_id: object) -> str:
    if not isinstance(hold_id, str):
        raise TypeError("hold_id must be a str")
    if len(hold_id) != _HOLD_ID_LEN or any(c not in "0123456789abcdef" for c in hold_id):
        raise ValueError("a hold id is 32 lowercase hex digits, as hold() returned it")
    return hold_id


class HoldId(str):
    """What :meth:`Vault.hold` returns: the hold's id (a str of 32 hex digits, what
    :meth:`Vault.release` takes), with ``expired``: per retention category, the label of its
    latest period already expired when the hold was placed (``"transcripts/2026-02-01"``).
    Holds are not retroactive: the subject's values of that period and the ones before it are
    gone; periods that expire while the hold is active keep the subject's keys."""

    expired: tuple[str, ...]

    def __new__(cls, hold_id: str, expired: tuple[str, ...] = ()) -> HoldId:
        self = super().__new__(cls, hold_id)
        self.expired = expired
        return self

    def __reduce__(self) -> tuple[type[HoldId], tuple[str, tuple[str, ...]]]:
        return HoldId, (str(self), self.expired)


@dataclass
class HeldGuard:
    """The hold check of one shred (or one batch of ``shred_many``), run by the key store in
    the shred's transaction (:data:`~ccvault.keystore.ShredGuard`): without ``override`` a held
    ref is refused (``raising``: :class:`SubjectHeldError`) or left out; with it, the active
    holds of each ref are kept in :attr:`overridden` for the override entries. Each run of the
    transaction (a retry) starts afresh."""

    now: float
    override: bool
    raising: bool
    overridden: dict[bytes, list[str]] = field(default_factory=dict)
    held: dict[bytes, list[str]] = field(default_factory=dict)

    def __call__(self, txn: JournalTxn, refs: Sequence[bytes]) -> Collection[bytes]:
        active: dict[bytes, list[str]] = {}
        for row in txn.holds(refs):
            if row.active(self.now):
                active.setdefault(row.ref, []).append(row.hold_id)
        self.overridden = active if self.override else {}
        self.held = {} if self.override else active
        if self.held and self.raising:
            raise SubjectHeldError(next(iter(self.held.values())))
        return set(self.held)

    def overrides(
        self, installation_id: str, receipts: Sequence[tuple[bytes, str]], by: str | None
    ) -> dict[str, HoldOverrideRecord]:
        """The override entries of the refs shredded with their receipt ids, by receipt id
        (unsigned: the journal signs them)."""
        at = datetime.fromtimestamp(self.now, tz=timezone.utc)
        return {
            receipt_id: HoldOverrideRecord(
                installation_id=installation_id,
                receipt_id=receipt_id,
                subject_ref=ref.hex(),
                hold_ids=tuple(self.overridden[ref]),
                by=by,
                overridden_at=at,
            )
            for ref, receipt_id in receipts
            if self.overridden.get(ref)
        }


class Holds:
    """``vault.hold``, ``vault.release``, ``vault.holds``; see :class:`~ccvault.Vault`."""

    def __init__(
        self,
        store: KeyStore,
        ring: KeyRing,
        installation_id: str,
        options: VaultOptions,
        link: LedgerLink,
    ) -> None:
        self._store = store
        self._ring = ring
        self._id = installation_id
        self._options = options
        self._link = link

    def hold(
        self, subject: object, *, case: object, by: object, until: datetime | None = None
    ) -> HoldId:
        """Place a hold on ``subject``; returns its id. See :meth:`Vault.hold`."""
        self._options.writable("hold")
        case_text, actor = check_text(case, "case"), check_text(by, "by")
        ref = self._ring.subject_ref(subject)  # TypeError for a subject of another type
        now = self._options.now()
        held_until = None if until is None else _utc(until, now)
        record = HoldRecord(
            hold_id=uuid.uuid4().hex,
            installation_id=self._id,
            subject_ref=ref.hex(),
            case=case_text,
            by=actor,
            placed_at=datetime.fromtimestamp(now, tz=timezone.utc),
            until=held_until,
        )

        def step(txn: JournalTxn, journal: Journal) -> HoldId:
            # Under the ledger lock (which every enforcement takes first): the periods expired
            # before this hold, which it cannot bring back.
            expired = tuple(txn.last_expired().values())
            if txn.hold_rows([record.hold_id]):  # a retry: the entry went in and was replayed
                return HoldId(record.hold_id, expired)
            # Under the ledger lock a shred of this subject has committed, or waits for us.
            if txn.head_state(ref) == State.SHREDDED:
                raise SubjectShreddedError(
                    "the data subject has been shredded: a hold would keep nothing (no hold "
                    "was placed)"
                )
            self._link.append(txn, journal, [record])
            return HoldId(record.hold_id, expired)

        return self._link.journal_entries("hold", step)

    def release(self, hold_id: object, *, by: object) -> None:
        """Release a hold; see :meth:`Vault.release`."""
        self._options.writable("release")
        wanted, actor = _check_hold_id(hold_id), check_text(by, "by")

        def step(txn: JournalTxn, journal: Journal) -> None:
            row = txn.hold_rows([wanted]).get(wanted)
            if row is None:
                raise HoldNotFoundError(wanted)
            if row.released_at is not None:
                return  # released (or overridden) already: no second entry
            record = HoldReleaseRecord(
                hold_id=wanted,
                installation_id=self._id,
                by=actor,
                released_at=datetime.fromtimestamp(self._options.now(), tz=timezone.utc),
            )
            self._link.append(txn, journal, [record])

        self._link.journal_entries("release", step)

    def holds(self, subject: object = None, *, active_only: bool = True) -> list[Hold]:
        """The holds of ``subject`` (None: of every subject); see :meth:`Vault.holds`."""
        refs = None if subject is None else [self._ring.subject_ref(subject)]
        now = self._options.now()
        rows = self._store.holds(refs, unreleased=active_only)
        return [hold_of(r, now) for r in rows if r.active(now) or not active_only]
