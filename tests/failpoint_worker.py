"""The child of tests/test_failpoints.py: a vault that writes customers and shreds one, in a
process of its own, until the failpoint named by ``CCVAULT_FAILPOINT`` ends it
(``os._exit(137)``, ccvault/_failpoints.py).

The job is a dict (JSON on the command line, or pickled by multiprocessing):

* ``key_path``, ``store``, ``app``, ``ledger``: the local KMS key file, the key-store URL, the
  application database's URL, the ledger URL (an existing installation: the test created it);
* ``customers``: ``[id, name, phone, email or None]`` rows written through the attached engine
  (the model is tests/sqla_models.py's ``Customer``: ``phone`` and ``email`` have blind indexes);
* ``target``: the customer to shred (one of them, or a subject never seen);
* ``point``: when given, put in ``CCVAULT_FAILPOINT`` before the vault is used (the test starts
  :func:`run` in a process forked from a server that imported everything first, whose
  environment was fixed when it started); as a script the variable comes from the environment.

Exits 137 at the failpoint; 0 when it was passed without firing (the test fails then).

    CCVAULT_FAILPOINT=after-intent python tests/failpoint_worker.py '{"key_path": …}'
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import Vault
from ccvault._failpoints import VARIABLE
from ccvault.erasure import _complete
from ccvault.kms import LocalKms
from sqla_models import Customer

# The completion phase's points: the worker shreds with wait=True (the shred, then its completion).
COMPLETION_POINTS = ("after-ledger-append", "after-completion")


class _Clock:
    """Real time plus what the waits added (the vault's clock in the child)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def open_vault(job: dict[str, Any], **options: Any) -> Vault:
    return Vault(
        LocalKms.from_file(job["key_path"]),
        job["store"],
        ledger=job["ledger"],
        subject_type="uuid",
        listen_url="off",
        **options,
    )


def run(job: dict[str, Any]) -> None:
    if job.get("point"):
        os.environ[VARIABLE] = job["point"]
    clock = _Clock()
    vault = open_vault(job, clock=clock)
    engine = sa.create_engine(job["app"])
    vault.attach(engine)
    with Session(engine) as s:
        s.add_all(
            Customer(id=uuid.UUID(c), name=name, phone=phone, email=email)
            for c, name, phone, email in job["customers"]
        )
        s.commit()
    if os.environ.get(VARIABLE) in COMPLETION_POINTS:
        # shred(wait=True) completes the erasure before it returns; its wait for the bound
        # moves the vault's clock instead of sleeping
        _complete._sleep = clock.advance
        vault.shred(uuid.UUID(job["target"]), wait=True)
    else:
        vault.shred(uuid.UUID(job["target"]))
    engine.dispose()
    vault.close()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
