"""The vault: envelope encryption per data subject over a KMS and a key store — the facade.

Key hierarchy (see docs/design.md), and the part that owns each level::

    KMS root key (never leaves the KMS)                                  kms/
      └─ epoch key          random 256-bit, wrapped by the KMS, unwrapped once per process per
         │                  cache period; one epoch is active, rotation   keyring/_epochs.py,
         │                  re-wraps everything below                     keyring/_rotation.py
         ├─ subject-ref key long-lived: ref = HMAC-SHA256(K_ref, canonical(subject))
         ├─ receipt key     long-lived Ed25519 seed that signs erasure receipts (erasure/)
         ├─ head-MAC key    long-lived: authenticates each subject head's fence state
         │                                                                keyring/_heads.py
         ├─ subject keys    one lineage per subject (random 128-bit key id, versions)
         └─ vault-wide keys one lineage per context label, for data without a subject
              └─ values     AES-256-GCM, format v1 (crypto/_format.py)    keyring/_ring.py

Owns the public API and the construction of its parts (``Epochs`` → ``KeyRing``, ``Rotation``
→ ``Erasure``); must not hold keys, caches or key-store logic of its own: every method hands
its call to the part that owns it.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast, overload

from sqlalchemy.engine import Engine

from ._install import (
    UPGRADING,
    check_propagation,
    check_schema,
    embedded_kms,
    existing_installation,
    installation_facts,
    is_async_engine,
    parse_installation,
)
from ._repr import safe_repr
from ._sentinels import NO_SUBJECT, Sentinel
from .audit._receipt import ErasureReceipt
from .crypto._blind import BlindIndexer, Normalizer
from .crypto._subject import SubjectType
from .erasure import (
    Completer,
    CompletionReport,
    Enforcer,
    Erasure,
    ErasureCheck,
    ErasureQueue,
    ErasureStatus,
    Hold,
    HoldId,
    Holds,
    LedgerLink,
    LedgerSink,
    PolicyChange,
    Reconciliation,
    RecordedPolicy,
    RetentionPolicies,
    RetentionReport,
    ShredMany,
    ShredPreview,
    ShredResult,
    check_new_installation,
)
from .errors import (
    ConfigurationError,
    DecryptionError,
    ErasureIncompleteError,
    LedgerIntegrityError,
    LedgerUnavailableError,
)
from .keyring import (
    CONTEXT_LPS,
    FENCE_BREAKS,
    UNCHECKED,
    VAULTWIDE_NO_RETENTION,
    VAULTWIDE_NONCE_BUDGET,
    EpochInfo,
    Epochs,
    HeadCheck,
    Installation,
    KeyRing,
    Progress,
    Rotation,
    RotationReport,
    StoreUpgrade,
    Values,
    VaultOptions,
    context_lp,
)
from .keyring import Item as DecryptItem
from .keystore._protocol import KeyStore
from .keystore._records import KeyKind
from .keystore._sql import SqlKeyStore
from .kms._protocol import Kms
from .retention import RetentionPolicy

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: the asyncio extra

    from ._settings import CcvaultSettings
    from .sqlalchemy._datamap import DataMap
    from .sqlalchemy._export import SubjectExport
    from .sqlalchemy._purge import PurgeReport
    from .sqlalchemy._reencrypt import MoveReport
    from .sqlalchemy._scrub import ScrubReport

__all__ = [
    "FENCE_BREAKS",
    "NO_SUBJECT",
    "VAULTWIDE_NONCE_BUDGET",
    "DevelopmentDefaultWarning",
    "EpochInfo",
    "HeadCheck",
    "Progress",
    "RotationReport",
    "StoreUpgrade",
    "Vault",
]

T = TypeVar("T")


class DevelopmentDefaultWarning(UserWarning):
    """The embedded default (local key file beside a SQLite key store) is for development only."""


class Vault:
    """Encrypt, decrypt and shred per-subject data. Thread-safe; one per process is enough.

    ``kms`` wraps epoch keys; ``keystore`` is a :class:`~ccvault.keystore.KeyStore`, an SQLAlchemy
    ``Engine`` or a URL. ``subject_type`` declares the installation's subject type on first use
    (``"uuid"`` when not given) and must match what the key store recorded afterwards.
    ``cache_ttl`` bounds how long a process keeps unwrapped keys: the period between KMS unwraps
    of an epoch key, and how long a process cut off from the key store keeps serving cached keys.
    ``propagation_interval`` (seconds, default 1) is how often the vault polls the key store's
    invalidation channel when it is about to use cached keys, so that a shred made by another
    process reaches this one within it; a new installation records it as its propagation bound
    (what receipts state), and a vault configured with a longer interval than the recorded
    bound refuses to open. On PostgreSQL a listener (LISTEN/NOTIFY, on a connection of its own:
    ``listen_url`` for a direct DSN behind PgBouncer, ``"off"`` for none) makes the poll
    immediate after a shred; the poll stays the guarantee.
    ``kms_grace_period`` (seconds) lets a cached *epoch* key keep serving that much longer while
    the KMS is unavailable (an outage, not a refusal); subject keys and shred fences still expire
    after ``cache_ttl``, so a shred elsewhere is honoured within the same bound during an outage.
    ``readonly=True`` opens an existing installation without writing anything: no table, no
    installation, epoch or key is created (an empty store is a :class:`ConfigurationError`), and
    every operation that would write raises one; with a ledger it does not replay either.
    ``ledger`` (a :class:`~ccvault.erasure.LedgerSink` or a ledger URL: SQLAlchemy,
    ``file:///…jsonl``, ``s3://…``) keeps the signed journal of erasures outside the key store:
    each shred appends its receipt there before anything is destroyed, and a vault replays the
    ledger into a key store restored from a backup before it serves a read (docs/erasure.md,
    "The ledger and the vault"). ``ledger_mode="best-effort"`` shreds while the ledger is
    unreachable and queues the entry; ``"strict"`` (the default) raises
    :class:`LedgerUnavailableError` and destroys nothing. ``ledger_check_interval`` (seconds,
    default 60) is how often a vault with a ledger compares the ledger's head with what its key
    store applied, inside the invalidation poll: a store restored from a backup under a process
    that was idle while others shredded is noticed (and replayed) within it (docs/erasure.md,
    "A process that was idle across the shreds"). ``retention_policy``: the retention
    categories (:class:`~ccvault.retention.RetentionPolicy`; ``CCVAULT_RETENTION_POLICY`` in
    :meth:`from_settings`) that ``encrypt(..., retention=)``, the columns' ``retention=`` and
    ``enforce_retention()`` name (docs/retention.md); enforcement follows the policy recorded
    in the key store (:meth:`set_retention_policy`) once there is one, and a vault whose
    policy differs from it logs a WARNING at open. ``policy_grace`` (a timedelta, default 7
    days; ``CCVAULT_RETENTION_POLICY_GRACE_DAYS``) is how long a recorded change that may
    expire data earlier waits before it takes effect. ``create``: whether an empty key store
    becomes a new installation — None (the default) creates one unless a ledger is configured,
    True always (the first start of a ledgered installation), False never.
    Every number must be finite, and ``backup_retention`` at least a day and at least
    ``cache_ttl + kms_grace_period`` (a :class:`ConfigurationError` names the argument otherwise;
    see :func:`ccvault._settings.check_vault_options`).

    The vault is a facade: it checks the options and builds its parts — ``Epochs`` (epoch keys,
    key records), ``KeyRing`` (refs, key caches, fences, leases, blind-index keys), ``Rotation``
    and ``Erasure`` (``ccvault.keyring``, ``ccvault.erasure``) — and hands each call to one.
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
        propagation_interval: float = 1.0,
        listen_url: str | None = None,
        ledger: LedgerSink | str | None = None,
        ledger_mode: Literal["strict", "best-effort"] = "strict",
        ledger_check_interval: float = 60.0,
        create: bool | None = None,
        retention_policy: RetentionPolicy | None = None,
        policy_grace: timedelta = timedelta(days=7),
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
            propagation_interval=propagation_interval,
            ledger_check_interval=ledger_check_interval,
            policy_grace=policy_grace,
        )
        if retention_policy is not None and not isinstance(retention_policy, RetentionPolicy):
            raise ConfigurationError(
                "retention_policy must be a ccvault.retention.RetentionPolicy (load a file with "
                "ccvault.retention.load_policy), or None"
            )
        if listen_url is not None and not isinstance(listen_url, str):
            raise ConfigurationError("listen_url must be a URL (str), 'off', or None")
        if per_epoch_roots and not kms.supports_root_lifecycle:
            raise ConfigurationError("per_epoch_roots needs a KMS that can create roots")
        self._kms = kms
        self._options = VaultOptions(
            cache_ttl=float(cache_ttl),
            kms_grace_period=float(kms_grace_period),
            cache_max_entries=cache_max_entries,
            epoch_rotation_period=epoch_rotation_period,
            backup_retention=backup_retention,
            per_epoch_roots=per_epoch_roots,
            nonce_budget=nonce_budget,
            readonly=readonly,
            now=clock or time.time,
            monotonic=clock or time.monotonic,
            propagation_interval=float(propagation_interval),
            listen_url=listen_url,
            ledger_check_interval=float(ledger_check_interval),
            retention_policy=retention_policy,
            policy_grace=policy_grace,
        )
        owned = isinstance(keystore, Engine | str) or is_async_engine(keystore)
        if isinstance(keystore, str) and ledger is not None and not readonly and create is None:
            _refuse_empty_store(keystore)  # before the store's tables are created
        if owned:
            self._store: KeyStore = SqlKeyStore(keystore, create=not readonly)  # type: ignore[arg-type]
        else:
            self._store = cast(KeyStore, keystore)

        declared = SubjectType.parse(subject_type) if subject_type is not None else None
        proposed = declared.spec if declared is not None else "uuid"
        # An upgrade opens a store of an older schema: no ledger until it is upgraded.
        ledger = None if UPGRADING.get() else ledger
        try:
            if readonly or create is False:
                installation, stored_type = existing_installation(self._store)
            else:
                new_id = uuid.uuid4().hex
                if ledger is not None and self._store.installation() is None:
                    _new_ledgered_installation(self._store, ledger, new_id, create)
                installation, stored_type = self._store.ensure_installation(
                    new_id, proposed, installation_facts(propagation_interval)
                )
            check_schema(self._store, upgrading=UPGRADING.get())
            bound = check_propagation(
                self._store, self._options.propagation_interval, upgrading=UPGRADING.get()
            )
        except (ConfigurationError, LedgerIntegrityError, LedgerUnavailableError):
            if owned:
                self._store.close()
            raise
        if declared is not None and stored_type != declared.spec:
            raise ConfigurationError(
                f"the key store records subject type {stored_type!r}, not {declared.spec!r}"
            )
        raw, parsed_type = parse_installation(installation, stored_type)
        self._installation = ident = Installation(installation, raw, parsed_type, bound)
        # The parts, each built on the ones before it: epochs ← key ring, rotation ← erasure.
        self._epochs = Epochs(kms, self._store, ident, self._options)
        self._epochs.open()
        # The long-lived keys, loaded (or created) in the order they always were: on a damaged
        # store the first one missing or unreadable stops the vault before the next is made.
        ref_key = self._epochs.long_lived_key(KeyKind.SUBJECT_REF)
        receipt_seed = self._epochs.long_lived_key(KeyKind.RECEIPT_SIGNING)
        head_key = self._epochs.long_lived_key(KeyKind.HEAD_MAC)
        self._ring = KeyRing(
            self._store, self._epochs, ident, self._options, ref_key=ref_key, head_key=head_key
        )
        self._values = Values(self._ring)
        self._periods = self._ring.periods
        self._rotation = Rotation(kms, self._store, self._epochs, self._options)
        self._link = LedgerLink(
            self._store,
            ident,
            self._options,
            self._ring.heads,
            seed=receipt_seed,
            ledger=ledger,
            mode=ledger_mode,
        )
        queue = ErasureQueue(self._store, self._epochs, self._ring, ident, self._options)
        self._erasure = Erasure(
            self._store,
            self._ring,
            self._epochs,
            self._rotation,
            ident,
            self._options,
            receipt_seed=receipt_seed,
            link=self._link,
            queue=queue,
        )
        self._many = ShredMany(
            self._store,
            self._ring,
            self._epochs,
            self._options,
            link=self._link,
            queue=queue,
            erasure=self._erasure,
        )
        self._holds = Holds(self._store, self._ring, ident.id, self._options, self._link)
        self._policies = RetentionPolicies(
            self._store, ident.id, self._options, self._link, seed=receipt_seed
        )
        self._completer = Completer(
            self._store,
            self._ring,
            queue,
            self._link,
            self._options,
            ident.propagation_bound,
            self._erasure.receipt_in,
        )
        self._enforcer = Enforcer(
            self._store,
            self._epochs,
            self._ring,
            self._periods,
            self._rotation,
            ident,
            self._options,
            self._link,
            # the policy in force at a time of the clock: the recorded one (grace-aware), or
            # the vault's own while none is recorded
            policy_at=self._policies.policy_at,
        )
        self._link.set_report_applier(self._enforcer.apply_report)  # the replay below uses it
        if not UPGRADING.get():  # a store being upgraded may have no channel to listen to yet
            try:
                self._link.open()  # replays a restored store before the first read
            except BaseException:
                self._link.close()
                if owned:
                    self._store.close()
                raise
            self._ring.store_restored.add(self._link.on_store_restored)
            self._policies.check_at_open()  # after the replay: the ledger's policy is back
            if self._link.configured:  # no ledger: nothing to compare, no probe
                self._ring.store_probes.add(self._link.store_behind)
            self._ring.invalidations.listen(listen_url)

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"Vault(installation={self.installation_id}, kms={self._kms.kms_id!r}, "
            f"subject_type={self.subject_type.spec!r})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("Vault cannot be pickled: build one per process")

    def close(self) -> None:
        """Stop the invalidation listener, drop cached keys and release the key store's own
        connections."""
        self._ring.invalidations.close()
        self._ring.evict_all()
        self._epochs.clear()
        self._link.close()
        self._store.close()

    # -- identity and settings (the settings are read by the parts where they use them) ---------

    @property
    def installation_id(self) -> str:
        """The installation's id (hex), recorded in the key store at its creation."""
        return self._installation.id

    @property
    def subject_type(self) -> SubjectType:
        """The installation's subject type, recorded in the key store at its creation."""
        return self._installation.subject_type

    @property
    def cache_ttl(self) -> float:
        """Seconds a process keeps unwrapped keys: the period between KMS unwraps of an epoch
        key, and how long a process cut off from the key store keeps serving cached keys."""
        return self._options.cache_ttl

    @cache_ttl.setter
    def cache_ttl(self, value: float) -> None:
        self._options.cache_ttl = value

    @property
    def propagation_interval(self) -> float:
        """Seconds between this process's polls of the invalidation channel (at most the
        installation's :attr:`propagation_bound`)."""
        return self._options.propagation_interval

    @property
    def ledger_check_interval(self) -> float:
        """Seconds between this process's comparisons of the erasure ledger's head with what
        its key store applied (a vault with a ledger; made inside the invalidation poll)."""
        return self._options.ledger_check_interval

    @property
    def retention_policy(self) -> RetentionPolicy | None:
        """The retention categories this vault was given (None: no policy)."""
        return self._options.retention_policy

    @property
    def policy_grace(self) -> timedelta:
        """How long a recorded retention-policy change that may expire data earlier waits
        before it takes effect (``CCVAULT_RETENTION_POLICY_GRACE_DAYS``; default 7 days): see
        :meth:`set_retention_policy`."""
        return self._options.policy_grace

    @property
    def propagation_bound(self) -> float:
        """The installation's propagation bound (seconds), recorded at its creation: a shred
        reaches every process that can read the key store within it; receipts state it."""
        return self._installation.propagation_bound

    @property
    def kms_grace_period(self) -> float:
        """Seconds a cached epoch key keeps serving past ``cache_ttl`` during a KMS outage."""
        return self._options.kms_grace_period

    @kms_grace_period.setter
    def kms_grace_period(self, value: float) -> None:
        self._options.kms_grace_period = value

    @property
    def epoch_rotation_period(self) -> timedelta:
        """How often the epoch is meant to rotate (``status`` shows it due; receipts' horizon)."""
        return self._options.epoch_rotation_period

    @epoch_rotation_period.setter
    def epoch_rotation_period(self, value: timedelta) -> None:
        self._options.epoch_rotation_period = value

    @property
    def backup_retention(self) -> timedelta:
        """How long key-store backups are kept: a retired epoch is destroyed after it."""
        return self._options.backup_retention

    @backup_retention.setter
    def backup_retention(self, value: timedelta) -> None:
        self._options.backup_retention = value

    @property
    def nonce_budget(self) -> int:
        """Values sealed under one vault-wide key version before the next version takes over."""
        return self._options.nonce_budget

    @nonce_budget.setter
    def nonce_budget(self, value: int) -> None:
        self._options.nonce_budget = value

    @property
    def per_epoch_roots(self) -> bool:
        """Whether each new epoch gets a KMS root of its own (destroyed with the epoch)."""
        return self._options.per_epoch_roots

    @property
    def readonly(self) -> bool:
        """Whether this vault was opened with ``readonly=True``."""
        return self._options.readonly

    @property
    def ledger_unverified(self) -> bool:
        """True while this vault has not brought its key store and its erasure ledger into
        agreement: the ledger was unreachable or failed a check at open (or after a restore),
        a ``best-effort`` shred queued an entry, a read-only vault found entries it does not
        replay, or the key store records a ledger this vault has none of. ``destroy_epochs``
        refuses meanwhile; the next shred or :meth:`reconcile_erasures` that reaches the ledger
        clears it."""
        return self._link.unverified

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
        create: bool | None = None,
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
        becomes a new installation). ``create=None`` (the default) creates a new installation on
        an empty store unless ``CCVAULT_LEDGER_URL`` is set; with a ledger, the first start of
        an installation passes ``create=True`` (docs/operations.md, "Configuring the erasure
        ledger").
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
        existing = readonly or create is False
        keystore: KeyStore | str = SqlKeyStore(url, create=False) if existing else url
        try:
            if isinstance(keystore, SqlKeyStore):
                existing_installation(keystore)
            elif s.ledger_url is not None and create is None:
                _refuse_empty_store(url)  # before the KMS: nothing is created for it
            if s.kms_url is None:
                kms = embedded_kms(home, create=not existing)
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
                propagation_interval=s.propagation_interval_seconds,
                listen_url=s.listen_url,
                ledger=s.ledger_url,
                ledger_mode=s.ledger_mode,
                ledger_check_interval=s.ledger_check_interval_seconds,
                create=create,
                retention_policy=s.load_retention_policy(),
                policy_grace=timedelta(days=s.retention_policy_grace_days),
            )
        except BaseException:
            if isinstance(keystore, SqlKeyStore):
                keystore.close()
            raise

    # -- values ----------------------------------------------------------------------------------

    def encrypt(
        self,
        subject: object,
        plaintext: bytes,
        *,
        context: str,
        retention: str | None = None,
        retention_from: datetime | None = None,
    ) -> bytes:
        """Seal ``plaintext`` for ``subject`` under the context label ``context``.

        With ``retention=`` (a category of the vault's retention policy) the value goes into
        the category's period of ``retention_from`` (an aware datetime; None: the vault clock's
        now) and reads as ``EXPIRED`` once ``enforce_retention()`` destroyed that period
        (docs/retention.md, "Values and columns"). A naive ``retention_from`` or one more than
        one period in the future is a :class:`ValueError`, a period already expired a
        :class:`RetentionExpiredError`, an unknown category a :class:`ConfigurationError`;
        vault-wide values (``NO_SUBJECT``) take no retention (TypeError).

        Raises :class:`SubjectShreddedError` if the subject was shredded (the shred fence) and
        :class:`TypeError` if the subject is not of the installation's subject type.
        """
        if type(plaintext) is not bytes:
            if not isinstance(plaintext, bytes | bytearray | memoryview):
                raise TypeError("plaintext must be bytes")
            plaintext = bytes(plaintext)
        ctx_lp = CONTEXT_LPS.get(context) if type(context) is str else None
        if ctx_lp is None:
            ctx_lp = context_lp(context)
        if retention is None:
            if retention_from is not None:
                raise TypeError("retention_from needs retention= (a category name)")
            key = self._ring.key_for_write(subject, context)
        else:
            category = self._periods.category(retention)
            if subject is NO_SUBJECT:
                raise TypeError(VAULTWIDE_NO_RETENTION)
            self._ring.subject_ref(subject)  # a wrong type before a period is created
            period = self._periods.for_write(category, retention_from)
            key = self._ring.period_key_for_write(subject, period)
        return key.seal(plaintext, ctx_lp)

    def encrypt_many(
        self,
        items: Iterable[tuple[object, bytes] | tuple[object, bytes, str]],
        *,
        context: str | None = None,
        retention: object = None,
        retention_from: object = None,
    ) -> list[bytes]:
        """Seal many values at once: a list of blobs aligned with ``items``, each
        ``(subject, plaintext)`` sealed under ``context`` or ``(subject, plaintext, context)``
        under its own, as :meth:`encrypt` seals one (``subject`` may be ``NO_SUBJECT``).

        The keys of the batch's subjects are loaded together and those of new subjects created
        together: one key-store transaction per round of 5,000 items (statements of 500 rows),
        instead of one per new subject with :meth:`encrypt` (an import of many new customers).
        A wrong *type* (an item's shape, a subject of another type or None, a plaintext that is
        not bytes, a context that is not a non-empty str) is a :class:`TypeError` naming the
        item, raised before any key is loaded or created. A shredded subject raises
        :class:`SubjectShreddedError` naming its item (``exc.index``), and no blob of the batch
        is returned: every value or none. Keys created meanwhile for the batch's other new
        subjects stay, as :meth:`warm` creates them.

        Values in a retention category are sealed one by one: ``encrypt(..., retention=...)``
        (after :meth:`warm` for many new subjects); ``encrypt_many`` takes no ``retention=``.
        """
        if retention is not None or retention_from is not None:
            raise TypeError(
                "encrypt_many takes no retention=/retention_from=: seal values of a retention "
                "category with vault.encrypt(subject, plaintext, context=..., retention=..., "
                "retention_from=...), after vault.warm(subjects) to create many new subjects' "
                "keys in batches"
            )
        return self._values.encrypt_many(items, context)

    def decrypt(self, blob: bytes, *, context: str, subject: object = UNCHECKED) -> bytes:
        """Open a ciphertext made by :meth:`encrypt` with the same context label.

        With ``subject=`` the ciphertext must also belong to that subject. Every failure of
        integrity, format, context or subject raises the same :class:`DecryptionError`; a value
        whose subject was shredded raises :class:`SubjectShreddedError`. A ``blob`` that is not
        bytes (None, a str) is a :class:`TypeError`. The same read as :meth:`decrypt_many` of
        one item, raising.
        """
        return self._values.decrypt(blob, context, subject)

    def decrypt_many(
        self, items: Iterable[DecryptItem], *, errors: Literal["raise", "return"] = "raise"
    ) -> list[bytes | Sentinel | DecryptionError]:
        """Open many values at once: a list aligned with ``items``, each ``(blob, context)`` or
        ``(blob, context, subject)`` (``subject`` may be ``NO_SUBJECT``), checked as
        :meth:`decrypt` checks one.

        Each place holds the plaintext, or ``SHREDDED`` for a value whose subject was shredded
        (a sentinel, not an error). A value that fails (integrity, format, context, or another
        subject's value) raises the :class:`DecryptionError` of the first such item, naming its
        index (``exc.index``) and never a value, with ``errors="raise"``; with
        ``errors="return"`` that error instance stands in the item's place instead. A wrong
        *type* (an item's shape, a blob that is not bytes, a context that is not a non-empty
        str, a subject of another type) is a :class:`TypeError` naming the item, raised before
        anything is decrypted. The cold keys of the whole batch are loaded together: one
        key-store query per 500 cold keys, whatever the number of values.
        """
        return self._values.decrypt_many(items, errors)

    def warm(self, subjects: Iterable[object]) -> int:
        """Load the keys of many subjects in batches, creating missing ones, and cache them.

        One key-store read per 10,000 subjects (statements of 500) and one transaction per 10,000
        new ones, instead of one each per subject: call it before writing or reading many
        customers at once (a few thousand at a time: more than the key cache holds evicts keys
        before they are used). Shredded subjects are skipped (encrypting for them still raises).
        Returns how many subjects have a usable key.
        """
        return self._ring.warm(subjects)

    # -- subjects and shreds ---------------------------------------------------------------------

    @overload
    def shred(
        self,
        subject: object,
        *,
        dry_run: Literal[False] = False,
        wait: bool = False,
        override_hold: bool = False,
        by: str | None = None,
    ) -> ErasureReceipt: ...

    @overload
    def shred(self, subject: object, *, dry_run: Literal[True]) -> ShredPreview: ...

    @overload
    def shred(
        self,
        subject: object,
        *,
        dry_run: bool,
        wait: bool = False,
        override_hold: bool = False,
        by: str | None = None,
    ) -> ErasureReceipt | ShredPreview: ...

    def shred(
        self,
        subject: object,
        *,
        dry_run: bool = False,
        wait: bool = False,
        override_hold: bool = False,
        by: str | None = None,
    ) -> ErasureReceipt | ShredPreview:
        """Erase ``subject``: fence it, destroy its keys (keeping tombstones), return a receipt.

        Idempotent: a repeat returns the original receipt. A never-seen subject is fenced too.

        With a ledger the receipt is appended to it in the key-store transaction that destroys
        the keys, before it commits: an unreachable ledger raises
        :class:`LedgerUnavailableError` and destroys nothing (``ledger_mode="strict"``), or the
        entry waits in the key store's outbox (``"best-effort"``). The erasure is then queued
        for its completion (phase 2: :meth:`complete_erasures`), its subject sealed under the
        day's erasure-queue key.

        ``wait=True`` (needs a ledger) completes the erasure before returning: it waits for the
        propagation bound, sweeps the blind indexes again and appends the signed completion
        record; when it cannot (a sweep fails, a column's engine is not attached here, the
        ledger is unreachable) it raises :class:`ErasureIncompleteError` with the receipt, and
        the erasure stays queued. A repeated shred of an erasure not completed yet queues it
        again.

        A subject under an active legal hold (:meth:`hold`) raises :class:`SubjectHeldError`
        and nothing is destroyed — checked inside the shred's key-store transaction, under the
        lock every hold takes, so a hold committed before the shred is never missed.
        ``override_hold=True`` shreds it all the same: a signed override entry naming the shred's
        receipt, the holds and ``by`` (who decided, optional) goes to the ledger right before
        the receipt, in the same transaction, and the holds read as released by that shred
        (docs/erasure.md, 'Legal holds').

        ``dry_run=True`` destroys and writes nothing (a read-only vault runs it) and returns a
        :class:`ShredPreview`: the keys the shred would destroy, and per attached engine the
        tables, encrypted columns, blind-index columns and rows of the subject it would make
        unreadable or clear, and the subject's active holds (``held``, ``hold_ids``).
        """
        if dry_run:
            if wait:
                raise ConfigurationError("shred(): dry_run=True and wait=True exclude each other")
            return self._erasure.preview(subject)
        if not wait:
            return self._erasure.shred(subject, override_hold=override_hold, by=by)
        self._link.require_configured("shred(wait=True)")  # before anything is destroyed
        try:
            receipt = self._erasure.shred(subject, override_hold=override_hold, by=by)
        except ErasureIncompleteError as exc:  # the first sweep failed: the second may not
            if exc.receipt is None:
                raise
            receipt = exc.receipt
        self._completer.complete_now(subject, receipt, self._options.now())
        return receipt

    def shred_many(
        self,
        subjects: Iterable[object],
        *,
        progress: Progress | None = None,
        override_hold: bool = False,
        by: str | None = None,
    ) -> list[ShredResult]:
        """Shred many subjects (the nightly queue of deletion requests): one
        :class:`ShredResult` per subject, in the input's order — ``shredded`` with its receipt,
        ``already_shredded`` with the stored receipt, ``held`` (under an active legal hold:
        nothing destroyed, its ``hold_ids``; ``override_hold=True`` shreds it as
        :meth:`shred` does) or ``error`` (nothing destroyed for it) —, never all-or-nothing.
        Each subject gets what :meth:`shred` gives it: fenced, keys destroyed, receipt in the
        ledger first (strict) or in the outbox (best-effort), the erasure queued for
        completion, keys evicted here, blind indexes swept.

        500 subjects per key-store transaction, with one ledger append of their receipts (at
        most 500 entries per sink write) and one blind-index sweep per table of each attached
        engine. A subject of the wrong type is an ``error`` result (the TypeError's message); a
        subject repeated in the input is shredded once, its later places ``already_shredded``
        with the same receipt. A batch whose transaction fails is shredded again one subject at
        a time. With a ``strict`` ledger unreachable, the batch and every later one are
        ``error`` results (nothing destroyed for them). A sweep that fails for a table leaves
        the receipts and says so in ``sweep_incomplete`` of each subject of the batch.
        ``progress(done, total)`` is called after each batch. A read-only vault raises
        :class:`ConfigurationError`; a ``str`` or ``bytes`` (one subject, not many) TypeError.
        Read docs/erasure.md, 'Shredding many subjects'."""
        return self._many.run(subjects, progress, override_hold=override_hold, by=by)

    def complete_erasures(self, *, models: Any = None) -> CompletionReport:
        """Complete the erasures whose propagation bound has passed (phase 2, DESIGN.md
        lifecycle rule 4; ``ccvault complete-erasures`` from cron): for each, check that no key
        material remains, sweep the blind indexes again with the subject opened from the
        erasure queue, and append a signed completion record listing the tables swept; the
        queue row (the sealed subject) goes in the same commit. Erasures not due, or whose
        receipt still waits in a ``best-effort`` outbox, wait; those that cannot be completed
        (a sweep fails, a column with blind indexes has no engine attached here) stay queued
        and are reported. Idempotent and safe from several hosts at once. Refuses while the
        ledger is unverified (:class:`LedgerUnavailableError`) or without a ledger
        (:class:`ConfigurationError`).

        ``models``: the application's models (modules, classes, tables or MetaData, as for
        :meth:`data_map`): each of their tables with blind indexes must then be swept, or the
        erasure is not completed. Sweeps run on the engines attached to this vault."""
        required: frozenset[str] | None = None
        if models is not None:
            from .sqlalchemy._datamap import searchable_tables_of

            required = searchable_tables_of(models)
        return self._completer.run(required)

    def erasure_status(self, receipt_id: str) -> ErasureStatus | None:
        """Where the erasure of receipt ``receipt_id`` stands: ``destroyed`` (its receipt is in
        the ledger; ``in_ledger`` False while it waits in a ``best-effort`` outbox),
        ``completed`` (a completion record is in the ledger) or ``legacy`` (shredded without a
        ledger, or before one was configured). None for a receipt id the key store does not
        know. Read-only: one key-store query."""
        return self._link.status(receipt_id)

    def verify_erasures(self) -> ErasureCheck:
        """Check the erasure ledger and the key store against each other (admin operation,
        read-only: ``ccvault verify-erasures``): the ledger's chain (every tampered, missing,
        reordered, truncated or foreign entry named by seq), entries the store has not applied,
        receipts in the store the ledger lacks, entries waiting in the outbox. Reads the whole
        ledger and every stored receipt. :class:`ConfigurationError` without a ledger."""
        return self._link.check()

    def reconcile_erasures(self) -> Reconciliation:
        """Bring the key store and the ledger into agreement (admin operation:
        ``ccvault reconcile-erasures``): replay the entries the store has not applied (with the
        ledger's own receipts), re-add to the ledger the receipts it lacks after a signed
        ``repair`` entry, append the outbox; then :meth:`verify_erasures`, cutting a torn last
        JSONL line (a crash mid-write; reported ``torn``, ``repaired``). Idempotent; clears
        :attr:`ledger_unverified` when it reaches the ledger."""
        return self._link.reconcile()

    # -- retention -------------------------------------------------------------------------------

    def enforce_retention(
        self, *, dry_run: bool = False, progress: Progress | None = None
    ) -> RetentionReport:
        """Destroy every retention period secret whose time has come (admin operation, run it
        daily: ``ccvault enforce-retention`` from cron), preserving the keys of the subjects
        held then, and destroy the held keys of subjects no longer held (docs/retention.md,
        "Enforcement"). Time is the vault's clock (``Vault(clock=...)``), never an argument: a
        period is due when its category is in the retention policy and the clock has reached
        its expiry (end + ``keep_for``); a category with periods and absent from the policy is
        never expired (``report.skipped``).

        In one key-store journal transaction per batch of periods (under the
        ``ledger_applied_seq`` lock that :meth:`hold` takes, so a hold and a period's
        preserve-then-destroy are serialised): the active holds are read, each held subject's
        live key versions get a *held key* per period (its suite-2 value key, wrapped under the
        active epoch), the period rows become tombstones, a signed
        ``ccvault-retention-report/v1`` entry is appended to the erasure ledger before the
        commit (``best-effort``: to the outbox when the ledger is unreachable), and an
        ``expiry`` row goes to the invalidation channel. No data table is read or written.
        Idempotent and safe from several hosts at once: a second run finds nothing to do.

        Needs an erasure ledger (:class:`ConfigurationError` without one); refuses while the
        ledger is unverified or the key store behind it, after trying to catch up
        (:class:`LedgerUnavailableError`: a restore must not lose holds). ``dry_run=True``
        reports what would be done and changes nothing (a read-only vault may run it; it needs
        no ledger). ``progress(done, total)`` is called after each batch, in periods."""
        return self._enforcer.run(dry_run=dry_run, progress=progress)

    # -- legal holds -----------------------------------------------------------------------------

    def hold(self, subject: object, *, case: str, by: str, until: datetime | None = None) -> HoldId:
        """Place a legal hold on ``subject`` and return its id (32 hex digits, a
        :class:`~ccvault.erasure.HoldId`: a str whose ``expired`` names, per retention
        category, the latest period already expired — holds are not retroactive): from then on
        :meth:`shred` of the subject raises :class:`SubjectHeldError` unless
        ``override_hold=True``, until the hold is released (:meth:`release`) or ``until`` (an
        aware datetime after now) passes. A subject may have several holds; it is held while
        any is active. ``case`` is an opaque reference of the matter (a case number, a ticket
        id), never personal data; ``case`` and ``by`` (who places it) are 1 to 128 printable
        characters (ValueError otherwise, never quoting them). The subject need not have keys
        yet; a shredded one raises :class:`SubjectShreddedError` (a hold is not retroactive).

        Ledger first (DESIGN.md, lifecycle rule 3): a signed ``ccvault-hold/v1`` entry is
        appended in the key-store transaction that records the hold, under the
        ``ledger_applied_seq`` lock that every shred takes first, so a hold and a shred of the
        same subject are serialised; a key store restored from a backup gets the hold back by
        the replay. Needs a ledger (:class:`ConfigurationError` without one, naming
        ``CCVAULT_LEDGER_URL``); an unreachable ledger raises :class:`LedgerUnavailableError`
        and places nothing, whatever the ``ledger_mode``. A read-only vault raises
        :class:`ConfigurationError`. A hold is not retroactive: retention periods expired before
        it stay expired; those that expire while it is active keep the subject's keys
        (:meth:`enforce_retention`), until the next enforcement after its release
        (docs/erasure.md, 'Legal holds')."""
        return self._holds.hold(subject, case=case, by=by, until=until)

    def release(self, hold_id: str, *, by: str) -> None:
        """Release the legal hold ``hold_id`` (what :meth:`hold` returned), ``by`` naming who
        releases it: a signed ``ccvault-hold-release/v1`` entry, ledger first, as for
        :meth:`hold`. The subject stays held while another of its holds is active. Idempotent:
        a hold released (or overridden by a shred) already is left as it is, with no second
        entry. :class:`HoldNotFoundError` (a ``LookupError``) for an id the installation does
        not know; ValueError for one that is not 32 lowercase hex digits."""
        self._holds.release(hold_id, by=by)

    def holds(self, subject: object = None, *, active_only: bool = True) -> list[Hold]:
        """The legal holds of ``subject`` (None: of every subject), oldest first, each a
        frozen :class:`~ccvault.erasure.Hold` naming the subject by its ref only; active ones
        only (not released, ``until`` not passed by the vault's clock) unless
        ``active_only=False``. Read-only: one key-store query (a read-only vault lists them)."""
        return self._holds.holds(subject, active_only=active_only)

    # -- the recorded retention policy ------------------------------------------------------------

    def set_retention_policy(
        self, policy: RetentionPolicy, *, by: str, dry_run: bool = False
    ) -> PolicyChange:
        """Record ``policy`` as the installation's retention policy, in the key store (admin
        operation: ``ccvault retention set-policy FILE --by NAME``; DESIGN.md, lifecycle rule
        8). Enforcement follows the recorded policy, never a process's own file; what is in
        force at a time is :meth:`RecordedPolicy.at` of :meth:`recorded_retention_policy`.

        Per category, compared with the policy in force now (the one recorded, or — for the
        first recording — this vault's :attr:`retention_policy`): ``added`` (no period yet) and
        ``lengthened`` (every period's expiry moves later or stays) take effect at once;
        ``shortened`` (a ``keep_for`` that may give an earlier expiry), ``dropped`` and
        ``resumed`` (back in the policy while it has periods, which were never expired while it
        was absent) take effect only after :attr:`policy_grace` — the policy in force until
        then — so that a typo destroys nothing before someone notices. A category absent from
        the policy in force is never expired. The :class:`PolicyChange` returned lists the
        changes, when each takes effect, and per delayed change the labels of the periods the
        first enforcement after it would destroy because of it (counted from the key store's
        period rows; no data table is read). Recording the policy already recorded changes
        nothing (``recorded`` False): it is safe to run at every deployment.

        Refused with :class:`ConfigurationError` naming the category, nothing recorded: a
        category whose periods in the key store were made with another granularity or ``tz``
        (those never change once a category has a period). ``by`` (who records it) is 1 to 128
        printable characters (ValueError otherwise); ``policy`` a
        :class:`~ccvault.retention.RetentionPolicy` (TypeError otherwise).

        With a ledger, the signed ``ccvault-retention-policy/v1`` entry is appended first, in
        the key-store transaction that records it (strict whatever the ``ledger_mode``:
        :class:`LedgerUnavailableError` and nothing recorded when it cannot be reached), and a
        key store restored from a backup gets it back by the replay. Without one it is recorded
        in the key store alone (and reaches the first ledger configured); a key store that
        records a ledger refuses a vault without one. ``dry_run=True`` writes nothing and
        returns what would change (a read-only vault runs it); otherwise a read-only vault
        raises :class:`ConfigurationError`."""
        return self._policies.set(policy, by=by, dry_run=dry_run)

    def recorded_retention_policy(self) -> RecordedPolicy | None:
        """The retention policy recorded in the key store (:meth:`set_retention_policy`),
        verified under the installation's key: the policy recorded, its digest, when and by
        whom, its changes and the ledger seq of its entry; ``.at(now)`` is the policy in force
        then. None when none is recorded. :class:`KeyStoreError` when the one recorded does not
        verify (edited behind ccvault's back). Read-only: one key-store query."""
        return self._policies.recorded()

    def _policy_at(self, now: float) -> RetentionPolicy | None:
        """The retention policy in force at ``now`` (seconds since the epoch, the vault's
        clock): what enforcement follows — the recorded one's at that time, or this vault's
        :attr:`retention_policy` while none is recorded (None: no policy). KeyStoreError when
        the recorded one does not verify."""
        return self._policies.policy_at(now)

    def erasure_receipt(self, subject: object) -> ErasureReceipt | None:
        """The signed receipt of ``subject``'s shred (what a repeated :meth:`shred` returns),
        None when it was never shredded. Read-only: it shreds nothing, creates nothing. A stored
        receipt that does not verify under :attr:`receipt_public_key` is a KeyStoreError."""
        return self._erasure.receipt(subject)

    def is_shredded(self, subject: object) -> bool:
        """Whether ``subject`` is shredded, or treated as such because its head fails
        authentication or its ref has key rows without a head (see :meth:`verify_heads`)."""
        return self._ring.is_shredded(subject)

    def subject_ref(self, subject: object) -> bytes:
        """The pseudonymous 32-byte ref of ``subject`` (what the key store and receipts hold)."""
        return self._ring.subject_ref(subject)

    def subject_refs(self, subjects: Iterable[object]) -> list[bytes]:
        """:meth:`subject_ref` of each subject, in order, through one pass over the cache."""
        return self._ring.subject_refs(subjects)

    @property
    def receipt_public_key(self) -> bytes:
        """The Ed25519 public key that signs this installation's erasure receipts."""
        return self._erasure.receipt_public_key

    # -- blind indexes ---------------------------------------------------------------------------

    def blind_index(self, label: str, normalizer: Normalizer, value: str, length: int) -> bytes:
        """The blind index of ``value`` for the column labelled ``label`` (keyed, truncated)."""
        return self._ring.blind_indexer(label, normalizer, length)(value)

    def blind_indexer(self, label: str, normalizer: Normalizer, length: int) -> BlindIndexer:
        """The blind index of one column as a callable, its key derived once: for callers that
        index many values of a column (the column types resolve it once per column)."""
        return self._ring.blind_indexer(label, normalizer, length)

    # -- the SQLAlchemy integration (imported lazily: the core never needs it) -------------------

    def attach(
        self, engine: Any, *, strict: bool = False, on_error: Literal["raise", "sentinel"] = "raise"
    ) -> None:
        """Make ``engine`` (sync or async) encrypt and decrypt :class:`ccvault.sqlalchemy.Encrypted`
        columns with this vault. ``strict=True``: reads of shredded values raise instead of
        returning ``SHREDDED``. ``on_error="sentinel"``: a value that fails to decrypt reads as
        ``UNREADABLE`` (and is logged with its location) instead of raising DecryptionError;
        a column's ``Encrypted(..., on_error=)`` overrides it."""
        from .sqlalchemy._attach import attach  # the integration's entry: imported here only

        attach(self, self._ring, engine, strict=strict, on_error=on_error)

    def detach(self, engine: Any) -> None:
        """Undo :meth:`attach` (for application factories and test fixtures that attach the same
        engine again, possibly to another vault). The detached engine refuses to read or write
        encrypted columns; this vault's shreds no longer sweep its tables."""
        from .sqlalchemy._attach import detach

        detach(self, self._ring, engine)

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

        return scrub(self._ring, bind, models, batch=batch, progress=progress)

    def purge_expired(
        self,
        bind: Any,
        models: Any,
        *,
        batch: int = 1000,
        dry_run: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> list[PurgeReport]:
        """Delete the rows of ``models`` (a mapped class, Table, declarative base, module or a
        list) whose encrypted values are each NULL, EXPIRED or SHREDDED, at least one not NULL,
        through ``bind`` (a Session, Engine or Connection of the application database); one
        :class:`~ccvault.sqlalchemy.PurgeReport` per table.

        Decided from each value's header and its key's state, never by decrypting; rows with a
        live value (a held subject's included), all-NULL rows and rows with a value of no known
        key or of another subject are counted and kept. ``batch`` rows per transaction, in
        primary-key order, a row rewritten meanwhile is kept (``changed``); ``progress(table,
        rows_read, rows_total)`` after each batch; ``dry_run`` deletes nothing
        (docs/retention.md, "Purging expired rows")."""
        from .sqlalchemy._purge import purge_expired

        if not dry_run:
            self._options.writable("purge rows")
        return purge_expired(
            self._ring, bind, models, batch=batch, dry_run=dry_run, progress=progress
        )

    def move_into_periods(
        self,
        bind: Any,
        models: Any,
        *,
        batch: int = 500,
        expire_stale: bool = False,
        dry_run: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> list[MoveReport]:
        """Move the suite-1 values of the retention-bound columns of ``models`` (written before
        the column gained ``retention=``) into the period of their row's ``retention_from``
        (NULL: now), through ``bind`` (a Session, Engine or Connection of the application
        database); one :class:`~ccvault.sqlalchemy.MoveReport` per table.

        ``batch`` rows per transaction, selected ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
        MariaDB (several workers share a table); resumable (a moved value is suite 2 and not
        selected again). A value whose period has already expired is never re-encrypted under
        a new secret: counted ``stale`` and left, or set NULL with ``expire_stale=True``.
        Shredded and unreadable values are counted and left; a row rewritten meanwhile is left
        for the next run (``changed``). ``dry_run`` writes nothing (docs/retention.md,
        "Existing data")."""
        from .sqlalchemy._reencrypt import move_into_periods

        if not dry_run:
            self._options.writable("move values into retention periods")
        return move_into_periods(
            self._ring,
            self._values,
            bind,
            models,
            batch=batch,
            expire_stale=expire_stale,
            dry_run=dry_run,
            progress=progress,
        )

    def register_personal_table(self, table: Any, subject_column: Any) -> None:
        """Declare a plaintext table that holds customer data: ``table`` is a ``Table`` or a
        mapped class, ``subject_column`` the name of its column naming the data subject, that
        ``Column`` or a mapped attribute. It joins this vault's :meth:`data_map` and
        :meth:`export_subject` (registrations are kept per vault). ConfigurationError for a
        column the table lacks, one whose type is not the installation's subject type, a table
        with encrypted columns (in the map already) or one registered with another column."""
        from .sqlalchemy._datamap import register_personal_table

        register_personal_table(self, table, subject_column)

    def data_map(self, models: Any = None) -> DataMap:
        """Every table and column holding customer data: each table with encrypted columns of
        ``models`` (as :meth:`scrub` takes them; every such table defined in this process when
        None) and each table registered with :meth:`register_personal_table`; per column its
        role, context label, searchable form and ``on_null_subject``. Its warnings name tables
        outside the map with a foreign key to a subject column, and searchable tables whose
        subject column has no index. ``.as_dict()`` and ``.as_markdown()`` render it."""
        from .sqlalchemy._datamap import data_map

        return data_map(self, models)

    def export_subject(self, subject: object, bind: Any, *, models: Any = None) -> SubjectExport:
        """What this installation holds about ``subject`` (GDPR Art. 15 and 20) in the database
        at ``bind`` (a synchronous Engine or Connection, attached or not): its rows in every
        table of :meth:`data_map`, encrypted columns decrypted (shredded ones as the text of
        ``SHREDDED``), the other columns as stored, the erasure receipt if it was shredded, and
        an explicit ``scope`` of what was searched and what was not. ``.as_dict()`` is the JSON
        form. Read-only: it runs SELECTs, writes nothing and creates no key (a read-only vault
        exports). TypeError for a subject of another type."""
        from .sqlalchemy._export import export_subject

        return export_subject(
            self,
            self._ring,
            self._erasure,
            subject,
            bind,
            models=models,
            now=self._options.now,
        )

    def subject(self, subject: object) -> AbstractContextManager[None]:
        """``with vault.subject(x):`` — encrypt statements that cannot name their subject for x."""
        from .sqlalchemy._write import scoped_subject

        return scoped_subject(self._ring, subject)

    # -- epochs ----------------------------------------------------------------------------------

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
        return self._rotation.rotate(progress)

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

        While the erasure ledger is unverified (:attr:`ledger_unverified`) it first tries to
        catch up with it, and refuses (:class:`LedgerUnavailableError`) if it cannot: a dry run
        does not.
        """
        if not dry_run:
            self._link.require_verified_ledger("destroy_epochs")
        return self._rotation.destroy(
            dry_run=dry_run, progress=progress, accept_unreadable=accept_unreadable
        )

    def active_epoch_seq(self) -> int:
        return self._epochs.active().seq

    def epochs(self, *, check_roots: bool = False) -> list[EpochInfo]:
        """Every epoch of the installation, oldest first, with its live keys and due dates.

        ``check_roots=True`` (with ``per_epoch_roots``) asks each KMS about the roots of
        destroyed epochs (``EpochInfo.root_destruction``): read-only calls, one per root.
        """
        return self._rotation.infos(check_roots=check_roots)

    def quarantined_keys(self) -> int:
        """How many quarantined key rows await an operator's decision: those under an epoch
        not destroyed yet, and those whose epoch id names no epoch (see :meth:`rotate_epoch`)."""
        return self._rotation.quarantined_keys()

    def add_kms_wraps(self) -> int:
        """Wrap every live epoch under the members of a :class:`~ccvault.kms.MultiKms` that do
        not hold a wrap of it yet (admin operation: adding a DR KMS, migrating between KMS).
        With ``per_epoch_roots`` each such wrap gets a new root of its own on that member, so
        the epoch can still be destroyed there. Returns the number of wraps added."""
        return self._rotation.add_kms_wraps()

    # -- key-store schema and subject heads ------------------------------------------------------

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
        after each), gives each never-seen shredded subject a version-0 tombstone. Schema 2 to
        3: creates the invalidation channel (``ccvault_invalidations``) and records the
        installation's propagation bound — this vault's ``propagation_interval``
        (``CCVAULT_PROPAGATION_INTERVAL_SECONDS``) — unless one is recorded, and creates the
        ledger's side (``ccvault_ledger_outbox``, ``ccvault_erasures``: every stored receipt
        recorded as a ``legacy`` erasure). Schema 3 to 4: creates the queue of erasures awaiting
        completion (``ccvault_erasure_queue``). Schema 4 to 5: creates the legal holds
        (``ccvault_holds``). Then it records this library's version (a store of schema 1 goes
        there in one run; docs/operations.md, 'Upgrading the key store'). Idempotent and
        resumable: an interrupted run (a crash, Ctrl-C, a second process upgrading at the same
        time) leaves the version unchanged, and the next run goes on from what is done. Run on
        a store already at this version, it authenticates the heads a process of an older
        ccvault wrote since (run it again once the last such process has stopped) and changes
        nothing else.
        """
        if options.get("readonly"):
            raise ConfigurationError("upgrade_store writes to the key store: not read-only")
        if (kms is None) != (keystore is None):
            raise TypeError("give both kms and keystore, or neither (CCVAULT_* settings)")
        token = UPGRADING.set(True)
        try:
            if kms is None or keystore is None:
                vault = cls.from_settings(create=False, **options)
            else:
                store = keystore
                if isinstance(keystore, Engine | str) or is_async_engine(keystore):
                    store = SqlKeyStore(keystore, create=False)  # type: ignore[arg-type]
                existing_installation(cast(KeyStore, store))
                vault = cls(kms, store, **options)
        finally:
            UPGRADING.reset(token)
        with vault:
            upgrade = vault._ring.heads.upgrade(
                vault._options.now,
                progress,
                installation_facts(vault._options.propagation_interval),
            )
            vault._erasure.record_legacy_erasures()
            return upgrade

    def verify_heads(self) -> HeadCheck:
        """Check the MAC of every subject head and look for key rows whose ref has no head
        (admin operation, read-only: ``ccvault verify-heads``). Reads and writes already treat
        each ref this reports as shredded and log it at ERROR when they meet it; this finds
        them all at once. One key-store query per 500 heads, and one for key rows outside
        their fence."""
        return self._ring.heads.verify()


def _refuse_empty_store(url: str) -> None:
    probe = SqlKeyStore(url, create=False)
    try:
        if probe.installation() is None:
            _new_ledgered_installation(probe, "", "", None)
    finally:
        probe.close()


def _new_ledgered_installation(
    store: KeyStore, ledger: LedgerSink | str, new_id: str, create: bool | None
) -> None:
    """An empty key store beside a ledger becomes an installation only when asked (DESIGN.md,
    lifecycle rule 2: a mistyped URL never becomes a fresh installation), and only beside a
    ledger that holds nothing of anyone else's."""
    if create is not True:
        where = store.location if isinstance(store, SqlKeyStore) else repr(store)
        raise ConfigurationError(
            f"no ccvault installation at {where}, and a ledger is configured: an empty key store "
            "is not made a new installation unless asked (Vault(..., create=True), "
            "Vault.from_settings(create=True)); is CCVAULT_KEYSTORE_URL right?"
        )
    check_new_installation(ledger, new_id)
