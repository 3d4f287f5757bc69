"""Owns the JSONL ledger sink: one installation's entries as lines of a file on one host.
Must not be used across hosts (flock is no network lock) nor judge the entries it holds.

Appends take an exclusive ``flock`` on the file, check that its last line is the entry before the
first new one, write the lines in one ``write``, flush and ``fsync``. A crash mid-write leaves an
incomplete last line (no newline): the next append, or :meth:`JsonlLedger.torn` with
``repair=True``, cuts the file back to its last complete line and logs a WARNING. Readers take a
shared lock and never return an incomplete line. The ``mid-JSONL-line`` failpoint (a test hook,
ccvault/_failpoints.py) makes that crash: half the first line, fsynced, then the process ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from .._failpoints import armed, failpoint
from .._fs import fsync_dir
from .._repr import safe_repr
from ..errors import LedgerUnavailableError
from ._ledger import StoredEntry, TornWrite, check_batch

__all__ = ["JsonlLedger"]

log = logging.getLogger("ccvault")

_BLOCK = 65536
_CHUNK = 1000


class JsonlLedger:
    """A ledger in a JSON Lines file: line *n* is the entry with seq *n* - 1. One installation
    per file (the genesis line names it); ``installation_id`` arguments are not used to select.
    Keep the file on a local filesystem of the one host whose processes write it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        with self._open(exclusive=False):
            pass  # creates the file, or says at once why it cannot be opened

    @safe_repr
    def __repr__(self) -> str:
        return f"JsonlLedger({self.location!r})"

    @property
    def location(self) -> str:
        return f"file://{self._path}"

    def close(self) -> None:
        """Nothing to close: each call opens and closes the file."""

    @contextlib.contextmanager
    def _open(self, *, exclusive: bool) -> Iterator[IO[bytes]]:
        try:
            created = not self._path.exists()
            # a+b: O_APPEND (every write lands at the end) and O_CREAT; reads seek freely.
            f = open(self._path, "a+b")  # noqa: SIM115 - closed below, after the lock
        except OSError as exc:
            raise self._unavailable("opened", exc) from exc
        try:
            if created:
                fsync_dir(self._path.parent)  # the new file's name survives a power cut
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield f
        except OSError as exc:
            raise self._unavailable("read or written", exc) from exc
        finally:
            f.close()  # releases the lock

    def _unavailable(self, verb: str, exc: OSError) -> LedgerUnavailableError:
        reason = exc.strerror or type(exc).__name__
        return LedgerUnavailableError(
            f"the ledger file {self.location} could not be {verb}: {reason}",
            location=self.location,
        )

    # -- the LedgerSink protocol ------------------------------------------------------------------

    def head(self, installation_id: str) -> StoredEntry | None:
        with self._open(exclusive=False) as f:
            line, _, number = _tail(f)
        if line is None:
            return None
        return StoredEntry(None, line, f"line {number}" if number else "the last line")

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        """Lines after the first ``after + 1``; an incomplete last line is left out. The file is
        read a chunk at a time and unlocked between chunks (so that whoever iterates may append)."""
        offset, number, given = 0, 0, 0
        while limit is None or given < limit:
            chunk: list[StoredEntry] = []
            with self._open(exclusive=False) as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    offset += len(line)
                    number += 1
                    if number > after + 1:
                        chunk.append(StoredEntry(None, line[:-1], f"line {number}"))
                        if len(chunk) == _CHUNK or (
                            limit is not None and given + len(chunk) >= limit
                        ):
                            break
            yield from chunk
            given += len(chunk)
            if len(chunk) < _CHUNK:
                return

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        check_batch(first_seq, entries)
        if any(b"\n" in data for data in entries):
            raise ValueError("a ledger entry is one line")
        with self._open(exclusive=True) as f:
            self._cut(f, repair=True)
            line, _, _ = _tail(f)
            if _claimed_seq(line) != first_seq - 1:
                return 0
            if armed("mid-JSONL-line"):  # the crash tests: half of the first line, durable
                f.write(entries[0][: max(len(entries[0]) // 2, 1)])
                f.flush()
                os.fsync(f.fileno())
                failpoint("mid-JSONL-line")
            f.write(b"".join(data + b"\n" for data in entries))
            f.flush()
            os.fsync(f.fileno())
        return len(entries)

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        with self._open(exclusive=repair) as f:
            found = self._cut(f, repair=repair)
        return [] if found is None else [found]

    def _cut(self, f: IO[bytes], *, repair: bool) -> TornWrite | None:
        """Find (and with ``repair``, remove) an incomplete last line."""
        line, torn, _ = _tail(f)
        if not torn:
            return None
        size = f.seek(0, os.SEEK_END)
        found = TornWrite(
            where=f"{self.location}, byte {size - torn}",
            offset=size - torn,
            length=torn,
            after_seq=_claimed_seq(line),
            repaired=repair,
        )
        if repair:
            f.truncate(size - torn)
            f.flush()
            os.fsync(f.fileno())
            log.warning(
                "ledger %s: removed an incomplete last line (%d bytes at offset %d, after seq "
                "%s): a write cut short by a crash, never acknowledged, not tampering",
                self.location,
                torn,
                size - torn,
                found.after_seq,
            )
        return found


def _tail(f: IO[bytes]) -> tuple[bytes | None, int, int]:
    """(last complete line without its newline or None, bytes of an incomplete tail after it,
    number of complete lines; 0 when only the tail was read, counting is then left to a read)."""
    end = f.seek(0, os.SEEK_END)
    pos, buf = end, b""
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        last = buf.rfind(b"\n")
        if last < 0:
            continue
        before = buf.rfind(b"\n", 0, last)
        if before >= 0 or pos == 0:
            lines = buf.count(b"\n") if pos == 0 else 0
            return buf[before + 1 : last], len(buf) - last - 1, lines
    return None, len(buf), 0


def _claimed_seq(line: bytes | None) -> int | None:
    """The seq a line states (unverified: the journal judges it), -1 for no line at all, None
    when it does not parse."""
    if line is None:
        return -1
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
