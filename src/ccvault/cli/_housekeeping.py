"""``ccvault retention move`` and ``ccvault retention purge``: the application-database jobs of
retention (``Vault.move_into_periods``, ``Vault.purge_expired``), with progress on stderr and
the report as JSON on stdout."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import app_inputs, progress_lines, report_failure

__all__ = ["run_move", "run_purge"]

Job = Callable[[Vault, sa.Engine, list[ModuleType], Callable[[str, int, int], None]], list[Any]]


def _run(command: str, models: Sequence[str], database_url: str, dry_run: bool, job: Job) -> int:
    """Open the vault (read-only for a dry run), run ``job`` on the models' tables and print
    its reports as JSON. Exit status 0; 1 on an error (one line on stderr)."""
    inputs = app_inputs(models, database_url, command)
    if inputs is None:
        return 1
    modules, engine = inputs
    try:
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            reports = job(vault, engine, modules, progress_lines(command))
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, command)
    finally:
        engine.dispose()
    print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0


def run_move(
    models: Sequence[str], database_url: str, *, batch: int, expire_stale: bool, dry_run: bool
) -> int:
    """Move the suite-1 values of the models' retention-bound columns into their periods."""
    return _run(
        "retention move",
        models,
        database_url,
        dry_run,
        lambda vault, engine, modules, progress: vault.move_into_periods(
            engine,
            modules,
            batch=batch,
            expire_stale=expire_stale,
            dry_run=dry_run,
            progress=progress,
        ),
    )


def run_purge(models: Sequence[str], database_url: str, *, batch: int, dry_run: bool) -> int:
    """Delete the models' rows with nothing readable left."""
    return _run(
        "retention purge",
        models,
        database_url,
        dry_run,
        lambda vault, engine, modules, progress: vault.purge_expired(
            engine, modules, batch=batch, dry_run=dry_run, progress=progress
        ),
    )
