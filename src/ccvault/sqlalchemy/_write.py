"""The write side: encrypt the values of INSERT and UPDATE statements row by row.

An engine-level ``before_execute(retval=True)`` hook sees every statement with its parameter
sets — ORM flushes, ORM bulk inserts, Core executemany and ``.values()`` — reads each row's
subject from the same parameter dict, and returns copies with ciphertexts (``Sealed``) in place
of plaintext. The caller's dicts are never mutated. A mapper ``before_update`` listener records
the subject of each ORM-updated row (the ORM's UPDATE does not carry unchanged columns) and, when
the subject itself changes, marks every encrypted attribute for re-encryption.

Statements that cannot be encrypted per row raise before anything is sent to the database.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import util
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, attributes
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from .._sentinels import NO_SUBJECT, Sentinel, refusal
from ..crypto._format import NonceSource, fresh_nonce, nonce_batch
from ..errors import ConfigurationError, ValueRejectedError
from ._codec import STR
from ._limits import Rejected
from ._plan import ColumnPlan, TablePlan, check_subject_type, plan_for
from ._types import IndexValue, Sealed

if TYPE_CHECKING:
    from ..keyring import KeyRing

__all__ = ["before_execute", "before_update", "scoped_subject"]

_MISSING = object()
_STR_TAG = bytes((STR.tag,))
_ORM_ROWS = "ccvault.orm_rows"  # conn.info key: (table, pk tuple) -> (subject, subject_changed)
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
) -> tuple[Any, Any, Any]:
    if not isinstance(clause, sa.Insert | sa.Update):
        return clause, multiparams, params
    plan = plan_for(clause.table)
    if plan is None:
        return clause, multiparams, params
    _checked(ring, plan)
    clause, multiparams, params = _parametrised(plan, clause, multiparams, params)
    if isinstance(clause, sa.Insert):
        return _insert(ring, plan, clause, multiparams, params)
    return _update(ring, conn, plan, clause, multiparams, params)


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
        if isinstance(v, BindParameter) and (key in plan.by_key or key == plan.subject.key):
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


def _checked(ring: KeyRing, plan: TablePlan) -> None:
    key = (id(ring), id(plan))
    if key not in _checked_plans:
        check_subject_type(plan, ring.subject_type)
        _checked_plans.add(key)


# -- INSERT ------------------------------------------------------------------------------------


def _insert(
    ring: KeyRing, plan: TablePlan, stmt: sa.Insert, multiparams: Any, params: Any
) -> tuple[Any, Any, Any]:
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
                rows.append(_encrypt_row(ring, plan, _literal_row(plan, row), None, insert=True))
        stmt = stmt._clone()
        stmt._multi_values = ()
        stmt = stmt.values(rows)
    elif stmt._values:
        single = _encrypt_row(ring, plan, _literal_row(plan, stmt._values), None, insert=True)
        stmt = stmt.values(**single)
        # The subject given in .values() is the subject of the execution parameters' values too
        # (a column default would otherwise make one up for them).
        subject = single.get(plan.subject.key, _MISSING)
        if subject is not _MISSING:
            if multiparams:
                multiparams = [{plan.subject.key: subject, **d} for d in multiparams]
            elif params:
                params = {plan.subject.key: subject, **params}
    if multiparams:
        keys = None
        if len(multiparams) > 1:  # every row's key, created or loaded in batches, up front
            if plan.default is not None:  # subjects from the column default: generate them now
                multiparams = [
                    d if plan.subject.key in d else {**d, plan.subject.key: plan.default()}
                    for d in multiparams
                ]
            try:
                keys = ring.keys_for_write(
                    s for d in multiparams if (s := d.get(plan.subject.key)) is not None
                )
            except TypeError:
                keys = None  # a wrong subject type: let the row loop name the column
        # one CSPRNG call for the nonces of the whole statement
        nonces = nonce_batch(len(multiparams) * len(plan.columns))
        columns = _columns(ring, plan)
        multiparams = [
            _encrypt_row(
                ring, plan, d, None, insert=True, keys=keys, nonces=nonces, columns=columns
            )
            for d in multiparams
        ]
    elif params or not (stmt._values or stmt._multi_values):
        params = _encrypt_row(ring, plan, params or {}, None, insert=True)
    return stmt, multiparams, params


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
    if names & set(plan.by_key) or plan.subject.key in names:
        raise StatementRefused(
            f"an upsert that sets encrypted columns of {plan.table.name!r} cannot encrypt "
            "them per row; insert, then update through the ORM"
        )


def _literal_row(plan: TablePlan, values: Mapping[Any, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in values.items():
        key = _column_key(k)
        if isinstance(v, BindParameter):
            if v.required and (key in plan.by_key or key == plan.subject.key):
                raise StatementRefused(
                    f"{plan.table.name}.{key} is set from the bind parameter {v.key!r}, which no "
                    "parameter set gives a value: pass it to execute()"
                )
            v = v.effective_value
        elif isinstance(v, sa.ClauseElement) and (key in plan.by_key or key == plan.subject.key):
            raise StatementRefused(
                f"{plan.table.name}.{key} is set from an SQL expression; encrypted columns and "
                "their subject need Python values"
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
    if not touched and not subject_set:
        return stmt, multiparams, params
    orm_rows = conn.info.get(_ORM_ROWS, {})
    pk_binds = [criterion.get(c) for c in plan.table.primary_key.columns]

    def subject_for(d: Mapping[str, Any]) -> tuple[object, bool]:
        if all(b is not None for b in pk_binds):
            pk = tuple(_bound(d, b) for b in pk_binds)  # type: ignore[arg-type]
            found: tuple[object, bool] | None = orm_rows.pop((plan.table, pk), None)
            if found is not None:
                return found
        if subject_set:
            return _MISSING, True
        bind = criterion.get(plan.subject)
        if bind is not None:
            return _bound(d, bind), False
        scoped = _scope.get()
        if scoped is not None and scoped[0] == id(ring):
            return scoped[1], False
        return _MISSING, False

    def encrypt(d: Mapping[str, Any]) -> dict[str, Any]:
        subject, changed = subject_for(d)
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
        return _encrypt_row(ring, plan, d, subject, insert=False)

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
    return {k: v for k, v in out.items() if getattr(k, "table", None) is stmt.table}


def _bound(d: Mapping[str, Any], bind: BindParameter[Any]) -> Any:
    if bind.key in d:
        return d[bind.key]
    return bind.effective_value


# -- rows ----------------------------------------------------------------------------------------


# What the row loop needs of one encrypted column, unpacked in one step: its key in the
# parameters, u32(len(label)) || label, its blind-index column's key and indexer ("" and None
# when not searchable), whether it takes str, the most characters of a str, its plan.
_Column = tuple[str, bytes, str, Callable[[str], bytes] | None, bool, int, ColumnPlan]


def _columns(ring: KeyRing, plan: TablePlan) -> tuple[_Column, ...]:
    """The plan's columns for a statement: each blind indexer resolved once."""
    out = []
    for c in plan.columns:
        index_key, index = "", None
        if c.index_key is not None and c.normalizer is not None:
            index_key = c.index_key
            index = ring.blind_indexer(c.label, c.normalizer, c.index_bytes).index
        out.append((c.key, c.ctx_lp, index_key, index, c.is_str, c.max_chars, c))
    return tuple(out)


def _encrypt_row(
    ring: KeyRing,
    plan: TablePlan,
    row: Mapping[str, Any],
    subject: object,
    *,
    insert: bool,
    keys: Mapping[object, Any] | None = None,
    nonces: NonceSource = fresh_nonce,
    columns: tuple[_Column, ...] | None = None,
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
                return out
            raise StatementRefused(
                f"{plan.table.name}.{plan.subject.key} is NULL; set on_null_subject='vaultwide' "
                "to encrypt such rows under the vault-wide key"
            )
        target = NO_SUBJECT
    if columns is None:
        columns = _columns(ring, plan)
    # the row's key, looked up once for all its columns (vault-wide keys are per column)
    key: Any = keys.get(target) if keys is not None and target is not NO_SUBJECT else None
    for name, ctx_lp, index_key, index, is_str, max_chars, col in columns:
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
    """Record each ORM-updated row's subject; re-encrypt everything when the subject changes."""
    state = attributes.instance_state(target)
    for table in mapper.tables:
        plan = plan_for(table)
        if plan is None or state.key is None:
            continue
        subject_prop = mapper.get_property_by_column(plan.subject)
        hist = state.attrs[subject_prop.key].history
        changed = bool(hist.added) and list(hist.added) != list(hist.deleted)
        if changed:
            for col in plan.columns:
                prop = mapper.get_property_by_column(col.column)
                if isinstance(getattr(target, prop.key), Sentinel):  # (loads it if deferred)
                    raise StatementRefused(
                        f"{plan.table.name}.{col.column.name} holds a read sentinel, not data: "
                        "the row cannot move to another subject"
                    )
                attributes.flag_modified(target, prop.key)
        pk = tuple(state.key[1])  # the identity: the primary key the UPDATE's WHERE names
        rows = connection.info.setdefault(_ORM_ROWS, {})
        rows[(table, pk)] = (getattr(target, subject_prop.key), changed)


def after_flush(session: Any, _flush_context: Any) -> None:
    """Forget rows an UPDATE did not consume (a flush that failed half-way)."""
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        session.connection().info.pop(_ORM_ROWS, None)
