"""The write side: encrypt the values of INSERT and UPDATE statements row by row.

An engine-level ``before_execute(retval=True)`` hook sees every statement with its parameter
sets — ORM flushes, ORM bulk inserts, Core executemany and ``.values()`` — reads each row's
subject from the same parameter dict, and returns copies with ciphertexts (``Sealed``) in place
of plaintext; for an INSERT of many rows on an attached engine, copies with the driver's bytes
and a copy of the statement that binds them as they are (``_prepared``). The caller's dicts are
never mutated. A mapper ``before_update`` listener records the subject of each ORM-updated row
(the ORM's UPDATE does not carry unchanged columns) and, when the subject itself changes, marks
every encrypted attribute for re-encryption.

Retention-bound columns (``Encrypted(..., retention=)``) are sealed under the period key of their
row's event time: the value of its ``retention_from`` column in the statement (NULL or no such
column: the vault clock's now), or for an UPDATE the value the mapper listener recorded or the
WHERE clause names. The listener re-encrypts every retention-bound attribute when
``retention_from`` changes; a Core UPDATE that cannot name it is refused.

Statements that cannot be encrypted per row raise before anything is sent to the database.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import util
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Mapper, attributes
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from .._sentinels import NO_SUBJECT, Sentinel, refusal
from ..crypto._format import NonceSource, fresh_nonce, nonce_batch
from ..errors import ConfigurationError, ValueRejectedError
from ..retention import period_of
from ._codec import STR
from ._limits import Rejected
from ._plan import ColumnPlan, Retention, TablePlan, check_subject_type, plan_for
from ._types import IndexValue, Prepared, Sealed, base_column, driver_type
from ._write_loop import WriteLoop, compile_write_loop

if TYPE_CHECKING:
    from ..keyring import KeyRing
    from ..keyring._periods import Periods, PeriodSecret

__all__ = ["before_execute", "before_update", "refuse_prepared", "scoped_subject"]

_MISSING = object()
_STR_TAG = bytes((STR.tag,))
# conn.info key: (table, pk tuple) -> (subject, subject changed, retention_from value or
# _MISSING, retention_from changed)
_ORM_ROWS = "ccvault.orm_rows"
_scope: contextvars.ContextVar[tuple[int, object] | None] = contextvars.ContextVar(
    "ccvault_subject", default=None
)


@contextmanager
def scoped_subject(ring: KeyRing, subject: object) -> Iterator[None]:
    """``with vault.subject(x):`` — statements that carry no subject encrypt for ``x``."""
    ring.subject_ref(subject)  # validates the type now, not at the first statement
    token = _scope.set((id(ring), subject))
    try:
        yield
    finally:
        _scope.reset(token)


class StatementRefused(ConfigurationError):
    """A statement that cannot be encrypted row by row, or that would order, group, deduplicate,
    compare or aggregate ciphertext (raised before it runs)."""


def before_execute(
    ring: KeyRing,
    conn: Connection,
    clause: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    periods: Periods | None = None,
) -> tuple[Any, Any, Any]:
    if not isinstance(clause, sa.Insert | sa.Update):
        return clause, multiparams, params
    plan = plan_for(clause.table)
    if plan is None:
        return clause, multiparams, params
    _checked(ring, plan, periods)
    refuse_prepared(clause)
    clause, multiparams, params = _parametrised(plan, clause, multiparams, params)
    if isinstance(clause, sa.Insert):
        return _insert(ring, plan, clause, multiparams, params, periods, conn.dialect)
    return _update(ring, conn, plan, clause, multiparams, params, periods)


def _parametrised(
    plan: TablePlan, stmt: Any, multiparams: Any, params: Any
) -> tuple[Any, Any, Any]:
    """``.values(phone=bindparam("p"))`` of an encrypted column or its subject, with ``p`` given
    at execution: each parameter set gets the value under the column's own key and the statement
    loses that entry, so that every set is encrypted as a row. (Left in the statement, the entry
    would be read as the bind parameter's missing value: NULL.)"""
    entries = list(stmt._values.items()) if stmt._values else []
    entries += list(getattr(stmt, "_ordered_values", None) or ())  # SQLAlchemy 2.0
    moves: dict[Any, tuple[str, BindParameter[Any]]] = {}
    for k, v in entries:
        key = _column_key(k)
        if isinstance(v, BindParameter) and _needs_value(plan, key):
            moves[k] = (key, v)
    if not moves:  # the common case: no parameter set is looked at
        return stmt, multiparams, params
    sets: list[Mapping[str, Any]] = list(multiparams) if multiparams else [params or {}]
    names = {name for d in sets for name in d}
    moves = {k: (key, v) for k, (key, v) in moves.items() if v.key in names}
    if not moves:
        return stmt, multiparams, params
    keep = _where_bind_names(stmt)  # still needed by the WHERE clause
    out = []
    for d in sets:
        row = dict(d)
        for key, bind in moves.values():
            if bind.key in d:
                value = d[bind.key]
            elif not bind.required:
                value = bind.effective_value
            else:
                raise StatementRefused(
                    f"{plan.table.name}.{key}: a parameter set has no value for its bind "
                    f"parameter {bind.key!r}"
                )
            if key != bind.key and key in d:
                raise StatementRefused(
                    f"{plan.table.name}.{key} is given twice: as itself and through the bind "
                    f"parameter {bind.key!r}"
                )
            row[key] = value
        for key, bind in moves.values():
            if bind.key != key and bind.key not in keep:
                row.pop(bind.key, None)
        out.append(row)
    stmt = stmt._clone()
    stmt._values = util.immutabledict(
        {k: v for k, v in (stmt._values or {}).items() if k not in moves}
    )
    if getattr(stmt, "_ordered_values", None):
        stmt._ordered_values = [(k, v) for k, v in stmt._ordered_values if k not in moves]
    if multiparams:
        return stmt, out, params
    return stmt, multiparams, out[0]


def _needs_value(plan: TablePlan, key: str) -> bool:
    """Whether the write hook needs the Python value of column ``key``: an encrypted column, its
    subject, the retention_from of retention-bound columns."""
    if key in plan.by_key or key == plan.subject.key:
        return True
    retention = plan.retention
    return retention is not None and retention.column is not None and key == retention.column.key


def _column_key(k: Any) -> str:
    """The column key of a ``.values()`` entry (a string or a Column)."""
    return k if isinstance(k, str) else getattr(k, "key", str(k))


def _where_bind_names(stmt: Any) -> set[str]:
    return {
        element.key
        for criterion in getattr(stmt, "_where_criteria", ())
        for element in visitors.iterate(criterion)
        if isinstance(element, BindParameter)
    }


_checked_plans: set[tuple[int, int]] = set()


def _checked(ring: KeyRing, plan: TablePlan, periods: Periods | None) -> None:
    key = (id(ring), id(plan))
    if key not in _checked_plans:
        check_subject_type(plan, ring.subject_type)
        if periods is not None:
            check_categories(plan, periods)
        _checked_plans.add(key)


def check_categories(plan: TablePlan, periods: Periods) -> None:
    """ConfigurationError naming the column for a retention category the vault's policy does
    not have (``attach()`` checks every table; a table mapped later, at its first write)."""
    for col in plan.retained:
        try:
            periods.category(col.retention)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{plan.table.name}.{col.column.name}: {exc}") from None


# -- INSERT ------------------------------------------------------------------------------------


def _insert(
    ring: KeyRing,
    plan: TablePlan,
    stmt: sa.Insert,
    multiparams: Any,
    params: Any,
    periods: Periods | None = None,
    dialect: Dialect | None = None,
) -> tuple[Any, Any, Any]:
    """The INSERT with its rows encrypted. With the ``dialect`` it runs on, a statement of many
    rows the generated loop encrypts binds its encrypted and blind-index columns without a bind
    step (``_prepared``)."""
    found = _StatementPeriods(periods) if plan.retained else None
    # values in the statement, or an upsert's SET clause (whose bind parameters may share the
    # names of encrypted columns): the bind step stays
    literal = bool(stmt._values or stmt._multi_values) or (
        getattr(stmt, "_post_values_clause", None) is not None
    )
    if stmt._select_names:  # insert().from_select(...)
        raise StatementRefused(
            f"INSERT ... FROM SELECT into {plan.table.name!r} cannot encrypt row by row"
        )
    _refuse_upsert(plan, stmt)
    if stmt._multi_values:
        rows = []
        for values in stmt._multi_values:
            for row in values:
                if not isinstance(row, Mapping):
                    raise StatementRefused("multi-row VALUES with positional rows: use dicts")
                rows.append(
                    _encrypt_row(
                        ring, plan, _literal_row(plan, row), None, insert=True, periods=found
                    )
                )
        stmt = stmt._clone()
        stmt._multi_values = ()
        stmt = stmt.values(rows)
    elif stmt._values:
        single = _encrypt_row(
            ring, plan, _literal_row(plan, stmt._values), None, insert=True, periods=found
        )
        stmt = stmt.values(**single)
        # The subject (and retention_from) given in .values() is the subject of the execution
        # parameters' values too (a column default would otherwise make one up for them).
        shared = {plan.subject.key: single.get(plan.subject.key, _MISSING)}
        if plan.retention is not None and plan.retention.column is not None:
            shared[plan.retention.column.key] = single.get(plan.retention.column.key, _MISSING)
        shared = {k: v for k, v in shared.items() if v is not _MISSING}
        if shared:
            if multiparams:
                multiparams = [{**shared, **d} for d in multiparams]
            elif params:
                params = {**shared, **params}
    if multiparams:
        keys = None
        if len(multiparams) > 1:  # every row's key, created or loaded in batches, up front
            if plan.default is not None:  # subjects from the column default: generate them now
                multiparams = [
                    d if plan.subject.key in d else {**d, plan.subject.key: plan.default()}
                    for d in multiparams
                ]
            retention = plan.retention
            if retention is not None and retention.column is not None and retention.default:
                # event times from the column default: every row gets one (one set of keys)
                key, make = retention.column.key, retention.default
                multiparams = [d if key in d else {**d, key: make()} for d in multiparams]
            subject_key = plan.subject.key
            try:  # each row's key, in row order (None: no subject, or shredded)
                keys = ring.keys_for_rows([d.get(subject_key) for d in multiparams])
            except TypeError:
                keys = None  # a wrong subject type: let the row loop name the column
        # one CSPRNG call for the nonces of the whole statement
        nonces = nonce_batch(len(multiparams) * len(plan.columns))
        columns = _columns(ring, plan)

        def slow(d: Mapping[str, Any], key: Any = None) -> dict[str, Any]:
            return _encrypt_row(
                ring,
                plan,
                d,
                None,
                insert=True,
                row_key=key,
                nonces=nonces,
                columns=columns,
                periods=found,
            )

        indexers = tuple(c[3] for c in columns)
        if keys is None:
            multiparams = [slow(d) for d in multiparams]
        elif dialect is None or literal:  # the loop generated for the plan; other rows: slow()
            multiparams = _write_loop(plan)(multiparams, keys, nonces, indexers, slow)
        else:  # the same, writing the driver's bytes; other rows: slow(), then the bind step
            finish = _bind_steps(plan, dialect)
            multiparams = _write_loop(plan, driver_type(dialect))(
                multiparams, keys, nonces, indexers, lambda d, key: finish(slow(d, key))
            )
            stmt = _prepared(plan, stmt, multiparams[0])
    elif params or not (stmt._values or stmt._multi_values):
        params = _encrypt_row(ring, plan, params or {}, None, insert=True, periods=found)
    return stmt, multiparams, params


def _write_loop(plan: TablePlan, driver: type[bytes] | type[bytearray] | None = None) -> WriteLoop:
    """The INSERT row loop generated for ``plan`` (``_write_loop``), once a plan and driver
    type (None: the loop that marks its values for the bind step)."""
    loop: WriteLoop | None = plan.generated.get(("insert", driver))
    if loop is None:
        loop = plan.generated[("insert", driver)] = compile_write_loop(plan, _dumps, driver)
    return loop


# an INSERT as executed -> {the keys of the columns it binds through Prepared: the statement}
_PREPARED: weakref.WeakKeyDictionary[sa.Insert, dict[tuple[str, ...], sa.Insert]] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_TYPE = Prepared()


def _prepared(plan: TablePlan, stmt: sa.Insert, first: Mapping[str, Any]) -> sa.Insert:
    """``stmt`` binding its encrypted and blind-index columns through ``Prepared`` (no bind
    step), for rows the generated loop wrote with the driver's type (``compile_write_loop``'s
    ``driver``) and passed through ``_bind_steps`` where it handed them over: every value of
    those columns in them is the driver's bytes of a ciphertext or index, or None.

    The columns are those of ``first``, the first row as written (an executemany's statement
    has the columns of its first parameter set). Made once a statement object and column set;
    a statement the hook did not rewrite never binds these columns through ``Prepared``."""
    keys = tuple(k for k in _bound_keys(plan) if k in first)
    if not keys:
        return stmt
    memo = _PREPARED.get(stmt)
    if memo is None:
        memo = _PREPARED.setdefault(stmt, {})
    found = memo.get(keys)
    if found is None:
        columns = [plan.table.c[k] for k in keys]
        found = memo[keys] = stmt.values(
            {c: sa.bindparam(c.key, type_=_PREPARED_TYPE) for c in columns}
        )
    return found


def refuse_prepared(stmt: Any) -> None:
    """StatementRefused for a statement ``_prepared`` made, executed again: its encrypted and
    blind-index columns bind without a bind step, for the rows of the execution it was made for
    only. (A result's context and ``after_execute`` listeners hand it out.)"""
    values = getattr(stmt, "_values", None)
    if values and any(getattr(v, "type", None) is _PREPARED_TYPE for v in values.values()):
        raise StatementRefused(
            "a statement ccvault prepared for one execution cannot run again: execute your own "
            "statement, not the one a result or event handed you"
        )


def _bind_steps(plan: TablePlan, dialect: Dialect) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``row`` with the bind step of each encrypted and blind-index column (the column type's
    own, for ``dialect``) applied to its value: what the statement would have done to the
    row, had it not bound those columns through ``Prepared``. For the rows the generated loop
    hands to the generic function."""
    steps: list[tuple[str, Any]] = []

    def finish(row: dict[str, Any]) -> dict[str, Any]:
        if not steps:  # made at the first row handed over (most statements have none)
            steps.extend(
                (k, plan.table.c[k].type.bind_processor(dialect)) for k in _bound_keys(plan)
            )
        for key, step in steps:
            if key in row:
                row[key] = step(row[key])
        return row

    return finish


def _bound_keys(plan: TablePlan) -> Iterator[str]:
    """The keys of ``plan``'s encrypted columns and their blind-index columns."""
    for c in plan.columns:
        yield c.key
        if c.index_key is not None:
            yield c.index_key


def _refuse_upsert(plan: TablePlan, stmt: sa.Insert) -> None:
    """ON CONFLICT DO UPDATE / ON DUPLICATE KEY UPDATE setting encrypted columns: refused."""
    clause = getattr(stmt, "_post_values_clause", None)
    if clause is None:
        return
    sets = getattr(clause, "update_values_to_set", None)  # PostgreSQL, SQLite
    if sets is None:
        sets = getattr(clause, "update", None)  # MySQL/MariaDB
    if not sets:
        return  # DO NOTHING
    items = sets.items() if isinstance(sets, Mapping) else sets
    names = {k if isinstance(k, str) else getattr(k, "key", None) for k, _ in items}
    if any(name is not None and _needs_value(plan, name) for name in names):
        raise StatementRefused(
            f"an upsert that sets encrypted columns of {plan.table.name!r} cannot encrypt "
            "them per row; insert, then update through the ORM"
        )


def _literal_row(plan: TablePlan, values: Mapping[Any, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in values.items():
        key = _column_key(k)
        if isinstance(v, BindParameter):
            if v.required and _needs_value(plan, key):
                raise StatementRefused(
                    f"{plan.table.name}.{key} is set from the bind parameter {v.key!r}, which no "
                    "parameter set gives a value: pass it to execute()"
                )
            v = v.effective_value
        elif isinstance(v, sa.ClauseElement) and _needs_value(plan, key):
            raise StatementRefused(
                f"{plan.table.name}.{key} is set from an SQL expression; encrypted columns, "
                "their subject and retention_from need Python values"
            )
        row[key] = v
    return row


# -- UPDATE ------------------------------------------------------------------------------------


def _update(
    ring: KeyRing,
    conn: Connection,
    plan: TablePlan,
    stmt: sa.Update,
    multiparams: Any,
    params: Any,
    periods: Periods | None = None,
) -> tuple[Any, Any, Any]:
    criterion = _criterion_binds(stmt)
    literal = _literal_row(plan, stmt._values) if stmt._values else {}
    ordered = getattr(stmt, "_ordered_values", None)  # SQLAlchemy 2.0; 2.1 keeps them in _values
    if ordered:
        literal.update(_literal_row(plan, dict(ordered)))
    sets = set(literal)
    param_sets = list(multiparams) if multiparams else [params or {}]
    where_names = _where_bind_names(stmt)
    for d in param_sets:
        sets |= {k for k in d if k not in where_names}
    touched = sets & set(plan.by_key)
    subject_set = plan.subject.key in sets
    retention = plan.retention
    from_column = retention.column if retention is not None else None
    from_set = from_column is not None and from_column.key in sets
    if from_set and {c.key for c in plan.retained} - touched:
        raise StatementRefused(
            f"this statement changes {plan.table.name}.{from_column.key}, the retention_from "  # type: ignore[union-attr]
            "of retention-bound columns, without re-encrypting them into the new period: set "
            "every retention-bound column in the same UPDATE, or update through the ORM"
        )
    if not touched and not subject_set:
        return stmt, multiparams, params
    retained_touched = any(plan.by_key[k].retention is not None for k in touched)
    statement_periods = _StatementPeriods(periods) if retained_touched else None
    orm_rows = conn.info.get(_ORM_ROWS, {})
    pk_binds = [criterion.get(c) for c in plan.table.primary_key.columns]

    def recorded(d: Mapping[str, Any]) -> tuple[object, bool, object, bool] | None:
        if all(b is not None for b in pk_binds):
            pk = tuple(_bound(d, b) for b in pk_binds)  # type: ignore[arg-type]
            found: tuple[object, bool, object, bool] | None = orm_rows.pop((plan.table, pk), None)
            return found
        return None

    def subject_for(d: Mapping[str, Any], found: Any) -> tuple[object, bool]:
        if found is not None:
            return found[0], found[1]
        if subject_set:
            return _MISSING, True
        bind = criterion.get(plan.subject)
        if bind is not None:
            return _bound(d, bind), False
        scoped = _scope.get()
        if scoped is not None and scoped[0] == id(ring):
            return scoped[1], False
        return _MISSING, False

    def event_for(d: Mapping[str, Any], found: Any) -> object:
        """The retention_from value of the row: set by the statement, recorded by the ORM, or
        named by the WHERE clause; else the refusal to raise once a value needs it."""
        if not retained_touched or from_column is None:
            return None  # the write time (or no retention-bound value)
        if from_set:
            return {**literal, **d}.get(from_column.key)
        if found is not None and found[2] is not _MISSING:
            return found[2]
        bind = criterion.get(from_column)
        if bind is not None:
            return _bound(d, bind)
        name = from_column.key
        return StatementRefused(
            f"UPDATE of retention-bound columns of table {plan.table.name!r} that cannot name "
            f"their retention_from ({name}), whose value picks the period the new values go "
            f"into: give {name} in the statement, filter on {name} ==, or update through the ORM"
        )

    def encrypt(d: Mapping[str, Any]) -> dict[str, Any]:
        found = recorded(d)
        subject, changed = subject_for(d, found)
        if subject_set and not changed:
            raise StatementRefused(
                f"this statement changes {plan.table.name}.{plan.subject.key}, the subject of "
                "encrypted columns, without re-encrypting them (see the merge recipe in "
                "docs/sqlalchemy.md)"
            )
        if subject_set and changed and touched != set(plan.by_key):
            raise StatementRefused("a subject change must re-encrypt every encrypted column")
        if subject is _MISSING:
            raise StatementRefused(
                f"UPDATE of encrypted columns of {plan.table.name!r} without their subject: "
                f"filter on {plan.subject.key} ==, update through the ORM, or use "
                "`with vault.subject(x):`"
            )
        return _encrypt_row(
            ring,
            plan,
            d,
            subject,
            insert=False,
            periods=statement_periods,
            event=event_for(d, found),
        )

    if literal:
        stmt = stmt.values(**encrypt(literal))
    if multiparams:
        multiparams = [encrypt(d) for d in multiparams]
    elif params:
        params = encrypt(params)
    return stmt, multiparams, params


def _criterion_binds(stmt: sa.Update) -> dict[Any, BindParameter[Any]]:
    """``column == :bind`` terms of the WHERE clause (ANDed), by column."""
    out: dict[Any, BindParameter[Any]] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, BooleanClauseList) and expr.operator is operators.and_:
            for clause in expr.clauses:
                visit(clause)
        elif isinstance(expr, BinaryExpression) and expr.operator is operators.eq:
            left, right = expr.left, expr.right
            if isinstance(right, BindParameter) and isinstance(left, sa.Column):
                out[left] = right
            elif isinstance(left, BindParameter) and isinstance(right, sa.Column):
                out[right] = left

    for crit in stmt._where_criteria:
        visit(crit)
    # by the table's own columns (an ORM statement's are annotated copies of them)
    table = getattr(stmt.table, "__clause_element__", lambda: stmt.table)()
    table = getattr(table, "_deannotate", lambda: table)()
    found: dict[Any, BindParameter[Any]] = {}
    for k, v in out.items():
        column = base_column(k)
        if column is not None and column.table is table:
            found[column] = v
    return found


def _bound(d: Mapping[str, Any], bind: BindParameter[Any]) -> Any:
    if bind.key in d:
        return d[bind.key]
    return bind.effective_value


# -- rows ----------------------------------------------------------------------------------------


# What the row loop needs of one encrypted column, unpacked in one step: its key in the
# parameters, u32(len(label)) || label, its blind-index column's key and indexer ("" and None
# when not searchable), whether it takes str, the most characters of a str, its retention
# category (None: suite 1), its plan.
_Column = tuple[str, bytes, str, Callable[[str], bytes] | None, bool, int, str | None, ColumnPlan]


def _columns(ring: KeyRing, plan: TablePlan) -> tuple[_Column, ...]:
    """The plan's columns for a statement: each blind indexer resolved once."""
    out = []
    for c in plan.columns:
        index_key, index = "", None
        if c.index_key is not None and c.normalizer is not None:
            index_key = c.index_key
            index = ring.blind_indexer(c.label, c.normalizer, c.index_bytes).index
        out.append((c.key, c.ctx_lp, index_key, index, c.is_str, c.max_chars, c.retention, c))
    return tuple(out)


def _encrypt_row(
    ring: KeyRing,
    plan: TablePlan,
    row: Mapping[str, Any],
    subject: object,
    *,
    insert: bool,
    row_key: Any = None,
    nonces: NonceSource = fresh_nonce,
    columns: tuple[_Column, ...] | None = None,
    periods: _StatementPeriods | None = None,
    event: object = _MISSING,
) -> dict[str, Any]:
    out = dict(row)
    if subject is None and insert:
        subject = out.get(plan.subject.key, _MISSING)
        if subject is _MISSING:
            if plan.default is None:
                raise StatementRefused(
                    f"INSERT into {plan.table.name!r} without {plan.subject.key}, the subject of "
                    "its encrypted columns"
                )
            subject = plan.default()
            out[plan.subject.key] = subject
    target: object = subject
    if subject is None:
        if plan.on_null_subject != "vaultwide":
            if not any(out.get(c.key) is not None for c in plan.columns):
                # nothing to encrypt; a NULL value's blind index is NULL, as with a subject
                # (an executemany takes its columns from the first row: without the key, later
                # rows' indexes would not be written)
                for c in plan.columns:
                    if c.index_key is not None and c.key in out:
                        out[c.index_key] = None
                return out
            raise StatementRefused(
                f"{plan.table.name}.{plan.subject.key} is NULL; set on_null_subject='vaultwide' "
                "to encrypt such rows under the vault-wide key"
            )
        target = NO_SUBJECT
    if columns is None:
        columns = _columns(ring, plan)
    # the row's key (``row_key``: its statement's keys_for_rows, None: not looked up yet), once
    # for all its columns (vault-wide keys are per column)
    key: Any = row_key if target is not NO_SUBJECT else None
    period_keys: dict[str, Any] | None = None  # retention-bound columns' keys, by category
    when: Any = None  # their event time, found at the first of them
    for name, ctx_lp, index_key, index, is_str, max_chars, category, col in columns:
        value = out.get(name, _MISSING)
        if value is _MISSING or type(value) is Sealed:
            continue
        if type(value) is str and is_str:  # the common case, without _dumps' checks
            if len(value) > max_chars:
                _dumps(col, value)  # raises ValueRejectedError
            try:
                data = _STR_TAG + value.encode()
            except UnicodeEncodeError:  # lone surrogates: refused below, outside this handler
                break
            if index is not None:
                out[index_key] = IndexValue(index(value))
        else:
            if index is not None:  # searchable columns are str columns: no index of the rest
                out[index_key] = None
            if value is None:
                continue
            data = _dumps(col, value)
        if category is not None:
            # a retention-bound column: sealed under its subject's key of the period its row's
            # event time falls in (suite 2)
            if period_keys is None:
                period_keys = {}
                when = _event_time(plan, out, event, insert)
            vkey = period_keys.get(category)
            if vkey is None:
                if periods is None:
                    periods = _StatementPeriods(None)  # raises: no vault attached
                vkey = period_keys[category] = periods.key(ring, col, target, when)
            nonce = nonces()
            out[name] = Sealed(
                vkey.header
                + nonce
                + vkey.aead.seal(nonce, data, vkey.ads.get(ctx_lp) or vkey.associated_data(ctx_lp))
            )
            continue
        if key is None or target is NO_SUBJECT:
            try:
                key = ring.key_for_write(target, col.label)
            except TypeError:
                raise TypeError(
                    f"{col.label}: the row's subject is not of the installation's type"
                ) from None
        # key.seal(data, ctx_lp, nonces), inlined: this runs for every value written
        nonce = nonces()
        out[name] = Sealed(
            key.header
            + nonce
            + key.aead.seal(nonce, data, key.ads.get(ctx_lp) or key.associated_data(ctx_lp))
        )
    else:
        return out
    # reached by the `break` above only: the refusal is raised outside the except block, so it
    # is chained to no UnicodeEncodeError (which holds the text)
    _dumps(col, value)
    raise AssertionError("unreachable: text UTF-8 cannot encode was encoded")


class _StatementPeriods:
    """The retention periods one statement met: :meth:`Periods.for_write` once a period (and
    category), not once a row. An event time in the bounds of a period already found has that
    period's outcome (its expiry and how far ahead it is are the period's); the write time
    (None) is the statement's."""

    __slots__ = ("found", "now", "periods")

    def __init__(self, periods: Periods | None) -> None:
        self.periods = periods
        self.found: dict[str, list[tuple[dt.datetime, dt.datetime, PeriodSecret]]] = {}
        self.now: dict[str, PeriodSecret] = {}

    def key(self, ring: KeyRing, col: ColumnPlan, subject: object, when: Any) -> Any:
        """The suite-2 key of ``subject``'s values of ``col``'s category in the period of
        ``when`` (None: the vault clock's now)."""
        name = col.retention
        assert name is not None
        secret = self.now.get(name) if when is None else None
        if when is not None:
            for start, end, candidate in self.found.get(name, ()):
                if start <= when < end:
                    secret = candidate
                    break
        if secret is None:
            secret = self._resolve(ring, col, name, subject, when)
        try:
            return ring.period_key_for_write(subject, secret)
        except TypeError:
            raise TypeError(
                f"{col.label}: the row's subject is not of the installation's type"
            ) from None

    def _resolve(
        self, ring: KeyRing, col: ColumnPlan, name: str, subject: object, when: Any
    ) -> PeriodSecret:
        periods = self.periods
        if periods is None:
            raise ConfigurationError(
                f"{col.label} is retention-bound: write it through an engine the vault is "
                "attached to (vault.attach(engine))"
            )
        category = periods.category(name)
        try:
            ring.subject_ref(subject)  # a wrong type before a period is created
        except TypeError:
            raise TypeError(
                f"{col.label}: the row's subject is not of the installation's type"
            ) from None
        secret = periods.for_write(category, when)
        if when is None:
            self.now[name] = secret
        else:
            period = period_of(category, when)
            self.found.setdefault(name, []).append((period.start_utc, period.end_utc, secret))
        return secret


def _event_time(plan: TablePlan, row: Mapping[str, Any], event: object, insert: bool) -> Any:
    """The event time of a row's retention-bound values, aware, or None for the write time:
    ``event`` (what an UPDATE names; a StatementRefused to raise when it names nothing), else
    the row's retention_from value (an INSERT: its client-side default when the row has none).
    """
    retention = plan.retention
    if retention is None or retention.column is None:
        return None
    if isinstance(event, StatementRefused):
        raise event
    value = event
    if value is _MISSING:
        key = retention.column.key
        value = row.get(key, _MISSING)
        if value is _MISSING:
            value = None
            if insert and retention.default is not None:
                value = retention.default()
                row[key] = value  # type: ignore[index]  # the row is the hook's own copy
    return checked_event_time(retention, value)


def checked_event_time(retention: Retention, value: object) -> dt.datetime | None:
    """``value`` of the retention_from column as an aware datetime (a naive column's read in its
    ``retention_tz``), None for NULL; TypeError for another type, ValueError for a naive value
    of an aware column or an aware value of a naive one."""
    if value is None:
        return None
    where = retention.where()
    if not isinstance(value, dt.datetime):
        raise TypeError(
            f"{where} (the retention_from of retention-bound columns) takes datetime values, not "
            f"{type(value).__name__}"
        )
    aware = value.tzinfo is not None and value.utcoffset() is not None
    zone = retention.zone
    if zone is None:
        if not aware:
            raise ValueError(
                f"{where} is DateTime(timezone=True) but holds a naive datetime: give it a time "
                "zone (datetime.now(timezone.utc)), its retention period depends on it. On "
                "databases whose DATETIME keeps no zone (SQLite, MariaDB) declare DateTime() "
                "with retention_tz= instead"
            )
        return value
    if aware:
        raise ValueError(
            f"{where} is a DateTime without a time zone, read in {zone.key}: pass a naive "
            f"datetime in {zone.key} (value.astimezone(ZoneInfo({zone.key!r})).replace("
            "tzinfo=None)), or declare the column DateTime(timezone=True)"
        )
    return value.replace(tzinfo=zone)


def _dumps(col: ColumnPlan, value: Any) -> bytes:
    """The plaintext of ``value`` for ``col``: TypeError for a wrong type, ValueRejectedError for
    a value the declared type cannot hold (never chained to an exception that holds the value)."""
    if isinstance(value, Sentinel):  # SHREDDED, UNREADABLE, ...: a str, but no data
        raise TypeError(f"{col.label}: {refusal(value)}")
    if not isinstance(value, col.python_types) or (col.rejects_bool and isinstance(value, bool)):
        raise TypeError(f"{col.label} takes {col.codec.name} values, not {type(value).__name__}")
    try:
        if col.check is not None:
            value = col.check(value)
        return col.codec.dumps(value)
    except Rejected as exc:
        reason = str(exc)
    except TypeError:  # JSON that json cannot serialise
        reason = ""
    except UnicodeEncodeError:
        reason = "text with a lone surrogate, which UTF-8 cannot encode"
    except (ValueError, LookupError, OverflowError, RecursionError):  # NaN, a circular reference
        reason = f"the value cannot be stored as {col.codec.name}"
    if not reason:
        raise TypeError(f"{col.label}: the value cannot be stored as {col.codec.name}")
    raise ValueRejectedError(f"{col.label}: {reason}", column=col.label)


# -- ORM ----------------------------------------------------------------------------------------


def before_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Record each ORM-updated row's subject and retention_from; re-encrypt everything when the
    subject changes, and every retention-bound column when retention_from changes."""
    state = attributes.instance_state(target)
    for table in mapper.tables:
        plan = plan_for(table)
        if plan is None or state.key is None:
            continue
        changed = _changed(mapper, state, plan.subject)
        if changed:
            _reencrypt(mapper, target, plan, plan.columns, "move to another subject")
        event: object = _MISSING
        moved = False
        retention = plan.retention
        if retention is not None and retention.column is not None:
            moved = _changed(mapper, state, retention.column)
            if moved:
                _reencrypt(mapper, target, plan, plan.retained, "move to another period")
            modified = state.committed_state
            if (
                changed
                or moved
                or any(
                    mapper.get_property_by_column(c.column).key in modified for c in plan.retained
                )
            ):  # a retention-bound value is sealed: its row's event time (loaded if expired)
                event = getattr(target, mapper.get_property_by_column(retention.column).key)
        pk = tuple(state.key[1])  # the identity: the primary key the UPDATE's WHERE names
        rows = connection.info.setdefault(_ORM_ROWS, {})
        subject = getattr(target, mapper.get_property_by_column(plan.subject).key)
        rows[(table, pk)] = (subject, changed, event, moved)


def _changed(mapper: Mapper[Any], state: Any, column: sa.Column[Any]) -> bool:
    hist = state.attrs[mapper.get_property_by_column(column).key].history
    return bool(hist.added) and list(hist.added) != list(hist.deleted)


def _reencrypt(
    mapper: Mapper[Any], target: Any, plan: TablePlan, columns: tuple[ColumnPlan, ...], why: str
) -> None:
    """Mark ``columns`` of ``target`` modified, so that the UPDATE seals them again; a column
    holding a read sentinel (no data) refuses the move."""
    for col in columns:
        prop = mapper.get_property_by_column(col.column)
        if isinstance(getattr(target, prop.key), Sentinel):  # (loads it if deferred)
            raise StatementRefused(
                f"{plan.table.name}.{col.column.name} holds a read sentinel, not data: "
                f"the row cannot {why}"
            )
        attributes.flag_modified(target, prop.key)


def after_flush(session: Any, _flush_context: Any) -> None:
    """Forget rows an UPDATE did not consume (a flush that failed half-way)."""
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        session.connection().info.pop(_ORM_ROWS, None)
