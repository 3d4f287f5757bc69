"""Owns the one file-system durability step ccvault needs in several places: fsync of a folder, so
that a file just created or renamed in it survives a power cut. Must not do anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Flush the folder ``path`` itself (its entries: new and renamed names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
