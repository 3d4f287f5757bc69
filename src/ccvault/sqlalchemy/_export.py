"""Owns the subject export (GDPR Art. 15 and 20): one customer's rows in every table of the data
map, decrypted, with the erasure receipt and an explicit scope, as JSON-ready data.
Must not write to any database nor create a key: it runs SELECTs and reads the key store.

Each table of the data map (:func:`ccvault.sqlalchemy._datamap.map_entries`) is read once by its
subject column (``_subjects``: exact for ``int`` and ``uuid``, a prefilter confirmed by ref for
``str``), with the stored bytes of encrypted columns decrypted by the same reader as the
application's reads, row-subject check included: a value sealed for another customer never reads
as this customer's data.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection, Engine

from .._sentinels import EXPIRED, SHREDDED, UNREADABLE, Sentinel
from ..audit._receipt import ErasureReceipt
from ..crypto import _format as fmt
from ..erasure import Hold
from ..errors import ConfigurationError
from ._attach import attached_on_error, readable_columns
from ._datamap import MapEntry, map_entries, unmapped_references
from ._plan import TablePlan
from ._read import Reader, Slot
from ._scrub import tables_of
from ._subjects import SubjectMatch, subject_match
from ._types import Encrypted, OnError

if TYPE_CHECKING:
    from ..erasure import Erasure
    from ..keyring import KeyRing
    from ..vault import Vault

__all__ = [
    "EXPORT_FORMAT",
    "ErasureState",
    "ExportScope",
    "ExportedTable",
    "NotSearched",
    "RetentionState",
    "SubjectExport",
    "export_subject",
]

EXPORT_FORMAT: Final = "ccvault-subject-export/v1"

OUTSIDE: Final = (
    "tables outside the data map: tables without encrypted columns that are not registered with "
    "vault.register_personal_table() (scope.unmapped_tables names those with a foreign key to a "
    "subject column)",
    "backups of the application database and of the key store",
    "logs: ccvault logs pseudonymous subject refs only; the application's and the databases' "
    "own logs are not searched",
    "other systems: recordings and files, caches, search engines, analytics and third-party copies",
)
NOT_BUILT_YET: Final = (
    "retention: a summary of the subject's retention periods is not built yet (retention is "
    "always null); each retention-bound value's state is in its table's retention list",
)

RetentionState = Literal["live", "expired", "shredded", "unreadable", "no_period"]
"""A value's retention state in the export: ``live`` (its period's key opens it: a live period,
or a held subject's preserved key), ``expired`` (read as EXPIRED), ``shredded``, ``unreadable``
(where ``on_error="sentinel"``), ``no_period`` (a suite-1 value of a column declared with
``retention=``: written before the column gained it, in no period)."""


class ExportedTable(BaseModel):
    """The subject's rows of one table: encrypted columns decrypted (``"[shredded]"`` for a
    shredded value, ``"[expired]"`` for an expired one), the other columns as stored (bytes as
    base64, times in ISO 8601). ``retention``: when the table has retention-bound values, one
    entry per row (aligned with ``rows``) giving the :data:`RetentionState` of each of the row's
    values that is in a retention period or in a retention-bound column; empty otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    kind: Literal["encrypted", "personal"]
    subject_column: str
    rows: tuple[dict[str, Any], ...]
    retention: tuple[dict[str, RetentionState], ...] = ()


class NotSearched(BaseModel):
    """A table of the data map the export did not read, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    reason: str


class ExportScope(BaseModel):
    """What the export searched, and what lies outside it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    searched: tuple[str, ...]
    not_searched: tuple[NotSearched, ...]
    unmapped_tables: tuple[str, ...]
    outside: tuple[str, ...] = OUTSIDE
    not_built_yet: tuple[str, ...] = NOT_BUILT_YET


class ErasureState(BaseModel):
    """Whether the subject is shredded, and the signed receipt of its shred when one exists
    (a subject treated as shredded because its key-store rows were altered has none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shredded: bool
    receipt: ErasureReceipt | None


class SubjectExport(BaseModel):
    """The result of :meth:`ccvault.Vault.export_subject`; ``as_dict()`` is its JSON-ready
    form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ccvault-subject-export/v1"] = EXPORT_FORMAT
    installation_id: str
    subject: Any
    subject_ref: str
    exported_at: dt.datetime
    scope: ExportScope
    tables: tuple[ExportedTable, ...]
    erasure: ErasureState
    # the subject's legal holds, released ones included (Vault.holds(subject, active_only=False))
    holds: tuple[Hold, ...] = ()
    retention: None = None  # not built yet

    def as_dict(self) -> dict[str, Any]:
        """The export as JSON-ready data."""
        return self.model_dump(mode="json")


def export_subject(
    vault: Vault,
    ring: KeyRing,
    erasure: Erasure,
    subject: object,
    bind: Engine | Connection,
    *,
    models: Any = None,
    now: Callable[[], float],
) -> SubjectExport:
    """Everything the data map says ``vault`` holds about ``subject`` in the database at
    ``bind`` (:meth:`ccvault.Vault.export_subject`)."""
    if not isinstance(bind, Engine | Connection):
        raise ConfigurationError(
            "export_subject() reads through a synchronous SQLAlchemy Engine or Connection"
        )
    match = subject_match(vault, subject)  # TypeError for a subject of another type
    entries = map_entries(vault, models)
    on_error = attached_on_error(bind)
    tables: list[ExportedTable] = []
    skipped: list[NotSearched] = []
    with _connection(bind) as conn:
        for entry in entries:
            present = readable_columns(vault, conn, entry.table, entry.subject)
            if isinstance(present, str):
                skipped.append(NotSearched(table=entry.table.fullname, reason=present))
                continue
            tables.append(_export_table(ring, conn, entry, present, match, on_error))
    receipt = erasure.receipt(subject)
    unmapped = unmapped_references(entries, [] if models is None else tables_of(models))
    return SubjectExport(
        installation_id=vault.installation_id,
        subject=_jsonable(match.value),
        subject_ref=match.ref.hex(),
        exported_at=dt.datetime.fromtimestamp(now(), tz=dt.timezone.utc),
        scope=ExportScope(
            searched=tuple(t.table for t in tables),
            not_searched=tuple(skipped),
            unmapped_tables=tuple(sorted({w.table for w in unmapped})),
        ),
        tables=tuple(tables),
        erasure=ErasureState(
            shredded=receipt is not None or ring.is_shredded(subject), receipt=receipt
        ),
        holds=tuple(vault.holds(subject, active_only=False)),
    )


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def _export_table(
    ring: KeyRing,
    conn: Connection,
    entry: MapEntry,
    present: set[str],
    match: SubjectMatch,
    on_error: OnError,
) -> ExportedTable:
    table, plan = entry.table, entry.plan
    columns = [c for c in table.columns if c.name in present]
    # encrypted columns as their stored bytes: no attached engine's read hook decrypts them
    selected = [
        sa.type_coerce(c, sa.LargeBinary()) if isinstance(c.type, Encrypted) else c for c in columns
    ]
    subject_index = next(i for i, c in enumerate(columns) if c is entry.subject)
    order = [c for c in table.primary_key.columns if c.name in present]
    stmt = sa.select(*selected).where(match.where(entry.subject)).order_by(*order)
    raw = [tuple(r) for r in conn.execute(stmt) if match.owns(r[subject_index])]
    rows: list[Any] = raw
    states: list[dict[str, RetentionState]] = []
    if plan is not None and raw:
        primary_key = tuple((i, None) for i, c in enumerate(columns) if c.primary_key) or None
        slots = [
            Slot(
                i,
                plan.by_key[c.key],
                subject_index,
                False,  # shredded values read as SHREDDED: the export says what is gone
                plan.by_key[c.key].etype.on_error or on_error,
                primary_key,
            )
            for i, c in enumerate(columns)
            if c.key in plan.by_key
        ]
        rows = Reader(ring, slots, [], len(columns)).process(raw)
        states = _retention_states(columns, [s.index for s in slots], plan, raw, rows)
    return ExportedTable(
        table=table.fullname,
        kind=entry.kind,
        subject_column=entry.subject.name,
        rows=tuple(
            {c.name: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows
        ),
        retention=tuple(states),
    )


_SUITE2 = fmt.SUITE_AES256GCM_PERIOD
_STATES: dict[object, RetentionState] = {
    EXPIRED: "expired",
    SHREDDED: "shredded",
    UNREADABLE: "unreadable",
}


def _retention_states(
    columns: list[sa.Column[Any]],
    indexes: list[int],
    plan: TablePlan,
    raw: list[tuple[Any, ...]],
    rows: list[Any],
) -> list[dict[str, RetentionState]]:
    """Per row, the retention state of each value in a period (suite 2, whatever the column
    declares now) or in a retention-bound column; [] when no row has any."""
    out: list[dict[str, RetentionState]] = []
    found = False
    for stored, read in zip(raw, rows, strict=True):
        states: dict[str, RetentionState] = {}
        for i in indexes:
            value = stored[i]
            if not isinstance(value, bytes | bytearray | memoryview):
                continue
            column = columns[i]
            suite2 = len(value) > 1 and value[1] == _SUITE2
            if not suite2 and plan.by_key[column.key].retention is None:
                continue
            outcome = read[i]
            if isinstance(outcome, Sentinel):
                states[column.name] = _STATES.get(outcome, "unreadable")
            else:
                states[column.name] = "live" if suite2 else "no_period"
        found = found or bool(states)
        out.append(states)
    return out if found else []


def _jsonable(value: Any) -> Any:
    """A column value as JSON: sentinels as their text, bytes as base64, times in ISO 8601,
    decimals and UUIDs as text, enums as their value, non-finite floats as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        # an exact str: a sentinel's text ("[shredded]"), a str enum's text
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        inner = value.value
        return inner if isinstance(inner, str | int | float | bool) else value.name
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return str(value)
