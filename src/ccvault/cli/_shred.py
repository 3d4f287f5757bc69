"""``ccvault shred SUBJECT [--dry-run]``: shred one customer of the vault configured by
``CCVAULT_*`` (``Vault.shred``), or print what the shred would make unreadable.
Must not sweep or count tables it was not given: only with ``--models`` and ``--database-url``
does it attach that database, and without them it says that it sweeps nothing.

``--dry-run`` opens the vault read-only and writes nothing anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from ..errors import CcvaultError, ErasureIncompleteError
from ..vault import Vault
from ._scrub import app_inputs, report_failure

__all__ = ["NO_SWEEP", "SWEEP_INCOMPLETE", "run_shred"]

SWEEP_INCOMPLETE = 3
"""Exit status when the keys are destroyed (the receipt is printed) but the blind-index sweep
failed for some table: run the command again."""

NO_SWEEP = (
    "no --models and --database-url: this process attaches no database, so the shred makes the "
    "customer's values unreadable everywhere but clears no blind index; repeat it with the "
    "application's models and database "
    "(docs/sqlalchemy.md, 'Shredding from a process without the models')"
)


def run_shred(
    subject: str, *, dry_run: bool, models: Sequence[str] | None, database_url: str | None
) -> int:
    """Shred ``subject`` (or preview it with ``dry_run``) and print a JSON object: the receipt,
    or the preview. Exit status 0; 3 when the sweep is incomplete (the receipt is printed and
    the keys are destroyed); 1 on an error, the subject's keys untouched."""
    engine = None
    if models:
        assert database_url is not None
        inputs = app_inputs(models, database_url, "shred")
        if inputs is None:
            return 1
        engine = inputs[1]
    out: dict[str, object]
    status = 0
    try:
        # A dry run writes nothing: a read-only vault. No run creates an installation.
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            try:
                vault.subject_type.coerce(subject)
            except TypeError as exc:  # its message never echoes the subject
                print(f"ccvault shred: {exc}", file=sys.stderr)
                return 1
            if engine is not None:
                vault.attach(engine)
            if dry_run:
                out = vault.shred(subject, dry_run=True).model_dump(mode="json")
            else:
                try:
                    out = {"receipt": vault.shred(subject).model_dump(mode="json")}
                except ErasureIncompleteError as exc:
                    print(f"ccvault shred: {exc}", file=sys.stderr)
                    out = {"receipt": exc.receipt.model_dump(mode="json") if exc.receipt else None}
                    status = SWEEP_INCOMPLETE
            if engine is not None:
                vault.detach(engine)
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "shred")
    finally:
        if engine is not None:
            engine.dispose()
    if engine is None:
        out["warning"] = NO_SWEEP
        print(f"ccvault shred: {NO_SWEEP}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return status
