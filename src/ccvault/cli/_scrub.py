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

__all__ = ["FOUND_UNREADABLE", "run_scrub"]

FOUND_UNREADABLE = 3
"""Exit status when the scrub found unreadable values (1: it could not run)."""

_PROGRESS_EVERY = 1.0  # seconds between progress lines of one table


def _progress() -> Callable[[str, int, int], None]:
    """Progress lines on stderr: at most one a second per table, and its last batch."""
    printed: dict[str, float] = {}

    def report(table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - printed.get(table, -_PROGRESS_EVERY) < _PROGRESS_EVERY:
            return
        printed[table] = now
        print(f"ccvault scrub: {table}: {done:,}/{total:,} rows", file=sys.stderr, flush=True)

    return report


def _import(names: Sequence[str]) -> list[ModuleType]:
    if os.getcwd() not in sys.path:  # `--models app.models` from the project folder
        sys.path.insert(0, os.getcwd())
    return [importlib.import_module(name) for name in names]


def run_scrub(models: Sequence[str], database_url: str, batch: int) -> int:
    """Scrub the tables of ``models`` in the database at ``database_url``; print the report as
    JSON. Exit status 0 when every value is readable, 3 when some are not, 1 on an error."""
    try:
        modules = _import(models)
    except ImportError as exc:
        print(f"ccvault scrub: cannot import the models: {exc}", file=sys.stderr)
        return 1
    try:
        engine = sa.create_engine(database_url)
    except ImportError as exc:
        print(f"ccvault scrub: --database-url: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (sa.exc.ArgumentError, ValueError):  # its text may quote the URL and password
        print("ccvault scrub: --database-url is not a usable SQLAlchemy URL", file=sys.stderr)
        return 1
    progress = _progress()
    try:
        with Vault.from_settings(readonly=True) as vault:  # scrub writes nothing
            report = vault.scrub(engine, modules, batch=batch, progress=progress)
    except CcvaultError as exc:
        print(f"ccvault scrub: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        print(
            f"ccvault scrub: the application database could not be read: "
            f"{type(cause).__name__}: {first}",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.clean else FOUND_UNREADABLE
