"""``ccvault scrub``: read every encrypted value of the application's models and report the
ones that cannot be read (``Vault.scrub``), with progress on stderr."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import sqlalchemy as sa

from ..errors import CcvaultError
from ..vault import Vault

__all__ = [
    "FOUND_UNREADABLE",
    "app_engine",
    "app_inputs",
    "import_models",
    "progress_lines",
    "report_failure",
    "run_scrub",
]

FOUND_UNREADABLE = 3
"""Exit status when the scrub found unreadable values (1: it could not run)."""

_PROGRESS_EVERY = 1.0  # seconds between progress lines of one table


def progress_lines(command: str = "scrub") -> Callable[[str, int, int], None]:
    """Progress lines on stderr: at most one a second per table, and its last batch."""
    printed: dict[str, float] = {}

    def report(table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - printed.get(table, -_PROGRESS_EVERY) < _PROGRESS_EVERY:
            return
        printed[table] = now
        print(f"ccvault {command}: {table}: {done:,}/{total:,} rows", file=sys.stderr, flush=True)

    return report


def import_models(names: Sequence[str], command: str) -> list[ModuleType] | None:
    """Import the ``--models`` modules, with the current directory on the path (``--models
    app.models`` from the project folder); None (the reason on stderr) when one cannot be."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as exc:
        print(f"ccvault {command}: cannot import the models: {exc}", file=sys.stderr)
        return None


def app_engine(database_url: str, command: str) -> sa.Engine | None:
    """The engine of ``--database-url``; None (the reason on stderr, never the URL, which may
    hold a password) when it is not a usable URL."""
    try:
        return sa.create_engine(database_url)
    except ImportError as exc:
        print(f"ccvault {command}: --database-url: {type(exc).__name__}: {exc}", file=sys.stderr)
    except (sa.exc.ArgumentError, ValueError):  # its text may quote the URL and password
        print(f"ccvault {command}: --database-url is not a usable SQLAlchemy URL", file=sys.stderr)
    return None


def app_inputs(
    models: Sequence[str], database_url: str, command: str
) -> tuple[list[ModuleType], sa.Engine] | None:
    """The ``--models`` modules and the engine of ``--database-url``; None (the reason on
    stderr) when either cannot be had."""
    modules = import_models(models, command)
    if modules is None:
        return None
    engine = app_engine(database_url, command)
    return None if engine is None else (modules, engine)


def report_failure(exc: Exception, command: str) -> int:
    """Print a vault or application-database error as one line on stderr; exit status 1."""
    if isinstance(exc, sa.exc.SQLAlchemyError):
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        print(
            f"ccvault {command}: the application database could not be read: "
            f"{type(cause).__name__}: {first}",
            file=sys.stderr,
        )
    else:
        print(f"ccvault {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def run_scrub(models: Sequence[str], database_url: str, batch: int) -> int:
    """Scrub the tables of ``models`` in the database at ``database_url``; print the report as
    JSON. Exit status 0 when every value is readable, 3 when some are not, 1 on an error."""
    inputs = app_inputs(models, database_url, "scrub")
    if inputs is None:
        return 1
    modules, engine = inputs
    progress = progress_lines()
    try:
        with Vault.from_settings(readonly=True) as vault:  # scrub writes nothing
            report = vault.scrub(engine, modules, batch=batch, progress=progress)
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "scrub")
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.clean else FOUND_UNREADABLE
