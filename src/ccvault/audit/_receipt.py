"""Erasure receipts: signed statements of what a shred destroyed, when, and until when backups
may still hold recoverable copies (the projected erasure horizon)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..crypto._primitives import ed25519_public_key, ed25519_sign, ed25519_verify

__all__ = ["DestroyedKey", "ErasureReceipt", "sign_receipt"]

RECEIPT_FORMAT: Final = "ccvault-erasure-receipt/v1"


class DestroyedKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(description="hex of the 128-bit key id (kept as a tombstone)")
    version: int


class ErasureReceipt(BaseModel):
    """What ``Vault.shred`` did, signed with the installation's Ed25519 receipt key.

    ``subject_ref`` is pseudonymous: HMAC-SHA256 of the subject under the installation's
    subject-reference key, the same value the key store holds. It identifies the subject only to
    someone who can compute refs with this installation's keys.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ccvault-erasure-receipt/v1"] = RECEIPT_FORMAT
    receipt_id: str
    installation_id: str
    subject_ref: str
    shredded_at: datetime
    subject_was_known: bool = Field(
        description="False when the subject had no key yet: it is fenced all the same"
    )
    destroyed_keys: tuple[DestroyedKey, ...]
    epoch_seq: int = Field(description="the epoch active at shred time")
    propagation_bound_seconds: float = Field(
        description="other processes stop serving cached keys of this subject within this bound"
    )
    erasure_horizon: datetime | None = Field(
        description="projected date after which no backup of the key store can recover the "
        "destroyed keys: the latest retirement of the epoch active at shred time (its rotation "
        "due date, or one rotation period after the shred when that was already past), plus the "
        "backup-retention window, a day for the daily destroy job and the KMS's own deletion "
        "waiting period; it holds under the operating assumptions of docs/security.md. None when "
        "epochs share one KMS root (per_epoch_roots=False): old backups stay decryptable while "
        "that root exists"
    )
    blind_index_horizon: datetime | None = Field(
        default=None,
        description="when the blind-index key that indexed this subject's values is destroyed, so "
        "that blind indexes in backups of the application database match nothing any more. None: "
        "no such date is scheduled (blind-index keys are not rotated yet), whether or not the "
        "installation has blind indexes. The live indexes are cleared by the shred itself in every "
        "table the shredding process has imported and attached (a warning names the others).",
    )
    signing_key: str = Field(description="hex of the Ed25519 public key that signed this receipt")
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers: every field but the signature, as JSON."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def verify(self, public_key: bytes | str, *, installation_id: str | None = None) -> bool:
        """Check the signature against the vault's pinned key (``vault.receipt_public_key``).

        The key is required: a receipt carries its own ``signing_key``, and checking a receipt
        against the key it brings would accept any re-signed forgery.
        """
        expected = public_key.hex() if isinstance(public_key, bytes) else public_key
        if expected.lower() != self.signing_key.lower():
            return False
        if installation_id is not None and installation_id != self.installation_id:
            return False
        try:
            key = bytes.fromhex(self.signing_key)
            sig = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return ed25519_verify(key, sig, self.signed_bytes())


def sign_receipt(receipt: ErasureReceipt, seed: bytes) -> ErasureReceipt:
    unsigned = receipt.model_copy(
        update={"signing_key": ed25519_public_key(seed).hex(), "signature": ""}
    )
    return unsigned.model_copy(
        update={"signature": ed25519_sign(seed, unsigned.signed_bytes()).hex()}
    )
