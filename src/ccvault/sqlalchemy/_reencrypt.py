"""``vault.move_into_periods(bind, models)``: existing suite-1 values of retention-bound columns
moved into their retention periods (issue 14, item 8).

A column that gains ``retention=`` keeps reading its suite-1 values, which no enforcement can
expire. This job re-encrypts them under the period key of their row's ``retention_from`` (NULL:
the job's time, the vault clock's now — the value's write time is not known), batch by batch:
each batch is one transaction that selects rows holding a suite-1 value in a retention-bound
column with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MariaDB: several workers share a table,
each taking the rows the others have not locked; SQLite serialises writers), opens those values
(checked against the row's subject as every read is), seals them under the period key and
updates each row only where the value is still the one read (a row rewritten meanwhile is
counted ``changed`` and left to the next run). Resumable: a moved value is suite 2 and no
longer selected; the job pages by primary key, so rows it leaves alone are not selected again
in the same run.

A value whose period has already expired is never re-encrypted under a new secret (rule 8: an
expired period is never re-created): it is counted ``stale`` and left as it is, or with
``expire_stale=True`` set NULL. A shredded subject's values are counted and left; a value that
does not open is counted ``unreadable`` (``vault.scrub`` names it) and left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import (
    ConfigurationError,
    DecryptionError,
    RetentionExpiredError,
    SubjectShreddedError,
)
from ._jobs import in_transaction, job_inputs
from ._plan import ColumnPlan, TablePlan
from ._scrub import keyset_after, read_rows

if TYPE_CHECKING:
    from ..keyring import KeyRing, Values

__all__ = ["MoveReport", "move_into_periods"]

Progress = Callable[[str, int, int], None]
"""``progress(table, rows_done, rows_total)`` after each batch (``rows_total``: the rows holding
a suite-1 value in a retention-bound column when the table's run began)."""

_UTC = timezone.utc
_SUITE1 = b"\x01"


@dataclass(frozen=True, slots=True)
class MoveReport:
    """What :meth:`ccvault.Vault.move_into_periods` did to one table (counts of values, except
    ``rows``): ``moved`` into their period (suite 2); ``stale`` in a period already expired
    (left as they were, or ``nulled`` with ``expire_stale``); ``shredded`` and ``unreadable``
    left as they were; ``changed``: rewritten between the read and the update (left for the
    next run)."""

    table: str
    rows: int
    moved: int
    stale: int
    nulled: int
    shredded: int
    unreadable: int
    changed: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Counts:
    __slots__ = ("changed", "moved", "nulled", "rows", "shredded", "stale", "unreadable")

    def __init__(self) -> None:
        self.rows = self.moved = self.stale = self.nulled = 0
        self.shredded = self.unreadable = self.changed = 0


def move_into_periods(
    ring: KeyRing,
    values: Values,
    bind: Any,
    models: Any,
    *,
    batch: int = 500,
    expire_stale: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[MoveReport]:
    """See :meth:`ccvault.Vault.move_into_periods`."""
    bind, plans = job_inputs("move_into_periods", bind, batch, models, retained=True)
    for plan in plans:  # every category known before anything is written
        for col in plan.retained:
            ring.periods.category(col.retention)
    return [
        _move_table(ring, values, bind, plan, batch, expire_stale, dry_run, progress)
        for plan in plans
    ]


def _raw_table(plan: TablePlan) -> tuple[sa.Table, list[sa.Column[Any]]]:
    """The table as plain columns (binary values, no write hook: the job writes ciphertexts it
    sealed itself), and its primary key among them."""
    table = plan.table
    cols = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in table.primary_key]
    names = {c.name for c in cols}
    for col in (plan.subject, *(() if plan.retention is None or plan.retention.column is None
                                 else (plan.retention.column,))):  # fmt: skip
        if col.name not in names:
            cols.append(sa.Column(col.name, col.type))
            names.add(col.name)
    for c in plan.retained:
        cols.append(sa.Column(c.column.name, sa.LargeBinary()))
    raw = sa.Table(table.name, sa.MetaData(), *cols, schema=table.schema)
    return raw, [raw.c[c.name] for c in table.primary_key]


def _move_table(
    ring: KeyRing,
    values: Values,
    bind: Engine | Connection,
    plan: TablePlan,
    batch: int,
    expire_stale: bool,
    dry_run: bool,
    progress: Progress | None,
) -> MoveReport:
    table = plan.table
    if not list(table.primary_key):
        raise ConfigurationError(
            f"table {table.name!r} has no primary key: move_into_periods() pages by its key"
        )
    raw, key = _raw_table(plan)
    subject = raw.c[plan.subject.name]
    rf = plan.retention.column if plan.retention is not None else None
    when = raw.c[rf.name] if rf is not None else None
    zone = plan.retention.zone if plan.retention is not None else None
    retained = [(c, raw.c[c.column.name]) for c in plan.retained]
    suite1 = sa.or_(*(sa.func.substr(col, 2, 1) == _SUITE1 for _, col in retained))
    selected = [*key, subject, *([when] if when is not None else []), *(c for _, c in retained)]
    counts = _Counts()
    total = int(read_rows(bind, sa.select(sa.func.count()).select_from(raw).where(suite1))[0][0])
    last: tuple[Any, ...] | None = None
    width = len(key)
    while True:
        query = sa.select(*selected).where(suite1).order_by(*key).limit(batch)
        if last is not None:
            query = query.where(keyset_after(key, last))
        if not dry_run and bind.dialect.name in ("postgresql", "mysql", "mariadb"):
            query = query.with_for_update(skip_locked=True)

        def run(conn: Connection, query: Any = query) -> list[tuple[Any, ...]]:
            rows = [tuple(r) for r in conn.execute(query)]
            _move_rows(ring, values, conn, raw, key, plan, retained, rows, width,
                       when is not None, zone, expire_stale, dry_run, counts)  # fmt: skip
            return rows

        rows = in_transaction(bind, run)
        if not rows:
            break
        counts.rows += len(rows)
        last = rows[-1][:width]
        if progress is not None:
            progress(table.fullname, counts.rows, max(total, counts.rows))
        if len(rows) < batch:
            break
    return MoveReport(
        table.fullname,
        counts.rows,
        counts.moved,
        counts.stale,
        counts.nulled,
        counts.shredded,
        counts.unreadable,
        counts.changed,
        dry_run,
    )


def _event_time(value: Any, zone: Any) -> datetime | None:
    """A row's ``retention_from`` as an aware datetime (None: NULL, the job's time)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError("retention_from is not a datetime")
    if value.tzinfo is None:
        # a naive column is in retention_tz; an aware one read back naive (SQLite) is UTC
        return value.replace(tzinfo=zone or _UTC)
    return value


def _move_rows(
    ring: KeyRing,
    values: Values,
    conn: Connection,
    raw: sa.Table,
    key: list[sa.Column[Any]],
    plan: TablePlan,
    retained: list[tuple[ColumnPlan, sa.Column[Any]]],
    rows: list[tuple[Any, ...]],
    width: int,
    has_when: bool,
    zone: Any,
    expire_stale: bool,
    dry_run: bool,
    counts: _Counts,
) -> None:
    first = width + 1 + (1 if has_when else 0)
    for row in rows:
        subject = row[width]
        event = _event_time(row[width + 1], zone) if has_when else None
        updates: dict[str, Any] = {}
        olds: dict[str, Any] = {}
        for i, (col, raw_col) in enumerate(retained):
            blob = row[first + i]
            if blob is None:
                continue
            blob = bytes(blob)
            if blob[1:2] != _SUITE1:
                continue
            assert col.retention is not None
            category = ring.periods.category(col.retention)
            try:
                period = ring.periods.for_write(category, event, create=not dry_run)
            except RetentionExpiredError:
                counts.stale += 1
                if expire_stale:
                    updates[raw_col.name], olds[raw_col.name] = None, blob
                    counts.nulled += 1
                continue
            try:
                plain = values.decrypt(blob, col.label, subject)
            except SubjectShreddedError:
                counts.shredded += 1
                continue
            except (DecryptionError, TypeError):
                counts.unreadable += 1
                continue
            if period is None:  # a dry run, and the period has no row yet
                plain = b""
                counts.moved += 1
                continue
            try:
                sealed = ring.period_key_for_write(subject, period).seal(plain, col.ctx_lp)
            finally:
                plain = b""
            updates[raw_col.name], olds[raw_col.name] = sealed, blob
            counts.moved += 1
        if not updates or dry_run:
            continue
        where = [k == row[j] for j, k in enumerate(key)]
        where += [raw.c[name] == old for name, old in olds.items()]
        result = conn.execute(
            sa.update(raw).where(*where).values(updates),
            execution_options={"preserve_rowcount": True},
        )
        if result.rowcount != 1:
            counts.changed += 1
            counts.moved -= sum(1 for v in updates.values() if v is not None)
            counts.nulled -= sum(1 for v in updates.values() if v is None)
