"""Ledger sinks for the journal tests: a fresh ledger URL on every kind of sink, and a storage
editor (``Raw``) that changes what a sink holds behind the journal's back, as whoever can edit
the database, file or bucket could.

    from ledgers import Raw, ledger_url, receipt   # ledger_url (and *_ledger_url) are fixtures
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault._secret import SecretKey
from ccvault.audit._receipt import DestroyedKey, ErasureReceipt, sign_receipt
from conftest import _server_db

SINKS = ["sqlite", "postgresql", "mariadb", "jsonl", "s3"]
SQL_SINKS = {"sqlite", "postgresql", "mariadb"}
INSTALLATION = "0f" * 16
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)


def new_seed() -> SecretKey:
    return SecretKey(os.urandom(32))


def public_of(seed: SecretKey) -> bytes:
    """The installation's receipt public key for ``seed``."""
    from ccvault.crypto._primitives import ed25519_public_key

    return ed25519_public_key(seed.reveal())


def receipt(seed: SecretKey, n: int = 0, installation: str = INSTALLATION) -> ErasureReceipt:
    """A signed v1 receipt (as ``shred()`` makes them) for the n-th made-up subject."""
    unsigned = ErasureReceipt(
        receipt_id=uuid.UUID(int=n + 1).hex,
        installation_id=installation,
        subject_ref=f"{n:064x}",
        shredded_at=T0 + timedelta(seconds=n, microseconds=123),
        subject_was_known=n % 2 == 0,
        destroyed_keys=(DestroyedKey(key_id=f"{n:032x}", version=1),),
        epoch_seq=3,
        propagation_bound_seconds=60.0,
        erasure_horizon=T0 + timedelta(days=66),
        signing_key="",
    )
    return sign_receipt(unsigned, seed.reveal())


def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for the clients the S3 sink builds; nothing can reach real AWS."""
    from aws_server import aws_environment

    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment().items():
        monkeypatch.setenv(name, value)


def s3_bucket(server: Any, *, object_lock: bool = False) -> str:
    name = f"ledger-{uuid.uuid4().hex[:12]}"
    server.client(service="s3").create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


def s3_url(server: Any, bucket: str, prefix: str = "ccvault/ledger") -> str:
    from aws_server import REGION

    return f"s3://{bucket}/{prefix}?region={REGION}&endpoint_url={server.endpoint_url}"


def _fresh_ledger(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    elif kind == "jsonl":
        yield f"file://{tmp_path / 'ledger.jsonl'}"
    elif kind == "s3":
        server = request.getfixturevalue("moto_server")
        s3_env(monkeypatch)
        yield s3_url(server, s3_bucket(server))
    else:
        yield from _server_db(kind)


@pytest.fixture(params=SINKS)
def ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty ledger on each kind of sink."""
    yield from _fresh_ledger(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=sorted(SQL_SINKS))
def sql_ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty ledger on each SQL database."""
    yield from _fresh_ledger(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=[*sorted(SQL_SINKS), "jsonl"])
def one_host_ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty ledger on each SQL database and in a JSONL file (two processes share it)."""
    yield from _fresh_ledger(request.param, request, tmp_path, monkeypatch)


def sink_kind(url: str) -> str:
    scheme = url.split(":", 1)[0]
    return {"file": "jsonl", "s3": "s3"}.get(scheme, "sql")


class Raw:
    """Edits a ledger's storage directly: entries by their place (SQL seq, S3 key, JSONL line
    index, which is the seq in a sound ledger)."""

    def __init__(self, url: str, installation: str = INSTALLATION) -> None:
        self.url = url
        self.kind = sink_kind(url)
        self.installation = installation
        if self.kind == "sql":
            self.engine = sa.create_engine(url)
            self.entries = sa.table(
                "ccvault_ledger_entries",
                sa.column("installation_id"),
                sa.column("seq"),
                sa.column("data"),
            )
            self.heads = sa.table(
                "ccvault_ledger_heads", sa.column("installation_id"), sa.column("head_seq")
            )
        elif self.kind == "jsonl":
            self.path = Path(url[len("file://") :])
        else:
            import boto3

            from aws_server import DUMMY_CREDENTIALS, REGION

            rest, _, query = url[len("s3://") :].partition("?")
            self.bucket, _, prefix = rest.partition("/")
            self.dir = f"{prefix}/entries/"
            endpoint = dict(p.split("=", 1) for p in query.split("&"))["endpoint_url"]
            self.s3 = boto3.client(
                "s3", region_name=REGION, endpoint_url=endpoint, **DUMMY_CREDENTIALS
            )

    def close(self) -> None:
        if self.kind == "sql":
            self.engine.dispose()

    def _key(self, seq: int) -> str:
        return f"{self.dir}{seq:020d}"

    def _where(self, seq: int) -> Any:
        e = self.entries.c
        return sa.and_(e.installation_id == self.installation, e.seq == seq)

    def _lines(self) -> list[bytes]:
        return self.path.read_bytes().splitlines(keepends=True)

    def get(self, seq: int) -> bytes:
        if self.kind == "sql":
            with self.engine.connect() as c:
                return bytes(
                    c.execute(sa.select(self.entries.c.data).where(self._where(seq))).scalar_one()
                )
        if self.kind == "jsonl":
            return self._lines()[seq].rstrip(b"\n")
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=self._key(seq))["Body"].read())

    def put(self, seq: int, data: bytes) -> None:
        """Replace what place ``seq`` holds (an overwrite where the storage allows it)."""
        if self.kind == "sql":
            with self.engine.begin() as c:
                c.execute(sa.update(self.entries).where(self._where(seq)).values(data=data))
        elif self.kind == "jsonl":
            lines = self._lines()
            lines[seq] = data + b"\n"
            self.path.write_bytes(b"".join(lines))
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(seq), Body=data)

    def edit(self, seq: int, change: Any) -> None:
        """Parse the entry at ``seq`` as JSON, let ``change`` alter the dict, store it back."""
        doc = json.loads(self.get(seq))
        change(doc)
        self.put(seq, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

    def delete(self, seq: int) -> None:
        if self.kind == "sql":
            with self.engine.begin() as c:
                c.execute(sa.delete(self.entries).where(self._where(seq)))
        elif self.kind == "jsonl":
            lines = self._lines()
            del lines[seq]
            self.path.write_bytes(b"".join(lines))
        else:
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(seq))

    def swap(self, a: int, b: int) -> None:
        first, second = self.get(a), self.get(b)
        self.put(a, second)
        self.put(b, first)

    def move(self, seq: int, to: int) -> None:
        """Store the entry at ``seq`` under ``to`` instead (SQL: its seq column; S3: its key)."""
        if self.kind == "sql":
            with self.engine.begin() as c:
                c.execute(sa.update(self.entries).where(self._where(seq)).values(seq=to))
        elif self.kind == "s3":
            data = self.get(seq)
            self.s3.put_object(Bucket=self.bucket, Key=self._key(to), Body=data)
            self.delete(seq)
        else:
            raise ValueError("a JSONL line has no index of its own")

    def cut_from(self, seq: int) -> None:
        """Remove every entry from ``seq`` on, as a truncated copy or a deleted tail would."""
        if self.kind == "jsonl":
            self.path.write_bytes(b"".join(self._lines()[:seq]))
            return
        for s in range(seq, self.count()):
            self.delete(s)

    def count(self) -> int:
        if self.kind == "sql":
            with self.engine.connect() as c:
                return int(
                    c.execute(
                        sa.select(sa.func.count())
                        .select_from(self.entries)
                        .where(self.entries.c.installation_id == self.installation)
                    ).scalar_one()
                )
        if self.kind == "jsonl":
            return len(self._lines())
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.dir
        )
        return sum(len(page.get("Contents", ())) for page in pages)

    def set_head(self, seq: int) -> None:
        with self.engine.begin() as c:
            c.execute(
                sa.update(self.heads)
                .where(self.heads.c.installation_id == self.installation)
                .values(head_seq=seq)
            )

    def append_raw(self, data: bytes) -> None:
        """Add bytes at the end of a JSONL file (a torn write leaves a line without newline)."""
        with self.path.open("ab") as f:
            f.write(data)
