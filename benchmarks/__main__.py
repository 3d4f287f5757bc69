"""Entry point: ``python -m benchmarks [--quick] [--only NAME] [--output DIR]``."""

from __future__ import annotations

from benchmarks._cli import main

raise SystemExit(main())
