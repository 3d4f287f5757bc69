"""``ccvault enforce-retention [--dry-run]``: destroy the retention period secrets whose time has
come (``Vault.enforce_retention``), for cron; progress on stderr, the report as JSON on stdout.
``--dry-run`` opens the vault read-only and changes nothing. Must not print a subject: the
report counts held subjects, the ledger's entries name their refs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Final

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import report_failure

__all__ = ["LEFT_ALONE", "run_enforce"]

LEFT_ALONE: Final = 3
"""Exit status when period rows were left alone for a problem (named on stderr)."""

_PROGRESS_EVERY: Final = 1.0  # seconds between progress lines


def run_enforce(*, dry_run: bool) -> int:
    """Enforce retention (or report what it would do); print the report as JSON. Exit status
    0; 3: some period row was left alone (why on stderr); 1: an error (nothing destroyed by the
    transaction that failed; the batches before it are committed); 130: interrupted."""
    printed = [-_PROGRESS_EVERY]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - printed[0] >= _PROGRESS_EVERY:
            printed[0] = now
            print(
                f"ccvault enforce-retention: {done:,}/{total:,} periods",
                file=sys.stderr,
                flush=True,
            )

    try:
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            report = vault.enforce_retention(dry_run=dry_run, progress=progress)
    except KeyboardInterrupt:
        print(
            "ccvault enforce-retention: interrupted; each batch of periods is its own "
            "transaction (the ones committed are destroyed and in the ledger): run it again, "
            "it goes on from there",
            file=sys.stderr,
        )
        return 130
    except CcvaultError as exc:
        return report_failure(exc, "enforce-retention")
    for line in report.lines():
        print(f"ccvault enforce-retention: {line}", file=sys.stderr)
    print(json.dumps(report.model_dump(mode="json"), indent=2))
    return 0 if report.ok else LEFT_ALONE
