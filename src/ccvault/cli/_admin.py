"""Admin commands over the vault configured by ``CCVAULT_*``: run them from a scheduled job with
the admin KMS principal (docs/kms.md, "Who may do what").

``status``, ``verify-heads``, ``verify-erasures`` and ``destroy-epochs --dry-run`` open the
vault read-only: they create nothing, not even on an empty store, and replay no ledger. Long
commands report progress on stderr; Ctrl-C stops them with exit status 130 and a store the next
run completes.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from ..erasure import ErasureCheck
from ..errors import CcvaultError
from ..vault import EpochInfo, HeadCheck, Vault

__all__ = ["run_admin"]

_AFTER_INTERRUPT = {
    "rotate-epoch": "every batch re-wrapped so far is committed and the other keys still open "
    "under their older epoch; run `ccvault rotate-epoch` again: it finishes the re-wrapping and "
    "starts no new epoch",
    "destroy-epochs": "each step is its own transaction; run `ccvault destroy-epochs` again: it "
    "finishes the re-wrapping, destroys the remaining epochs and retries their roots",
    "add-kms-wraps": "the wraps added so far are kept; run `ccvault add-kms-wraps` again to add "
    "the rest",
    "upgrade-store": "each batch of heads authenticated so far is committed and the schema "
    "version is unchanged; run `ccvault upgrade-store` again: it goes on from there",
    "status": "nothing was changed",
    "verify-heads": "nothing was changed",
    "verify-erasures": "nothing was changed",
    "reconcile-erasures": "each step is its own key-store transaction; run `ccvault "
    "reconcile-erasures` again: it goes on from what is applied",
}
_BROKEN_FENCES = 3  # exit status of verify-heads when it finds any
_PROBLEMS = 3  # exit status of verify-erasures / reconcile-erasures when problems remain
_READONLY = ("status", "verify-heads", "verify-erasures")


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


class _Progress:
    """Prints ``re-wrapped done/total keys`` (``upgrade-store``: ``authenticated done/total
    subject heads``) on stderr after each batch."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.done = self.total = 0
        upgrade = command == "upgrade-store"
        self.verb, self.what = ("authenticat", "subject heads") if upgrade else ("re-wrapp", "keys")

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        print(
            f"ccvault {self.command}: {self.verb}ed {done}/{total} {self.what}",
            file=sys.stderr,
            flush=True,
        )

    def so_far(self) -> str:
        if not self.total:
            return ""
        return f" after {self.verb}ing {self.done} of {self.total} {self.what}"


def run_admin(
    command: str,
    *,
    dry_run: bool = False,
    accept_unreadable: bool = False,
    output: str = "json",
) -> int:
    """One admin command; prints one JSON object (``verify-erasures`` and
    ``reconcile-erasures`` with ``output="text"``: lines); exit status 1 on an error (one line on
    stderr, no traceback), 130 on Ctrl-C."""
    progress = _Progress(command)
    readonly = command in _READONLY or (command == "destroy-epochs" and dry_run)
    status = 0
    erasures: ErasureCheck | None = None
    try:
        out: dict[str, object]
        if command == "upgrade-store":
            # The one command that opens an older store (and only to upgrade it).
            upgrade = Vault.upgrade_store(progress=progress)
            out = {
                "schema_version_before": upgrade.from_version,
                "schema_version": upgrade.to_version,
                "heads_authenticated": upgrade.heads_authenticated,
                "tombstones_added": upgrade.tombstones_added,
            }
            print(json.dumps(out, indent=2))
            return 0
        # No admin command creates an installation: on an empty store they all say so.
        with Vault.from_settings(readonly=readonly, create=False) as vault:
            if command == "verify-heads":
                check = vault.verify_heads()
                out = _head_check(check)
                status = 0 if check.ok else _BROKEN_FENCES
            elif command == "rotate-epoch":
                report = vault.rotate_epoch(progress=progress)
                out = {
                    "epoch_seq": report.epoch_seq,
                    "rewrapped": report.rewrapped,
                    "resumed": report.resumed,
                    "quarantined": [{"key_id": k, "version": v} for k, v in report.quarantined],
                }
            elif command == "destroy-epochs" and dry_run:
                out = _dry_run(vault, accept_unreadable)
            elif command == "destroy-epochs":
                destroyed = vault.destroy_epochs(
                    progress=progress, accept_unreadable=accept_unreadable
                )
                out = {
                    "destroyed_epochs": destroyed,
                    "held_by_quarantined_keys": _held(vault, destroyed),
                }
            elif command == "add-kms-wraps":
                out = {"wraps_added": vault.add_kms_wraps()}
            elif command == "verify-erasures":
                erasures = vault.verify_erasures()
                out = _erasure_check(erasures)
            elif command == "reconcile-erasures":
                done = vault.reconcile_erasures()
                erasures = done.check
                out = {
                    **done.model_dump(mode="json", exclude={"check"}),
                    "check": None if erasures is None else _erasure_check(erasures),
                }
            else:
                out = _status(vault)
    except KeyboardInterrupt:
        print(
            f"ccvault {command}: interrupted{progress.so_far()}; {_AFTER_INTERRUPT[command]}",
            file=sys.stderr,
        )
        return 130
    except (CcvaultError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"ccvault {command}: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    if erasures is not None:
        status = 0 if erasures.ok else _PROBLEMS
        if output == "text":
            print("\n".join(_erasure_lines(command, out, erasures)))
            return status
    print(json.dumps(out, indent=2))
    return status


def _erasure_check(check: ErasureCheck) -> dict[str, object]:
    return {"ok": check.ok, **check.model_dump(mode="json")}


def _erasure_lines(command: str, out: dict[str, object], check: ErasureCheck) -> list[str]:
    lines = []
    if command == "reconcile-erasures":
        done = ", ".join(
            f"{k} {out[k]}" for k in ("replayed", "shredded", "imported", "repaired", "flushed")
        )
        lines.append(f"reconciled: {done}")
    lines.append(
        f"ledger {check.location}: head seq {check.ledger_head_seq}, key store applied seq "
        f"{check.store_applied_seq}, {check.ledger_receipts} receipts in the ledger, "
        f"{check.store_receipts} in the key store"
    )
    problems = check.lines()
    hidden = sum(check.counts.values()) - (len(problems) - len(check.ledger.problems))
    lines += problems
    if hidden > 0:
        lines.append(f"... and {hidden} more (the JSON output counts them all)")
    lines.append("ok" if check.ok else f"problems: {', '.join(_counts(check))}")
    return lines


def _counts(check: ErasureCheck) -> list[str]:
    named = [f"{n} {k.replace('_', ' ')}" for k, n in check.counts.items() if n]
    failed = [p for p in check.ledger.problems if not (p.kind == "torn" and p.repaired)]
    return ([f"{len(failed)} in the ledger"] if failed else []) + named


def _head_check(check: HeadCheck) -> dict[str, object]:
    return {
        "heads": check.heads,
        "ok": check.ok,
        **{
            kind: {"count": count, "refs": list(check.refs[kind])}
            for kind, count in check.counts.items()
        },
    }


def _status(vault: Vault) -> dict[str, object]:
    epochs = vault.epochs(check_roots=True)
    active = next((e for e in epochs if e.state == "active"), None)
    due = active.rotation_due_at if active is not None else None
    return {
        "installation_id": vault.installation_id,
        "active_epoch": active.seq if active is not None else None,
        "rotation_due_at": _when(due),
        "rotation_overdue": due is not None and time.time() >= due,
        "quarantined_keys": vault.quarantined_keys(),
        "epochs": [_epoch(e) for e in epochs],
    }


def _held(vault: Vault, destroyed: list[int]) -> list[int]:
    """Epochs due for destruction and kept because they hold quarantined keys (no
    ``--accept-unreadable``)."""
    due = set(vault.destroy_epochs(dry_run=True, accept_unreadable=True)) - set(destroyed)
    return [e.seq for e in vault.epochs() if e.seq in due and e.quarantined_keys]


def _epoch(e: EpochInfo) -> dict[str, object]:
    kms: list[dict[str, object]] = [{"kms_id": k, "root_id": r} for k, r in e.roots]
    for entry, fate in zip(kms, e.root_destruction, strict=False):
        entry["root_destruction"] = fate
    return {
        "seq": e.seq,
        "state": e.state,
        "created_at": _when(e.created_at),
        "retired_at": _when(e.retired_at),
        "destroyable_at": _when(e.destroyable_at),
        "live_keys": e.live_keys,
        "quarantined_keys": e.quarantined_keys,
        "kms": kms,
    }


def _dry_run(vault: Vault, accept_unreadable: bool) -> dict[str, object]:
    """What ``destroy-epochs`` would do now: epochs, keys it re-wraps first, roots it destroys."""
    seqs = set(vault.destroy_epochs(dry_run=True, accept_unreadable=accept_unreadable))
    epochs = vault.epochs(check_roots=True)
    dying = [e for e in epochs if e.seq in seqs]
    kept = {
        root for e in epochs if e.state != "destroyed" and e.seq not in seqs for root in e.roots
    }
    roots: list[dict[str, object]] = []
    if vault.per_epoch_roots:
        roots = [
            {"epoch": e.seq, "kms_id": k, "root_id": r}
            for e in dying
            for k, r in e.roots
            if (k, r) not in kept
        ]
        # Roots of epochs destroyed earlier whose destruction failed: retried.
        roots += [
            {"epoch": e.seq, "kms_id": k, "root_id": r, "retry": True}
            for e in epochs
            for (k, r), fate in zip(e.roots, e.root_destruction, strict=False)
            if fate == "failed"
        ]
    return {
        "dry_run": True,
        "would_destroy_epochs": sorted(seqs),
        "held_by_quarantined_keys": _held(vault, sorted(seqs)),
        "keys_to_rewrap_first": sum(e.live_keys for e in dying),
        "roots_to_destroy": roots,
    }
