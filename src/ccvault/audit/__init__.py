"""Audit artefacts: erasure receipts (the hash-chained audit log arrives in a later release)."""

from ._receipt import DestroyedKey, ErasureReceipt

__all__ = ["DestroyedKey", "ErasureReceipt"]
