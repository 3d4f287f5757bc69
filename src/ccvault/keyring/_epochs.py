"""Owns the epoch keys (the active epoch, KMS unwraps with grace period and backoff) and every
key record wrapped directly under an epoch: new records, unwrapping, long-lived keys.
Must not cache subject or value keys (the key ring does) nor destroy anything (rotation does).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from .._secret import SecretKey
from ..crypto._primitives import KEY_BYTES, Aead, random_bytes, random_chunks
from ..crypto._wrap import (
    KeyBinding,
    UnwrapError,
    commitment,
    unwrap_key,
    unwrap_keys,
    wrap_keys,
)
from ..errors import (
    ConfigurationError,
    DecryptionError,
    KeyStoreError,
    KmsError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
)
from ..keystore._cache import TtlCache
from ..keystore._protocol import EpochNotUsableError, KeyStore
from ..keystore._records import EpochRecord, KeyKind, KeyRecord, State
from ..kms._multi import unwrap_epoch_key, wrap_epoch_key
from ..kms._protocol import Kms
from ._options import Installation, VaultOptions

__all__ = ["LONG_LIVED", "NO_REF", "Epochs"]

log = logging.getLogger("ccvault")
T = TypeVar("T")

NO_REF: Final = b""
"""The ref bound into the wraps of keys that belong to no subject."""

LONG_LIVED: Final = {
    KeyKind.SUBJECT_REF: "subject-ref",
    KeyKind.RECEIPT_SIGNING: "receipt-signing",
    KeyKind.HEAD_MAC: "subject-head",
    KeyKind.BLIND_INDEX: "blind-index",
}
"""The installation's long-lived keys: kind -> the label of its one key row."""

_MAX_KMS_BACKOFF: Final = 60.0
"""Longest pause between two KMS attempts while a cached epoch key serves an outage."""


class Epochs:
    """The installation's epochs as this process sees them.

    ``aead(epoch)`` is an epoch key, unwrapped by the KMS once per ``cache_ttl`` and served
    ``kms_grace_period`` longer during a KMS outage (one thread refreshes, with backoff; a
    refusal ends it at once). ``new_record``/``unwrap_record`` wrap and unwrap key records
    under an epoch, binding installation, kind, key id, version, epoch and subject ref.
    """

    def __init__(
        self, kms: Kms, store: KeyStore, installation: Installation, options: VaultOptions
    ) -> None:
        self._kms = kms
        self._store = store
        self._installation = installation
        self._options = options
        ttl, monotonic = options.cache_ttl, options.monotonic
        # Epoch keys are fresh for cache_ttl and kept kms_grace_period longer for KMS outages.
        self._keys: TtlCache[bytes, Aead] = TtlCache(64, ttl + options.kms_grace_period, monotonic)
        self._active: TtlCache[str, EpochRecord] = TtlCache(1, ttl, monotonic)
        self._down_until = 0.0
        self._backoff = 0.0
        self._refresh = threading.Lock()

    def open(self) -> EpochRecord:
        """The active epoch, creating epoch 1 on a new installation; cached."""
        epoch = self._store.active_epoch() or self.create(1)
        self._active.put("active", epoch)
        return epoch

    def clear(self) -> None:
        """Drop every cached epoch key (the vault is closing)."""
        self._keys.clear()

    # -- the active epoch ------------------------------------------------------------------------

    def active(self) -> EpochRecord:
        """The active epoch, as read from the key store at most ``cache_ttl`` ago."""
        epoch = self._active.get("active")
        if epoch is None:
            epoch = self._store.active_epoch()
            if epoch is None:
                raise ConfigurationError("the key store has no active epoch")
            self._active.put("active", epoch)
        return epoch

    def set_active(self, epoch: EpochRecord) -> None:
        self._active.put("active", epoch)

    def context(self, epoch_id: bytes) -> dict[str, str]:
        """The KMS encryption context of an epoch key's wraps."""
        return {
            "ccvault:installation": self._installation.id,
            "ccvault:purpose": "epoch-key",
            "ccvault:epoch": epoch_id.hex(),
        }

    def create(self, seq: int, *, rewrap_pending: bool = False) -> EpochRecord:
        """Make epoch ``seq`` (a new random key, wrapped by every KMS; with ``per_epoch_roots``
        under a root of its own) and store it as the active epoch, or get the one another process
        stored first."""
        self._options.writable(f"create epoch {seq}")
        epoch_id = random_bytes(16)
        key = SecretKey(random_bytes(KEY_BYTES))
        root = self._kms.new_root() if self._options.per_epoch_roots else None
        wraps = wrap_epoch_key(self._kms, key, context=self.context(epoch_id), root_id=root)
        commit = commitment(key.reveal(), "epoch", epoch_id, 0)
        record = self._store.add_epoch(
            epoch_id, seq, commit, wraps, self._options.now(), rewrap_pending=rewrap_pending
        )
        if record.epoch_id == epoch_id:
            self._keys.put(epoch_id, Aead(key.reveal()))
        return record

    # -- epoch keys ------------------------------------------------------------------------------

    def aead(self, epoch: EpochRecord | bytes) -> Aead:
        """The key of ``epoch`` (a record, or an epoch id read from a key row)."""
        epoch_id = epoch if isinstance(epoch, bytes) else epoch.epoch_id
        ttl = self._options.cache_ttl
        cached = self._keys.peek(epoch_id)
        if cached is not None and cached[0] < ttl:
            return cached[1]
        if cached is not None:
            # Stale but within the grace period: one thread refreshes it, the others keep
            # serving the cached key meanwhile (a slow or hanging KMS blocks one thread, not all),
            # and after a failed refresh nobody asks the KMS again before the backoff ends.
            if self._options.monotonic() < self._down_until:
                return cached[1]
            if not self._refresh.acquire(blocking=False):
                return cached[1]
        else:
            self._refresh.acquire()  # cold: one unwrap, the other threads wait for it
            fresh = self._keys.peek(epoch_id)
            if fresh is not None and fresh[0] < ttl:
                self._refresh.release()
                return fresh[1]
        try:
            return self._refreshed(epoch, epoch_id, cached)
        finally:
            self._refresh.release()

    def forget(self, epoch_id: bytes) -> None:
        """Drop the cached key of an epoch (destroyed)."""
        self._keys.pop(epoch_id)

    def _refreshed(
        self, epoch: EpochRecord | bytes, epoch_id: bytes, stale: tuple[float, Aead] | None
    ) -> Aead:
        record = epoch if isinstance(epoch, EpochRecord) else self._store.get_epoch(epoch_id)
        if record is None:
            raise DecryptionError
        if record.state == State.DESTROYED:
            self._keys.pop(epoch_id)
            raise KmsKeyNotFoundError(f"epoch {record.seq} was destroyed")
        try:
            key = self.unwrap_epoch(record)
        except KmsUnavailableError:
            if stale is None:
                raise
            # An outage, not a refusal: serve the stale key until the grace period ends (the
            # cache drops it then), asking the KMS again after a growing backoff.
            self._backoff = min(max(1.0, self._backoff * 2), _MAX_KMS_BACKOFF)
            self._down_until = self._options.monotonic() + self._backoff
            log.warning("KMS unavailable: serving a cached epoch key in its grace period")
            return stale[1]
        except (KmsError, DecryptionError):
            # A refusal (root disabled, destroyed, access revoked) ends the cached key at once:
            # it is not served again, even if the KMS becomes unreachable afterwards.
            self._keys.pop(epoch_id)
            raise
        self._backoff = 0.0
        aead = Aead(key.reveal())
        self._keys.put(epoch_id, aead)
        return aead

    def unwrap_epoch(self, record: EpochRecord) -> SecretKey:
        """Ask the KMS for an epoch's key (every reachable KMS of a MultiKms must agree with the
        stored commitment). Uncached: :meth:`aead` is the cached path."""
        epoch_id = record.epoch_id

        def verify(key: SecretKey) -> bool:
            expected = commitment(key.reveal(), "epoch", epoch_id, 0)
            return hmac.compare_digest(expected, record.commitment)

        return unwrap_epoch_key(
            self._kms, record.wraps, context=self.context(epoch_id), verify=verify
        )

    # -- key records wrapped under an epoch ------------------------------------------------------

    def binding(self, rec: KeyRecord, epoch_id: bytes) -> KeyBinding:
        """What a key row's wrap authenticates (its associated data) under ``epoch_id``."""
        return KeyBinding(
            self._installation.raw, rec.kind, rec.key_id, rec.version, epoch_id, rec.ref or NO_REF
        )

    def unwrap_record(self, rec: KeyRecord) -> SecretKey:
        """The key of a live key row; :class:`DecryptionError` for a row that is not live or
        does not authenticate under its epoch."""
        if rec.wrapped is None or rec.commitment is None or rec.epoch_id is None:
            raise DecryptionError
        if rec.state != State.LIVE:
            # A quarantined row stays unreadable even if its bytes authenticate again: only an
            # operator makes it live again.
            raise DecryptionError
        aead = self.aead(rec.epoch_id)
        try:
            return SecretKey(
                unwrap_key(aead, rec.wrapped, rec.commitment, self.binding(rec, rec.epoch_id))
            )
        except UnwrapError:
            pass
        raise DecryptionError  # outside the handler: no __context__ leads back to the unwrap

    def unwrap_records(self, recs: Sequence[KeyRecord]) -> list[SecretKey | None]:
        """:meth:`unwrap_record` of many key rows, in order: None where it would raise
        :class:`DecryptionError` (a row that is not live or does not authenticate, an epoch
        that is not in the key store). Each epoch's key is looked up once, and the unwraps of
        the rows of one kind and epoch share their encoding work (:func:`unwrap_keys`)."""
        out: list[SecretKey | None] = [None] * len(recs)
        groups: dict[tuple[bytes, str], list[tuple[int, tuple[bytes, bytes, bytes, int, bytes]]]]
        groups = {}
        for i, rec in enumerate(recs):
            wrapped, commit, epoch_id = rec.wrapped, rec.commitment, rec.epoch_id
            if wrapped is None or commit is None or epoch_id is None or rec.state != State.LIVE:
                continue  # quarantined rows stay unreadable too (unwrap_record)
            row = (wrapped, commit, rec.key_id, rec.version, rec.ref or NO_REF)
            groups.setdefault((epoch_id, rec.kind), []).append((i, row))
        for (epoch_id, kind), members in groups.items():
            try:
                aead = self.aead(epoch_id)
            except DecryptionError:
                continue  # no such epoch: these rows do not authenticate
            keys = unwrap_keys(
                aead, self._installation.raw, kind, epoch_id, [row for _, row in members]
            )
            for (i, _), key in zip(members, keys, strict=True):
                if key is not None:
                    out[i] = SecretKey(key)
            del keys
        return out

    def new_record(
        self,
        kind: str,
        key_id: bytes,
        version: int,
        *,
        label: str | None = None,
        ref: bytes | None = None,
        material: bytes | None = None,
    ) -> tuple[KeyRecord, bytes]:
        """A new key row wrapped under the active epoch, and its key (random unless given)."""
        materials = None if material is None else [material]
        return self.new_records(kind, [(key_id, version, ref)], materials=materials, label=label)[0]

    def new_records(
        self,
        kind: str,
        named: Sequence[tuple[bytes, int, bytes | None]],
        *,
        materials: Sequence[bytes] | None = None,
        label: str | None = None,
    ) -> list[tuple[KeyRecord, bytes]]:
        """:meth:`new_record` of many new keys of one kind, each ``(key id, version, subject
        ref)``: random keys, or with ``materials`` the keys given (one per name, in order: held
        keys derive theirs). The active epoch and its key are looked up once for the batch, and
        the wraps share their encoding work (:func:`wrap_keys`); every row gets ``label``."""
        if not named:
            return []
        if materials is not None and len(materials) != len(named):
            raise ValueError("new_records needs one key material per name")
        epoch = self.active()
        aead = self.aead(epoch)  # first: a KMS failure here finds no key in this frame
        epoch_id = epoch.epoch_id
        keys = list(materials) if materials is not None else random_chunks(KEY_BYTES, len(named))
        wraps = wrap_keys(
            aead,
            self._installation.raw,
            kind,
            epoch_id,
            [
                (key, key_id, version, ref or NO_REF)
                for key, (key_id, version, ref) in zip(keys, named, strict=True)
            ],
        )
        now = self._options.now()
        return [
            (
                KeyRecord(
                    key_id=key_id,
                    version=version,
                    kind=kind,
                    label=label,
                    ref=ref,
                    epoch_id=epoch_id,
                    wrapped=wrapped,
                    commitment=commit,
                    state=State.LIVE,
                    created_at=now,
                ),
                key,
            )
            for key, (key_id, version, ref), (wrapped, commit) in zip(
                keys, named, wraps, strict=True
            )
        ]

    def with_fresh_epoch(self, store_new_keys: Callable[[], T]) -> T:
        """Run ``store_new_keys`` (it wraps new keys under the cached active epoch and stores
        them); when the key store refuses that epoch because it was destroyed meanwhile (this
        process had not seen the rotation), re-read the active epoch and wrap them again."""
        for _ in range(2):
            try:
                return store_new_keys()
            except EpochNotUsableError:
                self._active.pop("active")
        return store_new_keys()

    def store_new_key(self, kind: str, key_id: bytes, version: int, *, label: str) -> KeyRecord:
        """Create and store a labelled key (or get the one another process stored first).

        The new key's material is never bound to a name here: a frame of a failed insert must
        not hold it."""
        return self.with_fresh_epoch(
            lambda: self._store.insert_key_if_absent(
                self.new_record(kind, key_id, version, label=label)[0]
            )
        )

    def long_lived_key(self, kind: str) -> SecretKey:
        """The installation's one key of ``kind`` (a kind of :data:`LONG_LIVED`: subject-ref,
        receipt-signing, head-MAC, blind-index root), created on first use and re-wrapped by
        every rotation."""
        label = LONG_LIVED[kind]
        rec = self._store.latest_key(kind, label)
        if rec is None:
            self._options.writable(f"create the installation's {label} key")
            if kind == KeyKind.SUBJECT_REF and self._store.has_subjects():
                # Subjects exist, so their ref key did: its row was altered or deleted. A new
                # one would give every subject a new ref, outside every shred fence.
                raise KeyStoreError(
                    "the installation has subjects but its subject-ref key is missing (its key "
                    "row was altered or deleted): restore the key store from a backup"
                )
            rec = self.store_new_key(kind, random_bytes(16), 1, label=label)
        return self.unwrap_record(rec)
