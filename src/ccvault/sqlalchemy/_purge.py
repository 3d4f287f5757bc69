"""``vault.purge_expired(bind, Model)``: delete the rows that hold nothing readable any more.

Housekeeping after retention and erasure (issue 14, item 7): a row whose encrypted columns are
each NULL, EXPIRED or SHREDDED — and at least one of them EXPIRED or SHREDDED — is deleted; a
row with any live value (a held subject's value reads live through its held key) is counted and
kept. The decision is taken from each value's header and the key ring's outcome for it (live
key, held key, tombstone, expired period), never by decrypting a value; the owner check still
applies (a value whose key belongs to another subject than the row's keeps the row: a moved
value is no erasure). The table is paged by its primary key (keyset, never OFFSET); each batch
is deleted in one transaction with the values it was decided on in the statement's WHERE, so a
row rewritten meanwhile (a live value written back) is not deleted but counted as ``changed``.
It never decrypts, creates no key and touches no other table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..crypto import _format as fmt
from ..errors import ConfigurationError, DecryptionError
from ._jobs import in_transaction, job_inputs
from ._plan import TablePlan
from ._scrub import keyset_after, read_rows

if TYPE_CHECKING:
    from ..keyring import KeyRing

__all__ = ["PurgeReport", "purge_expired"]

Progress = Callable[[str, int, int], None]
"""``progress(table, rows_read, rows_total)`` after each batch."""


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What :meth:`ccvault.Vault.purge_expired` did to one table (or would, with ``dry_run``).

    ``deleted``: rows whose every encrypted value is NULL, EXPIRED or SHREDDED (at least one
    not NULL); ``live``: rows kept for a live (or held) value; ``empty``: rows kept whose
    encrypted values are all NULL (nothing expired there); ``unreadable``: rows kept for a value
    that names no key the store has, or another subject's key (``vault.scrub`` names them);
    ``changed``: rows decided on but rewritten before the delete (kept)."""

    table: str
    rows: int
    deleted: int
    live: int
    empty: int
    unreadable: int
    changed: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def purge_expired(
    ring: KeyRing,
    bind: Any,
    model: Any,
    *,
    batch: int = 1000,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[PurgeReport]:
    """:meth:`ccvault.Vault.purge_expired`: one report per table of ``model``."""
    bind, plans = job_inputs("purge_expired", bind, batch, model)
    return [_purge_table(ring, bind, plan, batch, dry_run, progress) for plan in plans]


class _Counts:
    __slots__ = ("changed", "deleted", "empty", "live", "rows", "unreadable")

    def __init__(self) -> None:
        self.rows = self.deleted = self.live = self.empty = self.unreadable = self.changed = 0


def _purge_table(
    ring: KeyRing,
    bind: Engine | Connection,
    plan: TablePlan,
    batch: int,
    dry_run: bool,
    progress: Progress | None,
) -> PurgeReport:
    table = plan.table
    key = list(table.primary_key.columns)
    if not key:
        raise ConfigurationError(
            f"table {table.name!r} has no primary key: purge_expired() pages by its key"
        )
    raw = [sa.type_coerce(col.column, sa.LargeBinary()) for col in plan.columns]
    base = sa.select(*key, plan.subject, *raw).order_by(*key).limit(batch)
    total = int(read_rows(bind, sa.select(sa.func.count()).select_from(table))[0][0])
    counts = _Counts()
    last: tuple[Any, ...] | None = None
    width = len(key)
    while True:
        stmt = base if last is None else base.where(keyset_after(key, last))
        rows = read_rows(bind, stmt)
        if not rows:
            break
        dead = _dead_rows(ring, rows, width, counts)
        if dead and not dry_run:
            deleted = _delete(bind, table, key, plan, dead, width)
            counts.deleted += deleted
            counts.changed += len(dead) - deleted
        elif dead:
            counts.deleted += len(dead)
        counts.rows += len(rows)
        last = rows[-1][:width]
        if progress is not None:
            progress(table.fullname, counts.rows, total)
        if len(rows) < batch:
            break
    return PurgeReport(
        table.fullname,
        counts.rows,
        counts.deleted,
        counts.live,
        counts.empty,
        counts.unreadable,
        counts.changed,
        dry_run,
    )


def _dead_rows(
    ring: KeyRing, rows: Sequence[tuple[Any, ...]], width: int, counts: _Counts
) -> list[tuple[Any, ...]]:
    """The rows of a batch to delete (each value NULL, EXPIRED or SHREDDED, one at least not
    NULL), decided from headers; the others counted by why they stay."""
    headers: set[bytes] = set()
    for row in rows:
        for value in row[width + 1 :]:
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value)
                headers.add(fmt.value_header(value))
    keys = ring.keys(headers) if headers else {}
    dead = []
    for row in rows:
        subject = row[width]
        verdict = "empty"
        for value in row[width + 1 :]:
            if value is None:
                continue
            if not isinstance(value, bytes | bytearray | memoryview):
                verdict = "live"  # legacy plaintext
                break
            value = bytes(value)
            found = keys.get(fmt.value_header(value))
            if found is None or not _owned(ring, found.ref, subject):
                verdict = "unreadable"
                break
            if found.aead is not None:
                verdict = "live"
                break
            verdict = "dead"  # a tombstone: SHREDDED or EXPIRED
        if verdict == "dead":
            dead.append(row)
        elif verdict == "live":
            counts.live += 1
        elif verdict == "empty":
            counts.empty += 1
        else:
            counts.unreadable += 1
    return dead


def _owned(ring: KeyRing, key_ref: bytes, subject: Any) -> bool:
    """Whether a key of ``key_ref`` belongs to the row's ``subject`` (the read path's check)."""
    if subject is None:
        return not key_ref
    try:
        return ring.subject_ref(subject) == key_ref
    except (TypeError, DecryptionError):
        return False


def _delete(
    bind: Engine | Connection,
    table: sa.Table,
    key: list[sa.Column[Any]],
    plan: TablePlan,
    dead: list[tuple[Any, ...]],
    width: int,
) -> int:
    """Delete ``dead`` in one transaction, each row only if its values are still the ones it
    was decided on; returns how many went."""
    by_nulls: dict[tuple[bool, ...], list[dict[str, Any]]] = {}
    for row in dead:
        values = row[width + 1 :]
        params = {f"k{i}": row[i] for i in range(width)}
        params.update({f"v{i}": v for i, v in enumerate(values) if v is not None})
        by_nulls.setdefault(tuple(v is None for v in values), []).append(params)

    def run(conn: Connection) -> int:
        deleted = 0
        for nulls, params in by_nulls.items():
            where = [col == sa.bindparam(f"k{i}") for i, col in enumerate(key)]
            for i, (col, null) in enumerate(zip(plan.columns, nulls, strict=True)):
                stored = sa.type_coerce(col.column, sa.LargeBinary())
                where.append(
                    stored.is_(None)
                    if null
                    else stored == sa.bindparam(f"v{i}", type_=sa.LargeBinary())
                )
            stmt = sa.delete(table).where(*where)
            # executemany where the driver counts every row it deleted, else one by one
            chunks = (
                [params] if conn.dialect.supports_sane_multi_rowcount else [[p] for p in params]
            )
            for chunk in chunks:
                result = conn.execute(stmt, chunk, execution_options={"preserve_rowcount": True})
                deleted += max(int(result.rowcount), 0)
        return deleted

    return in_transaction(bind, run)
