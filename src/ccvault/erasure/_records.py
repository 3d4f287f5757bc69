"""Owns the signed records of the erasure journal: the signed-record base, genesis, completion and
the journal entry, with their canonical bytes. Must not do I/O nor change receipt v1 (frozen).

Every record type here is a frozen pydantic model with a ``format`` literal, ``signing_key`` (hex
Ed25519 public key) and ``signature`` (hex). The signature covers
``lp("ccvault/sig/v1", format, canonical JSON of the record without "signature")``; canonical JSON
is ``json.dumps(model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` in UTF-8. Verifiers check ``format`` first. The v1
:class:`~ccvault.ErasureReceipt` keeps its own scheme and bytes: a journal entry carries it as its
record unchanged. Byte-level description and vectors: docs/erasure.md, "Journal and ledger".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .._secret import SecretKey
from ..audit._receipt import RECEIPT_FORMAT, ErasureReceipt
from ..crypto._encoding import lp
from ..crypto._primitives import ed25519_public_key, ed25519_sign, ed25519_verify

__all__ = [
    "COMPLETION_FORMAT",
    "ENTRY_FORMAT",
    "GENESIS_FORMAT",
    "RETENTION_REPORT_FORMAT",
    "SIG_DOMAIN",
    "ZERO_HASH",
    "CompletionRecord",
    "GenesisRecord",
    "JournalEntry",
    "Record",
    "RetentionReportRecord",
    "SignedRecord",
    "canonical_json",
    "parse_record",
    "receipt_sha256",
    "record_format",
    "register_record_type",
]

SIG_DOMAIN: Final = b"ccvault/sig/v1"
GENESIS_FORMAT: Final = "ccvault-journal-genesis/v1"
COMPLETION_FORMAT: Final = "ccvault-erasure-completion/v1"
ENTRY_FORMAT: Final = "ccvault-journal-entry/v1"
RETENTION_REPORT_FORMAT: Final = "ccvault-retention-report/v1"
ZERO_HASH: Final = "0" * 64
"""The ``prev_hash`` of the genesis entry (seq 0)."""

_HEX32 = r"^[0-9a-f]{32}$"
_HEX64 = r"^[0-9a-f]{64}$"
_LABEL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def canonical_json(data: object) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no spaces, UTF-8 (NaN refused)."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError("must be an aware datetime in UTC")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
R = TypeVar("R", bound="SignedRecord")


class SignedRecord(BaseModel):
    """Base of every signed record type of the journal (receipt v1 excepted).

    A subclass narrows ``format`` to its ``Literal`` and gives it as the default; :meth:`sign`
    fills ``signing_key`` and ``signature``; :meth:`verify` checks the format first, then that the
    record names the pinned key, then the signature.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    FORMAT: ClassVar[str] = ""

    format: str
    signing_key: str = Field(default="", description="hex of the Ed25519 public key that signed")
    signature: str = Field(default="", description="hex of the Ed25519 signature")

    def canonical_bytes(self) -> bytes:
        """The record as canonical JSON, signature included (what a journal entry stores)."""
        return canonical_json(self.model_dump(mode="json"))

    def signed_bytes(self) -> bytes:
        """What the signature covers: lp("ccvault/sig/v1", format, canonical JSON without the
        signature)."""
        body = canonical_json(self.model_dump(mode="json", exclude={"signature"}))
        return lp(SIG_DOMAIN, self.format.encode("utf-8"), body)

    def sign(self: R, seed: SecretKey, *, public_key: bytes | None = None) -> R:
        """This record signed with the installation's receipt-signing seed (deterministic:
        signing a signed record again gives the same signature). ``public_key``: the seed's,
        when the caller holds it already (saves deriving it)."""
        key = ed25519_public_key(seed.reveal()) if public_key is None else public_key
        unsigned = self.model_copy(update={"signing_key": key.hex(), "signature": ""})
        signature = ed25519_sign(seed.reveal(), unsigned.signed_bytes())
        return unsigned.model_copy(update={"signature": signature.hex()})

    def verify(self, public_key: bytes | str) -> bool:
        """Check the format, then the signature against the pinned key (a record carries its own
        ``signing_key``; checking it against that alone would accept any re-signed forgery)."""
        if not self.FORMAT or self.format != self.FORMAT:
            return False
        expected = public_key.hex() if isinstance(public_key, bytes) else public_key
        if expected.lower() != self.signing_key.lower():
            return False
        try:
            key, signature = bytes.fromhex(self.signing_key), bytes.fromhex(self.signature)
        except ValueError:
            return False
        return ed25519_verify(key, signature, self.signed_bytes())

    def digest(self) -> str:
        """Hex SHA-256 of :meth:`canonical_bytes` (a journal entry's link in the chain)."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


class GenesisRecord(SignedRecord):
    """The record of entry 0: names the installation the ledger belongs to."""

    FORMAT: ClassVar[str] = GENESIS_FORMAT

    format: Literal["ccvault-journal-genesis/v1"] = GENESIS_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    created_at: UtcDatetime


class CompletionRecord(SignedRecord):
    """Phase 2 of an erasure: the propagation bound has passed and the second blind-index sweep
    ran. It points at its receipt by id, by the SHA-256 of the receipt's signed bytes, and by the
    sequence number of the receipt's journal entry."""

    FORMAT: ClassVar[str] = COMPLETION_FORMAT

    format: Literal["ccvault-erasure-completion/v1"] = COMPLETION_FORMAT
    receipt_id: str = Field(min_length=1, max_length=64)
    receipt_sha256: str = Field(pattern=_HEX64, description="SHA-256 of receipt.signed_bytes()")
    completed_at: UtcDatetime
    bound_waited_seconds: float = Field(ge=0, allow_inf_nan=False)
    tables_swept: tuple[str, ...] = Field(description="the tables the second sweep cleared")
    ledger_seq: int = Field(ge=1, description="seq of the receipt's journal entry")
    installation_id: str = Field(min_length=1, max_length=64)

    @classmethod
    def for_receipt(
        cls,
        receipt: ErasureReceipt,
        *,
        ledger_seq: int,
        completed_at: datetime,
        bound_waited_seconds: float,
        tables_swept: tuple[str, ...],
    ) -> CompletionRecord:
        """An unsigned completion of ``receipt`` (the journal signs it when appending)."""
        return cls(
            receipt_id=receipt.receipt_id,
            receipt_sha256=receipt_sha256(receipt),
            completed_at=completed_at,
            bound_waited_seconds=bound_waited_seconds,
            tables_swept=tables_swept,
            ledger_seq=ledger_seq,
            installation_id=receipt.installation_id,
        )

    def completes(self, receipt: ErasureReceipt) -> bool:
        """Whether this completion names ``receipt`` (id, digest and installation)."""
        return (
            self.receipt_id == receipt.receipt_id
            and self.receipt_sha256 == receipt_sha256(receipt)
            and self.installation_id == receipt.installation_id
        )


class JournalEntry(SignedRecord):
    """The ledger's unit: one record, its place in the installation's gap-free sequence and the
    hash of the entry before it (``prev_hash``, hex SHA-256 of that entry's canonical bytes,
    signature included; 64 zeros for the genesis entry)."""

    FORMAT: ClassVar[str] = ENTRY_FORMAT

    format: Literal["ccvault-journal-entry/v1"] = ENTRY_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    prev_hash: str = Field(pattern=_HEX64)
    appended_at: UtcDatetime
    kind: str = Field(min_length=1, max_length=64, description="the record's format")
    record: dict[str, Any]

    def parsed(self) -> Record | None:
        """The record as its model, or None for a kind this library does not know (a newer one).

        Raises ``ValueError`` (pydantic's ``ValidationError``) when it does not parse."""
        return parse_record(self.kind, self.record)


Record: TypeAlias = SignedRecord | ErasureReceipt
"""What a journal entry carries: a signed record, or a v1 erasure receipt."""

_TYPES: dict[str, type[SignedRecord]] = {
    GENESIS_FORMAT: GenesisRecord,
    COMPLETION_FORMAT: CompletionRecord,
}


def register_record_type(cls: type[SignedRecord]) -> type[SignedRecord]:
    """Make ``cls`` (a :class:`SignedRecord` with its own ``FORMAT``) a kind the journal parses
    and verifies: holds, releases, retention reports, policies, lockdowns and audit checkpoints
    plug in this way. Usable as a class decorator."""
    if not cls.FORMAT or cls.FORMAT in (ENTRY_FORMAT, RECEIPT_FORMAT):
        raise ValueError("a record type needs a FORMAT of its own")
    known = _TYPES.get(cls.FORMAT)
    if known is not None and known is not cls:
        raise ValueError(f"record format {cls.FORMAT!r} is already registered")
    _TYPES[cls.FORMAT] = cls
    return cls


def record_format(record: Record) -> str:
    return record.format


def parse_record(kind: str, data: Mapping[str, Any]) -> Record | None:
    """The record of an entry of ``kind``; None for an unknown kind. The format is checked
    first: a record whose ``format`` is not ``kind`` raises ``ValueError``."""
    if data.get("format") != kind:
        raise ValueError("the record's format is not the entry's kind")
    if kind == RECEIPT_FORMAT:
        return ErasureReceipt.model_validate(dict(data))
    cls = _TYPES.get(kind)
    return None if cls is None else cls.model_validate(dict(data))


def receipt_sha256(receipt: ErasureReceipt) -> str:
    """Hex SHA-256 of the receipt's signed bytes (what a completion record names)."""
    return hashlib.sha256(receipt.signed_bytes()).hexdigest()


HexRef = Annotated[str, Field(pattern=_HEX64)]


@register_record_type
class RetentionReportRecord(SignedRecord):
    """One transaction of a retention enforcement (DESIGN.md, lifecycle rules 3, 7 and 8;
    docs/retention.md, "Enforcement"): the period secrets it destroyed, by category and label,
    after preserving the keys of the subjects then held (held keys, one per held subject's live
    key version and period), and the held keys of subjects no longer held that it destroyed.
    Appended ledger first, in the transaction that destroys them; replayed into a key store
    restored from a backup (held keys made again while the period secret is still there, then
    the periods tombstoned). Subjects are named by their refs only, never in clear.

    ``clock`` is the vault clock's reading that decided what was due; ``policy_digest`` the
    digest of the retention policy it applied (docs/format.md, "7. Retention periods");
    ``erasure_horizon`` the date after which no key-store backup holds the destroyed secrets,
    as on receipts (None without per-epoch KMS roots)."""

    FORMAT: ClassVar[str] = RETENTION_REPORT_FORMAT

    format: Literal["ccvault-retention-report/v1"] = RETENTION_REPORT_FORMAT
    installation_id: str = Field(min_length=1, max_length=64)
    run_id: str = Field(pattern=_HEX32, description="one id for every entry of one run")
    policy_digest: str = Field(pattern=_HEX64)
    clock: UtcDatetime = Field(description="the vault clock's reading the run decided by")
    periods: dict[str, tuple[str, ...]] = Field(
        description="category -> labels of the periods destroyed (<category>/<start date>)"
    )
    held_refs: tuple[HexRef, ...] = Field(
        description="hex refs of the held subjects whose keys were preserved"
    )
    held_count: int = Field(ge=0, description="how many subjects: len(held_refs)")
    held_keys: int = Field(ge=0, description="held keys made (subject key versions x periods)")
    released_refs: tuple[HexRef, ...] = Field(
        description="hex refs of subjects no longer held whose held keys were destroyed"
    )
    released_keys: int = Field(ge=0, description="held keys destroyed")
    propagation_bound_seconds: float = Field(ge=0, allow_inf_nan=False)
    erasure_horizon: UtcDatetime | None

    @model_validator(mode="after")
    def _consistent(self) -> RetentionReportRecord:
        for category, labels in self.periods.items():
            if not labels:
                raise ValueError("a category of the report lists no period")
            for label in labels:
                name, _, day = label.rpartition("/")
                if name != category or not _LABEL_DATE.match(day):
                    raise ValueError("a period label is not <category>/<YYYY-MM-DD>")
        if self.held_count != len(self.held_refs):
            raise ValueError("held_count is not the number of held_refs")
        return self

    def labels(self) -> list[str]:
        """Every period label the report lists."""
        return sorted(label for labels in self.periods.values() for label in labels)
