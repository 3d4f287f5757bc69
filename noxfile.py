"""Developer sessions: ``nox`` runs lint, typecheck and tests; ``nox -s bench`` runs benchmarks.

Sessions use the interpreter nox itself runs on (no version pinning), so they work on whatever
Python the machine has. Pass extra arguments after ``--``, e.g. ``nox -s tests -- -k shred``.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
LINT_PATHS = ("src", "tests", "benchmarks", "noxfile.py")

nox.options.sessions = ["lint", "typecheck", "tests"]


def _existing(paths: tuple[str, ...]) -> list[str]:
    # benchmarks/ may not exist yet; ruff reports a missing path as an error.
    return [p for p in paths if (ROOT / p).exists()]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (arguments after ``--`` go to pytest)."""
    session.install(".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and formatting check."""
    session.install("ruff>=0.6")
    paths = _existing(LINT_PATHS)
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (configuration in pyproject.toml)."""
    session.install(".[dev]")
    session.run("mypy", "--strict", "src")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (arguments after ``--`` go to ``python -m benchmarks``)."""
    if not (ROOT / "benchmarks" / "__main__.py").exists():
        session.error("benchmarks/__main__.py does not exist yet: nothing to run")
    # The peers and matplotlib are benchmark-only: never dependencies of ccvault itself.
    session.install(".[dev]", "-r", "benchmarks/requirements.txt")
    session.run("python", "-m", "benchmarks", *session.posargs)
