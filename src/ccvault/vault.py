"""The vault: envelope encryption per data subject over a KMS and a key store.

Key hierarchy (see docs/design.md)::

    KMS root key (never leaves the KMS)
      └─ epoch key          random 256-bit, wrapped by the KMS, unwrapped once per process per
         │                  cache period; one epoch is active, rotation re-wraps everything below
         ├─ subject-ref key long-lived: ref = HMAC-SHA256(K_ref, canonical(subject))
         ├─ receipt key     long-lived Ed25519 seed that signs erasure receipts
         ├─ head-MAC key    long-lived: authenticates each subject head's fence state
         ├─ subject keys    one lineage per subject (random 128-bit key id, versions)
         └─ vault-wide keys one lineage per context label, for data without a subject
              └─ values     AES-256-GCM, format v1 (crypto/_format.py)
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar, cast

from sqlalchemy.engine import Engine

from ._repr import safe_repr
from ._secret import SecretKey
from .audit._receipt import DestroyedKey, ErasureReceipt, sign_receipt
from .crypto import _format as fmt
from .crypto._blind import BlindIndexer, Normalizer, column_key
from .crypto._heads import head_mac_message
from .crypto._primitives import KEY_BYTES, Aead, HmacSha256, ed25519_public_key, random_bytes
from .crypto._subject import SubjectType
from .crypto._wrap import KeyBinding, UnwrapError, commitment, unwrap_key, wrap_key
from .errors import (
    ConfigurationError,
    DecryptionError,
    ErasureIncompleteError,
    KeyStoreError,
    KmsError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
    SubjectShreddedError,
)
from .keystore._cache import TtlCache
from .keystore._protocol import EpochNotUsableError, KeyStore
from .keystore._records import EpochRecord, HeadRecord, KeyKind, KeyRecord, State
from .keystore._schema import SCHEMA_VERSION
from .keystore._sql import SqlKeyStore
from .kms._multi import kms_by_id, unwrap_epoch_key, wrap_epoch_key
from .kms._protocol import Kms, RootState, WrappedKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

    from ._settings import CcvaultSettings
    from .sqlalchemy._scrub import ScrubReport

__all__ = [
    "FENCE_BREAKS",
    "NO_SUBJECT",
    "DevelopmentDefaultWarning",
    "EpochInfo",
    "HeadCheck",
    "Progress",
    "RotationReport",
    "StoreUpgrade",
    "Vault",
]

log = logging.getLogger("ccvault")
T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called after each batch of a long admin operation with (keys done so far, total expected)."""


class _NoSubject:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_SUBJECT"


NO_SUBJECT: Final = _NoSubject()
"""Pass as the subject to encrypt with the context's vault-wide key (data of no one customer)."""

VAULTWIDE_NONCE_BUDGET: Final = 2**31
"""Values sealed under one vault-wide key version before the next version takes over (random
96-bit nonces: collision probability below 2**-35). See docs/design.md, "Nonce budget"."""
_USE_BLOCK = 4096
_FENCE_SECONDS = 86_400.0
_BATCH = 500
_REF_LABEL = "subject-ref"
_BIDX_LABEL = "blind-index"
_RECEIPT_LABEL = "receipt-signing"
_HEAD_LABEL = "subject-head"
_REPORT_SECONDS = 3600.0  # a broken fence is logged once an hour per ref, not once per use
_LISTED = 1000  # refs a HeadCheck lists of each kind (it counts them all)
_HEADLESS = (
    "its ref has key rows but no subject head (ccvault never deletes one): the head row was "
    "deleted or its ref altered"
)
_UPGRADING: Final = contextvars.ContextVar("ccvault_upgrading_store", default=False)
"""Set by :meth:`Vault.upgrade_store` only: a vault built meanwhile opens an older store."""
_SEARCHABLE_META = "searchable:"  # ccvault_meta rows: one per column label with blind indexes
_NO_REF = b""


class DevelopmentDefaultWarning(UserWarning):
    """The embedded default (local key file beside a SQLite key store) is for development only."""


@dataclass(frozen=True, slots=True)
class EpochInfo:
    """An epoch as :meth:`Vault.epochs` reports it (no key material).

    ``root_destruction`` (destroyed epochs, with ``per_epoch_roots``, when asked with
    ``epochs(check_roots=True)``) says per root, in the order of ``roots``, what the KMS reports:
    ``"destroyed"`` (or unknown to it), ``"pending"`` (scheduled for deletion, AWS's waiting
    period), ``"failed"`` (still enabled or disabled: the next ``destroy_epochs()`` retries),
    ``"shared"`` (a live epoch uses the same root: never destroyed), ``"unreachable"`` or
    ``"not configured"`` (no configured KMS has this ``kms_id``).

    ``quarantined_keys`` counts the key rows under this epoch that failed authentication and were
    quarantined (see :meth:`Vault.rotate_epoch`): they keep a retired epoch from being destroyed
    until an operator accepts their loss (``destroy_epochs(accept_unreadable=True)``).
    """

    seq: int
    state: str  # "active", "retired" or "destroyed"
    created_at: float
    retired_at: float | None
    roots: tuple[tuple[str, str], ...]  # (kms_id, root_id) of each wrap
    live_keys: int = 0  # live keys wrapped under this epoch
    rotation_due_at: float | None = None  # active epoch: created_at + epoch_rotation_period
    destroyable_at: float | None = None  # retired epoch: retired_at + backup_retention
    root_destruction: tuple[str, ...] = ()
    quarantined_keys: int = 0


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What :meth:`Vault.rotate_epoch` did. ``quarantined`` lists, as (key id in hex, version),
    the key rows this call found unreadable (their wrap, commitment or bound ids do not
    authenticate, or their epoch id names no usable epoch) and quarantined instead of
    re-wrapping."""

    epoch_seq: int
    rewrapped: int
    resumed: bool = False  # True: an interrupted rotation was finished, no new epoch started
    quarantined: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class StoreUpgrade:
    """What :meth:`Vault.upgrade_store` did: the schema version it found and left, the subject
    heads it authenticated (a repeat finds none, unless a process of an older version wrote
    some meanwhile) and the never-seen shredded subjects it gave a tombstone."""

    from_version: int
    to_version: int
    heads_authenticated: int
    tombstones_added: int


FENCE_BREAKS: Final = ("unauthenticated", "inconsistent", "headless", "orphan", "restored")
"""The kinds of broken fence :meth:`Vault.verify_heads` reports (see :class:`HeadCheck`)."""


@dataclass(frozen=True, slots=True)
class HeadCheck:
    """What :meth:`Vault.verify_heads` found: ``heads`` checked, and the refs that every read
    and write treats as shredded because their fence rows are not what ccvault writes, by kind:

    * ``unauthenticated``: heads whose MAC fails (state, ref, key id or version altered, or a
      head written without a MAC by a process of an older ccvault);
    * ``inconsistent``: heads that authenticate and say active but name a destroyed key (a head
      row restored from a backup over a shred);
    * ``headless``: refs with destroyed keys (tombstones) and no head (a head row deleted, or
      its ref altered);
    * ``orphan``: refs with live keys and no head;
    * ``restored``: refs with a live key under a head that does not say active (a key row
      restored from a backup over a shred).

    ``counts`` has every kind's full count; ``refs`` the first 1,000 refs of each kind, in hex
    (refs are the key store's pseudonyms, never a subject in clear)."""

    heads: int
    counts: dict[str, int]
    refs: dict[str, tuple[str, ...]]

    @property
    def ok(self) -> bool:
        """True when no ref is treated as shredded for a broken fence."""
        return not any(self.counts.values())


_DataKey = fmt.ValueKey


class _Lease:
    """A block of a vault-wide key version's nonce budget reserved by this process."""

    __slots__ = ("key", "remaining")

    def __init__(self, key: _DataKey, remaining: int) -> None:
        self.key = key
        self.remaining = remaining

    @safe_repr
    def __repr__(self) -> str:
        return f"_Lease({self.key!r}, remaining={self.remaining})"


class _Shredded:
    """Cached tombstone: the key id is known and its material destroyed by a shred.

    It has a key's ``ref`` and ``checked`` attributes and ``aead = None``, so readers handle it
    like a key until the point where a key would decrypt."""

    __slots__ = ("checked", "ref")
    aead = None

    def __init__(self, ref: bytes) -> None:
        self.ref = ref
        self.checked: object = None

    def __repr__(self) -> str:
        return "<shredded>"


class _Unchecked:
    __slots__ = ()


_UNCHECKED: Final = _Unchecked()


class Vault:
    """Encrypt, decrypt and shred per-subject data. Thread-safe; one per process is enough.

    ``kms`` wraps epoch keys; ``keystore`` is a :class:`~ccvault.keystore.KeyStore`, an SQLAlchemy
    ``Engine`` or a URL. ``subject_type`` declares the installation's subject type on first use
    (``"uuid"`` when not given) and must match what the key store recorded afterwards.
    ``cache_ttl`` bounds how long a process keeps unwrapped keys: it is the shred propagation
    bound for other processes and the period between KMS unwraps of an epoch key.
    ``kms_grace_period`` (seconds) lets a cached *epoch* key keep serving that much longer while
    the KMS is unavailable (an outage, not a refusal); subject keys and shred fences still expire
    after ``cache_ttl``, so a shred elsewhere is honoured within the same bound during an outage.
    ``readonly=True`` opens an existing installation without writing anything: no table, no
    installation, epoch or key is created (an empty store is a :class:`ConfigurationError`), and
    every operation that would write raises one.
    Every number must be finite, and ``backup_retention`` at least a day and at least
    ``cache_ttl + kms_grace_period`` (a :class:`ConfigurationError` names the argument otherwise;
    see :func:`ccvault._settings.check_vault_options`).
    """

    def __init__(
        self,
        kms: Kms,
        keystore: KeyStore | Engine | AsyncEngine | str,
        *,
        subject_type: object = None,
        cache_ttl: float = 60.0,
        kms_grace_period: float = 300.0,
        cache_max_entries: int = 100_000,
        epoch_rotation_period: timedelta = timedelta(days=30),
        backup_retention: timedelta = timedelta(days=35),
        per_epoch_roots: bool = False,
        clock: Callable[[], float] | None = None,
        nonce_budget: int = VAULTWIDE_NONCE_BUDGET,
        readonly: bool = False,
    ) -> None:
        from ._settings import check_vault_options

        if not isinstance(kms, Kms):
            raise ConfigurationError("kms must implement ccvault.kms.Kms")
        cache_ttl, kms_grace_period = check_vault_options(
            cache_ttl=cache_ttl,
            kms_grace_period=kms_grace_period,
            cache_max_entries=cache_max_entries,
            epoch_rotation_period=epoch_rotation_period,
            backup_retention=backup_retention,
            nonce_budget=nonce_budget,
        )
        if per_epoch_roots and not kms.supports_root_lifecycle:
            raise ConfigurationError("per_epoch_roots needs a KMS that can create roots")
        self._kms = kms
        self._readonly = readonly
        owned = isinstance(keystore, Engine | str) or _is_async_engine(keystore)
        if owned:
            self._store: KeyStore = SqlKeyStore(keystore, create=not readonly)  # type: ignore[arg-type]
        else:
            self._store = cast(KeyStore, keystore)
        self._now = clock or time.time
        monotonic = clock or time.monotonic
        self.cache_ttl = float(cache_ttl)
        self.epoch_rotation_period = epoch_rotation_period
        self.backup_retention = backup_retention
        self._per_epoch_roots = per_epoch_roots
        self.kms_grace_period = float(kms_grace_period)
        self._monotonic = monotonic
        # Epoch keys are fresh for cache_ttl and kept kms_grace_period longer for KMS outages.
        self._epoch_keys: TtlCache[bytes, Aead] = TtlCache(
            64, cache_ttl + kms_grace_period, monotonic
        )
        self._kms_down_until = 0.0
        self._kms_backoff = 0.0
        self._epoch_refresh = threading.Lock()
        self._active: TtlCache[str, EpochRecord] = TtlCache(1, cache_ttl, monotonic)
        self._refs: TtlCache[Hashable, bytes] = TtlCache(cache_max_entries, cache_ttl, monotonic)
        self._write_keys: TtlCache[bytes, _DataKey] = TtlCache(
            cache_max_entries, cache_ttl, monotonic
        )
        # value keys (and tombstones) by suite-1 value header: what a reader slices off a value
        self._read_keys: TtlCache[bytes, _DataKey | _Shredded] = TtlCache(
            cache_max_entries, cache_ttl, monotonic
        )
        self._vaultwide: dict[str, _Lease] = {}
        self.nonce_budget = nonce_budget
        self._lock = threading.Lock()
        # Refs shredded by this process: a key read that started before the shred committed must
        # not put the key back into a cache after shred() cleared it.
        # Kept far longer than any cached key, so a read stalled in the KMS past cache_ttl
        # still cannot re-cache a key shredded meanwhile.
        self._fenced: TtlCache[bytes, bool] = TtlCache(
            cache_max_entries, max(cache_ttl, _FENCE_SECONDS), monotonic
        )
        self._cache_lock = threading.Lock()

        declared = SubjectType.parse(subject_type) if subject_type is not None else None
        proposed = declared.spec if declared is not None else "uuid"
        if readonly:
            try:
                installation, stored_type = _existing_installation(self._store)
            except ConfigurationError:
                if owned:
                    self._store.close()
                raise
        else:
            installation, stored_type = self._store.ensure_installation(uuid.uuid4().hex, proposed)
        try:
            _check_schema(self._store, upgrading=_UPGRADING.get())
        except ConfigurationError:
            if owned:
                self._store.close()
            raise
        if declared is not None and stored_type != declared.spec:
            raise ConfigurationError(
                f"the key store records subject type {stored_type!r}, not {declared.spec!r}"
            )
        self.installation_id: str = installation
        self._installation, self.subject_type = _parse_installation(installation, stored_type)
        epoch = self._store.active_epoch() or self._create_epoch(1)
        self._active.put("active", epoch)
        self._ref_key = self._long_lived_key(KeyKind.SUBJECT_REF, _REF_LABEL)
        self._ref_mac = HmacSha256(self._ref_key.reveal())
        self._receipt_seed = self._long_lived_key(KeyKind.RECEIPT_SIGNING, _RECEIPT_LABEL)
        self._head_mac = HmacSha256(self._long_lived_key(KeyKind.HEAD_MAC, _HEAD_LABEL).reveal())
        self._reported: TtlCache[bytes, bool] = TtlCache(10_000, _REPORT_SECONDS, monotonic)
        self._bidx_root: SecretKey | None = None  # created on first use
        # Integrations (vault.attach) clear what they derived from the subject after a shred,
        # and return the context labels of the blind indexes they cleared.
        self._after_shred: list[Callable[[Vault, object], Iterable[str]]] = []
        self._searchable: tuple[float, frozenset[str]] | None = None  # (read at, labels)
        self._bidx_keys: dict[tuple[str, str, int, str], HmacSha256] = {}
        self._indexers: dict[tuple[str, Normalizer, int], BlindIndexer] = {}

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"Vault(installation={self.installation_id}, kms={self._kms.kms_id!r}, "
            f"subject_type={self.subject_type.spec!r})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("Vault cannot be pickled: build one per process")

    def close(self) -> None:
        """Drop cached keys and release the key store's own connections."""
        self._vaultwide.clear()
        for cache in (self._epoch_keys, self._refs, self._write_keys, self._read_keys):
            cache.clear()
        self._store.close()

    # -- asyncio ---------------------------------------------------------------------------------

    @classmethod
    async def open_async(
        cls, kms: Kms, keystore: KeyStore | AsyncEngine | str, **options: Any
    ) -> Vault:
        """Build a vault from a coroutine, on an async key store (``AsyncEngine`` or an async
        URL such as ``postgresql+asyncpg://…``): key-store I/O runs on the async driver."""
        from sqlalchemy.util import greenlet_spawn

        vault: Vault = await greenlet_spawn(cls, kms, keystore, **options)
        return vault

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a vault method from a coroutine: ``await vault.run(vault.shred, customer_id)``.

        Inside an ``AsyncSession`` the column types need nothing of this: SQLAlchemy already
        runs them where the async key store can be reached without blocking.
        """
        from sqlalchemy.util import greenlet_spawn

        result: T = await greenlet_spawn(fn, *args, **kwargs)
        return result

    async def aclose(self) -> None:
        from sqlalchemy.util import greenlet_spawn

        await greenlet_spawn(self.close)

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- construction from settings --------------------------------------------------------------

    @classmethod
    def from_settings(
        cls,
        settings: CcvaultSettings | None = None,
        *,
        readonly: bool = False,
        create: bool = True,
        **overrides: Any,
    ) -> Vault:
        """Build a vault from ``CCVAULT_*`` environment variables (see :class:`CcvaultSettings`).

        With no KMS URL and no key-store URL this is the embedded development default: a local
        master key file and a SQLite key store under ``./.ccvault/``. It warns, because whoever
        copies that folder copies every key with it. One URL without the other is a
        :class:`ConfigurationError`: a production key store is never wrapped by a throwaway key.
        ``readonly=True``: see :class:`Vault`; on the embedded default it creates no folder and
        no master key either. ``create=False`` opens an existing installation read-write and
        refuses an empty store the same way (the admin commands use it: a mistyped URL never
        becomes a new installation).
        """
        from ._settings import CcvaultSettings, kms_from_url

        s = settings or CcvaultSettings(**overrides)
        if (s.kms_url is None) != (s.keystore_url is None):
            given, missing = (
                ("CCVAULT_KEYSTORE_URL", "CCVAULT_KMS_URL")
                if s.kms_url is None
                else ("CCVAULT_KMS_URL", "CCVAULT_KEYSTORE_URL")
            )
            raise ConfigurationError(
                f"{given} is set but {missing} is not: set both (production), or neither for "
                "the embedded development default"
            )
        home = Path(s.home)
        if s.kms_url is None and home.exists() and not home.is_dir():
            raise ConfigurationError(
                f"cannot use {str(home)!r} as the ccvault home (CCVAULT_HOME): not a directory"
            )
        url = s.keystore_url or f"sqlite:///{home / 'keys.db'}"
        # Read-only or create=False: the store is checked before the KMS, so an empty one
        # creates nothing at all.
        existing = readonly or not create
        keystore: KeyStore | str = SqlKeyStore(url, create=False) if existing else url
        try:
            if isinstance(keystore, SqlKeyStore):
                _existing_installation(keystore)
            if s.kms_url is None:
                kms = _embedded_kms(home, create=not existing)
                warnings.warn(
                    f"ccvault is using the embedded development default under {str(home)!r}: a "
                    "local master key file beside its key store. Use a KMS in production.",
                    DevelopmentDefaultWarning,
                    stacklevel=2,
                )
            else:
                kms = kms_from_url(s.kms_url)
            return cls(
                kms,
                keystore,
                subject_type=s.subject_type,
                cache_ttl=s.cache_ttl_seconds,
                kms_grace_period=s.kms_grace_seconds,
                cache_max_entries=s.cache_max_entries,
                epoch_rotation_period=timedelta(days=s.epoch_rotation_days),
                backup_retention=timedelta(days=s.backup_retention_days),
                per_epoch_roots=s.per_epoch_roots,
                readonly=readonly,
            )
        except BaseException:
            if isinstance(keystore, SqlKeyStore):
                keystore.close()
            raise

    # -- public API ------------------------------------------------------------------------------

    def encrypt(self, subject: object, plaintext: bytes, *, context: str) -> bytes:
        """Seal ``plaintext`` for ``subject`` under the context label ``context``.

        Raises :class:`SubjectShreddedError` if the subject was shredded (the shred fence) and
        :class:`TypeError` if the subject is not of the installation's subject type.
        """
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise TypeError("plaintext must be bytes")
        ctx = _context_bytes(context)
        return self._key_for_write(subject, context).seal(bytes(plaintext), fmt.context_lp(ctx))

    def _keys_for_write(self, subjects: Iterable[object]) -> dict[object, fmt.ValueKey]:
        """Write keys of many subjects (creating missing ones in batches), by subject value.

        Shredded subjects are left out; wrong subject types raise TypeError."""
        # Deduplicated by type and value: True == 1 in Python, yet True is no int subject and
        # must reach the type check instead of sharing 1's key.
        unique = list({(type(s), s): s for s in subjects}.values())
        refs = self.subject_refs(unique)
        out: dict[object, fmt.ValueKey] = {}
        by_ref: dict[bytes, list[object]] = {}
        for subject, ref, key in zip(unique, refs, self._write_keys.get_many(refs), strict=True):
            if key is not None:
                out[subject] = key
            else:
                by_ref.setdefault(ref, []).append(subject)
        cold = list(by_ref)
        for i in range(0, len(cold), _BATCH):
            for ref, key in self._load_or_create(cold[i : i + _BATCH]).items():
                for subject in by_ref[ref]:
                    out[subject] = key
        return out

    def _key_for_write(self, subject: object, context: str) -> fmt.ValueKey:
        """The key that seals ``subject``'s values (for integrations that seal many columns of a
        row: look the key up once, then ``key.seal(data, context_lp)`` per column)."""
        if subject is NO_SUBJECT:
            return self._vaultwide_key(context)
        return self._subject_write_key(self._ref(subject))

    def decrypt(self, blob: bytes, *, context: str, subject: object = _UNCHECKED) -> bytes:
        """Open a ciphertext made by :meth:`encrypt` with the same context label.

        With ``subject=`` the ciphertext must also belong to that subject. Every failure of
        integrity, format, context or subject raises the same :class:`DecryptionError`; a value
        whose subject was shredded raises :class:`SubjectShreddedError`. A ``blob`` that is not
        bytes (None, a str) is a :class:`TypeError`.
        """
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise TypeError(f"blob must be bytes from encrypt(), not {type(blob).__name__}")
        ctx = _context_bytes(context)
        try:
            header, nonce, body = fmt.parse(blob)
        except fmt.FormatError:
            raise DecryptionError from None
        if header.suite != fmt.SUITE_AES256GCM:
            # Suite 2 (retention periods) is reserved in v1; no period secrets exist yet.
            raise DecryptionError
        expected_ref = None
        if subject is NO_SUBJECT:
            expected_ref = _NO_REF
        elif subject is not _UNCHECKED:
            expected_ref = self._ref(subject)  # None raises TypeError: never a silent skip
        key = self._read_keys_batch([header.raw]).get(header.raw)
        if key is None:
            raise DecryptionError
        if expected_ref is not None and not hmac.compare_digest(expected_ref, key.ref):
            raise DecryptionError  # checked before the shred state: a moved value is no erasure
        if isinstance(key, _Shredded):
            raise SubjectShreddedError
        try:
            return fmt.open_value(key.aead, header, nonce, body, ctx, key.ref)
        except fmt.FormatError:
            raise DecryptionError from None

    def shred(self, subject: object) -> ErasureReceipt:
        """Erase ``subject``: fence it, destroy its keys (keeping tombstones), return a receipt.

        Idempotent: a repeat returns the original receipt. A never-seen subject is fenced too.
        """
        self._writable("shred")
        ref = self._ref(subject)
        now = self._now()
        epoch = self._store.active_epoch() or self._active_epoch()  # fresh, not the cached one

        def make_receipt(head: HeadRecord | None, keys: Sequence[KeyRecord]) -> str:
            return self._receipt(ref, now, epoch, head, keys).model_dump_json()

        with self._cache_lock:
            self._fenced.put(ref, True)
        parsed: tuple[ErasureReceipt, list[tuple[bytes, int]]] | None = None
        try:
            receipt_json, newly = self._store.shred(ref, now, make_receipt, self._seal_head)
            # Committed (or unknown, when the call failed): nothing may keep this process from
            # dropping the subject's cached keys, so parsing the receipt cannot raise and the
            # eviction runs whatever happened.
            parsed = _parse_receipt(receipt_json)
        finally:
            with self._cache_lock:
                self._forget_ref(ref, None if parsed is None else parsed[1])
        if parsed is None:
            raise KeyStoreError(
                f"subject ref {ref.hex()[:16]} is shredded (its keys are destroyed and this "
                "process no longer serves them), but the erasure receipt the key store holds "
                "for it does not parse: the subject-heads row is corrupted or was tampered with"
            )
        receipt = parsed[0]
        if newly:
            log.info("subject shredded", extra={"subject_ref": ref.hex()[:16]})
        self._after_shred_hooks(ref, subject, receipt)
        return receipt

    def _after_shred_hooks(self, ref: bytes, subject: object, receipt: ErasureReceipt) -> None:
        """Run the integrations' sweeps after a committed shred: never lose the receipt, never
        stay silent about what they could not clear."""
        swept: set[str] = set()
        failed: list[ErasureIncompleteError] = []
        crashed: list[str] = []
        for hook in list(self._after_shred):
            try:
                swept.update(hook(self, subject))
            except ErasureIncompleteError as exc:
                swept.update(exc.swept)
                failed.append(exc)
            except Exception as exc:  # the keys are gone: report it, never lose the receipt
                crashed.append(type(exc).__name__)
        not_swept = {label for exc in failed for label in exc.columns}
        try:
            known = self._searchable_labels()
        except KeyStoreError:
            log.warning(
                "shred of subject ref %s: could not read which columns have blind indexes, so "
                "columns no engine in this process sweeps are not named",
                ref.hex()[:16],
            )
            known = frozenset()
        unswept = sorted(known - swept - not_swept)
        if unswept:
            # The receipt (v1, frozen) cannot say it: the values are unreadable, but their blind
            # indexes stay until a process that knows these columns shreds the subject again.
            log.warning(
                "shred of subject ref %s left blind indexes in place: no engine attached in this "
                "process sweeps %s. Repeat vault.shred() for this subject where the models are "
                "imported and the engine attached "
                "(docs/sqlalchemy.md, 'Shredding from a process without the models').",
                ref.hex()[:16],
                ", ".join(unswept),
            )
        if not failed and not crashed:
            return
        reasons = [str(exc) for exc in failed]
        reasons += [f"an after-shred hook raised {name}" for name in crashed]
        message = (
            f"subject ref {ref.hex()[:16]} is shredded (its keys are destroyed; the signed "
            f"receipt is this error's .receipt), but the sweep of what it left is incomplete: "
            f"{'; '.join(reasons)}. Repeat vault.shred() for this subject to sweep again "
            "(docs/sqlalchemy.md, 'When the sweep fails')."
        )
        log.error(message)
        raise ErasureIncompleteError(
            message,
            receipt=receipt,
            tables=[t for exc in failed for t in exc.tables],
            columns=sorted(not_swept),
            swept=swept,
        )

    def is_shredded(self, subject: object) -> bool:
        """Whether ``subject`` is shredded, or treated as such because its head fails
        authentication or its ref has key rows without a head (see :meth:`verify_heads`)."""
        ref = self._ref(subject)
        found = self._store.subject_keys([ref]).get(ref)
        if found is None:
            if self._store.keyed_refs([ref]):
                self._report_fence(ref, _HEADLESS)
                return True
            return False
        head, rec = found
        try:
            return self._usable_key(ref, head, rec) is None
        except KeyStoreError:
            return False  # active, but its key row is broken: not a shred

    def subject_ref(self, subject: object) -> bytes:
        """The pseudonymous 32-byte ref of ``subject`` (what the key store and receipts hold)."""
        return self._ref(subject)

    def subject_refs(self, subjects: Iterable[object]) -> list[bytes]:
        """:meth:`subject_ref` of each subject, in order, through one pass over the cache."""
        subjects = list(subjects)
        cache_keys = [_ref_cache_key(s) for s in subjects]
        cached = self._refs.get_many([_UNCACHEABLE if k is None else k for k in cache_keys])
        out: list[bytes] = []
        for subject, cache_key, ref in zip(subjects, cache_keys, cached, strict=True):
            if ref is None:
                ref = self._ref_mac(self.subject_type.canonical(subject))
                if cache_key is not None:
                    self._refs.put(cache_key, ref)
            out.append(ref)
        return out

    def blind_index(self, label: str, normalizer: Normalizer, value: str, length: int) -> bytes:
        """The blind index of ``value`` for the column labelled ``label`` (keyed, truncated)."""
        return self.blind_indexer(label, normalizer, length)(value)

    def blind_indexer(self, label: str, normalizer: Normalizer, length: int) -> BlindIndexer:
        """The blind index of one column as a callable, its key derived once: for callers that
        index many values of a column (the column types resolve it once per column)."""
        indexer = self._indexers.get((label, normalizer, length))
        if indexer is not None:
            return indexer
        cache_key = (label, normalizer.id, normalizer.version, normalizer.params)
        key = self._bidx_keys.get(cache_key)
        if key is None:
            with self._lock:
                if self._bidx_root is None:
                    self._bidx_root = self._long_lived_key(KeyKind.BLIND_INDEX, _BIDX_LABEL)
                key = HmacSha256(column_key(self._bidx_root.reveal(), normalizer, label))
                self._bidx_keys[cache_key] = key
        indexer = BlindIndexer(key, normalizer, length)
        if not self._readonly and label not in self._searchable_labels():
            self._record_searchable(label)
        self._indexers[(label, normalizer, length)] = indexer
        return indexer

    def _record_searchable(self, label: str) -> None:
        """Note in the key store that blind indexes exist for the column labelled ``label``, so
        that a shred from a process that never imported that model can say what it left."""
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:40]
        self._store.put_meta_if_absent(_SEARCHABLE_META + digest, label[:255])
        self._searchable = None

    def _searchable_labels(self) -> frozenset[str]:
        """Context labels of every column with blind indexes in this installation (re-read
        after ``cache_ttl``: other processes add to them)."""
        cached = self._searchable
        now = self._monotonic()
        if cached is not None and now - cached[0] < self.cache_ttl:
            return cached[1]
        labels = frozenset(self._store.meta(_SEARCHABLE_META).values())
        self._searchable = (now, labels)
        return labels

    def warm(self, subjects: Iterable[object]) -> int:
        """Load the keys of many subjects in batches, creating missing ones, and cache them.

        One key-store round trip per 500 subjects instead of one per subject: call it before
        writing or reading many customers at once. Shredded subjects are skipped (encrypting for
        them still raises). Returns how many subjects have a usable key.
        """
        self._writable("warm keys (it creates missing ones)")
        refs = list(dict.fromkeys(self.subject_refs(subjects)))
        ready = 0
        todo = []
        for ref in refs:
            if self._write_keys.get(ref) is not None:
                ready += 1
            else:
                todo.append(ref)
        for i in range(0, len(todo), _BATCH):
            ready += len(self._load_or_create(todo[i : i + _BATCH]))
        return ready

    def attach(
        self, engine: Any, *, strict: bool = False, on_error: Literal["raise", "sentinel"] = "raise"
    ) -> None:
        """Make ``engine`` (sync or async) encrypt and decrypt :class:`ccvault.sqlalchemy.Encrypted`
        columns with this vault. ``strict=True``: reads of shredded values raise instead of
        returning ``SHREDDED``. ``on_error="sentinel"``: a value that fails to decrypt reads as
        ``UNREADABLE`` (and is logged with its location) instead of raising DecryptionError;
        a column's ``Encrypted(..., on_error=)`` overrides it."""
        from .sqlalchemy._attach import attach  # the one upward reference: the integration entry

        attach(self, engine, strict=strict, on_error=on_error)

    def detach(self, engine: Any) -> None:
        """Undo :meth:`attach` (for application factories and test fixtures that attach the same
        engine again, possibly to another vault). The detached engine refuses to read or write
        encrypted columns; this vault's shreds no longer sweep its tables."""
        from .sqlalchemy._attach import detach

        detach(self, engine)

    def scrub(
        self,
        bind: Any,
        models: Any,
        *,
        batch: int = 1000,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> ScrubReport:
        """Read every encrypted value of ``models`` through ``bind`` (an Engine or Connection of
        the application database) and report what cannot be read.

        ``models`` is a module, a declarative base or MetaData, a mapped class or Table, or a list
        of them. Tables are read ``batch`` rows at a time in primary-key order; ``progress(table,
        rows_read, rows_total)`` is called after each batch. The report counts per column the
        values read, readable, shredded and unreadable, and names each unreadable one by table,
        column and primary key. Read-only: it writes nothing and creates no key."""
        from .sqlalchemy._scrub import scrub

        return scrub(self, bind, models, batch=batch, progress=progress)

    def subject(self, subject: object) -> AbstractContextManager[None]:
        """``with vault.subject(x):`` — encrypt statements that cannot name their subject for x."""
        from .sqlalchemy._write import scoped_subject

        return scoped_subject(self, subject)

    @property
    def receipt_public_key(self) -> bytes:
        """The Ed25519 public key that signs this installation's erasure receipts."""
        return ed25519_public_key(self._receipt_seed.reveal())

    def rotate_epoch(self, *, progress: Progress | None = None) -> RotationReport:
        """Start a new epoch and re-wrap every live key under it. No data is rewritten.

        Wrapped keys are replaced in batches, each batch checked against concurrent changes, so a
        shred running at the same time is never undone; ``progress(done, total)`` is called after
        each batch.

        An interrupted rotation (Ctrl-C, a crash, a lost connection) leaves a consistent store:
        each batch is one transaction, and keys not yet re-wrapped still open under their older
        epoch. The key store marks the rotation unfinished until its last batch, and the next
        call *finishes* it — it re-wraps the keys left under older epochs and starts no new epoch
        (``RotationReport.resumed``); call it again to rotate once more. (Keys that a process
        not yet aware of a finished rotation wrapped under the retired epoch set no mark: the
        next rotation, or ``destroy_epochs()``, re-wraps them.)

        A key row that does not authenticate under its epoch (tampered or corrupted wrapped
        bytes or commitment, or ids bound in its associated data), or whose epoch id names no
        epoch or a destroyed one, is *quarantined* instead of stopping the rotation: its state
        becomes ``quarantined`` (the row is kept as found), it is never read nor re-wrapped
        again, it is logged at WARNING by key id, and ``RotationReport.quarantined`` lists it.
        A KMS that is unreachable or refuses is never a reason to quarantine: the rotation
        raises as before, and the next call finishes it.
        """
        self._writable("rotate the epoch")
        current = self._store.active_epoch()
        if current is not None and self._store.rewrap_pending() == current.seq:
            self._active.put("active", current)
            done, bad = self._rewrap_under(current, progress, self._live_keys_before(current.seq))
            log.info("epoch rotation finished", extra={"epoch_seq": current.seq, "rewrapped": done})
            return RotationReport(current.seq, done, resumed=True, quarantined=bad)
        seq = (current.seq if current else 0) + 1
        total = sum(self._store.live_keys_by_epoch().values())  # all older than the new epoch
        epoch = self._create_epoch(seq, rewrap_pending=True)
        self._active.put("active", epoch)
        done, bad = self._rewrap_under(epoch, progress, total)
        log.info("epoch rotated", extra={"epoch_seq": epoch.seq, "rewrapped": done})
        return RotationReport(epoch.seq, done, quarantined=bad)

    def _live_keys_before(self, seq: int) -> int:
        counts = self._store.live_keys_by_epoch()
        return sum(counts.get(e.epoch_id, 0) for e in self._store.epochs() if e.seq < seq)

    def _rewrap_under(
        self, epoch: EpochRecord, progress: Progress | None = None, total: int = 0
    ) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Re-wrap every live key of an older epoch under ``epoch`` (while it stays active),
        quarantining the rows that do not authenticate; when none is left, clear the key store's
        mark of an unfinished rotation to it. Returns (re-wrapped, quarantined (id, version))."""
        new_aead = self._epoch_aead(epoch)
        done = 0
        quarantined: list[tuple[str, int]] = []
        while True:
            active = self._store.active_epoch()
            if active is None or active.epoch_id != epoch.epoch_id:
                break  # a newer rotation took over; it re-wraps whatever is left
            batch = self._store.keys_before_epoch(epoch.seq, _BATCH)
            if not batch:
                self._store.rewrap_done(epoch.seq)
                break
            epochs = {e.epoch_id: e for e in self._store.epochs()}
            updates = []
            unreadable = []
            for rec in batch:
                key = self._unwrap_for_rewrap(rec, epochs)
                if key is None:
                    unreadable.append(rec)
                    continue
                binding = self._binding(rec, epoch.epoch_id)
                wrapped, commit = wrap_key(new_aead, key.reveal(), binding)
                updates.append((rec, wrapped, commit))
            if updates:
                done += self._store.rewrap(updates, epoch.epoch_id)
            if unreadable:
                for rec in self._store.quarantine_keys(unreadable):
                    quarantined.append((rec.key_id.hex(), rec.version))
                    log.warning(
                        "key %s version %d (%s) does not authenticate: quarantined, not "
                        "re-wrapped, its values unreadable "
                        "(docs/security.md, 'Quarantined keys')",
                        rec.key_id.hex(),
                        rec.version,
                        rec.kind,
                    )
            if progress is not None:
                progress(done, max(total, done))
        return done, tuple(quarantined)

    def _unwrap_for_rewrap(
        self, rec: KeyRecord, epochs: dict[bytes, EpochRecord]
    ) -> SecretKey | None:
        """The key of a live row, or None when the row itself is unreadable for good: no wrap,
        an epoch id of no epoch or of a destroyed one, or a wrap that does not authenticate. The
        KMS's faults and refusals (about the epoch, not the row) are raised, never None."""
        owner = epochs.get(rec.epoch_id) if rec.epoch_id is not None else None
        wrapped, commit = rec.wrapped, rec.commitment
        if wrapped is None or commit is None or owner is None or owner.state == State.DESTROYED:
            return None
        aead = self._epoch_aead(owner)
        try:
            return SecretKey(unwrap_key(aead, wrapped, commit, self._binding(rec, owner.epoch_id)))
        except UnwrapError:
            return None

    def destroy_epochs(
        self,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        accept_unreadable: bool = False,
    ) -> list[int]:
        """Destroy the epochs retired longer than ``backup_retention`` (admin operation, run it
        daily). Returns the sequence numbers destroyed by this call; with ``dry_run=True`` the
        ones it would destroy, changing nothing (a read-only vault may do that).

        First any key still wrapped under such an epoch (written by a process that had not yet
        seen the rotation) is re-wrapped under the active epoch; then the epoch is marked destroyed
        in the same transaction that checks no live key is left under it. With
        ``per_epoch_roots`` its KMS root(s) are then scheduled for deletion (AWS), deleted
        (Transit) or removed from the key file (local): from then on no backup of the key store
        can unwrap that epoch, which is the *erasure horizon* of everything shredded while it was
        active. A root another live epoch still uses is never destroyed. Roots whose destruction
        failed are retried by the next call, and so is whatever an interrupted call left undone.
        ``progress(done, total)`` follows the re-wrapping, batch by batch.

        Key rows that do not authenticate are quarantined by the re-wrapping (see
        :meth:`rotate_epoch`) and do not keep an epoch alive as live keys do. But an epoch that
        still holds quarantined keys is kept (a WARNING names it) unless ``accept_unreadable=True``:
        the operator's decision that those keys are lost for good (once the epoch is gone, even a
        repaired row could not be read). The decision is recorded in the key store, in the
        transaction that destroys the epoch, and logged at WARNING. With ``dry_run`` the epochs
        holding quarantined keys are left out unless ``accept_unreadable``.
        """
        if not dry_run:
            self._writable("destroy epochs")
        now = self._now()
        horizon = self._destroy_horizon()
        epochs = self._store.epochs()
        due = [
            e
            for e in epochs
            if e.state == State.RETIRED
            and e.retired_at is not None
            and now - e.retired_at >= horizon
        ]
        if dry_run:
            held = self._store.quarantined_keys_by_epoch() if due else {}
            return [e.seq for e in due if accept_unreadable or not held.get(e.epoch_id)]
        active = next((e for e in epochs if e.state == State.ACTIVE), None)
        if active is not None and due:
            self._rewrap_under(active, progress, self._live_keys_before(active.seq))
        held = self._store.quarantined_keys_by_epoch() if due else {}
        destroyed: list[int] = []
        for record in due:
            unreadable = held.get(record.epoch_id, 0)
            if unreadable and not accept_unreadable:
                log.warning(
                    "epoch %d holds %d quarantined key(s); not destroyed. Repair the rows, or "
                    "accept their loss: destroy_epochs(accept_unreadable=True) "
                    "(ccvault destroy-epochs --accept-unreadable)",
                    record.seq,
                    unreadable,
                )
                continue
            if self._store.destroy_epoch(record.epoch_id, now, accept_unreadable=accept_unreadable):
                self._epoch_keys.pop(record.epoch_id)
                destroyed.append(record.seq)
                log.info("epoch destroyed", extra={"epoch_seq": record.seq})
                if unreadable:
                    log.warning(
                        "epoch %d destroyed with %d quarantined key(s) under it, by operator "
                        "decision (accept_unreadable, recorded in the key store): their values "
                        "are lost for good",
                        record.seq,
                        unreadable,
                    )
            else:
                log.warning(
                    "epoch %d still wraps live or quarantined keys; not destroyed", record.seq
                )
        if self._per_epoch_roots:
            self._destroy_dead_roots()
        return destroyed

    def _destroy_horizon(self) -> float:
        """Seconds an epoch stays retired before :meth:`destroy_epochs` destroys it: the backup
        retention, and never less than a day nor than this process's cache TTL plus KMS grace
        (whatever the attributes were set to after construction): processes that have not seen
        the rotation yet still write keys under a just-retired epoch."""
        from ._settings import MIN_BACKUP_RETENTION

        return max(
            self.backup_retention.total_seconds(),
            MIN_BACKUP_RETENTION.total_seconds(),
            self.cache_ttl + self.kms_grace_period,
        )

    def _destroy_dead_roots(self) -> None:
        """Destroy the KMS roots of destroyed epochs that no live epoch shares."""
        epochs = self._store.epochs()
        alive = _live_roots(epochs)
        backends = kms_by_id(self._kms)
        for record in epochs:
            if record.state != State.DESTROYED:
                continue
            for w in record.wraps:
                backend = backends.get(w.kms_id)
                if backend is None or (w.kms_id, w.root_id) in alive:
                    continue
                try:
                    if backend.root_state(w.root_id) not in _GONE:
                        backend.destroy_root(w.root_id)
                except KmsUnavailableError:
                    raise  # the next run retries
                except KmsError as exc:
                    # A root the backend will not destroy: the configured key of an epoch made
                    # before per_epoch_roots was turned on, or a root id it does not own.
                    log.warning("root of destroyed epoch %d not destroyed: %s", record.seq, exc)

    def active_epoch_seq(self) -> int:
        return self._active_epoch().seq

    def epochs(self, *, check_roots: bool = False) -> list[EpochInfo]:
        """Every epoch of the installation, oldest first, with its live keys and due dates.

        ``check_roots=True`` (with ``per_epoch_roots``) asks each KMS about the roots of
        destroyed epochs (``EpochInfo.root_destruction``): read-only calls, one per root.
        """
        records = self._store.epochs()
        counts = self._store.live_keys_by_epoch()
        held = self._store.quarantined_keys_by_epoch()
        rotation = self.epoch_rotation_period.total_seconds()
        retention = self.backup_retention.total_seconds()
        alive = _live_roots(records)
        backends = kms_by_id(self._kms)
        out = []
        for e in records:
            fates: tuple[str, ...] = ()
            if check_roots and self._per_epoch_roots and e.state == State.DESTROYED:
                fates = tuple(_root_fate(backends.get(w.kms_id), w, alive) for w in e.wraps)
            out.append(
                EpochInfo(
                    e.seq,
                    e.state,
                    e.created_at,
                    e.retired_at,
                    tuple((w.kms_id, w.root_id) for w in e.wraps),
                    live_keys=counts.get(e.epoch_id, 0),
                    rotation_due_at=e.created_at + rotation if e.state == State.ACTIVE else None,
                    destroyable_at=(
                        e.retired_at + retention
                        if e.state == State.RETIRED and e.retired_at is not None
                        else None
                    ),
                    root_destruction=fates,
                    quarantined_keys=held.get(e.epoch_id, 0),
                )
            )
        return out

    def quarantined_keys(self) -> int:
        """How many quarantined key rows await an operator's decision: those under an epoch
        not destroyed yet, and those whose epoch id names no epoch (see :meth:`rotate_epoch`)."""
        gone = {e.epoch_id for e in self._store.epochs() if e.state == State.DESTROYED}
        held = self._store.quarantined_keys_by_epoch()
        return sum(n for epoch_id, n in held.items() if epoch_id not in gone)

    # -- key-store schema and subject heads ---------------------------------------------------

    @classmethod
    def upgrade_store(
        cls,
        kms: Kms | None = None,
        keystore: KeyStore | Engine | AsyncEngine | str | None = None,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> StoreUpgrade:
        """Bring an existing key store written by an older ccvault to this library's schema
        (admin operation: ``ccvault upgrade-store``). The only way a store's schema version
        ever rises: no vault upgrades a store by itself, and one that finds an older store
        refuses to open it.

        With neither ``kms`` nor ``keystore`` the vault is configured by ``CCVAULT_*`` as
        :meth:`from_settings` does (``options`` override settings); otherwise ``options`` are
        :class:`Vault`'s. An empty store is refused: an upgrade never creates an installation.

        Schema 1 to 2: adds ``subject_heads.mac``, creates the installation's head-MAC key and
        authenticates every head as it stands, 500 per transaction (``progress(done, total)``
        after each), gives each never-seen shredded subject a version-0 tombstone, and then
        records version 2. Idempotent and resumable: an interrupted run (a crash, Ctrl-C, a
        second process upgrading at the same time) leaves the version unchanged, and the next
        run goes on from what is done. Run on a store already at this version, it authenticates
        the heads a process of an older ccvault wrote since (run it again once the last such
        process has stopped) and changes nothing else.
        """
        if options.get("readonly"):
            raise ConfigurationError("upgrade_store writes to the key store: not read-only")
        if (kms is None) != (keystore is None):
            raise TypeError("give both kms and keystore, or neither (CCVAULT_* settings)")
        token = _UPGRADING.set(True)
        try:
            if kms is None or keystore is None:
                vault = cls.from_settings(create=False, **options)
            else:
                store = keystore
                if isinstance(keystore, Engine | str) or _is_async_engine(keystore):
                    store = SqlKeyStore(keystore, create=False)  # type: ignore[arg-type]
                _existing_installation(cast(KeyStore, store))
                vault = cls(kms, store, **options)
        finally:
            _UPGRADING.reset(token)
        with vault:
            return vault._upgrade_heads(progress)

    def _upgrade_heads(self, progress: Progress | None) -> StoreUpgrade:
        before = self._store.schema_version() or SCHEMA_VERSION
        self._store.upgrade_schema()
        total = sealed = tombstones = 0
        after: bytes | None = None
        while True:
            page = self._store.heads_after(after, _BATCH, unsealed=True)
            if not page:
                break
            updates = []
            for head, _ in page:
                with contextlib.suppress(ValueError):  # a version outside u32: stays unsealed
                    updates.append((head, self._head_mac_of(head)))
            done, added = self._store.seal_heads(updates, self._now())
            sealed, tombstones, total = sealed + done, tombstones + added, total + len(page)
            after = page[-1][0].ref
            if progress is not None:
                progress(sealed, total)
        self._store.set_schema_version(SCHEMA_VERSION)
        if before == SCHEMA_VERSION and sealed:
            log.warning(
                "%d subject head(s) had no MAC in a store already at schema version %d: a "
                "process of an older ccvault wrote them. They are authenticated as they stand.",
                sealed,
                SCHEMA_VERSION,
            )
        log.info(
            "key store upgraded",
            extra={"schema_from": before, "schema_to": SCHEMA_VERSION, "heads": sealed},
        )
        return StoreUpgrade(before, SCHEMA_VERSION, sealed, tombstones)

    def verify_heads(self) -> HeadCheck:
        """Check the MAC of every subject head and look for key rows whose ref has no head
        (admin operation, read-only: ``ccvault verify-heads``). Reads and writes already treat
        each ref this reports as shredded and log it at ERROR when they meet it; this finds
        them all at once. One key-store query per 500 heads, and one for key rows outside
        their fence."""
        found: dict[str, list[bytes]] = {kind: [] for kind in FENCE_BREAKS}
        heads = 0
        after: bytes | None = None
        while page := self._store.heads_after(after, _BATCH):
            for head, rec in page:
                heads += 1
                if not self._head_authentic(head):
                    found["unauthenticated"].append(head.ref)
                elif head.state == State.ACTIVE and rec and rec.state == State.DESTROYED:
                    found["inconsistent"].append(head.ref)
            after = page[-1][0].ref
        for ref, kind in sorted(self._store.unfenced_key_refs().items()):
            found[kind].append(ref)
        return HeadCheck(
            heads,
            counts={kind: len(refs) for kind, refs in found.items()},
            refs={kind: tuple(r.hex() for r in refs[:_LISTED]) for kind, refs in found.items()},
        )

    @property
    def per_epoch_roots(self) -> bool:
        """Whether each new epoch gets a KMS root of its own (destroyed with the epoch)."""
        return self._per_epoch_roots

    @property
    def readonly(self) -> bool:
        """Whether this vault was opened with ``readonly=True``."""
        return self._readonly

    def _writable(self, what: str) -> None:
        if self._readonly:
            raise ConfigurationError(
                f"the vault is read-only (opened with readonly=True): it does not {what}"
            )

    # -- subjects and refs -----------------------------------------------------------------------

    def _ref(self, subject: object) -> bytes:
        cache_key = _ref_cache_key(subject)
        if cache_key is not None:
            ref = self._refs.get(cache_key)
            if ref is not None:
                return ref
        ref = self._ref_mac(self.subject_type.canonical(subject))
        if cache_key is not None:
            self._refs.put(cache_key, ref)
        return ref

    def _forget_ref(self, ref: bytes, keys: Sequence[tuple[bytes, int]] | None) -> None:
        """Evict a shredded subject's keys: its write key, and the read keys the shred destroyed
        (the receipt lists them), without scanning the cache; ``None`` (no receipt to read them
        from): every read key of the subject, found by scanning the cache."""
        self._write_keys.pop(ref)
        if keys is None:
            self._read_keys.discard_where(lambda _header, key: key.ref == ref)
            return
        for key_id, version in keys:
            if _names_value_key(key_id, version):  # no other pair can be a cached header
                self._read_keys.pop(fmt.build_header(fmt.SUITE_AES256GCM, key_id, version))

    # -- epochs ----------------------------------------------------------------------------------

    def _epoch_context(self, epoch_id: bytes) -> dict[str, str]:
        return {
            "ccvault:installation": self.installation_id,
            "ccvault:purpose": "epoch-key",
            "ccvault:epoch": epoch_id.hex(),
        }

    def _create_epoch(self, seq: int, *, rewrap_pending: bool = False) -> EpochRecord:
        self._writable(f"create epoch {seq}")
        epoch_id = random_bytes(16)
        key = SecretKey(random_bytes(KEY_BYTES))
        root = self._kms.new_root() if self._per_epoch_roots else None
        wraps = wrap_epoch_key(self._kms, key, context=self._epoch_context(epoch_id), root_id=root)
        commit = commitment(key.reveal(), "epoch", epoch_id, 0)
        record = self._store.add_epoch(
            epoch_id, seq, commit, wraps, self._now(), rewrap_pending=rewrap_pending
        )
        if record.epoch_id == epoch_id:
            self._epoch_keys.put(epoch_id, Aead(key.reveal()))
        return record

    def _active_epoch(self) -> EpochRecord:
        epoch = self._active.get("active")
        if epoch is None:
            epoch = self._store.active_epoch()
            if epoch is None:
                raise ConfigurationError("the key store has no active epoch")
            self._active.put("active", epoch)
        return epoch

    def _epoch_aead(self, epoch: EpochRecord | bytes) -> Aead:
        epoch_id = epoch if isinstance(epoch, bytes) else epoch.epoch_id
        cached = self._epoch_keys.peek(epoch_id)
        if cached is not None and cached[0] < self.cache_ttl:
            return cached[1]
        if cached is not None:
            # Stale but within the grace period: one thread refreshes it, the others keep
            # serving the cached key meanwhile (a slow or hanging KMS blocks one thread, not all),
            # and after a failed refresh nobody asks the KMS again before the backoff ends.
            if self._monotonic() < self._kms_down_until:
                return cached[1]
            if not self._epoch_refresh.acquire(blocking=False):
                return cached[1]
        else:
            self._epoch_refresh.acquire()  # cold: one unwrap, the other threads wait for it
            fresh = self._epoch_keys.peek(epoch_id)
            if fresh is not None and fresh[0] < self.cache_ttl:
                self._epoch_refresh.release()
                return fresh[1]
        try:
            return self._refresh_epoch(epoch, epoch_id, cached)
        finally:
            self._epoch_refresh.release()

    def _refresh_epoch(
        self, epoch: EpochRecord | bytes, epoch_id: bytes, stale: tuple[float, Aead] | None
    ) -> Aead:
        record = epoch if isinstance(epoch, EpochRecord) else self._store.get_epoch(epoch_id)
        if record is None:
            raise DecryptionError
        if record.state == State.DESTROYED:
            self._epoch_keys.pop(epoch_id)
            raise KmsKeyNotFoundError(f"epoch {record.seq} was destroyed")
        try:
            key = self._unwrap_epoch(record)
        except KmsUnavailableError:
            if stale is None:
                raise
            # An outage, not a refusal: serve the stale key until the grace period ends (the
            # cache drops it then), asking the KMS again after a growing backoff.
            self._kms_backoff = min(max(1.0, self._kms_backoff * 2), _MAX_KMS_BACKOFF)
            self._kms_down_until = self._monotonic() + self._kms_backoff
            log.warning("KMS unavailable: serving a cached epoch key in its grace period")
            return stale[1]
        except (KmsError, DecryptionError):
            # A refusal (root disabled, destroyed, access revoked) ends the cached key at once:
            # it is not served again, even if the KMS becomes unreachable afterwards.
            self._epoch_keys.pop(epoch_id)
            raise
        self._kms_backoff = 0.0
        aead = Aead(key.reveal())
        self._epoch_keys.put(epoch_id, aead)
        return aead

    def _unwrap_epoch(self, record: EpochRecord) -> SecretKey:
        epoch_id = record.epoch_id

        def verify(key: SecretKey) -> bool:
            expected = commitment(key.reveal(), "epoch", epoch_id, 0)
            return hmac.compare_digest(expected, record.commitment)

        return unwrap_epoch_key(
            self._kms, record.wraps, context=self._epoch_context(epoch_id), verify=verify
        )

    def add_kms_wraps(self) -> int:
        """Wrap every live epoch under the members of a :class:`~ccvault.kms.MultiKms` that do
        not hold a wrap of it yet (admin operation: adding a DR KMS, migrating between KMS).
        With ``per_epoch_roots`` each such wrap gets a new root of its own on that member, so
        the epoch can still be destroyed there. Returns the number of wraps added."""
        self._writable("add KMS wraps")
        backends = kms_by_id(self._kms)
        if len(backends) < 2:
            raise ConfigurationError("add_kms_wraps needs a MultiKms")
        added = 0
        for record in self._store.epochs():
            if record.state == State.DESTROYED:
                continue
            present = {w.kms_id for w in record.wraps}
            missing = [b for kms_id, b in backends.items() if kms_id not in present]
            if not missing:
                continue
            key = self._unwrap_epoch(record)
            context = self._epoch_context(record.epoch_id)
            wraps = [
                m.wrap(
                    key, context=context, root_id=m.new_root() if self._per_epoch_roots else None
                )
                for m in missing
            ]
            self._store.add_epoch_wraps(record.epoch_id, wraps)
            added += len(wraps)
        return added

    # -- wrapped keys ----------------------------------------------------------------------------

    def _binding(self, rec: KeyRecord, epoch_id: bytes) -> KeyBinding:
        return KeyBinding(
            self._installation, rec.kind, rec.key_id, rec.version, epoch_id, rec.ref or _NO_REF
        )

    def _unwrap_record(self, rec: KeyRecord) -> SecretKey:
        if rec.wrapped is None or rec.commitment is None or rec.epoch_id is None:
            raise DecryptionError
        if rec.state != State.LIVE:
            # A quarantined row stays unreadable even if its bytes authenticate again: only an
            # operator makes it live again.
            raise DecryptionError
        aead = self._epoch_aead(rec.epoch_id)
        try:
            return SecretKey(
                unwrap_key(aead, rec.wrapped, rec.commitment, self._binding(rec, rec.epoch_id))
            )
        except UnwrapError:
            pass
        raise DecryptionError  # outside the handler: no __context__ leads back to the unwrap

    def _new_record(
        self,
        kind: str,
        key_id: bytes,
        version: int,
        *,
        label: str | None = None,
        ref: bytes | None = None,
        material: bytes | None = None,
    ) -> tuple[KeyRecord, bytes]:
        epoch = self._active_epoch()
        aead = self._epoch_aead(epoch)  # first: a KMS failure here finds no key in this frame
        key = material if material is not None else random_bytes(KEY_BYTES)
        binding = KeyBinding(
            self._installation, kind, key_id, version, epoch.epoch_id, ref or _NO_REF
        )
        wrapped, commit = wrap_key(aead, key, binding)
        rec = KeyRecord(
            key_id=key_id,
            version=version,
            kind=kind,
            label=label,
            ref=ref,
            epoch_id=epoch.epoch_id,
            wrapped=wrapped,
            commitment=commit,
            state=State.LIVE,
            created_at=self._now(),
        )
        return rec, key

    def _long_lived_key(self, kind: str, label: str) -> SecretKey:
        rec = self._store.latest_key(kind, label)
        if rec is None:
            self._writable(f"create the installation's {label} key")
            if kind == KeyKind.SUBJECT_REF and self._store.has_subjects():
                # Subjects exist, so their ref key did: its row was altered or deleted. A new
                # one would give every subject a new ref, outside every shred fence.
                raise KeyStoreError(
                    "the installation has subjects but its subject-ref key is missing (its key "
                    "row was altered or deleted): restore the key store from a backup"
                )
            rec = self._store_new_key(kind, random_bytes(16), 1, label=label)
        return self._unwrap_record(rec)

    def _store_new_key(self, kind: str, key_id: bytes, version: int, *, label: str) -> KeyRecord:
        """Create and store a labelled key (or get the one another process stored first).

        The new key's material is never bound to a name here: a frame of a failed insert must
        not hold it."""
        return self._with_fresh_epoch(
            lambda: self._store.insert_key_if_absent(
                self._new_record(kind, key_id, version, label=label)[0]
            )
        )

    def _with_fresh_epoch(self, store_new_keys: Callable[[], T]) -> T:
        """Run ``store_new_keys`` (it wraps new keys under the cached active epoch and stores
        them); when the key store refuses that epoch because it was destroyed meanwhile (this
        process had not seen the rotation), re-read the active epoch and wrap them again."""
        for _ in range(2):
            try:
                return store_new_keys()
            except EpochNotUsableError:
                self._active.pop("active")
        return store_new_keys()

    def _subject_write_key(self, ref: bytes) -> _DataKey:
        key = self._write_keys.get(ref)
        if key is not None:
            return key
        keys = self._load_or_create([ref])
        if ref not in keys:
            raise SubjectShreddedError
        return keys[ref]

    def _load_or_create(self, refs: Sequence[bytes]) -> dict[bytes, _DataKey]:
        """Current keys of ``refs`` (creating missing ones); shredded subjects are left out."""
        found = self._store.subject_keys(refs)
        records: dict[bytes, KeyRecord] = {}
        for ref, (head, rec) in found.items():
            usable = self._usable_key(ref, head, rec)
            if usable is not None:
                records[ref] = usable
        missing = [ref for ref in refs if ref not in found]
        if missing:
            self._writable("create keys for new subjects")

            def create() -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
                candidates = [
                    self._new_record(KeyKind.SUBJECT, random_bytes(16), 1, ref=ref)[0]
                    for ref in missing
                ]
                return self._store.create_subject_keys(candidates, self._now(), self._seal_head)

            created = self._with_fresh_epoch(create)
            for ref in missing:
                if ref not in created:  # refused: key rows without a head
                    self._report_fence(ref, _HEADLESS)
                    continue
                usable = self._usable_key(ref, *created[ref])
                if usable is not None:
                    records[ref] = usable
        out = {}
        for ref, rec in records.items():
            key = self._data_key(rec)
            with self._cache_lock:
                if self._fenced.get(ref) is None:
                    self._write_keys.put(ref, key)
            out[ref] = key
        return out

    def _usable_key(self, ref: bytes, head: HeadRecord, rec: KeyRecord | None) -> KeyRecord | None:
        """The key a subject's head names, if the head authenticates, says active and names
        this subject's live key; None when the subject is shredded or treated as shredded (a
        head that fails authentication, or that says active but names a destroyed key: both
        reported). A head whose key row is missing or broken is a KeyStoreError."""
        if not self._head_authentic(head):
            self._report_fence(ref, "its subject head fails authentication (MAC)")
            return None
        if head.state != State.ACTIVE:
            return None
        if rec is None:
            raise KeyStoreError("a subject head names a key the key store does not hold")
        if rec.state == State.DESTROYED:
            self._report_fence(
                ref, "its subject head says active but names a destroyed key (a restored head?)"
            )
            return None
        # The head names its key by id; make sure the row it points to really is this
        # subject's live key (the wrap's associated data authenticates rec.ref).
        if rec.state == State.QUARANTINED:
            raise KeyStoreError(
                f"the subject's key {rec.key_id.hex()} version {rec.version} is quarantined "
                "(its key-store row failed authentication): nothing is written for this "
                "subject (docs/security.md, 'Quarantined keys')"
            )
        if rec.kind != KeyKind.SUBJECT or rec.ref != ref or not rec.is_live:
            raise KeyStoreError("a subject head points at a key that is not its own")
        return rec

    def _seal_head(self, ref: bytes, key_id: bytes, state: str, current_version: int) -> bytes:
        """The MAC of a subject head's fence state (docs/format.md, section 3a)."""
        return self._head_mac(
            head_mac_message(self._installation, ref, key_id, state, current_version)
        )

    def _head_mac_of(self, head: HeadRecord) -> bytes:
        return self._seal_head(head.ref, head.key_id, head.state, head.current_version)

    def _head_authentic(self, head: HeadRecord) -> bool:
        if head.mac is None:
            return False
        try:
            expected = self._head_mac_of(head)
        except ValueError:
            return False
        return hmac.compare_digest(head.mac, expected)

    def _fenced_read(self, rec: KeyRecord, head: HeadRecord | None) -> bool:
        """Whether a live subject key must read as shredded: its ref has no head, or a head
        that fails authentication or does not say active (each reported)."""
        ref = rec.ref or _NO_REF
        if head is None:
            self._report_fence(ref, "a live key of its ref has no subject head")
        elif not self._head_authentic(head):
            self._report_fence(ref, "its subject head fails authentication (MAC)")
        elif head.state != State.ACTIVE:
            self._report_fence(
                ref, "a key of its ref is live under a shredded head (a restored key row?)"
            )
        else:
            return False
        return True

    def _report_fence(self, ref: bytes, why: str) -> None:
        """Log (ERROR, once an hour per ref) a subject treated as shredded because its fence
        rows are not what ccvault writes."""
        if self._reported.get(ref) is not None:
            return
        self._reported.put(ref, True)
        log.error(
            "subject ref %s is treated as shredded: %s. Nothing is encrypted or decrypted for "
            "it (docs/security.md, 'Authenticated subject heads'; `ccvault verify-heads`)",
            ref.hex()[:16],
            why,
        )

    def _data_key(self, rec: KeyRecord) -> _DataKey:
        if not _names_value_key(rec.key_id, rec.version):
            raise DecryptionError  # a damaged row: no value can name it, none opens under it
        header = fmt.build_header(fmt.SUITE_AES256GCM, rec.key_id, rec.version)
        cached = self._read_keys.get(header)
        if isinstance(cached, _DataKey):
            return cached
        key = self._unwrapped_data_key(rec)
        self._cache_read_key(header, key)
        return key

    def _unwrapped_data_key(self, rec: KeyRecord) -> _DataKey:
        material = self._unwrap_record(rec)
        return _DataKey(Aead(material.reveal()), rec.key_id, rec.version, rec.ref or _NO_REF)

    def _cache_read_key(self, header: bytes, key: _DataKey) -> None:
        with self._cache_lock:
            if not key.ref or self._fenced.get(key.ref) is None:
                self._read_keys.put(header, key)

    def _tombstone(self, header: bytes, rec: KeyRecord) -> _Shredded:
        tombstone = _Shredded(rec.ref or _NO_REF)
        self._read_keys.put(header, tombstone)
        return tombstone

    def _read_keys_batch(self, headers: Iterable[bytes]) -> dict[bytes, _DataKey | _Shredded]:
        """The keys of many suite-1 value headers, with one key-store query per 500 cold ones.

        Headers that are not suite-1, unknown ids, non-value keys and keys that fail to unwrap
        are left out (the caller raises DecryptionError for those values only); shredded ones
        map to the tombstone, and so do live subject keys whose subject head (read in the same
        query) is shredded, fails its MAC or is missing.
        """
        out: dict[bytes, _DataKey | _Shredded] = {}
        lookup = self._read_keys.getter()
        missing: dict[tuple[bytes, int], bytes] = {}
        for header in headers:
            cached = lookup(header)
            if cached is not None:
                out[header] = cached
                continue
            pair = fmt.suite1_key_ref(header)
            if pair is not None:
                missing[pair] = header
        pairs = list(missing)
        for i in range(0, len(pairs), _BATCH):
            # Each key with its subject's head, in one query (never again while it is cached).
            for pair, (rec, head) in self._store.value_keys(pairs[i : i + _BATCH]).items():
                header = missing[pair]
                if rec.kind not in (KeyKind.SUBJECT, KeyKind.VAULTWIDE):
                    continue  # a long-lived key id is never a value key
                if rec.kind == KeyKind.SUBJECT and rec.state == State.DESTROYED:
                    out[header] = self._tombstone(header, rec)
                    continue
                if not rec.is_live:
                    continue
                try:
                    key = self._unwrapped_data_key(rec)
                except DecryptionError:
                    continue  # the row does not authenticate: unreadable, whatever its head says
                if rec.kind == KeyKind.SUBJECT and self._fenced_read(rec, head):
                    # A key row that authenticates, under a shredded head (a row restored from a
                    # backup), a head that fails its MAC, or none: read as shredded.
                    out[header] = self._tombstone(header, rec)
                    continue
                self._cache_read_key(header, key)
                out[header] = key
        return out

    def _read_key_lookup(self) -> Callable[[bytes], _DataKey | _Shredded | None]:
        """Cached keys by suite-1 value header, for one batch of rows (one clock reading); a
        miss (cold, expired or unknown) is for :meth:`_read_keys_batch`."""
        return self._read_keys.getter()

    def _vaultwide_key(self, context: str) -> _DataKey:
        with self._lock:
            lease = self._vaultwide.get(context)
            if lease is None or lease.remaining <= 0:
                lease = self._lease_vaultwide(context)
                self._vaultwide[context] = lease
            lease.remaining -= 1
            return lease.key

    def _lease_vaultwide(self, context: str) -> _Lease:
        """Reserve a block of nonce budget on the context's current vault-wide key version,
        moving to a new version when the current one has spent its budget."""
        self._writable("reserve vault-wide key uses (encrypt with NO_SUBJECT)")
        rec = self._store.latest_key(KeyKind.VAULTWIDE, context)
        for _ in range(8):
            if rec is None or not rec.is_live:
                version = rec.version + 1 if rec is not None else 1
                key_id = rec.key_id if rec is not None else random_bytes(16)
                rec = self._store_new_key(KeyKind.VAULTWIDE, key_id, version, label=context)
            if self._store.reserve_uses(rec.key_id, rec.version, _USE_BLOCK, self.nonce_budget):
                return _Lease(self._data_key(rec), _USE_BLOCK)
            rec = self._store_new_key(KeyKind.VAULTWIDE, rec.key_id, rec.version + 1, label=context)
        raise KeyStoreError("could not reserve nonce budget for a vault-wide key")

    # -- receipts --------------------------------------------------------------------------------

    def _receipt(
        self,
        ref: bytes,
        now: float,
        epoch: EpochRecord,
        head: HeadRecord | None,
        keys: Sequence[KeyRecord],
    ) -> ErasureReceipt:
        shredded_at = datetime.fromtimestamp(now, tz=timezone.utc)
        horizon = self._erasure_horizon(epoch, shredded_at) if self._per_epoch_roots else None
        receipt = ErasureReceipt(
            receipt_id=uuid.uuid4().hex,
            installation_id=self.installation_id,
            subject_ref=ref.hex(),
            shredded_at=shredded_at,
            subject_was_known=head is not None,
            destroyed_keys=tuple(
                DestroyedKey(key_id=k.key_id.hex(), version=k.version)
                for k in sorted(keys, key=lambda k: (k.key_id, k.version))
                if k.state in (State.LIVE, State.QUARANTINED)
            ),
            epoch_seq=epoch.seq,
            propagation_bound_seconds=self.cache_ttl,
            erasure_horizon=horizon,
            signing_key="",
        )
        return sign_receipt(receipt, self._receipt_seed.reveal())

    def _erasure_horizon(self, epoch: EpochRecord, shredded_at: datetime) -> datetime:
        """The date after which no backup of the key store can bring back what a shred under
        ``epoch`` destroyed, under the operating assumptions of docs/security.md ("Erasure
        horizon"): the epoch retires when its rotation is due — or, already overdue at the shred,
        within one rotation period of it —, is destroyed by the daily job once the backup window
        has passed, and its roots are then beyond recall after the KMS's own waiting period."""
        retires = (
            datetime.fromtimestamp(epoch.created_at, tz=timezone.utc) + self.epoch_rotation_period
        )
        if retires <= shredded_at:  # rotation overdue: its date says nothing any more
            retires = shredded_at + self.epoch_rotation_period
        return (
            retires
            + self.backup_retention
            + _DESTROY_JOB_INTERVAL
            + self._kms.root_destruction_delay
        )


_DESTROY_JOB_INTERVAL: Final = timedelta(days=1)
"""``destroy_epochs()`` runs daily: an epoch may be destroyed up to this long after it is due."""

_MAX_KMS_BACKOFF: Final = 60.0
"""Longest pause between two KMS attempts while a cached epoch key serves an outage."""

_GONE = (RootState.PENDING_DELETION, RootState.DESTROYED, RootState.UNKNOWN)


def _is_async_engine(obj: object) -> bool:
    """An SQLAlchemy AsyncEngine, recognised without importing the asyncio extension (which needs
    greenlet, an optional dependency)."""
    return isinstance(getattr(obj, "sync_engine", None), Engine)


_UNCACHEABLE: Final = object()
"""Looked up in place of a subject that has no cache key: never in the cache."""


def _ref_cache_key(subject: object) -> Hashable | None:
    """The key of ``subject``'s ref in the ref cache, or None for a subject that cannot be one
    (unhashable). Different Python types never share a key: ``1``, ``True`` and ``1.0`` are equal
    and hash alike in Python, and so are (1, "a") and (True, "a"), yet they are different subjects
    (or a TypeError) for the installation's subject type.

    The common types skip the tuple and UUID's Python-level ``__hash__``/``__eq__``: a UUID is
    keyed by its 128-bit int, a str by itself; every other key is a tuple, so the three kinds
    never compare equal (and only exact types: a subclass takes the tuple)."""
    kind = type(subject)
    if kind is uuid.UUID:
        return cast(uuid.UUID, subject).int
    if kind is str:
        return subject
    if subject is None or subject is NO_SUBJECT:
        raise TypeError("a subject is required (use NO_SUBJECT for vault-wide data)")
    # Element types too: (1, "a") and (True, "a") are equal and hash alike in Python.
    cache_key = (
        (kind, (tuple(map(type, subject)), subject))
        if isinstance(subject, tuple | list)
        else (kind, subject)
    )
    try:
        hash(cache_key)
    except TypeError:
        return None
    return cache_key


def _parse_receipt(text: object) -> tuple[ErasureReceipt, list[tuple[bytes, int]]] | None:
    """The receipt the key store returned and the (key id, version) pairs it lists, or None when
    it does not parse; never raises (it runs after the shred committed)."""
    try:
        receipt = ErasureReceipt.model_validate_json(text)  # type: ignore[arg-type]
        keys = [(bytes.fromhex(k.key_id), k.version) for k in receipt.destroyed_keys]
    except Exception:  # whatever is wrong with it, the caller raises one KeyStoreError
        return None
    return receipt, keys


def _names_value_key(key_id: bytes, version: int) -> bool:
    """A (key id, version) that a value header can name: a 16-byte id and a version in 1..2^32-1.
    Anything else read from the key store (a damaged or tampered row, or receipt) names none."""
    return len(key_id) == 16 and 1 <= version <= 0xFFFFFFFF


def _context_bytes(context: str) -> bytes:
    if not isinstance(context, str) or not context:
        raise TypeError("context must be a non-empty str (e.g. 'customers.phone')")
    return context.encode("utf-8")


def _embedded_kms(home: Path, *, create: bool = True) -> Kms:
    from .kms._local import LocalKms

    if create:
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {str(home)!r} as the ccvault home (CCVAULT_HOME): {exc.strerror}"
            ) from None
    return LocalKms.from_file(home / "master.key", create=create)


def _parse_installation(installation: str, subject_type: str) -> tuple[bytes, SubjectType]:
    """The stored installation id as bytes and the stored subject type, or a KeyStoreError when
    the installation record does not parse (a damaged or tampered ``ccvault_meta`` row)."""
    try:
        return bytes.fromhex(installation), SubjectType.parse(subject_type)
    except ValueError:
        pass
    raise KeyStoreError(
        "the key store's installation record (ccvault_meta rows installation_id and "
        "subject_type) does not parse: it is damaged or was tampered with"
    )


def _existing_installation(store: KeyStore) -> tuple[str, str]:
    """The store's (installation id, subject type); an empty store is a ConfigurationError."""
    found = store.installation()
    if found is None:
        where = store.location if isinstance(store, SqlKeyStore) else repr(store)
        raise ConfigurationError(f"no ccvault installation at {where}")
    return found


def _check_schema(store: KeyStore, *, upgrading: bool) -> None:
    """Refuse a store of a newer schema, and one of an older schema unless upgrading it."""
    version = store.schema_version()
    if version is None or version == SCHEMA_VERSION:
        return
    where = store.location if isinstance(store, SqlKeyStore) else repr(store)
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the key store at {where} has schema version {version}, newer than this ccvault "
            f"knows ({SCHEMA_VERSION}): a newer ccvault upgraded it; run that version (a store "
            "is never downgraded)"
        )
    if not upgrading:
        raise ConfigurationError(
            f"the key store at {where} has schema version {version}, older than this ccvault's "
            f"({SCHEMA_VERSION}): run `ccvault upgrade-store` (Vault.upgrade_store) once, then "
            "open it (docs/operations.md, 'Upgrading the key store')"
        )


def _live_roots(epochs: Iterable[EpochRecord]) -> set[tuple[str, str]]:
    """(kms_id, root_id) of every wrap of an epoch that is not destroyed."""
    return {(w.kms_id, w.root_id) for e in epochs if e.state != State.DESTROYED for w in e.wraps}


_FATES: Final = {
    RootState.DESTROYED: "destroyed",
    RootState.UNKNOWN: "destroyed",
    RootState.PENDING_DELETION: "pending",
}


def _root_fate(backend: Kms | None, wrap: WrappedKey, alive: set[tuple[str, str]]) -> str:
    """What became of a destroyed epoch's root (see :class:`EpochInfo`)."""
    if (wrap.kms_id, wrap.root_id) in alive:
        return "shared"
    if backend is None:
        return "not configured"
    try:
        state = backend.root_state(wrap.root_id)
    except KmsUnavailableError:
        return "unreachable"
    return _FATES.get(state, "failed")
