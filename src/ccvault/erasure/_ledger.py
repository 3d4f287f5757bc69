"""Owns the ledger sink protocol (where journal entries are stored) and ``ledger_from_url``.
Must not judge entries (the journal verifies them) nor import boto3 or a database driver itself.

A sink stores opaque entry bytes in a gap-free sequence per installation and appends only on a
condition: the entries go in at ``first_seq`` only if the ledger's last entry is ``first_seq - 1``
(SQL: a locked head row; S3: ``PutObject`` with ``If-None-Match: *``; JSONL: an exclusive file
lock). It never decides whether an entry is genuine: :class:`~ccvault.erasure.Journal` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from .._settings import mask_ledger_url
from ..errors import ConfigurationError

__all__ = [
    "MAX_BATCH",
    "LedgerSink",
    "StoredEntry",
    "TornWrite",
    "check_batch",
    "ledger_from_url",
]


@dataclass(frozen=True)
class StoredEntry:
    """One entry as the sink holds it.

    ``seq`` is the sink's own index when it keeps one (the SQL column, the S3 key), None when it
    keeps only the order (a JSONL line); ``data`` is None when the sink records an entry it no
    longer holds (the SQL head row names a deleted row); ``where`` names the place for reports
    ("seq 7", "line 8", "key ledger/entries/000…07")."""

    seq: int | None
    data: bytes | None
    where: str


@dataclass(frozen=True)
class TornWrite:
    """An incomplete last write (a crash mid-line): ``length`` bytes at ``offset`` of ``where``,
    removed when ``repaired``. ``after_seq`` is the seq of the last complete entry before it
    (as that entry states it; None when there is none or it does not parse)."""

    where: str
    offset: int
    length: int
    after_seq: int | None
    repaired: bool


@runtime_checkable
class LedgerSink(Protocol):
    """Where the journal's entries live. Every method raises
    :class:`~ccvault.errors.LedgerUnavailableError` (naming :attr:`location`) when the storage
    cannot be reached; none raises for what the entries say."""

    @property
    def location(self) -> str:
        """Where the ledger is, with credentials masked (for messages and reports)."""
        ...

    def head(self, installation_id: str) -> StoredEntry | None:
        """The last entry of the installation's sequence, or None when it has none."""
        ...

    def read(
        self, installation_id: str, after: int = -1, limit: int | None = None
    ) -> Iterator[StoredEntry]:
        """The entries after position ``after`` in stored order (at most ``limit``)."""
        ...

    def append(self, installation_id: str, first_seq: int, entries: Sequence[bytes]) -> int:
        """Store ``entries`` at ``first_seq``, ``first_seq + 1``… only while the ledger's last
        entry is the one before: returns how many were stored (0: another writer took
        ``first_seq``; fewer than all: it took a later one). At most 500 entries a call."""
        ...

    def torn(self, installation_id: str, *, repair: bool) -> list[TornWrite]:
        """Incomplete last writes left by a crash (only a JSONL file can have one), removed when
        ``repair`` is true."""
        ...

    def close(self) -> None: ...


def ledger_from_url(url: str) -> LedgerSink:
    """The sink a ``CCVAULT_LEDGER_URL`` names.

    * any SQLAlchemy URL (``sqlite:///ledger.db``, ``postgresql+psycopg://…``,
      ``mysql+pymysql://…``): tables ``ccvault_ledger_entries`` and ``ccvault_ledger_heads``;
    * ``file:///abs/path/ledger.jsonl``: a JSON Lines file on this host;
    * ``s3://bucket/prefix?region=…&endpoint_url=…`` (also ``profile``, ``max_attempts``,
      ``connect_timeout``, ``read_timeout``): objects ``<prefix>/entries/<seq:020d>``.

    Credentials never go in an ``s3://`` URL (the usual boto3 chain provides them). A ledger that
    cannot be reached raises :class:`~ccvault.errors.LedgerUnavailableError` naming it with
    credentials masked; a malformed URL is a :class:`~ccvault.errors.ConfigurationError`.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the ledger URL is empty")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if "://" in url else ""
    if scheme == "file":
        from ._ledger_file import JsonlLedger

        return JsonlLedger(_file_path(url))
    if scheme == "s3":
        from ._ledger_s3 import S3Ledger

        return S3Ledger.from_url(url)
    if not scheme:
        raise ConfigurationError(
            "the ledger URL has no scheme: a SQLAlchemy URL, file:///path/ledger.jsonl or "
            "s3://bucket/prefix (docs/erasure.md, 'Journal and ledger')"
        )
    from ._ledger_sql import SqlLedger

    return SqlLedger(url)


def _file_path(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.netloc not in ("", "localhost")
        or not parts.path.startswith("/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigurationError(
            f"malformed ledger file URL {mask_ledger_url(url)!r}: "
            "it looks like file:///absolute/path/ledger.jsonl"
        )
    return unquote(parts.path)


def check_batch(first_seq: int, entries: Sequence[bytes]) -> None:
    """What every sink's ``append`` refuses before touching storage."""
    if first_seq < 0:
        raise ValueError("first_seq must be ≥ 0")
    if not 1 <= len(entries) <= MAX_BATCH:
        raise ValueError(f"append takes 1 to {MAX_BATCH} entries")


MAX_BATCH = 500
"""The most entries one sink write takes (``Journal.append_many`` cuts its batches to this)."""
