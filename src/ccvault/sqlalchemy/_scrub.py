"""``vault.scrub(bind, models)``: read every encrypted value, report the ones that cannot be read.

A value that fails to decrypt — truncated by the database, edited by hand, moved from another
customer's row, or naming a key the key store does not have (a key store restored from a copy
older than the application database) — makes every read of its row fail, or read as
``UNREADABLE`` where ``on_error="sentinel"``. The scrub finds them all before users do: it reads
each table with encrypted columns in batches (keyset pagination on the primary key, never
OFFSET), through the same row loop as the application's reads, and reports per column how many
values are readable, shredded, expired and unreadable, and where each unreadable one is (table,
column, primary key). It never writes: no statement it runs changes the database, and it
creates no key.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .._sentinels import EXPIRED, SHREDDED, UNREADABLE
from ..errors import ConfigurationError
from ._plan import TablePlan, plan_for
from ._read import Reader, Slot

if TYPE_CHECKING:
    from ..keyring import KeyRing

__all__ = [
    "ColumnCounts",
    "Progress",
    "ScrubReport",
    "UnreadableValue",
    "keyset_after",
    "read_rows",
    "scrub",
    "tables_of",
]

Progress = Callable[[str, int, int], None]
"""``progress(table, rows_read, rows_total)``, called after each batch (``rows_total`` is the
table's row count when its scan began)."""


@dataclass(frozen=True, slots=True)
class UnreadableValue:
    """Where a value that cannot be read is: never the value itself."""

    table: str
    column: str
    primary_key: tuple[Any, ...]


@dataclass(slots=True)
class ColumnCounts:
    """What the scrub read of one encrypted column (the rest of ``rows`` are NULL)."""

    table: str
    column: str
    rows: int = 0
    readable: int = 0
    shredded: int = 0
    unreadable: int = 0
    expired: int = 0  # a retention period destroyed (issue 14)


@dataclass(frozen=True, slots=True)
class ScrubReport:
    """The result of :meth:`ccvault.Vault.scrub`: counts per column, and each unreadable value."""

    columns: tuple[ColumnCounts, ...]
    unreadable: tuple[UnreadableValue, ...] = field(default=())

    @property
    def clean(self) -> bool:
        """True when every value could be read (or was shredded or expired)."""
        return not self.unreadable

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (primary key values other than numbers as text)."""
        return {
            "columns": [
                {
                    "table": c.table,
                    "column": c.column,
                    "rows": c.rows,
                    "readable": c.readable,
                    "shredded": c.shredded,
                    "expired": c.expired,
                    "unreadable": c.unreadable,
                }
                for c in self.columns
            ],
            "unreadable": [
                {
                    "table": u.table,
                    "column": u.column,
                    "primary_key": [_jsonable(v) for v in u.primary_key],
                }
                for u in self.unreadable
            ],
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class _Collector(Reader):
    """A reader that records each value that fails, and reads it as UNREADABLE, without logging."""

    __slots__ = ("found",)

    def __init__(self, ring: KeyRing, slots: list[Slot], width: int) -> None:
        super().__init__(ring, slots, [], width)
        self.found: list[UnreadableValue] = []

    def _failed(self, row: Sequence[Any], slot: Slot, exc: BaseException) -> Any:
        where = slot.where(row)
        self.found.append(UnreadableValue(where["table"], where["column"], where["primary_key"]))
        return UNREADABLE


def scrub(
    ring: KeyRing,
    bind: Engine | Connection,
    models: Any,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> ScrubReport:
    """Read every encrypted value of ``models`` through ``bind`` (:meth:`ccvault.Vault.scrub`)."""
    if not isinstance(bind, Engine | Connection):
        raise ConfigurationError(
            "scrub() reads through a synchronous SQLAlchemy Engine or Connection"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError("scrub(batch=) is a positive number of rows")
    plans = [plan for table in tables_of(models) if (plan := plan_for(table)) is not None]
    if not plans:
        raise ConfigurationError("scrub() found no table with encrypted columns in models")
    counts: list[ColumnCounts] = []
    found: list[UnreadableValue] = []
    for plan in plans:
        table_counts, table_found = _scrub_table(ring, bind, plan, batch, progress)
        counts.extend(table_counts)
        found.extend(table_found)
    return ScrubReport(tuple(counts), tuple(found))


def _scrub_table(
    ring: KeyRing,
    bind: Engine | Connection,
    plan: TablePlan,
    batch: int,
    progress: Progress | None,
) -> tuple[list[ColumnCounts], list[UnreadableValue]]:
    table = plan.table
    key = list(table.primary_key.columns)
    if not key:
        raise ConfigurationError(
            f"table {table.name!r} has no primary key: scrub() pages through a table by its key"
        )
    selected: list[Any] = list(key)
    if plan.subject not in key:
        selected.append(plan.subject)
    subject_index = selected.index(plan.subject)
    primary_key = tuple((i, None) for i in range(len(key)))  # values already processed
    slots = []
    for col in plan.columns:
        slots.append(Slot(len(selected), col, subject_index, False, "sentinel", primary_key))
        # the stored bytes as they are: no attached engine's read hook, no result processor
        selected.append(sa.type_coerce(col.column, sa.LargeBinary()))
    reader = _Collector(ring, slots, len(selected))
    counts = [ColumnCounts(table.fullname, col.column.name) for col in plan.columns]
    base = sa.select(*selected).order_by(*key).limit(batch)
    total = read_rows(bind, sa.select(sa.func.count()).select_from(table))[0][0]
    done = 0
    last: tuple[Any, ...] | None = None
    while True:
        stmt = base if last is None else base.where(keyset_after(key, last))
        rows = read_rows(bind, stmt)
        if not rows:
            break
        for row in reader.process(rows):
            for slot, c in zip(slots, counts, strict=True):
                value = row[slot.index]
                c.rows += 1
                if value is None:
                    continue
                if value is SHREDDED:
                    c.shredded += 1
                elif value is EXPIRED:
                    c.expired += 1
                elif value is UNREADABLE:
                    c.unreadable += 1
                else:
                    c.readable += 1
        done += len(rows)
        last = tuple(rows[-1][: len(key)])
        if progress is not None:
            progress(table.fullname, done, total)
        if len(rows) < batch:
            break
    return counts, reader.found


def keyset_after(key: list[sa.Column[Any]], last: tuple[Any, ...]) -> Any:
    """The keyset condition: rows whose primary key sorts after ``last``."""
    if len(key) == 1:
        return key[0] > last[0]
    return sa.tuple_(*key) > sa.tuple_(*last)


def read_rows(bind: Engine | Connection, stmt: Any) -> list[tuple[Any, ...]]:
    """One read, on a connection of its own (each batch sees a fresh snapshot; no long
    transaction) unless the caller passed a connection."""
    if isinstance(bind, Connection):
        return [tuple(r) for r in bind.execute(stmt)]
    with bind.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def tables_of(models: Any) -> list[sa.Table]:
    """The tables of ``models``: a module (its mapped classes, tables, MetaData and declarative
    bases), a declarative base or MetaData (all their tables), a mapped class or Table, or an
    iterable of these. Each table once, in the order found."""
    found: dict[sa.Table, None] = {}

    def add(obj: Any, top: bool) -> None:
        if isinstance(obj, sa.Table):
            found.setdefault(obj, None)
        elif isinstance(obj, sa.MetaData):
            for table in obj.sorted_tables:
                found.setdefault(table, None)
        elif isinstance(obj, type):
            mapped = getattr(obj, "__table__", None)
            metadata = getattr(obj, "metadata", None)
            if isinstance(mapped, sa.Table):
                found.setdefault(mapped, None)
            elif isinstance(metadata, sa.MetaData):  # a declarative base
                add(metadata, False)
            elif top:
                raise TypeError(f"{obj.__name__} is neither a mapped class nor a declarative base")
        elif isinstance(obj, types.ModuleType) and top:
            for value in list(vars(obj).values()):
                if isinstance(value, sa.Table | sa.MetaData | type):
                    add(value, False)
        elif isinstance(obj, Iterable) and not isinstance(obj, str | bytes) and top:
            for item in obj:
                add(item, True)
        elif top:
            raise TypeError(
                "models are a module, a declarative base, a MetaData, a mapped class, a Table or "
                f"a list of them, not {type(obj).__name__}"
            )

    add(models, True)
    return list(found)
