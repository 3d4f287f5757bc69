"""The benchmark harness stays consistent: every figure the ORM benchmark writes is described in
benchmarks/_figures.py (so that it reaches latest.md and the chart), and the report writers take
a run's results. No timing is measured or asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks import _report, bench_orm  # noqa: E402
from benchmarks._figures import ALL, BY_NAME, REQUIRED  # noqa: E402


def _orm_names() -> set[str]:
    names = {bench_orm._name(n, db) for db in ("sqlite", "postgres") for n, *_ in bench_orm.RATIOS}
    names |= {bench_orm._name(n, db) for db in ("sqlite", "postgres") for n, *_ in bench_orm.ADDED}
    names |= {n.format(db=db) for db in ("sqlite", "postgres") for n, *_ in bench_orm.ABSOLUTE}
    names |= {n for n, *_ in bench_orm.BINARY_RATIOS + bench_orm.BINARY_ADDED}
    names |= {n for n, *_ in bench_orm.BINARY_ABSOLUTE}
    return names


def test_every_orm_figure_is_described() -> None:
    assert sorted(_orm_names() - set(BY_NAME)) == []
    assert len(BY_NAME) == len(ALL)  # no figure described twice


def test_select_figures_say_first_read_or_steady_state() -> None:
    selects = [f for f in ALL if "select" in f.name and f.bench == "orm"]
    assert selects
    vague = [
        f.name
        for f in selects
        if not any(w in f.meaning for w in ("first read", "steady state", "as orm_select_"))
    ]
    assert vague == []


def test_required_select_figures_are_first_and_steady() -> None:
    required = {f.name for f in REQUIRED}
    for db in ("sqlite", "postgres"):
        assert {f"orm_select_first_ratio_{db}", f"orm_select_steady_ratio_{db}"} <= required
        assert f"orm_select_ratio_{db}" not in BY_NAME


def test_added_ratio_is_the_added_time_over_the_floors() -> None:
    # ccvault adds 3 s to a 10 s plaintext where the floor adds 1 s: 3x the floor's added time
    assert bench_orm.added_ratios([13.0], [11.0], [10.0]) == [pytest.approx(3.0)]


def test_report_writes_a_run(tmp_path: Path) -> None:
    out = tmp_path
    results = {name: 1.5 for name in _orm_names()}
    results.update({f"{name}_spread": [1.2, 1.8] for name in _orm_names()})
    results["orm_repeats"] = 5
    md = _report.markdown(results)
    assert "orm_select_first_ratio_sqlite" in md
    assert "orm_select_scattered_floor_ratio_postgres" in md
    problem = _report.write_chart(out / "latest.png", results)
    if problem is None:
        assert (out / "latest.png").stat().st_size > 0
    else:
        assert "matplotlib" in problem
