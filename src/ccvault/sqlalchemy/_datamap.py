"""Owns the data map: the tables and columns that hold customer data (tables with encrypted
columns, and the plaintext tables registered with a vault), its warnings, JSON and Markdown.
Must not read or write a database nor touch keys: it describes models, and only models.

A plaintext table that holds customer data is declared with
``vault.register_personal_table(table, subject_column)``; the registry is kept per vault, so two
vaults of one process (two installations) never share it. The subject export reads the same
entries (:func:`map_entries`) as the data map lists.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigurationError
from ._plan import TablePlan, check_subject_column, plan_for
from ._scrub import tables_of
from ._types import Encrypted, encrypted_tables

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = [
    "DataMap",
    "MapEntry",
    "MapWarning",
    "MappedColumn",
    "MappedTable",
    "RetentionForm",
    "SearchableForm",
    "data_map",
    "map_entries",
    "register_personal_table",
    "subject_indexed",
    "unmapped_references",
    "warn_unindexed_subjects",
]

log = logging.getLogger("ccvault")

DATA_MAP_FORMAT: Final = "ccvault-data-map/v1"

_lock = threading.Lock()
# The personal tables registered with each vault: table -> its subject column.
_registries: weakref.WeakKeyDictionary[Vault, dict[sa.Table, sa.Column[Any]]] = (
    weakref.WeakKeyDictionary()
)
_warned: weakref.WeakSet[sa.Table] = weakref.WeakSet()  # attach()'s unindexed-subject warning


# -- registering personal tables ------------------------------------------------------------------


def register_personal_table(vault: Vault, table: Any, subject_column: Any) -> None:
    """Declare ``table`` (a Table or mapped class), which holds customer data in plaintext, with
    its subject column (a name, a Column of the table or a mapped attribute) for ``vault``'s data
    map and subject export (:meth:`ccvault.Vault.register_personal_table`)."""
    t = _table(table)
    column = _column(t, subject_column)
    if plan_for(t) is not None:
        raise ConfigurationError(
            f"table {t.name!r} has encrypted columns: it is in the data map already, and the "
            "subject export reads its plaintext columns with them"
        )
    check_subject_column(column, vault.subject_type)
    with _lock:
        registry = _registries.setdefault(vault, {})
        current = registry.get(t)
        if current is not None and current is not column:
            raise ConfigurationError(
                f"table {t.name!r} is registered with the subject column {current.name!r} already"
            )
        registry[t] = column


def _table(table: Any) -> sa.Table:
    if isinstance(table, sa.Table):
        return table
    mapped = getattr(table, "__table__", None)
    if isinstance(table, type) and isinstance(mapped, sa.Table):
        return mapped
    raise TypeError(
        f"register_personal_table() takes a Table or a mapped class, not {type(table).__name__}"
    )


def _column(table: sa.Table, column: Any) -> sa.Column[Any]:
    if isinstance(column, str):
        found = table.c.get(column)
        if found is None:
            found = next((c for c in table.columns if c.name == column), None)
        if found is None:
            raise ConfigurationError(f"table {table.name!r} has no column {column!r}")
        return found
    if not isinstance(column, sa.Column) and hasattr(column, "__clause_element__"):
        expr = column.__clause_element__()  # a mapped attribute: Customer.id
        column = next((c for c in getattr(expr, "proxy_set", ()) if isinstance(c, sa.Column)), expr)
    if not isinstance(column, sa.Column):
        raise TypeError("subject_column is a column name, a Column or a mapped attribute")
    if column.table is not table:
        raise ConfigurationError(
            f"{getattr(column.table, 'name', '?')}.{column.name} is not a column of table "
            f"{table.name!r}"
        )
    return column


# -- what the map holds ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapEntry:
    """A table of the data map: with encrypted columns (``plan``) or registered as personal."""

    table: sa.Table
    subject: sa.Column[Any]
    plan: TablePlan | None

    @property
    def kind(self) -> Literal["encrypted", "personal"]:
        return "encrypted" if self.plan is not None else "personal"


def searchable_tables_of(models: Any) -> frozenset[str]:
    """The full names of ``models``' tables with blind-index columns (what a completed
    erasure must have swept: :meth:`ccvault.Vault.complete_erasures`)."""
    out = set()
    for table in tables_of(models):
        plan = plan_for(table)
        if plan is not None and any(c.index_key is not None for c in plan.columns):
            out.add(table.fullname)
    return frozenset(out)


def map_entries(vault: Vault, models: Any = None) -> list[MapEntry]:
    """The tables of ``vault``'s data map, by name: every table with encrypted columns of
    ``models`` (every one this process defined when None) and every personal table registered
    with ``vault``. ConfigurationError for a table whose encrypted columns cannot work."""
    source = list(encrypted_tables) if models is None else tables_of(models)
    entries: dict[sa.Table, MapEntry] = {}
    for table in source:
        plan = plan_for(table)
        if plan is not None:
            entries[table] = MapEntry(table, plan.subject, plan)
    with _lock:
        registered = dict(_registries.get(vault, {}))
    for table, column in registered.items():
        entries.setdefault(table, MapEntry(table, column, None))
    return sorted(entries.values(), key=lambda e: e.table.fullname)


def subject_indexed(table: sa.Table, column: sa.Column[Any]) -> bool:
    """Whether the model gives ``column`` an index a lookup by subject can use: it leads the
    primary key, an index or a unique constraint."""
    pk = list(table.primary_key.columns)
    if pk and pk[0] is column:
        return True
    for index in table.indexes:
        if index.expressions and index.expressions[0] is column:
            return True
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            columns = list(constraint.columns)
            if columns and columns[0] is column:
                return True
    return False


def _unindexed(plan: TablePlan) -> bool:
    searchable = any(c.index_key is not None for c in plan.columns)
    return searchable and not subject_indexed(plan.table, plan.subject)


def _unindexed_message(plan: TablePlan) -> str:
    return (
        f"{plan.table.fullname} has blind indexes but its subject column {plan.subject.name} "
        "has no index: a shred's blind-index sweep scans the whole table. Index the subject "
        "column (docs/sqlalchemy.md, 'Subject export and data map')"
    )


def warn_unindexed_subjects(tables: Iterable[object]) -> None:
    """Log a WARNING, once per table and process, for each searchable table whose subject column
    has no index (``attach()`` calls it for the models it checks)."""
    for table in tables:
        try:
            plan = plan_for(table)
        except ConfigurationError:
            continue  # attach() reports it
        if plan is None or not _unindexed(plan):
            continue
        with _lock:
            if plan.table in _warned:
                continue
            _warned.add(plan.table)
        log.warning("%s", _unindexed_message(plan))


# -- the data map ---------------------------------------------------------------------------------


class SearchableForm(BaseModel):
    """How an encrypted column is searched: its normaliser and blind-index column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalizer: str
    blind_index_column: str
    index_bytes: int


class RetentionForm(BaseModel):
    """How a retention-bound encrypted column's values expire: their retention category, and
    the column whose value is their event time (None: the write time) with the zone its naive
    values are read in (None: an aware column, or no column)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: str
    retention_from: str | None = None
    retention_tz: str | None = None


class MappedColumn(BaseModel):
    """A column of a mapped table and what it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    role: Literal["subject", "encrypted", "blind_index", "plaintext"]
    context: str | None = None  # the context label of an encrypted column (or its index's)
    searchable: SearchableForm | None = None
    on_null_subject: Literal["error", "vaultwide"] | None = None
    retention: RetentionForm | None = None  # a retention-bound column's category


class MappedTable(BaseModel):
    """A table that holds customer data: with encrypted columns, or registered as personal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    kind: Literal["encrypted", "personal"]
    subject_column: str
    subject_indexed: bool
    columns: tuple[MappedColumn, ...]


class MapWarning(BaseModel):
    """Something about the map to act on.

    * ``unmapped_foreign_key``: a table outside the map has a foreign key to a subject column
      (customer data the export does not read and no promise covers);
    * ``unindexed_subject``: a searchable table whose subject column has no index;
    * ``subject_type``: a table whose subject column is not of the installation's subject type
      (never written through this vault: the export skips it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["unmapped_foreign_key", "unindexed_subject", "subject_type"]
    table: str
    column: str
    references: str | None = None  # table.column a foreign key points at
    message: str


class DataMap(BaseModel):
    """The result of :meth:`ccvault.Vault.data_map`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ccvault-data-map/v1"] = DATA_MAP_FORMAT
    subject_type: str
    tables: tuple[MappedTable, ...]
    warnings: tuple[MapWarning, ...]

    def as_dict(self) -> dict[str, Any]:
        """The map as JSON-ready data."""
        return self.model_dump(mode="json")

    def as_markdown(self) -> str:
        """The map as a Markdown document: a section per table, then the warnings."""
        out = [
            "# Data map",
            "",
            f"Subject type: `{self.subject_type}`. Tables holding customer data: "
            f"{len(self.tables)}.",
        ]
        for t in self.tables:
            indexed = "indexed" if t.subject_indexed else "**not indexed**"
            out += [
                "",
                f"## {_md(t.table)} ({t.kind})",
                "",
                f"Subject column: `{_md(t.subject_column)}` ({indexed}).",
                "",
                "| column | holds | context label | searchable | on NULL subject | retention |",
                "|---|---|---|---|---|---|",
            ]
            for c in t.columns:
                form = ""
                if c.searchable is not None:
                    s = c.searchable
                    form = f"`{_md(s.normalizer)}` in `{_md(s.blind_index_column)}`"
                    form += f" ({s.index_bytes} bytes)"
                kept = ""
                if c.retention is not None:
                    r = c.retention
                    kept = f"`{_md(r.category)}`"
                    if r.retention_from is not None:
                        kept += f" from `{_md(r.retention_from)}`"
                        if r.retention_tz is not None:
                            kept += f" ({_md(r.retention_tz)})"
                    else:
                        kept += " from the write time"
                cells = [
                    f"`{_md(c.name)}`",
                    c.role.replace("_", " "),
                    f"`{_md(c.context)}`" if c.context else "",
                    form,
                    c.on_null_subject or "",
                    kept,
                ]
                out.append("| " + " | ".join(cells) + " |")
        out += ["", "## Warnings", ""]
        if not self.warnings:
            out.append("None.")
        for w in self.warnings:
            out.append(f"* **{w.kind}** `{_md(w.table)}.{_md(w.column)}`: {_md(w.message)}")
        return "\n".join(out) + "\n"


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("`", "'")


def data_map(vault: Vault, models: Any = None) -> DataMap:
    """The data map of ``vault`` over ``models`` (:meth:`ccvault.Vault.data_map`)."""
    entries = map_entries(vault, models)
    warnings: list[MapWarning] = []
    tables = []
    for entry in entries:
        tables.append(_mapped(entry))
        try:
            check_subject_column(entry.subject, vault.subject_type)
        except ConfigurationError as exc:
            warnings.append(
                MapWarning(
                    kind="subject_type",
                    table=entry.table.fullname,
                    column=entry.subject.name,
                    message=f"{exc}: never written through this vault; the export skips it",
                )
            )
        if entry.plan is not None and _unindexed(entry.plan):
            warnings.append(
                MapWarning(
                    kind="unindexed_subject",
                    table=entry.table.fullname,
                    column=entry.subject.name,
                    message=_unindexed_message(entry.plan),
                )
            )
    warnings += unmapped_references(entries, [] if models is None else tables_of(models))
    return DataMap(
        subject_type=vault.subject_type.spec, tables=tuple(tables), warnings=tuple(warnings)
    )


def _mapped(entry: MapEntry) -> MappedTable:
    plan = entry.plan
    by_key = plan.by_key if plan is not None else {}
    index_of = {c.index_key: c for c in plan.columns if c.index_key} if plan is not None else {}
    columns = []
    for column in entry.table.columns:
        col = by_key.get(column.key)
        companion = index_of.get(column.key)
        if column is entry.subject:
            columns.append(MappedColumn(name=column.name, role="subject"))
        elif col is not None:
            searchable = None
            if col.index_key is not None and col.etype.searchable is not None:
                searchable = SearchableForm(
                    normalizer=col.etype.searchable,
                    blind_index_column=entry.table.c[col.index_key].name,
                    index_bytes=col.index_bytes,
                )
            retention = None
            if col.retention is not None and plan is not None and plan.retention is not None:
                source = plan.retention.column
                retention = RetentionForm(
                    category=col.retention,
                    retention_from=None if source is None else source.name,
                    retention_tz=col.etype.retention_tz,
                )
            columns.append(
                MappedColumn(
                    name=column.name,
                    role="encrypted",
                    context=col.label,
                    searchable=searchable,
                    on_null_subject=col.etype.on_null_subject,
                    retention=retention,
                )
            )
        elif companion is not None:
            columns.append(
                MappedColumn(name=column.name, role="blind_index", context=companion.label)
            )
        else:
            columns.append(MappedColumn(name=column.name, role="plaintext"))
    return MappedTable(
        table=entry.table.fullname,
        kind=entry.kind,
        subject_column=entry.subject.name,
        subject_indexed=subject_indexed(entry.table, entry.subject),
        columns=tuple(columns),
    )


def unmapped_references(
    entries: list[MapEntry], extra: Iterable[sa.Table] = ()
) -> list[MapWarning]:
    """A warning for each foreign key to a subject column of a mapped table from a table outside
    the map: the tables of the mapped tables' MetaData, and ``extra`` (the models given)."""
    mapped = {entry.table for entry in entries}
    subjects = {id(entry.subject): entry for entry in entries}
    candidates: dict[sa.Table, None] = {}
    for entry in entries:
        for table in entry.table.metadata.tables.values():
            candidates.setdefault(table, None)
    for table in extra:
        candidates.setdefault(table, None)
    warnings = []
    for table in sorted(candidates, key=lambda t: t.fullname):
        if table in mapped or any(isinstance(c.type, Encrypted) for c in table.columns):
            continue  # encrypted tables are the map's own, listed or not in the models given
        for fk in sorted(table.foreign_keys, key=lambda f: f.parent.name):
            try:
                target = fk.column
            except sa.exc.NoReferenceError:
                continue  # points at a table this MetaData does not have
            owner = subjects.get(id(target))
            if owner is None or owner.subject is not target:
                continue
            warnings.append(
                MapWarning(
                    kind="unmapped_foreign_key",
                    table=table.fullname,
                    column=fk.parent.name,
                    references=f"{owner.table.fullname}.{target.name}",
                    message=(
                        f"{table.fullname}.{fk.parent.name} refers to the subject column "
                        f"{owner.table.fullname}.{target.name}, but {table.fullname} has no "
                        "encrypted column and is not registered: customer data outside the data "
                        "map (vault.register_personal_table() adds it to the map and the export)"
                    ),
                )
            )
    return warnings
