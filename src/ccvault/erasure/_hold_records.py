"""Owns the signed records of legal holds — a hold, its release, and the override of a held
subject's shred — the :class:`Hold` the vault reports, and what each record does to the key
store (:func:`apply_hold_record`, for the ledger-first step and for the replay alike). Must not
do I/O of its own nor decide when a hold applies: :class:`~ccvault.erasure.Holds` does.

DESIGN.md, lifecycle rules 3 and 8: holds and releases are journal entries, each its own
pydantic model with its own ``format`` literal, signed as ``lp("ccvault/sig/v1", format,
canonical JSON)`` (docs/erasure.md, "Signing"). A record names the subject by its ref, never
in clear; ``case`` is an opaque reference (a matter number, a ticket id), never personal data.
Byte-level description and vectors: docs/erasure.md, "Legal holds", and
tests/vectors/holds_v1.json.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..keystore._protocol import JournalTxn
from ..keystore._records import HoldRow
from ._records import Record, SignedRecord, UtcDatetime, register_record_type

__all__ = [
    "HOLD_FORMAT",
    "HOLD_KINDS",
    "OVERRIDE_FORMAT",
    "RELEASE_FORMAT",
    "TEXT_MAX",
    "Hold",
    "HoldOverrideRecord",
    "HoldRecord",
    "HoldReleaseRecord",
    "apply_hold_record",
    "check_text",
    "hold_of",
    "hold_row",
]

HOLD_FORMAT: Final = "ccvault-hold/v1"
RELEASE_FORMAT: Final = "ccvault-hold-release/v1"
OVERRIDE_FORMAT: Final = "ccvault-hold-override/v1"
TEXT_MAX: Final = 128
"""The longest ``case`` and ``by`` (characters)."""

_HEX32 = r"^[0-9a-f]{32}$"
_HEX64 = r"^[0-9a-f]{64}$"


def check_text(value: object, what: str) -> str:
    """``value`` as a ``case`` or ``by`` may be: a str of 1 to 128 printable characters (no
    newline, tab or other control character), not only spaces. Raises TypeError or ValueError
    naming ``what``, never quoting the value."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    if not 1 <= len(value) <= TEXT_MAX or not value.isprintable() or not value.strip():
        raise ValueError(
            f"{what} must be 1 to {TEXT_MAX} printable characters, not only spaces (no newline "
            "or other control character)"
        )
    return value


def _case(value: str) -> str:
    return check_text(value, "case")


def _by(value: str) -> str:
    return check_text(value, "by")


Case = Annotated[str, AfterValidator(_case)]
Actor = Annotated[str, AfterValidator(_by)]


@register_record_type
class HoldRecord(SignedRecord):
    """A legal hold placed on a subject (by ref): from then on ``shred()`` of the subject is
    refused unless overridden, until it is released or ``until`` passes."""

    FORMAT: ClassVar[str] = HOLD_FORMAT

    format: Literal["ccvault-hold/v1"] = HOLD_FORMAT
    hold_id: str = Field(pattern=_HEX32, description="random, 32 hex digits")
    installation_id: str = Field(min_length=1, max_length=64)
    subject_ref: str = Field(pattern=_HEX64, description="hex of the subject ref")
    case: Case = Field(description="an opaque reference of the matter, never personal data")
    by: Actor = Field(description="who placed it")
    placed_at: UtcDatetime
    until: UtcDatetime | None = Field(default=None, description="None: until released")


@register_record_type
class HoldReleaseRecord(SignedRecord):
    """The release of a hold: the subject is no longer held by it."""

    FORMAT: ClassVar[str] = RELEASE_FORMAT

    format: Literal["ccvault-hold-release/v1"] = RELEASE_FORMAT
    hold_id: str = Field(pattern=_HEX32)
    installation_id: str = Field(min_length=1, max_length=64)
    by: Actor = Field(description="who released it")
    released_at: UtcDatetime


@register_record_type
class HoldOverrideRecord(SignedRecord):
    """``shred(subject, override_hold=True)`` of a held subject: the entry right before the
    shred's receipt, naming the receipt and the active holds the shred overrode (each then
    reads as released by it)."""

    FORMAT: ClassVar[str] = OVERRIDE_FORMAT

    format: Literal["ccvault-hold-override/v1"] = OVERRIDE_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    receipt_id: str = Field(min_length=1, max_length=64, description="the shred's receipt")
    subject_ref: str = Field(pattern=_HEX64)
    hold_ids: tuple[str, ...] = Field(min_length=1, max_length=1000)
    by: Actor | None = Field(default=None, description="who overrode them, when given")
    overridden_at: UtcDatetime


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Hold(BaseModel):
    """A legal hold as :meth:`Vault.holds` reports it: never the subject, only its ref.

    ``active``: whether it holds at the time of the report (not released, ``until`` not
    passed, by the vault's clock). A released hold has ``released_at``; one overridden by a
    shred also names that shred's receipt (``override_receipt``), and ``released_by`` is who
    overrode it, if the shred said."""

    model_config = _FROZEN

    hold_id: str
    subject_ref: str = Field(description="hex of the subject ref")
    case: str = Field(
        description="the opaque reference it was placed with (left out of the repr)", repr=False
    )
    by: str = Field(description="who placed it")
    placed_at: datetime
    until: datetime | None
    active: bool
    released_at: datetime | None = None
    released_by: str | None = None
    override_receipt: str | None = Field(
        default=None, description="receipt id of the shred that overrode it"
    )
    ledger_seq: int | None = Field(default=None, description="seq of the hold's ledger entry")
    release_seq: int | None = Field(
        default=None, description="seq of the release's or override's ledger entry"
    )


def _at(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def hold_of(row: HoldRow, now: float) -> Hold:
    """The report of a stored hold at ``now``."""
    placed = _at(row.placed_at)
    assert placed is not None
    return Hold(
        hold_id=row.hold_id,
        subject_ref=row.ref.hex(),
        case=row.case,
        by=row.by,
        placed_at=placed,
        until=_at(row.until),
        active=row.active(now),
        released_at=_at(row.released_at),
        released_by=row.released_by,
        override_receipt=row.override_receipt,
        ledger_seq=row.ledger_seq,
        release_seq=row.release_seq,
    )


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def hold_row(record: HoldRecord, seq: int | None) -> HoldRow:
    """The key store's row of a hold entry."""
    return HoldRow(
        hold_id=record.hold_id,
        ref=bytes.fromhex(record.subject_ref),
        case=record.case,
        by=record.by,
        placed_at=record.placed_at.timestamp(),
        until=_ts(record.until),
        ledger_seq=seq,
    )


def apply_hold_record(txn: JournalTxn, record: Record, seq: int | None) -> bool:
    """Do to the key store what ``record`` says, in ``txn`` (``seq``: its ledger entry, None
    while it waits in the outbox); idempotent. False for a record that is not about holds."""
    if isinstance(record, HoldRecord):
        txn.record_holds([hold_row(record, seq)])
    elif isinstance(record, HoldReleaseRecord):
        txn.release_holds(
            [record.hold_id], at=record.released_at.timestamp(), by=record.by, seq=seq
        )
    elif isinstance(record, HoldOverrideRecord):
        txn.release_holds(
            record.hold_ids,
            at=record.overridden_at.timestamp(),
            by=record.by,
            seq=seq,
            override_receipt=record.receipt_id,
        )
    else:
        return False
    return True


HOLD_KINDS: Final = frozenset({HOLD_FORMAT, RELEASE_FORMAT, OVERRIDE_FORMAT})
"""The entry kinds :func:`apply_hold_record` applies."""
