"""``ccvault shred SUBJECT [--dry-run] [--override-hold [--by ACTOR]]``: shred one customer of
the vault configured by ``CCVAULT_*`` (``Vault.shred``), or print what the shred would make
unreadable; and ``ccvault shred-many --from FILE [--override-hold]``: shred every customer the
file lists (``Vault.shred_many``).
Must not sweep or count tables it was not given: only with ``--models`` and ``--database-url``
does it attach that database, and without them it says that it sweeps nothing. Must not print
a subject: ``shred-many`` names each one by its line number in the file.

``--dry-run`` opens the vault read-only and writes nothing anywhere.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from ..errors import CcvaultError, ErasureIncompleteError
from ..vault import Vault
from ._scrub import app_inputs, report_failure

__all__ = [
    "NOT_ALL_SHREDDED",
    "NO_SWEEP",
    "SWEEP_INCOMPLETE",
    "read_subjects",
    "run_shred",
    "run_shred_many",
]

SWEEP_INCOMPLETE = 3
"""Exit status when the keys are destroyed (the receipt is printed) but the blind-index sweep
failed for some table: run the command again."""

NOT_ALL_SHREDDED = 3
"""``shred-many``'s exit status when some subject has an error result, or a sweep incomplete."""

_PROGRESS_EVERY = 1.0  # seconds between progress lines of shred-many

NO_SWEEP = (
    "no --models and --database-url: this process attaches no database, so the shred makes the "
    "customer's values unreadable everywhere but clears no blind index; repeat it with the "
    "application's models and database "
    "(docs/sqlalchemy.md, 'Shredding from a process without the models')"
)


def run_shred(
    subject: str,
    *,
    dry_run: bool,
    models: Sequence[str] | None,
    database_url: str | None,
    override_hold: bool = False,
    by: str | None = None,
) -> int:
    """Shred ``subject`` (or preview it with ``dry_run``) and print a JSON object: the receipt,
    or the preview. Exit status 0; 3 when the sweep is incomplete (the receipt is printed and
    the keys are destroyed); 1 on an error (a held subject without ``override_hold``
    included), the subject's keys untouched."""
    out: dict[str, object]
    status = 0
    try:
        # A dry run writes nothing: a read-only vault. No run creates an installation.
        with _vault("shred", models, database_url, readonly=dry_run) as vault:
            if vault is None:
                return 1
            try:
                vault.subject_type.coerce(subject)
            except TypeError as exc:  # its message never echoes the subject
                print(f"ccvault shred: {exc}", file=sys.stderr)
                return 1
            if dry_run:
                out = vault.shred(subject, dry_run=True).model_dump(mode="json")
            else:
                try:
                    receipt = vault.shred(subject, override_hold=override_hold, by=by)
                    out = {"receipt": receipt.model_dump(mode="json")}
                except ErasureIncompleteError as exc:
                    print(f"ccvault shred: {exc}", file=sys.stderr)
                    out = {"receipt": exc.receipt.model_dump(mode="json") if exc.receipt else None}
                    status = SWEEP_INCOMPLETE
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "shred")
    if not models:
        out["warning"] = NO_SWEEP
        print(f"ccvault shred: {NO_SWEEP}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return status


def read_subjects(path: str) -> tuple[list[str], list[int]]:
    """The subjects of a ``--from`` file (``-``: standard input), one a line, and the line number
    of each: lines blank or starting with ``#`` (after leading spaces) are skipped; a subject is
    its line without the line ending (spaces are kept: they are part of a ``str`` subject)."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    subjects: list[str] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        subjects.append(line)
        lines.append(number)
    return subjects, lines


def run_shred_many(
    path: str,
    *,
    models: Sequence[str] | None,
    database_url: str | None,
    override_hold: bool = False,
    by: str | None = None,
) -> int:
    """Shred every subject of the file at ``path`` and print a JSON object: a summary and, per
    subject, its line number, outcome, receipt id, hold ids, error and sweep problem (never the
    subject). Exit status 0 when every subject is shredded (now or before) and swept; 3 when
    some is held, has an error or an incomplete sweep; 1 when the file or the vault cannot be
    used."""
    try:
        subjects, lines = read_subjects(path)
    except (OSError, UnicodeError) as exc:
        print(f"ccvault shred-many: cannot read {path}: {type(exc).__name__}", file=sys.stderr)
        return 1
    printed = [-_PROGRESS_EVERY]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - printed[0] >= _PROGRESS_EVERY:
            printed[0] = now
            print(f"ccvault shred-many: {done:,}/{total:,} subjects", file=sys.stderr, flush=True)

    try:
        with _vault("shred-many", models, database_url) as vault:
            if vault is None:
                return 1
            results = vault.shred_many(
                subjects, progress=progress, override_hold=override_hold, by=by
            )
    except (CcvaultError, sa.exc.SQLAlchemyError) as exc:
        return report_failure(exc, "shred-many")
    summary = {
        "subjects": len(results),
        "shredded": sum(r.outcome == "shredded" for r in results),
        "already_shredded": sum(r.outcome == "already_shredded" for r in results),
        "held": sum(r.outcome == "held" for r in results),
        "errors": sum(r.outcome == "error" for r in results),
        "sweep_incomplete": sum(r.sweep_incomplete is not None for r in results),
    }
    out: dict[str, object] = {
        "summary": summary,
        "results": [
            {
                "line": lines[r.index],
                "outcome": r.outcome,
                "receipt_id": r.receipt.receipt_id if r.receipt else None,
                "hold_ids": list(r.hold_ids),
                "error": r.error,
                "sweep_incomplete": r.sweep_incomplete,
            }
            for r in results
        ],
    }
    if not models:
        out["warning"] = NO_SWEEP
        print(f"ccvault shred-many: {NO_SWEEP}", file=sys.stderr)
    for r in results:
        if not r.ok:
            why = r.error or (
                f"held by {len(r.hold_ids)} legal hold(s): {', '.join(r.hold_ids)}"
                if r.outcome == "held"
                else f"shredded, sweep incomplete: {r.sweep_incomplete}"
            )
            print(f"ccvault shred-many: line {lines[r.index]}: {why}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0 if all(r.ok for r in results) else NOT_ALL_SHREDDED


@contextmanager
def _vault(
    command: str, models: Sequence[str] | None, database_url: str | None, *, readonly: bool = False
) -> Iterator[Vault | None]:
    """The configured vault (never a new installation), with the database of
    ``--database-url`` attached when ``--models`` is given; None when that database or its
    models cannot be had (the reason on stderr)."""
    engine = None
    if models:
        assert database_url is not None
        inputs = app_inputs(models, database_url, command)
        if inputs is None:
            yield None
            return
        engine = inputs[1]
    try:
        with Vault.from_settings(readonly=readonly, create=False) as vault:
            if engine is not None:
                vault.attach(engine)
            try:
                yield vault
            finally:
                if engine is not None:
                    vault.detach(engine)
    finally:
        if engine is not None:
            engine.dispose()
