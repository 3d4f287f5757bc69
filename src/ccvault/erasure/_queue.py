"""Owns the queue of erasures awaiting completion: sealing a shredded subject under the day's
version of the vault-wide erasure-queue key, opening it again for the completion's sweep, and
destroying the key versions older than ``backup_retention``. Must not sweep, sign nor write the
ledger: the completion (:mod:`ccvault.erasure._complete`) does.

DESIGN.md, lifecycle rule 4 and issue 13 item 3: the second blind-index sweep needs the subject
in clear, which the key store never keeps. Phase 1 stores it sealed (AES-256-GCM) under a key of
kind ``queue`` and label ``ccvault.erasure-queue``, one version a UTC day (version = days since
1970-01-01), wrapped under the epoch like every key row. The associated data binds the
installation, the subject ref, the key id and version. A version is destroyed once
``backup_retention`` has passed since its day ended: after that no live store and no backup kept
within the retention holds both a sealed subject and the key that opens it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .._repr import safe_repr
from ..crypto._encoding import lp, u32
from ..crypto._primitives import Aead, AeadFailure, random_bytes
from ..errors import DecryptionError, KeyStoreError
from ..keyring import Epochs, Installation, KeyRing, VaultOptions
from ..keystore._protocol import KeyStore
from ..keystore._records import KeyKind, KeyRecord, QueuedErasure

__all__ = ["COMMIT_SLACK", "QUEUE_LABEL", "ErasureQueue", "Sealed"]

log = logging.getLogger("ccvault")

QUEUE_LABEL: Final = "ccvault.erasure-queue"
"""The label of the erasure-queue key's rows (kind ``queue``)."""

COMMIT_SLACK: Final = 1.0
"""Seconds added to the propagation bound before a queued erasure is due: the row is written
just before its shred commits, and the bound runs from the commit."""

_DAY: Final = 86_400.0
_AD: Final = b"ccvault/erasure-queue/v1"
_NONCE: Final = 12


@dataclass(frozen=True, slots=True)
class Sealed:
    """A subject sealed for the queue: the key row (id, version) and nonce ‖ ciphertext ‖ tag."""

    key_id: bytes
    key_version: int
    blob: bytes

    @safe_repr
    def __repr__(self) -> str:
        return f"Sealed(key_version={self.key_version})"


def _plain(value: object) -> object:
    """A coerced subject as JSON: UUIDs as their text, tuples as lists."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class ErasureQueue:
    """Seals and opens the subjects of erasures awaiting completion; see the module docstring."""

    def __init__(
        self,
        store: KeyStore,
        epochs: Epochs,
        ring: KeyRing,
        installation: Installation,
        options: VaultOptions,
    ) -> None:
        self._store = store
        self._epochs = epochs
        self._ring = ring
        self._installation = installation
        self._options = options

    def _ad(self, ref: bytes, key_id: bytes, version: int) -> bytes:
        return lp(_AD, self._installation.raw, ref, key_id, u32(version))

    def _current(self, now: float) -> KeyRecord:
        """The live key row of today's version (created by the first shred of the day; a
        racing process's row wins the unique label and version)."""
        day = int(now // _DAY)
        latest = self._store.latest_key(KeyKind.ERASURE_QUEUE, QUEUE_LABEL)
        if latest is not None and latest.is_live and latest.version >= day:
            return latest  # today's (or a later one, written by a host whose clock is ahead)
        version = day if latest is None or latest.version < day else latest.version + 1
        key_id = latest.key_id if latest is not None else random_bytes(16)
        rec = self._epochs.store_new_key(KeyKind.ERASURE_QUEUE, key_id, version, label=QUEUE_LABEL)
        self.lapse(now)  # a new day: the versions past backup_retention go
        return rec

    def seal(self, subject: object, ref: bytes, now: float) -> Sealed:
        """``subject`` sealed under today's version, bound to ``ref``."""
        return self.seal_many([(subject, ref)], now)[0]

    def seal_many(self, items: Sequence[tuple[object, bytes]], now: float) -> list[Sealed]:
        """Each (subject, ref) of ``items`` sealed under today's version (read once)."""
        coerce = self._installation.subject_type.coerce
        plains = [
            (json.dumps(_plain(coerce(subject)), ensure_ascii=False).encode("utf-8"), ref)
            for subject, ref in items
        ]
        rec = self._current(now)
        aead = Aead(self._epochs.unwrap_record(rec).reveal())
        out = []
        for plain, ref in plains:
            nonce = random_bytes(_NONCE)
            blob = nonce + aead.seal(nonce, plain, self._ad(ref, rec.key_id, rec.version))
            out.append(Sealed(rec.key_id, rec.version, blob))
        return out

    def open(self, row: QueuedErasure, keys: dict[tuple[bytes, int], Aead | None]) -> object:
        """The subject of ``row``; None when its key version is destroyed (the row lapsed).
        ``keys`` caches the versions opened during one run. A row that does not open under its
        key, or opens to a subject whose ref is not the row's, is a KeyStoreError (a damaged or
        edited row: never swept as someone else)."""
        where = (row.key_id, row.key_version)
        if where not in keys:
            rec = self._store.get_keys([where]).get(where)
            if rec is None or not rec.is_live:
                keys[where] = None
            else:
                try:
                    keys[where] = Aead(self._epochs.unwrap_record(rec).reveal())
                except DecryptionError:
                    keys[where] = None
        aead = keys[where]
        if aead is None:
            return None
        try:
            plain = aead.open(
                row.sealed[:_NONCE],
                row.sealed[_NONCE:],
                self._ad(row.ref, row.key_id, row.key_version),
            )
            subject = self._installation.subject_type.coerce(json.loads(plain))
        except (AeadFailure, ValueError, TypeError):
            subject = None
        if subject is None or self._ring.subject_ref(subject) != row.ref:
            raise KeyStoreError(
                f"the queued erasure of receipt {row.receipt_id} does not open to its subject "
                "ref: the erasure-queue row is damaged or was edited"
            )
        return subject

    def lapse(self, now: float) -> int:
        """Destroy the key versions whose day ended ``backup_retention`` ago or more; returns
        how many. Queued rows sealed under them can no longer be opened (reported as lapsed)."""
        retention = self._options.backup_retention.total_seconds()
        below = int((now - retention) // _DAY)  # versions < below: their day ended > retention ago
        if below <= 0:
            return 0
        destroyed = self._store.destroy_key_versions(KeyKind.ERASURE_QUEUE, QUEUE_LABEL, below, now)
        if destroyed:
            log.info("erasure-queue key versions destroyed", extra={"versions": destroyed})
        return destroyed
