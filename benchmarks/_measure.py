"""Timing helpers: interleaved repeats, medians and spreads.

A figure and its baseline are timed in the same repeat, one right after the other, with the order
rotated from repeat to repeat, so that a slow moment of the machine hits both. A ratio is taken per
repeat (candidate / baseline of that repeat) and the median of those ratios is reported, with the
lowest and highest ratio as its spread.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

MIN_REPEATS = 5

Loop = Callable[[int], object]
"""Runs the measured operation ``n`` times."""


@dataclass(frozen=True)
class Summary:
    """Median of the repeats, with the lowest and highest repeat as the spread."""

    median: float
    low: float
    high: float
    repeats: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Summary:
        return Summary(self.median * factor, self.low * factor, self.high * factor, self.repeats)

    def spread(self, digits: int = 3) -> list[float]:
        return [_round(self.low, digits), _round(self.high, digits)]

    def value(self, digits: int = 3) -> float:
        return _round(self.median, digits)


def _round(x: float, digits: int) -> float:
    """Round to ``digits`` significant digits (timings are not more precise than that)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


@contextmanager
def no_gc(*, collect: bool = True) -> Iterator[None]:
    """Collect first, then keep the cyclic GC out of the timed region (as timeit does)."""
    if collect:
        gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_loop(loop: Loop, n: int, *, collect: bool = True) -> float:
    """Nanoseconds per operation for one run of ``loop(n)``."""
    with no_gc(collect=collect):
        t0 = time.perf_counter_ns()
        loop(n)
        elapsed = time.perf_counter_ns() - t0
    return elapsed / n


def calibrate(loop: Loop, target_s: float, *, minimum: int = 50, maximum: int = 2_000_000) -> int:
    """How many operations make one repeat of about ``target_s`` seconds."""
    n = 8
    while True:
        per_op = time_loop(loop, n, collect=False)
        if per_op * n >= 20e6 or n >= maximum:  # 20 ms of work: a usable estimate
            break
        n *= 4
    wanted = int(target_s * 1e9 / max(per_op, 1.0))
    return max(minimum, min(maximum, wanted))


def interleaved(
    loops: dict[str, Loop], ops: dict[str, int], repeats: int
) -> dict[str, list[float]]:
    """Nanoseconds per operation of each loop, per repeat, with the order rotated each repeat."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"at least {MIN_REPEATS} repeats")
    names = list(loops)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        gc.collect()  # once per repeat: a full collection is slow on a heap of cached keys
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(time_loop(loops[name], ops[name], collect=False))
    return out


def ratios(candidate: Sequence[float], baseline: Sequence[float]) -> Summary:
    """Per-repeat ratio of two series timed in the same repeats."""
    if len(candidate) != len(baseline):
        raise ValueError("series of different lengths")
    return Summary.of([c / b for c, b in zip(candidate, baseline, strict=True)])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
