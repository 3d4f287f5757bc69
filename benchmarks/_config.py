"""Run settings shared by the benchmarks, and how they store a figure."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._measure import Summary

VALUE = (b"+44 20 7946 0018; jane.doe@example.com; 1 Example Street, London; " * 2)[:100]
"""The field workload: one 100-byte value (ASCII, so that string-typed peers take it as is)."""
CONTEXT = "customers.phone"

Results = dict[str, Any]


@dataclass(frozen=True)
class Config:
    quick: bool
    workdir: Path
    repeats: int
    target_s: float
    """Wall time of one candidate in one repeat (field round trips)."""
    shred_samples: int
    shred_large_population: int
    shred_populate_budget_s: float
    """Stop growing the large key store after this long and report the population reached."""
    orm_rows: int
    orm_repeats: int
    orm_lookups: int
    orm_lookup_population: int
    """Customers in each table when the lookups run (the issue: among 100,000)."""
    budget_s: float
    """The whole run; the shred benchmark, last, grows its key store only while time is left."""
    started: float

    @classmethod
    def make(cls, *, quick: bool, workdir: Path, repeats: int | None) -> Config:
        if quick:
            return cls(
                quick=True,
                workdir=workdir,
                repeats=repeats or 5,
                target_s=0.05,
                shred_samples=25,
                shred_large_population=30_000,
                shred_populate_budget_s=40.0,
                orm_rows=1_000,
                orm_repeats=repeats or 5,
                orm_lookups=50,
                orm_lookup_population=3_000,
                budget_s=110.0,
                started=time.monotonic(),
            )
        return cls(
            quick=False,
            workdir=workdir,
            repeats=repeats or 9,
            target_s=0.25,
            shred_samples=101,
            shred_large_population=1_000_000,
            shred_populate_budget_s=720.0,
            orm_rows=20_000,
            orm_repeats=repeats or 5,
            orm_lookups=500,
            orm_lookup_population=100_000,
            budget_s=24 * 60.0,
            started=time.monotonic(),
        )

    def remaining_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def put(out: Results, name: str, summary: Summary, *, digits: int = 3) -> None:
    """Store a figure as its median, with ``<name>_spread`` = [lowest, highest repeat]."""
    out[name] = summary.value(digits)
    out[f"{name}_spread"] = summary.spread(digits)


def missing(out: Results, name: str, note: str) -> None:
    """A figure that could not be measured: null, with the reason."""
    out[name] = None
    out[f"{name}_note"] = note
