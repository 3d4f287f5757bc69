"""Owns the dry run of a shred: the report of what ``shred(subject)`` would make unreadable (keys,
tables, columns, row counts) and the rule of which key rows a shred destroys, shared with the
receipt. Must not write anything, anywhere: no key, head, fence or application row.

The key store part is read by :meth:`Erasure.preview`; the tables come from the dry runs the
integrations register beside their after-shred hooks (``ring.after_shred.add(sweep,
preview=...)``), each returning one :class:`EnginePreview`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ..audit._receipt import DestroyedKey
from ..keystore._records import KeyRecord, State

__all__ = [
    "EnginePreview",
    "PreviewColumn",
    "ShredPreview",
    "SkippedTable",
    "TablePreview",
    "keys_a_shred_destroys",
]


def keys_a_shred_destroys(keys: Iterable[KeyRecord]) -> tuple[DestroyedKey, ...]:
    """The keys among a subject's key rows that its shred destroys (and its receipt lists): live
    and quarantined ones, by key id and version; tombstones are destroyed already."""
    return tuple(
        DestroyedKey(key_id=k.key_id.hex(), version=k.version)
        for k in sorted(keys, key=lambda k: (k.key_id, k.version))
        if k.state in (State.LIVE, State.QUARANTINED)
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreviewColumn(_Frozen):
    """An encrypted column of the subject's rows: its values would read as ``SHREDDED``."""

    column: str = Field(description="the column's name in the database")
    label: str = Field(description="its context label")
    blind_index: str | None = Field(
        description="its blind-index column, which the sweep would set to NULL in the subject's "
        "rows; None when the column is not searchable or the database's table lacks it"
    )


class TablePreview(_Frozen):
    """One table of an attached engine's database holding the subject's rows."""

    table: str = Field(description="the table's name (with its schema, if any)")
    subject_column: str
    rows: int = Field(description="the subject's rows, matched as the sweep matches them")
    columns: tuple[PreviewColumn, ...] = Field(
        description="the encrypted columns the database's table has"
    )

    @property
    def shredded_columns(self) -> tuple[str, ...]:
        """Names of the columns whose values in the subject's rows would read as SHREDDED."""
        return tuple(c.column for c in self.columns)

    @property
    def cleared_indexes(self) -> tuple[str, ...]:
        """Names of the blind-index columns the sweep would set to NULL in the subject's rows."""
        return tuple(c.blind_index for c in self.columns if c.blind_index is not None)


class SkippedTable(_Frozen):
    """A table with encrypted columns that a dry run did not count, and why."""

    table: str
    reason: str


class EnginePreview(_Frozen):
    """What a shred would reach through one attached engine."""

    database: str = Field(description="the engine's URL, password and secrets masked")
    tables: tuple[TablePreview, ...]
    skipped: tuple[SkippedTable, ...] = Field(
        description="tables the sweep skips too: the database lacks them or their subject "
        "column, or they were never written through this vault"
    )
    not_counted: tuple[SkippedTable, ...] = Field(
        description="tables the dry run could not read (the database's error type and code)"
    )


class ShredPreview(_Frozen):
    """What ``vault.shred(subject)`` would make unreadable now, from ``shred(subject,
    dry_run=True)``, which destroys and writes nothing. A snapshot: keys created and rows written
    after it are destroyed by the shred all the same."""

    installation_id: str
    subject_ref: str = Field(description="hex of the subject's pseudonymous ref")
    previewed_at: datetime
    subject_known: bool = Field(
        description="whether the key store holds a key lineage for the subject (the receipt's "
        "subject_was_known)"
    )
    already_shredded: bool = Field(
        description="a shred of the subject is recorded: a repeat destroys no key, returns the "
        "stored receipt and sweeps again"
    )
    keys_to_destroy: tuple[DestroyedKey, ...] = Field(
        description="the keys the shred would destroy (its receipt's destroyed_keys)"
    )
    engines: tuple[EnginePreview, ...] = Field(
        description="per engine attached to the vault, the tables its sweep reaches; none: "
        "a shred from this process makes the values unreadable and clears no blind index"
    )
    unswept_indexes: tuple[str, ...] = Field(
        description="context labels of columns with blind indexes in this installation that "
        "no attached engine would sweep (the WARNING a shred from this process logs)"
    )
    held: bool = Field(
        default=False,
        description="the subject is under an active legal hold: the shred raises "
        "SubjectHeldError and destroys nothing, unless override_hold=True",
    )
    hold_ids: tuple[str, ...] = Field(
        default=(), description="the ids of the subject's active legal holds"
    )

    @property
    def rows(self) -> int:
        """The subject's rows in every table counted, on every attached engine."""
        return sum(t.rows for e in self.engines for t in e.tables)

    @property
    def complete(self) -> bool:
        """Whether every table the sweep would reach was counted."""
        return not any(e.not_counted for e in self.engines)
