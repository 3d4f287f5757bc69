"""What the adversarial tests share: the scales, the figures, the verdict on one attempt, and
the mutations of a stored value.

A *verdict* sorts each attempt into one of three outcomes:

* **refused** — the expected typed error (or the sentinel a column read returns instead);
* **accepted** — the attack went through: a tampered value decrypted, a tampered key was used,
  a shredded subject encrypted. Every test asserts there are none;
* **unexpected** — any other exception type. Every test asserts there are none.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ccvault import DecryptionError, SubjectShreddedError
from ccvault.sqlalchemy import SHREDDED, UNREADABLE

LONG_RUN = os.environ.get("CCVAULT_TEST_ADVERSARIAL", "").strip().lower() == "long"


def app_url(db_url: str) -> str:
    """The application database beside a test's key store: a file of its own on SQLite, the
    same schema or database on a server."""
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


HEADER = 22  # version, suite, key id (16), key version (u32)
NONCE = 12
BODY = HEADER + NONCE


@dataclass(frozen=True)
class Scale:
    """How much of each attack a run tries: the quick scale in CI, the long one on demand."""

    name: str
    bit_stride: int  # key-store tamperings: flip every n-th bit of a field (1: every bit)
    keystore_per_group: int  # key-store tamperings per field and kind of change
    hypothesis: int  # examples per parser fuzz
    hypothesis_db: int  # examples of the fuzzes that go through a database
    read_sample: int  # read-path mutations also read one at a time with on_error="raise"
    server_codecs: int  # codec columns mutated on PostgreSQL and MariaDB (SQLite: all)
    race_subjects: int  # subjects shredded per race
    race_threads: int  # encrypting and decrypting threads per race
    race_processes: int  # further processes per race (0: threads only)
    kills: int  # SIGKILL runs per backend


QUICK = Scale(
    name="quick",
    bit_stride=37,
    keystore_per_group=1,
    hypothesis=300,
    hypothesis_db=30,
    read_sample=120,
    server_codecs=3,
    race_subjects=6,
    race_threads=4,
    race_processes=0,
    kills=6,
)
LONG = Scale(
    name="long",
    bit_stride=1,
    keystore_per_group=10**9,
    hypothesis=10_000,
    hypothesis_db=600,
    read_sample=10**9,
    server_codecs=99,
    race_subjects=40,
    race_threads=8,
    race_processes=2,
    kills=100,
)

SCALES = [
    pytest.param(QUICK, id="quick"),
    pytest.param(LONG, id="long", marks=pytest.mark.slow),
]


class Figures:
    """The counts one test reports: ``figures.add("bit flips", n)``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n


@dataclass
class Verdicts:
    """The outcome of every attempt of one test, by kind of attack."""

    figures: Figures
    accepted: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def refused(self, how: str) -> None:
        self.figures.add(f"refused ({how})")

    def accept(self, case: str) -> None:
        self.accepted.append(case)

    def unexpected_type(self, case: str, exc: BaseException) -> None:
        self.unexpected.append(f"{case}: {type(exc).__module__}.{type(exc).__name__}: {exc}")

    def judge_value(self, kind: str, case: str, read: Callable[[], Any], *, shredded: bool) -> None:
        """``read()`` opens a tampered value: it must raise DecryptionError (or return
        UNREADABLE); only where the value's header names a shredded key may it raise
        SubjectShreddedError (or return SHREDDED) instead."""
        self.figures.add(f"tried: {kind}")
        try:
            result = read()
        except DecryptionError:
            self.refused("DecryptionError")
            return
        except SubjectShreddedError as exc:
            if shredded:
                self.refused("SubjectShreddedError")
            else:
                self.unexpected_type(f"{case} (its header names no shredded key)", exc)
            return
        except Exception as exc:
            self.unexpected_type(case, exc)
            return
        if result is UNREADABLE:
            self.refused("UNREADABLE")
        elif result is SHREDDED and shredded:
            self.refused("SHREDDED")
        else:
            self.accept(f"{case}: read as {type(result).__name__}")

    def check(self) -> None:
        """Report the totals and fail on any accepted attack or unexpected exception type."""
        self.figures.add("accepted", len(self.accepted))
        self.figures.add("unexpected exception types", len(self.unexpected))
        problems = [f"accepted: {a}" for a in self.accepted[:20]]
        problems += [f"unexpected: {u}" for u in self.unexpected[:20]]
        assert not problems, (
            f"{len(self.accepted)} accepted, {len(self.unexpected)} unexpected:\n"
            + "\n".join(problems)
        )


# -- mutations of a stored value ------------------------------------------------------------


def flip(data: bytes, bit: int) -> bytes:
    i, b = divmod(bit, 8)
    return data[:i] + bytes([data[i] ^ (1 << b)]) + data[i + 1 :]


def with_header(blob: bytes, header: bytes) -> bytes:
    return header + blob[HEADER:]


def key_ref(blob: bytes) -> tuple[bytes, int]:
    """(key id, key version) named by a suite-1 value header."""
    key_id, version = struct.unpack(">2x16sI", blob[:HEADER])
    return key_id, version


def header_of(key_id: bytes, version: int, *, fmt: int = 1, suite: int = 1) -> bytes:
    return struct.pack(">BB16sI", fmt, suite, key_id, version)


@dataclass(frozen=True)
class Donors:
    """Other real values whose parts a mutation borrows (all ciphertexts of this installation):
    ``headers`` by what they name, ``same_key`` another value under the value's own key."""

    headers: dict[str, bytes]
    key_ids: dict[str, bytes]
    same_key: bytes


def mutations(blob: bytes, donors: Donors, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(kind, mutated value): every single-bit flip, every truncation, a few extensions, every
    other format version and suite byte, other key versions and key ids, other values' headers,
    and splices with another value under the same key. Never the value itself."""
    for bit in range(len(blob) * 8):
        yield "bit flip", flip(blob, bit)
    for n in range(len(blob)):
        yield "truncation", blob[:n]
    for extra in (b"\x00", bytes(16), os.urandom(32)):
        yield "extension", blob + extra
    for v in range(256):
        if v != blob[0]:
            yield "header: format version", bytes([v]) + blob[1:]
        if v != blob[1]:
            yield "header: suite", blob[:1] + bytes([v]) + blob[2:]
    key_id, version = key_ref(blob)
    for other in sorted({0, 1, 2, version - 1, version + 1, 2**31, 2**32 - 1} - {version}):
        if other >= 0:
            yield "header: key version", with_header(blob, header_of(key_id, other))
    yield "header: key id", with_header(blob, header_of(os.urandom(16), version))
    for _name, other_id in sorted(donors.key_ids.items()):
        yield "header: key id", with_header(blob, header_of(other_id, version))
        yield "header: key id", with_header(blob, header_of(other_id, 1))
    for name, header in sorted(donors.headers.items()):
        yield f"header: {name}", with_header(blob, header)
    other = donors.same_key
    yield "splice: another value's nonce", blob[:HEADER] + other[HEADER:BODY] + blob[BODY:]
    yield "splice: another value's body", blob[:BODY] + other[BODY:]
    yield "splice: another value's tag", blob[:-16] + other[-16:]
    cut = rng.randrange(BODY, len(blob))
    yield "splice: two values cut and joined", blob[:cut] + other[cut:]


def kind_of(kind: str) -> str:
    """The family a mutation counts under in the figures."""
    if kind.startswith("header"):
        return "header substitution"
    if kind.startswith("splice"):
        return "splice"
    return kind
