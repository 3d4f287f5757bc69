"""Owns retention period secrets as the write path meets them (DESIGN.md, lifecycle rule 7):
the period an event time falls in, its ``ccvault_keys`` row found or created, the row's ref
checked, its secret unwrapped and cached. Must not destroy a period (enforcement does, in the
erasure journal's transaction) nor derive value keys (the key ring does).

A period row: kind ``period``, key id = the 16-byte period id (random, chosen by its creator),
version 1, label ``<category>/<start date>`` (unique per kind, label and version, so racing
creators agree on one row), ``ref`` = :func:`~ccvault.retention.period_ref`, bound in the wrap's
associated data. A writer looks the row up by its label and checks the stored ref against the
ref it computes: a row whose ref differs (edited, or the tz database moved the period's bounds)
is refused, never written under. Expiry keeps the row as a tombstone: a write into it is a
:class:`RetentionExpiredError` and it is never re-created.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from hmac import compare_digest
from typing import Final, overload

from .._repr import safe_repr
from .._secret import SecretKey
from ..crypto._primitives import random_bytes
from ..errors import ConfigurationError, DecryptionError, KeyStoreError, RetentionExpiredError
from ..keystore._cache import TtlCache
from ..keystore._protocol import KeyStore
from ..keystore._records import KeyKind, KeyRecord, State
from ..retention import Category, RetentionPolicy, check_event_time, period_label, period_of
from ..retention import period_ref as compute_period_ref
from ._epochs import Epochs
from ._options import VaultOptions

__all__ = ["PERIOD_VERSION", "PeriodSecret", "Periods"]

PERIOD_VERSION: Final = 1
"""The version of every period row (a period secret is never rotated, only re-wrapped)."""

_UTC: Final = timezone.utc


@dataclass(frozen=True, slots=True)
class PeriodSecret:
    """A live period: its id (the value header's period id), label, ref and secret."""

    period_id: bytes
    label: str
    ref: bytes
    secret: SecretKey

    @safe_repr
    def __repr__(self) -> str:
        return f"PeriodSecret(label={self.label!r})"


class Periods:
    """Period secrets for writing: :meth:`for_write` by category and event time."""

    def __init__(self, store: KeyStore, epochs: Epochs, options: VaultOptions) -> None:
        self._store = store
        self._epochs = epochs
        self._options = options
        self._cache: TtlCache[str, PeriodSecret] = TtlCache(
            4096, options.cache_ttl, options.monotonic
        )
        self._lock = threading.Lock()

    def category(self, name: object) -> Category:
        """The policy's category ``name``: TypeError for a non-str, ConfigurationError when the
        vault has no policy or the policy no such category."""
        if not isinstance(name, str):
            raise TypeError(f"retention must be a category name (str), not {type(name).__name__}")
        policy: RetentionPolicy | None = self._options.retention_policy
        if policy is None:
            raise ConfigurationError(
                f"retention={name!r} needs a retention policy: Vault(retention_policy=...) or "
                "CCVAULT_RETENTION_POLICY (docs/retention.md)"
            )
        try:
            return policy.category(name)
        except KeyError:
            known = ", ".join(policy.names) or "none"
            raise ConfigurationError(
                f"retention={name!r} names no category of the retention policy (it has: {known})"
            ) from None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._options.now(), _UTC)

    @overload
    def for_write(self, category: Category, event_time: datetime | None) -> PeriodSecret: ...

    @overload
    def for_write(
        self, category: Category, event_time: datetime | None, *, create: bool
    ) -> PeriodSecret | None: ...

    def for_write(
        self, category: Category, event_time: datetime | None, *, create: bool = True
    ) -> PeriodSecret | None:
        """The live period of ``event_time`` (None: the vault clock's now), created on first
        use (``create=False``: None when it has no row yet — a dry run). ValueError for a naive
        time or one more than one period in the future; :class:`RetentionExpiredError` for a
        period already expired (decided from time) or tombstoned."""
        now = self.now()
        if event_time is None:
            event_time = now
        elif not isinstance(event_time, datetime):
            raise TypeError(
                f"retention_from must be an aware datetime, not {type(event_time).__name__}"
            )
        elif event_time.tzinfo is None or event_time.utcoffset() is None:
            raise ValueError(
                "retention_from is a naive datetime: give it a time zone (datetime.now(UTC)), "
                "its period depends on it"
            )
        if check_event_time(category, event_time, now):
            raise RetentionExpiredError(
                f"the {category.name!r} period of this event time has already expired: "
                "nothing was written"
            )
        period = period_of(category, event_time)
        label = period_label(period)
        cached = self._cache.get(label)
        if cached is not None:
            return cached
        ref = compute_period_ref(period)
        rec = self._store.latest_key(KeyKind.PERIOD, label)
        if rec is None and not create:
            return None
        if rec is None:
            self._options.writable("create retention periods")
            rec = self._epochs.with_fresh_epoch(
                lambda: self._store.insert_key_if_absent(
                    self._epochs.new_record(
                        KeyKind.PERIOD, random_bytes(16), PERIOD_VERSION, label=label, ref=ref
                    )[0]
                )
            )
        secret = PeriodSecret(rec.key_id, label, ref, self.unwrap(rec, label, ref))
        with self._lock:
            self._cache.put(label, secret)
        return secret

    def unwrap(self, rec: KeyRecord, label: str, ref: bytes | None) -> SecretKey:
        """The secret of period row ``rec``; RetentionExpiredError for a tombstone,
        KeyStoreError for a row whose ref is not ``ref`` (when given) or that does not
        authenticate."""
        if rec.state == State.DESTROYED:
            raise RetentionExpiredError(
                f"retention period {label} has expired (its secret is destroyed): nothing "
                "was written"
            )
        if ref is not None and (rec.ref is None or not compare_digest(rec.ref, ref)):
            raise KeyStoreError(
                f"the key-store record of retention period {label} does not match the period "
                "the policy computes (its ref differs: the row was edited, or the time-zone "
                "database moved the period's bounds; docs/retention.md, 'Retention time'): "
                "nothing was written"
            )
        if rec.version != PERIOD_VERSION or len(rec.key_id) != 16:
            raise KeyStoreError(f"the key-store record of retention period {label} is damaged")
        try:
            return self._epochs.unwrap_record(rec)
        except DecryptionError:
            pass
        raise KeyStoreError(
            f"the key-store record of retention period {label} does not authenticate"
        )

    def forget(self, period_ids: set[bytes] | None = None) -> None:
        """Drop cached periods (``None``: all; else those of ``period_ids``): an expiry."""
        with self._lock:
            if period_ids is None:
                self._cache.clear()
            else:
                self._cache.discard_where(lambda _label, p: p.period_id in period_ids)
