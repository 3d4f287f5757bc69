"""``ccvault retention move`` and ``ccvault retention purge``: the application-database jobs of
retention (``Vault.move_into_periods``, ``Vault.purge_expired``), with progress on stderr and
the report as JSON on stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import app_inputs, progress_lines, report_failure

__all__ = ["run_move", "run_purge"]


def run_move(
    models: Sequence[str], database_url: str, *, batch: int, expire_stale: bool, dry_run: bool
) -> int:
    """Move the suite-1 values of the models' retention-bound columns into their periods; print
    the reports. Exit status 0; 1 on an error."""
    command = "retention move"
    inputs = app_inputs(models, database_url, command)
    if inputs is None:
        return 1
    modules, engine = inputs
    try:
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            reports = vault.move_into_periods(
                engine,
                modules,
                batch=batch,
                expire_stale=expire_stale,
                dry_run=dry_run,
                progress=progress_lines(command),
            )
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, command)
    finally:
        engine.dispose()
    print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0


def run_purge(models: Sequence[str], database_url: str, *, batch: int, dry_run: bool) -> int:
    """Delete the models' rows with nothing readable left; print the reports. Exit status 0;
    1 on an error."""
    command = "retention purge"
    inputs = app_inputs(models, database_url, command)
    if inputs is None:
        return 1
    modules, engine = inputs
    try:
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            reports = vault.purge_expired(
                engine, modules, batch=batch, dry_run=dry_run, progress=progress_lines(command)
            )
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, command)
    finally:
        engine.dispose()
    print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0
