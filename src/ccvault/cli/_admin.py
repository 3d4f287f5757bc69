"""Admin commands over the vault configured by ``CCVAULT_*``: run them from a scheduled job with
the admin KMS principal (docs/kms.md, "Who may do what")."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from ..errors import CcvaultError
from ..vault import Vault

__all__ = ["run_admin"]


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def run_admin(command: str) -> int:
    """One admin command; prints one JSON object; exit status 1 on a ccvault error."""
    try:
        with Vault.from_settings() as vault:
            out: dict[str, object]
            if command == "rotate-epoch":
                report = vault.rotate_epoch()
                out = {"epoch_seq": report.epoch_seq, "rewrapped": report.rewrapped}
            elif command == "destroy-epochs":
                out = {"destroyed_epochs": vault.destroy_epochs()}
            elif command == "add-kms-wraps":
                out = {"wraps_added": vault.add_kms_wraps()}
            else:  # status
                out = {
                    "installation_id": vault.installation_id,
                    "epochs": [
                        {
                            "seq": e.seq,
                            "state": e.state,
                            "created_at": _when(e.created_at),
                            "retired_at": _when(e.retired_at),
                            "kms": [{"kms_id": k, "root_id": r} for k, r in e.roots],
                        }
                        for e in vault.epochs()
                    ],
                }
    except CcvaultError as exc:
        print(f"ccvault {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0
