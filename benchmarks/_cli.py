"""``python -m benchmarks``: run the benchmarks, write ``latest.json``, ``.md`` and ``.png``."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _context, _report
from benchmarks._config import Config, Results
from benchmarks._figures import BENCHES, NOT_YET, REQUIRED
from benchmarks._measure import MIN_REPEATS

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ccvault benchmarks beside raw AES-GCM and peers (see docs/performance.md).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small workloads, under 2 minutes: keeps the harness working, not for figures",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"repeats per figure (at least {MIN_REPEATS}; default 9, --quick 5)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="directory for latest.json, latest.md and latest.png (default benchmarks/results)",
    )
    return p


def run(cfg: Config, only: list[str]) -> Results:
    results: Results = {}
    for name in BENCHES:
        if name not in only:
            continue
        module = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.monotonic()
        cfg.log(f"{name}: start")
        results.update(module.run(cfg))
        results[f"{name}_seconds"] = round(time.monotonic() - t0, 1)
        cfg.log(f"{name}: done in {results[f'{name}_seconds']} s")
    for fig in REQUIRED:
        if fig.name in results:
            continue
        results[fig.name] = None
        if fig.name in NOT_YET:
            results[f"{fig.name}_note"] = NOT_YET[fig.name]
        else:
            results[f"{fig.name}_note"] = f"not run (benchmark {fig.bench!r} not selected)"
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < MIN_REPEATS:
        _parser().error(f"--repeats must be at least {MIN_REPEATS}")
    only: list[str] = args.only or list(BENCHES)
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    context: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(
            ["python -m benchmarks", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "benchmarks_run": only,
        "driver": "benchmarks/ (python -m benchmarks), same process for every figure",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    context.update(_context.collect())  # before the run: the commit and versions measured
    with tempfile.TemporaryDirectory(prefix="ccvault-bench-") as tmp:
        cfg = Config.make(quick=args.quick, workdir=Path(tmp), repeats=args.repeats)
        results = run(cfg, only)
    context["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    context["total_seconds"] = round(time.monotonic() - started, 1)
    results.update(context)
    chart_problem = _report.write_chart(output / "latest.png", results)
    if chart_problem:
        results["chart_note"] = chart_problem
    _report.write_json(output / "latest.json", results)
    _report.write_markdown(output / "latest.md", results)
    print(_report.markdown(results))
    print(f"wrote {output / 'latest.json'}, latest.md, latest.png", file=sys.stderr)
    return 0
