"""What a result was measured on: machine, interpreter, library versions, git commit."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._peers import version

ROOT = Path(__file__).resolve().parent.parent

DISTRIBUTIONS = (
    "ccvault",
    "cryptography",
    "sqlalchemy",
    "sqlalchemy-utils",
    "tink",
    "aws-encryption-sdk",
    "psycopg",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _openssl() -> str | None:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except Exception:  # context only; never fail a run over it
        return None


def collect() -> dict[str, Any]:
    """Flat context keys for ``latest.json``."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src")
    out: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": commit,
        "git_src_dirty": bool(dirty) if dirty is not None else None,
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {_memory_gib()} GiB",
        "machine_cpu": _cpu_model(),
        "machine_cores": os.cpu_count(),
        "machine_memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "openssl": _openssl(),
        "sqlite": sqlite3.sqlite_version,
        "keystore_driver": f"sqlite+pysqlite (SQLite {sqlite3.sqlite_version}), file in a "
        "temporary directory, WAL",
    }
    for dist in DISTRIBUTIONS:
        out[f"version_{dist.replace('-', '_')}"] = version(dist)
    return out
