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
from ._scrub import ColumnCounts, ScrubReport, UnreadableValue
from ._types import BlindIndex, Encrypted
from ._write import StatementRefused

__all__ = [
    "SHREDDED",
    "UNREADABLE",
    "BlindIndex",
    "ColumnCounts",
    "Encrypted",
    "ScrubReport",
    "Sentinel",
    "Shredded",
    "StatementRefused",
    "Unreadable",
    "UnreadableValue",
]
