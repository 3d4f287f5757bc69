"""Crypto-shredding: :class:`Erasure` fences a subject, destroys its keys and signs the receipt;
its dry run (:meth:`Erasure.preview`) reports what a shred would make unreadable.

The journal, ledger and completion records (rules 3 to 5 of the product contract's lifecycle
design) are to live in this package. The subject export reads tables, so it lives in the
SQLAlchemy integration (``ccvault.sqlalchemy._export``) and takes the stored receipt from
:meth:`Erasure.receipt`.
"""

from ._preview import EnginePreview, PreviewColumn, ShredPreview, SkippedTable, TablePreview
from ._shred import Erasure

__all__ = [
    "EnginePreview",
    "Erasure",
    "PreviewColumn",
    "ShredPreview",
    "SkippedTable",
    "TablePreview",
]
