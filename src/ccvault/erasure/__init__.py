"""Crypto-shredding: :class:`Erasure` fences a subject, destroys its keys and signs the receipt.

The journal, ledger, completion records and subject export (rules 3 to 5 of the product
contract's lifecycle design) are to live in this package.
"""

from ._shred import Erasure

__all__ = ["Erasure"]
