"""Owns running the after-shred hooks (the integrations' blind-index sweeps) for one subject or a
batch of them, collecting what they swept and what they could not, and the warning about the
columns no hook in this process sweeps. Must not decide what an incomplete sweep means: the
shred reports it with its receipt, ``shred_many`` in each subject's result, the completion
refuses to complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import ErasureIncompleteError, KeyStoreError
from ..keyring import KeyRing

__all__ = ["SweepOutcome", "sweep", "sweep_many", "unswept_labels", "warn_unswept"]

log = logging.getLogger("ccvault")

A = TypeVar("A")


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

    @property
    def incomplete(self) -> bool:
        return bool(self.failed or self.crashed)

    def reasons(self) -> list[str]:
        """Why the sweep is incomplete, one text per failure (never a value or a subject)."""
        out = [str(exc) for exc in self.failed]
        return out + [f"an after-shred hook raised {name}" for name in self.crashed]

    def run(self, hook: Callable[[A], Iterable[tuple[str, str]]], arg: A) -> None:
        """Run one hook (or its batched form) and add what it did; never raises for it."""
        try:
            for table, label in hook(arg):
                self.tables.add(table)
                self.labels.add(label)
        except ErasureIncompleteError as exc:
            self.labels.update(exc.swept)
            self.failed.append(exc)
        except Exception as exc:  # the keys are gone: report it, never lose the receipt
            self.crashed.append(type(exc).__name__)

    def add(self, other: SweepOutcome) -> None:
        self.tables |= other.tables
        self.labels |= other.labels
        self.failed += other.failed
        self.crashed += other.crashed


def sweep(ring: KeyRing, subject: object) -> SweepOutcome:
    """Run every registered after-shred hook with ``subject``; never raises for a hook."""
    outcome = SweepOutcome()
    for hook in ring.after_shred:
        outcome.run(hook, subject)
    return outcome


def sweep_many(ring: KeyRing, subjects: Sequence[object]) -> SweepOutcome:
    """Run every registered after-shred hook for all of ``subjects``: a hook's batched form
    once, a hook without one once per subject. One outcome for the batch (a table a batched
    sweep could not clear is not cleared for any of them); never raises for a hook."""
    outcome = SweepOutcome()
    for hook in ring.after_shred:
        many = ring.after_shred.many(hook)
        if many is not None:
            outcome.run(many, subjects)
            continue
        for subject in subjects:
            outcome.run(hook, subject)
    return outcome


def unswept_labels(ring: KeyRing, outcome: SweepOutcome) -> list[str] | None:
    """The context labels of the columns with blind indexes in this installation that no hook
    swept nor reported failing, sorted; None when the key store cannot say which they are."""
    try:
        known = ring.searchable_labels()
    except KeyStoreError:
        return None
    return sorted(known - outcome.labels - outcome.not_swept)


def warn_unswept(ring: KeyRing, outcome: SweepOutcome, what: str) -> None:
    """Log a WARNING naming the columns with blind indexes in this installation that no hook of
    this process swept for ``what`` (\"shred of subject ref …\", never a subject)."""
    unswept = unswept_labels(ring, outcome)
    if unswept is None:
        log.warning(
            "%s: could not read which columns have blind indexes, so columns no engine in this "
            "process sweeps are not named",
            what,
        )
        return
    if unswept:
        # The receipt (v1, frozen) cannot say it: the values are unreadable, but their blind
        # indexes stay until a process that knows these columns shreds the subject again.
        log.warning(
            "%s left blind indexes in place: no engine attached in this process sweeps %s. "
            "Repeat the shred where the models are imported and the engine attached "
            "(docs/sqlalchemy.md, 'Shredding from a process without the models').",
            what,
            ", ".join(unswept),
        )
