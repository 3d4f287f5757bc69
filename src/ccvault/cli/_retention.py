"""``ccvault retention set-policy FILE --by NAME [--dry-run]``, ``ccvault retention show`` and
``ccvault doctor``: the retention policy recorded in the key store of the vault configured by
``CCVAULT_*`` (``Vault.set_retention_policy``, ``Vault.recorded_retention_policy``;
docs/retention.md, "Recording the policy"), and the checks of a process's configuration. Must
not print a category's values in a log line: only on stdout, as the command's own output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ..erasure import PolicyChange, RecordedPolicy, policy_mismatch
from ..errors import CcvaultError
from ..retention import RetentionPolicy, load_policy
from ..vault import Vault
from ._scrub import report_failure

__all__ = ["DOCTOR_FAILED", "run_doctor", "run_set_policy", "run_show_policy"]

DOCTOR_FAILED = 3
"""Exit status of ``doctor`` when a check fails (1: it could not run)."""


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _change_json(change: PolicyChange) -> dict[str, object]:
    out = change.model_dump(mode="json")
    out["would_expire"] = {k: list(v) for k, v in change.would_expire.items()}
    return out


def run_set_policy(path: str, *, by: str, dry_run: bool, output: str) -> int:
    """Record the policy of ``path``; print the change (JSON, or lines with ``output="text"``).
    Exit status 0 (recorded, already recorded, or a dry run); 1 on an error, nothing recorded:
    a policy file with errors (each key path named), a category whose granularity or tz its
    periods forbid, a bad ``--by``, an unreachable ledger..."""
    try:
        policy = load_policy(path)
    except CcvaultError as exc:
        print(f"ccvault retention set-policy: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    try:
        with Vault.from_settings(readonly=dry_run, create=False) as vault:
            try:
                change = vault.set_retention_policy(policy, by=by, dry_run=dry_run)
            except (TypeError, ValueError) as exc:  # their messages never echo the values
                print(f"ccvault retention set-policy: {exc}", file=sys.stderr)
                return 1
    except CcvaultError as exc:
        return report_failure(exc, "retention set-policy")
    if output == "text":
        print("\n".join(change.lines()))
    else:
        print(json.dumps(_change_json(change), indent=2))
    return 0


def _recorded_json(recorded: RecordedPolicy, now: float) -> dict[str, object]:
    return {
        **recorded.model_dump(mode="json", exclude={"policy"}),
        "categories": [c.canonical() for c in recorded.policy.categories],
        "in_force": [c.canonical() for c in recorded.at(now).categories],
        "pending": [c.model_dump(mode="json") for c in recorded.pending(now)],
    }


def run_show_policy() -> int:
    """Print, as JSON, the recorded retention policy (its categories, what is in force now,
    the changes still waiting) and this process's own policy digest. Read-only. Exit status 0;
    1 on an error (a recorded policy that does not verify...)."""
    try:
        with Vault.from_settings(readonly=True, create=False) as vault:
            recorded = vault.recorded_retention_policy()
            mine = vault.retention_policy
    except CcvaultError as exc:
        return report_failure(exc, "retention show")
    now = time.time()
    out: dict[str, object] = {
        "recorded": None if recorded is None else _recorded_json(recorded, now),
        "this_process": None
        if mine is None
        else {
            "policy_digest": mine.digest(),
            "matches_recorded": recorded is not None and mine.digest() == recorded.policy_digest,
        },
    }
    print(json.dumps(out, indent=2))
    return 0


# -- doctor ---------------------------------------------------------------------------------------

Check = tuple[str, str]  # (ok | warn | FAIL, the line)


def _policy_check(
    file_policy: RetentionPolicy | None, read: Callable[[], RecordedPolicy | None]
) -> Check:
    try:
        recorded = read()
    except CcvaultError as exc:
        return "FAIL", f"retention policy: {' '.join(str(exc).split())}"
    mismatch = policy_mismatch(file_policy, recorded)
    if mismatch is not None:
        return "FAIL", f"retention policy: {mismatch}"
    if recorded is None and file_policy is None:
        return "ok", "retention policy: none recorded, none configured"
    if recorded is None:
        assert file_policy is not None
        return (
            "warn",
            f"retention policy: this process's policy (digest {file_policy.digest()}) is not "
            "recorded in the key store: until one is, enforcement follows each enforcing "
            "process's own file, with no grace before a shorter keep_for. Record it: "
            "`ccvault retention set-policy FILE --by NAME`",
        )
    waiting = recorded.pending(time.time())
    pending = (
        f"; {len(waiting)} change{'s' if len(waiting) != 1 else ''} waiting for the policy grace "
        f"({', '.join(f'{c.name} {c.change} at {_iso(c.effective_at)}' for c in waiting)})"
        if waiting
        else ""
    )
    if file_policy is None:
        return (
            "ok",
            f"retention policy: recorded (digest {recorded.policy_digest}); this process has no "
            f"policy file (CCVAULT_RETENTION_POLICY), so it writes no retention-bound value"
            f"{pending}",
        )
    return (
        "ok",
        f"retention policy: this process's matches the recorded one (digest "
        f"{recorded.policy_digest}){pending}",
    )


def _ledger_check(vault: Vault) -> Check:
    if vault.ledger_unverified:
        return (
            "FAIL",
            "erasure ledger: the key store and the ledger are not in agreement "
            "(ledger_unverified: unreachable, failing a check, or the key store behind it): "
            "run `ccvault verify-erasures`, then `ccvault reconcile-erasures`",
        )
    return "ok", "erasure ledger: in agreement with the key store, or none configured"


def run_doctor() -> int:
    """Check the configuration of this process against its installation and print one line per
    check (``ok``, ``warn`` or ``FAIL``). Read-only. Exit status 0 when no check failed,
    :data:`DOCTOR_FAILED` when one did, 1 when the vault could not be opened."""
    try:
        with Vault.from_settings(readonly=True, create=False) as vault:
            checks = [
                _policy_check(vault.retention_policy, vault.recorded_retention_policy),
                _ledger_check(vault),
            ]
    except CcvaultError as exc:
        return report_failure(exc, "doctor")
    for status, line in checks:
        print(f"{status:4} {line}")
    failed = sum(status == "FAIL" for status, _ in checks)
    print(f"{'ok' if not failed else 'FAIL'}: {len(checks)} checks, {failed} failed")
    return DOCTOR_FAILED if failed else 0
