"""``ccvault complete-erasures --models M --database-url URL``: complete the erasures whose
propagation bound has passed (``Vault.complete_erasures``), for cron; and ``ccvault
erasure-status RECEIPT_ID``: where one erasure stands (read-only). Must not sweep tables it was
not given: it attaches the database of ``--database-url`` only, and an erasure whose blind
indexes it cannot sweep there stays queued (reported, exit status 3).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import app_inputs, report_failure

__all__ = ["INCOMPLETE", "run_complete", "run_status"]

INCOMPLETE = 3
"""Exit status when due erasures were left incomplete or lapsed (the report names them)."""


def run_complete(models: Sequence[str], database_url: str) -> int:
    """Complete the due erasures, sweeping the tables of ``models`` in ``database_url``; print
    the report as JSON. Exit status 0; 3: some due erasure was not completed; 1: an error."""
    inputs = app_inputs(models, database_url, "complete-erasures")
    if inputs is None:
        return 1
    modules, engine = inputs
    try:
        with Vault.from_settings(create=False) as vault:
            vault.attach(engine)
            try:
                report = vault.complete_erasures(models=modules)
            finally:
                vault.detach(engine)
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "complete-erasures")
    finally:
        engine.dispose()
    for line in report.lines():
        print(f"ccvault complete-erasures: {line}", file=sys.stderr)
    print(json.dumps(report.model_dump(mode="json"), indent=2))
    return 0 if report.ok else INCOMPLETE


def run_status(receipt_id: str) -> int:
    """Print the status of the erasure of ``receipt_id`` as JSON (``Vault.erasure_status``);
    exit status 1 for a receipt id the installation does not know."""
    try:
        with Vault.from_settings(readonly=True, create=False) as vault:
            status = vault.erasure_status(receipt_id)
    except CcvaultError as exc:
        return report_failure(exc, "erasure-status")
    if status is None:
        print(
            "ccvault erasure-status: this installation records no erasure with that receipt id",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status.model_dump(mode="json"), indent=2))
    return 0
