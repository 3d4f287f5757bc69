"""What ccvault needs to know about a table with encrypted columns, computed once per table."""

from __future__ import annotations

import threading
import weakref
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .._repr import safe_repr
from ..crypto._blind import Normalizer, normalizer
from ..crypto._encoding import U32
from ..crypto._subject import SubjectType
from ..errors import ConfigurationError
from ..retention._policy import load_zone
from ._codec import STR, Codec
from ._types import Encrypted

__all__ = ["ColumnPlan", "TablePlan", "check_subject_column", "check_subject_type", "plan_for"]


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    column: sa.Column[Any]
    key: str
    label: str
    ctx_lp: bytes  # u32(len(label)) || label, as it goes into the associated data
    etype: Encrypted
    codec: Codec
    python_types: tuple[type, ...]
    rejects_bool: bool
    index_key: str | None  # the blind-index companion column's key, when searchable
    normalizer: Normalizer | None
    index_bytes: int
    is_str: bool  # the str codec (inlined on the read and write paths)
    max_chars: int  # the most characters of a str value (sys.maxsize when unbounded)
    check: Callable[[Any], Any] | None  # the declared type's limits (_limits.Limits.check)
    retention: str | None = None  # the retention category (suite-2 values), None: suite 1


@dataclass(frozen=True, slots=True)
class Retention:
    """The event time of a table's retention-bound columns: the ``retention_from`` column (None:
    the write time), the zone its naive values are read in (None: an aware column), and its
    client-side default."""

    column: sa.Column[Any] | None
    zone: zoneinfo.ZoneInfo | None
    default: Callable[[], Any] | None

    @safe_repr
    def __repr__(self) -> str:
        name = None if self.column is None else self.column.key
        return f"Retention(retention_from={name!r})"

    def where(self) -> str:
        assert self.column is not None
        return f"{self.column.table.name}.{self.column.name}"


@dataclass(frozen=True, slots=True)
class TablePlan:
    table: sa.Table
    subject: sa.Column[Any]
    columns: tuple[ColumnPlan, ...]
    by_key: dict[str, ColumnPlan]
    default: Callable[[], Any] | None  # the subject column's client-side default
    on_null_subject: str
    retained: tuple[ColumnPlan, ...] = ()  # the retention-bound columns
    retention: Retention | None = None  # their event time (None: no retention-bound column)
    # code generated for this plan, made at its first use (``_write._write_loop``)
    generated: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @safe_repr
    def __repr__(self) -> str:
        return f"TablePlan({self.table.name!r}, subject={self.subject.key!r})"


_plans: weakref.WeakKeyDictionary[sa.Table, TablePlan | None] = weakref.WeakKeyDictionary()
_labels: weakref.WeakKeyDictionary[sa.MetaData, dict[str, sa.Column[Any]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def plan_for(table: Any) -> TablePlan | None:
    """The plan of ``table`` (None when it has no encrypted column). Validates on first use."""
    if not isinstance(table, sa.Table):
        return None
    try:
        return _plans[table]
    except KeyError:
        pass
    with _lock:
        if table not in _plans:
            _plans[table] = _build(table)
        return _plans[table]


def _build(table: sa.Table) -> TablePlan | None:
    encrypted = [c for c in table.columns if isinstance(c.type, Encrypted)]
    if not encrypted:
        return None
    subjects = {c.type.subject for c in encrypted}  # type: ignore[attr-defined]
    if len(subjects) != 1:
        raise ConfigurationError(
            f"table {table.name!r}: every encrypted column must name the same subject column"
        )
    (subject_name,) = subjects
    subject = table.columns.get(subject_name)
    if subject is None:
        raise ConfigurationError(f"table {table.name!r} has no subject column {subject_name!r}")
    if isinstance(subject.type, Encrypted):
        raise ConfigurationError(
            f"{table.name}.{subject_name}: a subject column is never encrypted"
        )
    _require_client_generated(table, subject)
    labels = _labels.setdefault(table.metadata, {})
    columns = []
    for col in encrypted:
        etype: Encrypted = col.type  # type: ignore[assignment]
        label = etype.context or f"{table.name}.{col.name}"
        other = labels.get(label)
        if other is not None and other is not col:
            raise ConfigurationError(
                f"context label {label!r} is used by two columns; pin distinct labels "
                "with context=..."
            )
        labels[label] = col
        ctx = label.encode("utf-8")
        pytypes = etype.codec.python_types
        index_key = f"{col.key}_bidx" if etype.searchable is not None else None
        if index_key is not None and index_key not in table.c:
            raise ConfigurationError(f"{table.name}.{col.name}: its blind-index column is missing")
        columns.append(
            ColumnPlan(
                col,
                col.key,
                label,
                U32.pack(len(ctx)) + ctx,
                etype,
                etype.codec,
                pytypes,
                bool not in pytypes and (int in pytypes or float in pytypes),
                index_key,
                normalizer(etype.searchable) if etype.searchable is not None else None,
                etype.index_bytes,
                etype.codec is STR,
                etype.limits.max_chars,
                etype.limits.check,
                etype.retention,
            )
        )
    null_modes = {c.etype.on_null_subject for c in columns}
    retained = tuple(c for c in columns if c.retention is not None)
    return TablePlan(
        table,
        subject,
        tuple(columns),
        {c.key: c for c in columns},
        _client_default(subject),
        "vaultwide" if null_modes == {"vaultwide"} else "error",
        retained,
        _retention(table, retained) if retained else None,
    )


def _retention(table: sa.Table, retained: tuple[ColumnPlan, ...]) -> Retention:
    """The ``retention_from`` of ``table``'s retention-bound columns, checked: one column for all
    of them, a client-set DateTime of the table that is not encrypted; a zone for a naive one."""
    names = {(c.etype.retention_from, c.etype.retention_tz) for c in retained}
    if len(names) != 1:
        raise ConfigurationError(
            f"table {table.name!r}: every retention-bound column must name the same "
            "retention_from= and retention_tz= (one event time a row)"
        )
    ((name, tz),) = names
    if name is None:
        return Retention(None, None, None)
    column = table.columns.get(name)
    if column is None:
        raise ConfigurationError(f"table {table.name!r} has no retention_from column {name!r}")
    where = f"{table.name}.{column.name}"
    if isinstance(column.type, Encrypted):
        raise ConfigurationError(
            f"{where}: a retention_from column is never encrypted (its value picks the period "
            "before anything is decrypted)"
        )
    if not isinstance(column.type, sa.DateTime):
        raise ConfigurationError(
            f"{where} is {type(column.type).__name__}: retention_from names a DateTime column"
        )
    if (
        column.server_default is not None
        or column.server_onupdate is not None
        or column.computed is not None
    ):
        raise ConfigurationError(
            f"{where} gets its value from the database (server_default, server_onupdate, "
            "Computed or FetchedValue): the event time of retention-bound columns must be known "
            "before the statement runs (set it in the application, or a client-side default)"
        )
    if column.onupdate is not None:
        raise ConfigurationError(
            f"{where} has onupdate=: retention_from would change behind the write hook, leaving "
            "the row's values in the period of its old value"
        )
    default = None
    if column.default is not None:
        try:
            default = _client_default(column)
        except ConfigurationError:
            raise ConfigurationError(
                f"{where}: only scalar or zero-argument callable defaults give retention_from a "
                "value before the statement runs"
            ) from None
    aware = bool(getattr(column.type, "timezone", False))
    if aware and tz is not None:
        raise ConfigurationError(
            f"{where} is DateTime(timezone=True): its values carry their zone, retention_tz= "
            "is for a naive column only"
        )
    if not aware and tz is None:
        raise ConfigurationError(
            f"{where} is a DateTime without a time zone: give the Encrypted columns "
            "retention_tz= (e.g. 'UTC'), the zone its naive values are in"
        )
    return Retention(column, None if tz is None else load_zone(tz), default)


def _require_client_generated(table: sa.Table, subject: sa.Column[Any]) -> None:
    where = f"{table.name}.{subject.name}"
    if subject.server_default is not None or isinstance(subject.default, sa.Sequence):
        raise ConfigurationError(
            f"{where} gets its value from the database; the subject of encrypted columns must be "
            "known before INSERT (a client-side default such as uuid.uuid4, or set by the app)"
        )
    if isinstance(subject.default, sa.Identity) or subject.identity is not None:
        raise ConfigurationError(
            f"{where} is an identity column; the subject must be client-generated"
        )
    if table.autoincrement_column is subject and subject.default is None:
        raise ConfigurationError(
            f"{where} is an autoincrement key; the subject must be client-generated"
        )


def _client_default(subject: sa.Column[Any]) -> Callable[[], Any] | None:
    default = subject.default
    if default is None:
        return None
    if isinstance(default, sa.ColumnDefault):
        if default.is_scalar:
            value = default.arg
            return lambda: value
        if default.is_callable:
            fn = default.arg
            return lambda: fn(None)
    raise ConfigurationError(
        f"{subject.table.name}.{subject.name}: only scalar or zero-argument callable defaults "
        "can produce a subject before INSERT"
    )


def check_subject_type(plan: TablePlan, subject_type: SubjectType) -> None:
    """``attach()`` refuses a subject column whose type is not the installation's subject type."""
    check_subject_column(plan.subject, subject_type)


def check_subject_column(col: sa.Column[Any], subject_type: SubjectType) -> None:
    """ConfigurationError unless ``col`` can hold subjects of ``subject_type`` (Uuid for uuid,
    Integer for int, String for str subjects): a subject column of encrypted columns or of a
    registered personal table."""
    expected = {"uuid": sa.Uuid, "int": sa.Integer, "str": sa.String}.get(subject_type.spec)
    if expected is None or not isinstance(col.type, expected):
        raise ConfigurationError(
            f"{col.table.name}.{col.name} is {type(col.type).__name__}, but this installation's "
            f"subject type is {subject_type.spec!r}"
        )
