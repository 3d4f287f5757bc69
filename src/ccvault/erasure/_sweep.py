"""Owns running the after-shred hooks (the integrations' blind-index sweeps) for one subject and
collecting what they swept and what they could not. Must not decide what an incomplete sweep
means: the shred reports it with its receipt, the completion refuses to complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ErasureIncompleteError
from ..keyring import KeyRing

__all__ = ["SweepOutcome", "sweep"]


@dataclass
class SweepOutcome:
    """What the hooks did: ``tables`` and ``labels`` swept, the ErasureIncompleteErrors they
    raised (``failed``) and the names of other exceptions (``crashed``: the hook itself broke)."""

    tables: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    failed: list[ErasureIncompleteError] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)

    @property
    def not_swept(self) -> set[str]:
        """The labels of the columns a hook reported it could not sweep."""
        return {label for exc in self.failed for label in exc.columns}

    def reasons(self) -> list[str]:
        """Why the sweep is incomplete, one text per failure (never a value or a subject)."""
        out = [str(exc) for exc in self.failed]
        return out + [f"an after-shred hook raised {name}" for name in self.crashed]


def sweep(ring: KeyRing, subject: object) -> SweepOutcome:
    """Run every registered after-shred hook with ``subject``; never raises for a hook."""
    outcome = SweepOutcome()
    for hook in ring.after_shred:
        try:
            for table, label in hook(subject):
                outcome.tables.add(table)
                outcome.labels.add(label)
        except ErasureIncompleteError as exc:
            outcome.labels.update(exc.swept)
            outcome.failed.append(exc)
        except Exception as exc:  # the keys are gone: report it, never lose the receipt
            outcome.crashed.append(type(exc).__name__)
    return outcome
