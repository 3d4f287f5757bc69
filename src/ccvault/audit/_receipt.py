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
    erasure_horizon: datetime = Field(
        description="projected date after which no backup can recover the destroyed keys: "
        "retirement of the epoch active at shred time plus the backup-retention window"
    )
    blind_index_horizon: datetime | None = Field(
        default=None, description="when old blind-index keys are gone too (None: no blind indexes)"
    )
    signing_key: str = Field(description="hex of the Ed25519 public key that signed this receipt")
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers: every field but the signature, as JSON."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def verify(self, public_key: bytes | str | None = None) -> bool:
        """Check the signature, against ``public_key`` if given.

        Recommended: pin the vault's key.
        """
        key_hex = self.signing_key
        if public_key is not None:
            expected = public_key.hex() if isinstance(public_key, bytes) else public_key
            if expected.lower() != key_hex.lower():
                return False
        try:
            key = bytes.fromhex(key_hex)
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
