"""SQLAlchemy integration: transparent per-customer encryption of columns.

.. code-block:: python

    from ccvault import Vault
    from ccvault.sqlalchemy import Encrypted

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        phone: Mapped[str] = mapped_column(Encrypted(String(32), subject="id"))

    vault = Vault.from_settings()
    vault.attach(engine)

See docs/sqlalchemy.md.
"""

from .._sentinels import SHREDDED, UNREADABLE, Sentinel, Shredded, Unreadable
from ._datamap import DataMap, MappedColumn, MappedTable, MapWarning, SearchableForm
from ._export import ErasureState, ExportedTable, ExportScope, NotSearched, SubjectExport
from ._purge import PurgeReport
from ._reencrypt import MoveReport
from ._scrub import ColumnCounts, ScrubReport, UnreadableValue
from ._types import BlindIndex, Encrypted
from ._write import StatementRefused

__all__ = [
    "SHREDDED",
    "UNREADABLE",
    "BlindIndex",
    "ColumnCounts",
    "DataMap",
    "Encrypted",
    "ErasureState",
    "ExportScope",
    "ExportedTable",
    "MapWarning",
    "MappedColumn",
    "MappedTable",
    "MoveReport",
    "NotSearched",
    "PurgeReport",
    "ScrubReport",
    "SearchableForm",
    "Sentinel",
    "Shredded",
    "StatementRefused",
    "SubjectExport",
    "Unreadable",
    "UnreadableValue",
]
