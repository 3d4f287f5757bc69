"""``ccvault data-map`` and ``ccvault export-subject``: the data map of the application's models
and one customer's export (``Vault.data_map``, ``Vault.export_subject``), over a read-only vault.
Must not write: both open the vault configured by ``CCVAULT_*`` read-only.

A ``--models`` module that defines ``register_personal_tables(vault)`` is called with the vault
the command opened, so the plaintext tables the application registers at startup are in the
map and the export here too (the same function the application calls).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import sqlalchemy as sa

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import app_inputs, import_models, report_failure

__all__ = ["REGISTER_HOOK", "run_data_map", "run_export_subject"]

REGISTER_HOOK = "register_personal_tables"
"""The function of a ``--models`` module the commands call with the vault they opened."""


def _register(vault: Vault, modules: list[ModuleType]) -> None:
    for module in modules:
        hook = getattr(module, REGISTER_HOOK, None)
        if callable(hook):
            hook(vault)


def run_data_map(models: Sequence[str], fmt: Literal["json", "markdown"]) -> int:
    """Print the data map of ``models`` as JSON or Markdown; exit status 1 on an error."""
    modules = import_models(models, "data-map")
    if modules is None:
        return 1
    try:
        with Vault.from_settings(readonly=True) as vault:
            _register(vault, modules)
            found = vault.data_map(modules)
    except CcvaultError as exc:
        return report_failure(exc, "data-map")
    if fmt == "markdown":
        print(found.as_markdown(), end="")
    else:
        print(json.dumps(found.as_dict(), indent=2))
    return 0


def run_export_subject(models: Sequence[str], database_url: str, subject: str) -> int:
    """Print the export of ``subject`` from the database at ``database_url`` as JSON; exit
    status 1 on an error (a subject the installation's type refuses included)."""
    inputs = app_inputs(models, database_url, "export-subject")
    if inputs is None:
        return 1
    modules, engine = inputs
    try:
        with Vault.from_settings(readonly=True) as vault:  # the export writes nothing
            try:
                vault.subject_type.coerce(subject)
            except TypeError as exc:  # its message never echoes the subject
                print(f"ccvault export-subject: {exc}", file=sys.stderr)
                return 1
            _register(vault, modules)
            export = vault.export_subject(subject, engine, models=modules)
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "export-subject")
    finally:
        engine.dispose()
    print(json.dumps(export.as_dict(), indent=2))
    return 0
