"""What the batch jobs over application tables share (``purge_expired``, ``move_into_periods``):
the bind they are given checked, the batch size checked, the tables of the models that have a
plan, and a transaction on an Engine or a Connection. Must not read or write rows itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from ..errors import ConfigurationError
from ._plan import TablePlan, plan_for
from ._scrub import tables_of

__all__ = ["in_transaction", "job_inputs"]

T = TypeVar("T")


def job_inputs(
    job: str, bind: Any, batch: object, models: Any, *, retained: bool = False
) -> tuple[Engine | Connection, list[TablePlan]]:
    """``bind`` as an Engine or Connection (a Session's bind) and the plans of the tables of
    ``models`` with encrypted columns (``retained``: with retention-bound ones); a
    ConfigurationError naming ``job`` for a bind, batch or models it cannot work with."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    if not isinstance(bind, Engine | Connection):
        raise ConfigurationError(
            f"{job}() works through a Session, or a synchronous Engine or Connection, of the "
            "application database"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"{job}(batch=) is a positive number of rows")
    plans = [
        plan
        for table in tables_of(models)
        if (plan := plan_for(table)) is not None and (plan.retained or not retained)
    ]
    if not plans:
        what = "retention-bound columns (retention=)" if retained else "encrypted columns"
        raise ConfigurationError(f"{job}() found no table with {what}")
    return bind, plans


def in_transaction(bind: Engine | Connection, run: Callable[[Connection], T]) -> T:
    """``run`` in a transaction: the Engine's own, or the Connection's (begun if none is)."""
    if isinstance(bind, Connection):
        if bind.in_transaction():
            return run(bind)
        with bind.begin():
            return run(bind)
    with bind.begin() as conn:
        return run(conn)
