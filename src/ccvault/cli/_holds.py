"""``ccvault hold SUBJECT --case CASE --by ACTOR [--until ISO]``, ``ccvault release HOLD_ID --by
ACTOR`` and ``ccvault holds [SUBJECT] [--all]``: legal holds of the vault configured by
``CCVAULT_*`` (``Vault.hold``, ``Vault.release``, ``Vault.holds``), printed as JSON. Must not
print a subject: holds name it by its ref. ``holds`` opens the vault read-only.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from ..errors import CcvaultError
from ..vault import Vault
from ._scrub import report_failure

__all__ = ["run_hold", "run_holds", "run_release"]


def _until(text: str | None) -> datetime | None:
    """``--until``: an ISO 8601 date-time with its offset (``Z`` or ``+02:00``)."""
    if text is None:
        return None
    value = datetime.fromisoformat(text)  # ValueError: reported by the caller
    if value.tzinfo is None:
        raise ValueError("--until needs an offset (2031-06-30T00:00:00Z, or +02:00)")
    return value


def run_hold(subject: str, *, case: str, by: str, until: str | None) -> int:
    """Place a hold; print ``{"hold_id": …, "subject_ref": …, "expired": [labels]}`` (per
    retention category, the latest period expired before the hold: not brought back). Exit
    status 0; 1 on an error (the subject is shredded, no ledger is configured, a bad
    ``--case``, ``--by`` or ``--until``...), nothing placed."""
    try:
        when = _until(until)
    except ValueError as exc:
        print(f"ccvault hold: --until: {exc}", file=sys.stderr)
        return 1
    try:
        with Vault.from_settings(create=False) as vault:
            try:
                vault.subject_type.coerce(subject)
                hold_id = vault.hold(subject, case=case, by=by, until=when)
            except (TypeError, ValueError) as exc:  # their messages never echo the values
                print(f"ccvault hold: {exc}", file=sys.stderr)
                return 1
            ref = vault.subject_ref(subject).hex()
    except CcvaultError as exc:
        return report_failure(exc, "hold")
    shown = {"hold_id": str(hold_id), "subject_ref": ref, "expired": list(hold_id.expired)}
    print(json.dumps(shown, indent=2))
    return 0


def run_release(hold_id: str, *, by: str) -> int:
    """Release a hold; print ``{"hold_id": …, "released": true}``. Exit status 0 (also for a
    hold released already); 1 for an unknown hold id or another error."""
    try:
        with Vault.from_settings(create=False) as vault:
            try:
                vault.release(hold_id, by=by)
            except (TypeError, ValueError) as exc:
                print(f"ccvault release: {exc}", file=sys.stderr)
                return 1
    except CcvaultError as exc:
        return report_failure(exc, "release")
    print(json.dumps({"hold_id": hold_id, "released": True}, indent=2))
    return 0


def run_holds(subject: str | None, *, all_holds: bool) -> int:
    """Print the holds (of ``subject``; active ones unless ``all_holds``) as JSON:
    ``{"holds": [...]}``. Read-only. Exit status 0; 1 on an error."""
    try:
        with Vault.from_settings(readonly=True, create=False) as vault:
            try:
                if subject is not None:
                    vault.subject_type.coerce(subject)
                found = vault.holds(subject, active_only=not all_holds)
            except TypeError as exc:
                print(f"ccvault holds: {exc}", file=sys.stderr)
                return 1
    except CcvaultError as exc:
        return report_failure(exc, "holds")
    print(json.dumps({"holds": [h.model_dump(mode="json") for h in found]}, indent=2))
    return 0
