"""Scales and figures of the adversarial suite (docs/security.md, "Figures").

Every test runs at the quick scale; its long version is the same test at the long scale, marked
``slow``. In this folder a ``slow`` test runs only with ``CCVAULT_TEST_ADVERSARIAL=long`` in the
environment, so the README's plain ``pytest`` and CI skip it (elsewhere ``slow`` keeps its
meaning: tests/test_races.py still runs by default).

Each test counts what it tried and how it ended in the ``figures`` fixture; the session prints
them at the end ("adversarial figures") and writes them as JSON to the file named by
``CCVAULT_TEST_ADVERSARIAL_FIGURES`` when that is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from adversarial.harness import LONG_RUN, Figures

_ALL: dict[str, dict[str, int]] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is not None and not LONG_RUN:
        pytest.skip("long adversarial run: set CCVAULT_TEST_ADVERSARIAL=long")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    f = Figures()
    yield f
    name = request.node.nodeid.split("adversarial/", 1)[-1]
    _ALL[name] = dict(sorted(f.counts.items()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ALL:
        return
    terminalreporter.section("adversarial figures")
    for test, counts in _ALL.items():
        terminalreporter.write_line(test)
        for name, n in counts.items():
            terminalreporter.write_line(f"    {name:<60} {n:>12,}")
    path = os.environ.get("CCVAULT_TEST_ADVERSARIAL_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_ALL, f, indent=1, sort_keys=True)
