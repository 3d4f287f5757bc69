"""The read side's statement check: refuse SQL that would compute on ciphertext, before it runs.

An encrypted column holds a random ciphertext per value, so the database can order, group,
deduplicate, compare or aggregate it only by those random bytes: ``ORDER BY``, ``GROUP BY``,
``DISTINCT`` (and ``DISTINCT ON``), ``UNION``/``INTERSECT``/``EXCEPT``, window ``PARTITION
BY``/``ORDER BY``, SQL functions such as ``max`` or ``lower``, ``CAST`` and comparisons that
reach the column itself would all return a wrong result without an error. An engine-level
``before_cursor_execute`` hook walks each compiled statement once — subqueries and CTEs
included — and raises :class:`StatementRefused` naming the construct and the column
(``table.column``) before the statement reaches the database. The verdict is kept on the compiled
statement, which SQLAlchemy caches in turn, so a statement executed again costs one attribute
read.

Allowed on an encrypted column: selecting it (values are decrypted on read), ``IS NULL`` / ``IS
NOT NULL`` (``== None``), ``count(col)`` (NULL is NULL, ciphertext or not), ``UNION ALL``,
comparisons through the blind index of a ``searchable=`` column (its companion column is not
encrypted), and ``type_coerce(col, LargeBinary)``, the explicit way to work on the stored bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import functions, operators, visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BooleanClauseList,
    Cast,
    ClauseElement,
    ClauseList,
    ColumnClause,
    Grouping,
    Null,
    Over,
    TypeCoerce,
    UnaryExpression,
    _textual_label_reference,
)
from sqlalchemy.sql.selectable import CompoundSelect, Exists, ReturnsRows, ScalarSelect

from ._types import Encrypted, column_name
from ._write import StatementRefused

_ORDERED_AGGREGATE: tuple[type, ...]  # WITHIN GROUP (ORDER BY ...), aggregate_order_by()
_DISTINCT_ON: tuple[type, ...]  # select().ext(postgresql.distinct_on(...))
try:  # SQLAlchemy 2.1
    from sqlalchemy.dialects.postgresql.ext import DistinctOnClause
    from sqlalchemy.sql.elements import AggregateOrderBy

    _ORDERED_AGGREGATE, _DISTINCT_ON = (AggregateOrderBy,), (DistinctOnClause,)
except ImportError:  # SQLAlchemy 2.0: select().distinct(*columns) for DISTINCT ON
    from sqlalchemy.sql.elements import WithinGroup

    _ORDERED_AGGREGATE, _DISTINCT_ON = (WithinGroup,), ()

__all__ = ["before_cursor_execute", "refusal"]

_NULL_TESTS = (operators.is_, operators.is_not)

# The verdict on a compiled statement (the refusal message, or None) is kept on the compiled
# object itself: one attribute read per execution (a WeakKeyDictionary look-up costs five times
# as much), and it goes when SQLAlchemy drops the statement from its cache.
_VERDICT = "_ccvault_refusal"
_UNCHECKED = object()


def before_cursor_execute(
    conn: Any,
    cursor: Any,
    statement: Any,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> tuple[Any, Any]:
    """Listened to with ``retval=True`` (no wrapper call): returns the statement as it came."""
    compiled = context.compiled
    if compiled is not None:  # None: exec_driver_sql, raw SQL is not inspected
        verdict = getattr(compiled, _VERDICT, _UNCHECKED)
        if verdict is _UNCHECKED:
            verdict = refusal(compiled)
            setattr(compiled, _VERDICT, verdict)
        if verdict is not None:
            raise StatementRefused(verdict)
    return statement, parameters


def refusal(compiled: Any) -> str | None:
    """Why this compiled statement must not run, or None."""
    if not isinstance(compiled, SQLCompiler):  # DDL
        return None
    roots = [compiled.statement]
    # The ORM compiles the statement it was given into another one (eager joins, their ORDER BY)
    inner = getattr(getattr(compiled, "compile_state", None), "statement", None)
    if isinstance(inner, ClauseElement) and inner is not compiled.statement:
        roots.append(inner)
    for root in roots:
        for element in visitors.iterate(root):
            found = _check(element)
            if found is not None:
                return found
    return None


def _check(el: Any) -> str | None:
    if isinstance(el, sa.Select):
        return _select(el)
    if isinstance(el, CompoundSelect):
        return _compound(el)
    if isinstance(el, Over):
        return _by(el.partition_by, "PARTITION BY of a window function", _GROUPS) or (
            _by(el.order_by, "ORDER BY of a window function", _ORDERS)
        )
    if isinstance(el, _ORDERED_AGGREGATE):  # WITHIN GROUP (ORDER BY ...), aggregate_order_by
        ordered: Any = el
        return _by(ordered.order_by, "ORDER BY of an aggregate", _ORDERS)
    if isinstance(el, functions.FunctionElement):
        return _function(el)
    if isinstance(el, Cast):
        col = _ciphertext(el.clause)
        return None if col is None else _refused("CAST", col, "convert ciphertext, not values")
    if isinstance(el, BinaryExpression):
        if _null_test(el):
            return None
        for side in (el.left, el.right):
            col = _ciphertext(side)
            if col is not None:
                name = getattr(el.operator, "__name__", str(el.operator))
                return _refused(f"the operator {name}", col, "compare ciphertext, not values")
        return None
    if isinstance(el, UnaryExpression) and el.operator is not None and not isinstance(el, Exists):
        col = _ciphertext(el.element)
        if col is None:
            return None
        if el.operator is operators.distinct_op:
            return _refused("DISTINCT", col, _DEDUPLICATES)
        name = getattr(el.operator, "__name__", str(el.operator))
        return _refused(f"the operator {name}", col, "compute on ciphertext, not values")
    if isinstance(el, _DISTINCT_ON):
        clause: Any = el
        return _by(clause._distinct_on, "DISTINCT ON", _DEDUPLICATES)
    return None


_ORDERS = "order rows by random bytes; sort in Python after reading"
_DEDUPLICATES = "compare ciphertexts, and equal values have different ones"
_GROUPS = "put every value in a group of its own"


def _select(sel: sa.Select[Any]) -> str | None:
    found = (
        _by(sel._order_by_clauses, "ORDER BY", _ORDERS, sel)
        or _by(sel._group_by_clauses, "GROUP BY", _GROUPS, sel)
        or _by(sel._distinct_on, "DISTINCT ON", _DEDUPLICATES, sel)
    )
    if found is not None:
        return found
    for crit in _terms(sel._where_criteria, sel._having_criteria):
        col = _bare(crit)
        if col is not None:
            return _refused("a condition", col, "test ciphertext for truth, not the value")
    if sel._distinct and not sel._distinct_on and not _has_distinct_on(sel):
        col = _first(sel._all_selected_columns)
        if col is not None:
            return _refused("SELECT DISTINCT", col, _DEDUPLICATES)
    return None


def _has_distinct_on(sel: sa.Select[Any]) -> bool:
    pre = getattr(sel, "_pre_columns_clause", None)
    return pre is not None and any(isinstance(e, _DISTINCT_ON) for e in visitors.iterate(pre))


def _compound(compound: CompoundSelect[Any]) -> str | None:
    keyword = compound.keyword.value
    if keyword != "UNION ALL":
        for sel in compound.selects:
            col = _first(sel.selected_columns)
            if col is not None:
                return _refused(keyword, col, _DEDUPLICATES + "; UNION ALL is allowed")
    return _by(compound._order_by_clauses, "ORDER BY", _ORDERS, compound)


def _function(fn: functions.FunctionElement[Any]) -> str | None:
    if _counts(fn):
        return None
    col = _first(_items(getattr(fn, "clauses", None)))
    if col is None:
        return None
    name = getattr(fn, "name", type(fn).__name__)
    if name.lower() == "count":
        return _refused("count(DISTINCT)", col, _DEDUPLICATES)
    return _refused(
        f"the SQL function {name}()",
        col,
        "compute on ciphertext, not values (of the SQL "
        "functions, only count() without DISTINCT is right on ciphertext)",
    )


def _counts(fn: Any) -> bool:
    """``count(...)`` without DISTINCT: counts non-NULL values, right on ciphertext too."""
    args = getattr(fn, "clause_expr", None)
    if args is None or getattr(fn, "name", "").lower() != "count":
        return False
    return not any(
        isinstance(arg, UnaryExpression) and arg.operator is operators.distinct_op
        for arg in visitors.iterate(args)
    )


def _null_test(el: BinaryExpression[Any]) -> bool:
    return el.operator in _NULL_TESTS and (isinstance(el.right, Null) or isinstance(el.left, Null))


def _by(exprs: Any, construct: str, why: str, sel: Any = None) -> str | None:
    """The first of ``exprs`` (an ORDER BY, GROUP BY, ... list) whose value is ciphertext."""
    for expr in _items(exprs):
        col = _ciphertext(expr, sel)
        if col is not None:
            return _refused(construct, col, why)
    return None


def _items(exprs: Any) -> Iterable[Any]:
    if exprs is None:
        return ()
    if isinstance(exprs, ClauseList):
        return exprs.clauses
    if isinstance(exprs, ClauseElement):
        return (exprs,)
    return exprs  # type: ignore[no-any-return]


def _first(columns: Iterable[Any]) -> ColumnClause[Any] | None:
    for c in columns:
        col = _ciphertext(c)
        if col is not None:
            return col
    return None


def _terms(*criteria: Iterable[Any]) -> Iterator[Any]:
    """The terms of WHERE/HAVING criteria, through AND, OR and parentheses."""
    stack = [c for group in criteria for c in group]
    while stack:
        crit = stack.pop()
        if isinstance(crit, BooleanClauseList):
            stack.extend(crit.clauses)
        elif isinstance(crit, Grouping):
            stack.append(crit.element)
        else:
            yield crit


def _bare(crit: Any) -> ColumnClause[Any] | None:
    """An encrypted column used as a condition of its own (``where(Model.flag)``)."""
    if isinstance(crit, ColumnClause) and isinstance(crit.type, Encrypted):
        return crit
    return None


def _ciphertext(expr: Any, sel: Any = None) -> ColumnClause[Any] | None:
    """The encrypted column whose stored value ``expr`` is or works on, or None.

    Looks through labels, parentheses, modifiers and operators; not into IS NULL tests and
    ``type_coerce``, whose results do not depend on the ciphertext, nor into SQL functions,
    CAST and subqueries, which are checked on their own (the message names the innermost
    construct), except a scalar subquery whose value is a ciphertext. A name
    (``order_by("phone")``) is resolved against ``sel``, as the compiler does.
    """
    stack = collections.deque([expr])  # breadth first: the message names the leftmost column
    while stack:
        e = stack.popleft()
        if isinstance(e, ColumnClause):
            if isinstance(e.type, Encrypted):
                return e
            continue
        if isinstance(e, ScalarSelect):
            if isinstance(e.type, Encrypted):
                stack.extend(e.element.selected_columns)
            continue
        if isinstance(e, _textual_label_reference):
            if sel is not None:
                stack.extend(_named(sel, e.element))
            continue
        if (
            e is None
            or isinstance(e, functions.FunctionElement | Cast | ReturnsRows | TypeCoerce | Exists)
            or (isinstance(e, BinaryExpression) and _null_test(e))
        ):
            continue
        stack.extend(e.get_children())
    return None


def _named(sel: Any, name: str) -> Iterator[Any]:
    """The columns a name in ORDER BY / GROUP BY can mean: selected ones, then the FROMs'."""
    if isinstance(sel, CompoundSelect):
        yield from (c for c in sel.selected_columns if c.key == name)
        return
    for c in sel._all_selected_columns:
        if name in (c.key, getattr(c, "name", None), getattr(c, "_tq_label", None)):
            yield c
    for source in sel.get_final_froms():
        for c in source.c:
            if name in (c.key, c.name):
                yield c


def _refused(construct: str, col: ColumnClause[Any], why: str) -> str:
    return (
        f"{construct} on the encrypted column {column_name(col)}: the database holds only "
        f"ciphertext, so it would {why} (docs/sqlalchemy.md, 'What runs on an encrypted column')"
    )
