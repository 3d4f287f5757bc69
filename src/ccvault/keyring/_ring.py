"""Owns the keys this process holds: subject refs, write keys by ref, value keys by header (with
tombstones), shred fences, batched load-or-create, vault-wide leases, blind-index keys and the
after-shred hook registry. Must not talk to the KMS (epochs do) nor destroy keys (erasure does).

This is the interface the SQLAlchemy integration uses; its read and write loops bind
:meth:`KeyRing.lookup`, :meth:`KeyRing.keys` and :meth:`KeyRing.key_for_write` once per batch.
Each of them (and :meth:`KeyRing.keys_for_write`, :meth:`KeyRing.warm`) first checks the
invalidation channel (``_channel.py``): a poll when one is due, so that a key cached here is
never used longer than the installation's propagation bound after a shred elsewhere.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final, NoReturn

from .._repr import safe_repr
from .._secret import SecretKey
from .._sentinels import EXPIRED, NO_SUBJECT, SHREDDED, Sentinel
from ..crypto import _format as fmt
from ..crypto._blind import BlindIndexer, Normalizer
from ..crypto._primitives import Aead, HmacSha256, random_chunks
from ..crypto._subject import SubjectType
from ..errors import (
    DecryptionError,
    KeyStoreError,
    RetentionExpiredError,
    SubjectShreddedError,
)
from ..keystore._cache import Clock, TtlCache
from ..keystore._protocol import KeyStore
from ..keystore._records import HeadRecord, KeyKind, KeyRecord, State
from ._blind import BlindIndexes
from ._channel import Invalidations, StoreProbes, StoreRestoredHooks
from ._epochs import NO_REF, Epochs
from ._heads import HEADLESS, Heads
from ._hooks import Hooks
from ._leases import VaultwideKeys
from ._options import Installation, VaultOptions
from ._periods import PERIOD_VERSION, Periods, PeriodSecret

__all__ = [
    "AfterShred",
    "AfterShredHooks",
    "AfterShredMany",
    "KeyRing",
    "ShredPreviewHook",
    "Tombstone",
]

_BATCH = 500
_LOAD = 10_000  # subjects per load-or-create: one read, one creation transaction (of 500s)
_FENCE_SECONDS = 86_400.0
VAULTWIDE_NO_RETENTION: Final = (
    "vault-wide values (NO_SUBJECT) take no retention: a retention period's key is derived from "
    "a subject's key (docs/retention.md, 'Values and columns')"
)
_PERIOD_AT: Final = fmt.SUITE1_HEADER_BYTES  # where a suite-2 header's period id starts

AfterShred = Callable[[object], Iterable[tuple[str, str]]]
"""An after-shred hook: called with the subject after a committed shred (and again by the
erasure's completion); returns (table, context label) of each blind-index column it swept, or
raises ErasureIncompleteError for those it could not."""

AfterShredMany = Callable[[Sequence[object]], Iterable[tuple[str, str]]]
"""The batched form of an after-shred hook (``shred_many``): called once with the subjects of a
committed batch, it clears what the hook clears for each of them; returns (table, context label)
of each column it swept for all of them, or raises ErasureIncompleteError for those it could
not (for every subject of the call)."""

ShredPreviewHook = Callable[[object], object]
"""The dry run of an after-shred hook: called with the subject, it reads what the hook would
clear and writes nothing; returns the erasure part's ``EnginePreview`` (a type this layer does
not know: the erasure part checks it)."""


class Tombstone:
    """Cached tombstone: the key id is known and its material destroyed by a shred.

    It has a key's ``ref`` and ``checked`` attributes and ``aead = None``, so readers handle it
    like a key until the point where a key would decrypt; there they read ``sentinel`` (what a
    column read returns) and ``error`` (what a strict read raises)."""

    __slots__ = ("checked", "ref")
    aead = None
    sentinel: Sentinel = SHREDDED
    error: type[Exception] = SubjectShreddedError

    def __init__(self, ref: bytes) -> None:
        self.ref = ref
        self.checked: object = None

    def __repr__(self) -> str:
        return "<shredded>"


class Expired(Tombstone):
    """Cached outcome of a suite-2 header whose retention period is tombstoned and whose
    subject holds no held key for it: reads as EXPIRED (its subject's ref still checked first:
    a moved value is no expiry)."""

    __slots__ = ()
    sentinel = EXPIRED
    error = RetentionExpiredError

    def __repr__(self) -> str:
        return "<expired>"


class AfterShredHooks(Hooks[AfterShred]):
    """The registry of after-shred hooks: integrations register what they must clear of a
    subject after a shred, each with an optional dry run of it (``preview``) and an optional
    batched form (``many``, what ``shred_many`` calls once per batch); the erasure part runs them
    in the order they were added (iterating gives the hooks, :meth:`previews` their dry runs,
    :meth:`many` a hook's batched form)."""

    __slots__ = ("_many", "_previews")

    def __init__(self) -> None:
        super().__init__()
        self._previews: dict[AfterShred, ShredPreviewHook] = {}
        self._many: dict[AfterShred, AfterShredMany] = {}

    def add(
        self,
        hook: AfterShred,
        preview: ShredPreviewHook | None = None,
        many: AfterShredMany | None = None,
    ) -> None:
        if preview is not None:
            self._previews[hook] = preview
        if many is not None:
            self._many[hook] = many
        super().add(hook)

    def remove(self, hook: AfterShred) -> None:
        """Remove ``hook``, its dry run and its batched form; one not registered is ignored."""
        super().remove(hook)
        self._previews.pop(hook, None)
        self._many.pop(hook, None)

    def many(self, hook: AfterShred) -> AfterShredMany | None:
        """The batched form ``hook`` was registered with, None when it has none (``shred_many``
        then calls ``hook`` once per subject)."""
        return self._many.get(hook)

    def previews(self) -> list[ShredPreviewHook]:
        """The dry runs of the registered hooks that have one, in the order they were added."""
        previews = self._previews
        return [p for hook in self if (p := previews.get(hook)) is not None]


class KeyRing:
    """Subject refs and the keys of values, cached for ``cache_ttl`` and fenced by shreds.

    * ``subject_ref(s)``/``subject_refs``: the HMAC pseudonym of a subject, cached per Python
      type and value;
    * ``key_for_write``/``keys_for_write``: the key that seals a subject's (or, with
      ``NO_SUBJECT``, a context's vault-wide) values, loading or creating missing subject keys
      500 per key-store round trip;
    * ``lookup()``/``keys(headers)``: value keys by a value's full header (either suite), warm
      from the cache or resolved in batches, shredded ones as :class:`Tombstone`;
    * ``fence``/``evict_subject``/``evict_all``: what a shred does to this process's caches;
      ``after_shred``: the hooks a shred runs;
    * ``invalidations``: the poll of the key store's invalidation channel that evicts what
      other processes shredded; ``store_restored``: the hooks run when it finds the store
      restored under this process; ``store_probes``: what it asks, now and then, to find a
      restore the channel does not show.
    """

    def __init__(
        self,
        store: KeyStore,
        epochs: Epochs,
        installation: Installation,
        options: VaultOptions,
        *,
        ref_key: SecretKey,
        head_key: SecretKey,
    ) -> None:
        self._store = store
        self._epochs = epochs
        self._options = options
        self._subject_type = installation.subject_type
        ttl, size, monotonic = options.cache_ttl, options.cache_max_entries, options.monotonic
        self._refs: TtlCache[Hashable, bytes] = TtlCache(size, ttl, monotonic)
        self._write_keys: TtlCache[bytes, fmt.ValueKey] = TtlCache(size, ttl, monotonic)
        # value keys (and tombstones) by value header: what a reader slices off a value
        self._read_keys: TtlCache[bytes, fmt.ValueKey | Tombstone] = TtlCache(size, ttl, monotonic)
        # the subject key rows behind the write keys, with (in a vault with a retention policy)
        # their key material once it was in hand: a period key is derived from it without
        # unwrapping the row again; dropped wherever the write keys are (fence, evictions, TTL)
        self._write_recs: TtlCache[bytes, _WriteRecord] = TtlCache(size, ttl, monotonic)
        self._keep_material = options.retention_policy is not None
        # suite-2 write keys by (subject ref, period id)
        self._period_keys: TtlCache[tuple[bytes, bytes], fmt.ValueKey] = TtlCache(
            size, ttl, monotonic
        )
        # the suite-2 headers cached per subject ref (read and write): a shred evicts them at
        # once without a scan (DESIGN.md rule 7: derived and held keys go with their subject)
        self._derived: dict[bytes, set[bytes]] = {}
        # Refs shredded by this process: a key read that started before the shred committed must
        # not put the key back into a cache after shred() cleared it.
        # Kept far longer than any cached key, so a read stalled in the KMS past cache_ttl
        # still cannot re-cache a key shredded meanwhile.
        self._fenced: TtlCache[bytes, bool] = TtlCache(size, max(ttl, _FENCE_SECONDS), monotonic)
        self._cache_lock = threading.Lock()
        # Write keys by subject (its ref-cache key: exact type and value) with the expiry of
        # their write-key cache entry: key_for_write's one lookup instead of the ref and
        # write-key caches. Emptied by every eviction and fence, under the cache lock; a fill
        # stores nothing if _by_subject_fill moved since it began (an eviction in between).
        self._by_subject: dict[Hashable, tuple[float, fmt.ValueKey]] = {}
        self._by_subject_fill = 0
        # Bumped by evict_all: a load that started before it does not cache what it read.
        self._generation = 0
        self._ref_mac = HmacSha256(ref_key.reveal())
        self.heads = Heads(store, installation.raw, head_key, monotonic)
        self.after_shred = AfterShredHooks()
        self._vaultwide = VaultwideKeys(store, epochs, options, self.value_key)
        self._blind = BlindIndexes(store, epochs, options)
        # the period secrets the write path uses (dropped with an expiry, like derived keys)
        self.periods = Periods(store, epochs, options)
        self.invalidations = Invalidations(
            store,
            installation,
            options,
            evict_refs=self.evict_subjects,
            evict_all=self.evict_all,
            evict_periods=self.evict_periods,
            evict_derived=self.evict_derived,
        )
        self._check = self.invalidations.check
        self._monotonic = options.monotonic

    @property
    def store_restored(self) -> StoreRestoredHooks:
        """The hooks run when the poll finds the key store restored under this process."""
        return self.invalidations.store_restored

    @property
    def store_probes(self) -> StoreProbes:
        """The probes a poll runs every ``ledger_check_interval``: one that finds the key store
        behind (restored under an idle process) makes the poll handle it as a restore."""
        return self.invalidations.store_probes

    @property
    def subject_type(self) -> SubjectType:
        return self._subject_type

    # -- subject refs ----------------------------------------------------------------------------

    def subject_ref(self, subject: object) -> bytes:
        """The 32-byte ref of ``subject``; TypeError for a subject of another type, or None."""
        cache_key = _ref_cache_key(subject)
        if cache_key is not None:
            ref = self._refs.get(cache_key)
            if ref is not None:
                return ref
        return self._new_ref(subject, cache_key)

    def subject_refs(self, subjects: Iterable[object]) -> list[bytes]:
        """:meth:`subject_ref` of each subject, in order, through one pass over the cache."""
        subjects = list(subjects)
        cache_keys = [_ref_cache_key(s) for s in subjects]
        cached = self._refs.get_many([_UNCACHEABLE if k is None else k for k in cache_keys])
        out: list[bytes] = []
        entries: list[tuple[Hashable, bytes]] = []  # the refs computed here, cached at the end
        made: dict[Hashable, bytes] = {}  # ... and by cache key, for a subject given twice
        for subject, cache_key, ref in zip(subjects, cache_keys, cached, strict=True):
            if ref is None:
                ref = made.get(cache_key) if cache_key is not None else None
                if ref is None:
                    ref = self._ref_entries(subject, cache_key, entries)
                    if cache_key is not None:
                        made[cache_key] = ref
            out.append(ref)
        if entries:
            self._refs.put_many(entries)
        return out

    def _new_ref(self, subject: object, cache_key: Hashable | None) -> bytes:
        """The ref of a subject not in the cache, cached under ``cache_key`` and under every
        spelling a database returns the subject in (a UUID written as a ``uuid.UUID`` reads
        back from SQLite as 32 hex digits): the first read of rows just written finds the ref
        of each row's subject cached instead of computing an HMAC per row."""
        entries: list[tuple[Hashable, bytes]] = []
        ref = self._ref_entries(subject, cache_key, entries)
        self._refs.put_many(entries)
        return ref

    def _ref_entries(
        self, subject: object, cache_key: Hashable | None, entries: list[tuple[Hashable, bytes]]
    ) -> bytes:
        """The ref of ``subject`` (its HMAC), with the ref cache's entries for it appended to
        ``entries``: under ``cache_key`` and every spelling of the subject (:meth:`_new_ref`)."""
        canonical = self._subject_type.canonical(subject)
        ref = self._ref_mac(canonical)
        if cache_key is not None:
            entries.append((cache_key, ref))
        for spelling in self._subject_type.spellings_of(subject, canonical):
            spelling_key = _ref_cache_key(spelling)
            if spelling_key is not None and spelling_key != cache_key:
                entries.append((spelling_key, ref))
        return ref

    # -- keys for writing ------------------------------------------------------------------------

    def key_for_write(self, subject: object, context: str) -> fmt.ValueKey:
        """The key that seals ``subject``'s values (for integrations that seal many columns of a
        row: look the key up once, then ``key.seal(data, context_lp)`` per column);
        SubjectShreddedError for a shredded subject."""
        now = self._monotonic()
        if now >= self.invalidations.next_poll:  # check() inlined: a poll is due
            now = self._check()
        if subject is NO_SUBJECT:
            return self._vaultwide.key(context)
        kind = type(subject)
        cache_key = (
            subject.int  # type: ignore[attr-defined]  # inline _ref_cache_key: the hot path
            if kind is uuid.UUID
            else subject
            if kind is str
            else _ref_cache_key(subject)
        )
        found = self._by_subject.get(cache_key)
        if found is not None and now < found[0]:
            key = found[1]
            if key.checked is not subject:
                key.checked = subject  # this subject's, as below: its readers need not HMAC
            return key
        return self._subject_key_for_write(subject, cache_key)

    def _subject_key_for_write(self, subject: object, cache_key: Hashable | None) -> fmt.ValueKey:
        """:meth:`key_for_write` past ``_by_subject``: through the ref and write-key caches
        (loading or creating the key), then remembered by subject until the write-key cache
        entry's own expiry, unless an eviction or fence came in between."""
        fill = self._by_subject_fill
        ref = self.subject_ref(subject)
        key = self._subject_write_key(ref)  # the write-key cache first, then the store
        if key.checked is not subject:
            key.checked = subject  # found by this subject's ref: its readers need not HMAC
        if cache_key is not None:
            self._remember_by_subject([(cache_key, ref, key)], fill)
        return key

    def _forget_by_subject(self) -> None:
        """Empty ``_by_subject`` (an eviction or fence); the caller holds the cache lock. A
        fill that began before this does not store what it found."""
        self._by_subject_fill += 1
        self._by_subject.clear()

    def keys_for_write(self, subjects: Iterable[object]) -> dict[object, fmt.ValueKey]:
        """Write keys of many subjects (creating missing ones in batches), by subject value:
        :meth:`keys_for_rows` of the distinct subjects.

        Shredded subjects are left out; wrong subject types (None too) raise TypeError."""
        # Deduplicated by type and value: True == 1 in Python, yet True is no int subject and
        # must reach the type check instead of sharing 1's key.
        unique = list({(type(s), s): s for s in subjects}.values())
        if any(s is None for s in unique):
            _ref_cache_key(None)  # the TypeError every subject lookup raises for None
        keys = self.keys_for_rows(unique)
        return {s: key for s, key in zip(unique, keys, strict=True) if key is not None}

    def keys_for_rows(self, subjects: Sequence[object]) -> list[fmt.ValueKey | None]:
        """:meth:`keys_for_write` for a statement's rows: the write key of each row's subject, in
        row order; None for a row whose subject is None or shredded; wrong subject types raise
        TypeError. A UUID or str subject whose write key is remembered by subject (as
        :meth:`key_for_write` remembers it) costs one dict lookup; the others go through the ref
        and write-key caches, each ref's key loaded once, and are remembered for the next
        statement. No subject value is hashed (a UUID hashes in Python, once per dict it
        enters): refs are found by their cache keys, keys by ref."""
        now = self._check()
        by_subject = self._by_subject
        out: list[fmt.ValueKey | None] = []
        append = out.append
        missed: list[tuple[int, Hashable | None]] = []  # (row, cache key: UUID and str only)
        for subject in subjects:
            kind = type(subject)
            if kind is uuid.UUID:
                cache_key: Hashable | None = subject.int  # type: ignore[attr-defined]
            elif kind is str:
                cache_key = subject
            else:  # None, other types (and wrong ones): below, not remembered
                cache_key = None
            found = None if cache_key is None else by_subject.get(cache_key)
            if found is not None and now < found[0]:
                key = found[1]
                if key.checked is not subject:
                    key.checked = subject  # as keys_for_write: its readers need not HMAC
                append(key)
            else:
                if subject is not None:
                    missed.append((len(out), cache_key))
                append(None)
        if missed:
            fill = self._by_subject_fill
            rest = [subjects[i] for i, _ in missed]
            refs = self.subject_refs(rest)
            keys = self._write_keys_of(refs)
            remember: list[tuple[Hashable, bytes, fmt.ValueKey]] = []
            for (i, cache_key), subject, ref in zip(missed, rest, refs, strict=True):
                written = keys.get(ref)
                if written is not None:
                    written.checked = subject  # found by this subject's ref: no HMAC to read
                    out[i] = written
                    if cache_key is not None:
                        remember.append((cache_key, ref, written))
            if remember:
                self._remember_by_subject(remember, fill)
        return out

    def _remember_by_subject(
        self, found: list[tuple[Hashable, bytes, fmt.ValueKey]], fill: int
    ) -> None:
        """Remember write keys found through the caches by subject (cache key, ref, key), each
        until its write-key cache entry's expiry, within the cache bound; nothing if an eviction
        or fence came since ``fill`` was read."""
        expiries = self._write_keys.expiries([ref for _, ref, _ in found])
        entries = [
            (cache_key, ref, entry[0], key)
            for (cache_key, ref, key), entry in zip(found, expiries, strict=True)
            if entry is not None and entry[1] is key
        ]
        room = self._options.cache_max_entries
        with self._cache_lock:
            if fill != self._by_subject_fill:
                return
            if len(self._fenced):  # no per-entry lookup while nothing is fenced
                fenced = self._fenced.get
                entries = [e for e in entries if fenced(e[1]) is None]
            by_subject = self._by_subject
            if len(by_subject) + len(entries) > room:
                by_subject.clear()
            for cache_key, _, deadline, key in entries[:room]:
                by_subject[cache_key] = (deadline, key)

    def write_keys(self, refs: Iterable[bytes]) -> dict[bytes, fmt.ValueKey]:
        """Write keys of many subjects by ref (:meth:`subject_refs`), creating missing ones 10,000
        per key-store transaction; shredded subjects are left out (``encrypt_many``)."""
        self._check()
        return self._write_keys_of(refs)

    def _write_keys_of(self, refs: Iterable[bytes]) -> dict[bytes, fmt.ValueKey]:
        unique = list(dict.fromkeys(refs))
        out: dict[bytes, fmt.ValueKey] = {}
        cold = []
        for ref, key in zip(unique, self._write_keys.get_many(unique), strict=True):
            if key is not None:
                out[ref] = key
            else:
                cold.append(ref)
        for i in range(0, len(cold), _LOAD):
            out.update(self._load_or_create(cold[i : i + _LOAD]))
        return out

    def warm(self, subjects: Iterable[object]) -> int:
        """Load (or create) and cache the keys of many subjects in batches (:meth:`Vault.warm`)."""
        self._options.writable("warm keys (it creates missing ones)")
        self._check()
        refs = list(dict.fromkeys(self.subject_refs(subjects)))
        ready = 0
        todo = []
        for ref in refs:
            if self._write_keys.get(ref) is not None:
                ready += 1
            else:
                todo.append(ref)
        for i in range(0, len(todo), _LOAD):
            ready += len(self._load_or_create(todo[i : i + _LOAD]))
        return ready

    def _subject_write_key(self, ref: bytes) -> fmt.ValueKey:
        key = self._write_keys.get(ref)
        if key is not None:
            return key
        keys = self._load_or_create([ref])
        if ref not in keys:
            raise SubjectShreddedError
        return keys[ref]

    def _load_or_create(self, refs: Sequence[bytes]) -> dict[bytes, fmt.ValueKey]:
        """Current keys of ``refs`` (creating missing ones); shredded subjects are left out."""
        generation = self._generation
        found = self._store.subject_keys(refs)
        records: dict[bytes, KeyRecord] = {}
        for ref, (head, rec) in found.items():
            usable = self.heads.usable_key(ref, head, rec)
            if usable is not None:
                records[ref] = usable
        missing = [ref for ref in refs if ref not in found]
        # The keys this call created, by key id: a key that won its subject's head is used as
        # it was made, never unwrapped again from the row just written.
        made: dict[bytes, tuple[KeyRecord, bytes]] = {}
        if missing:
            self._options.writable("create keys for new subjects")
            now = self._options.now
            # the heads this call sealed: read back as written, they are not MACed again
            sealed: dict[bytes, tuple[bytes, str, int, bytes]] = {}
            seal = self.heads.recording_sealer(sealed)

            def create() -> dict[bytes, tuple[HeadRecord, KeyRecord | None]]:
                made.clear()  # a retry under a fresh epoch wraps new keys
                sealed.clear()
                key_ids = random_chunks(16, len(missing))
                named = [(kid, 1, ref) for kid, ref in zip(key_ids, missing, strict=True)]
                fresh = self._epochs.new_records(KeyKind.SUBJECT, named)
                made.update((rec.key_id, (rec, material)) for rec, material in fresh)
                candidates = [rec for rec, _ in fresh]
                del fresh
                return self._store.create_subject_keys(candidates, now(), seal)

            created = self._epochs.with_fresh_epoch(create)
            usable_key = self.heads.usable_key
            for ref in missing:
                if ref not in created:  # refused: key rows without a head
                    self.heads.report(ref, HEADLESS)
                    continue
                head, rec = created[ref]
                usable = usable_key(ref, head, rec, sealed)
                if usable is not None:
                    records[ref] = usable
        out: dict[bytes, fmt.ValueKey] = {}
        # (ref, key, row, material kept) of each key to cache, cached together below
        entries: list[tuple[bytes, fmt.ValueKey, KeyRecord, SecretKey | None]] = []
        new_read_keys: list[tuple[bytes, fmt.ValueKey]] = []  # keys this call made, by header
        keep = self._keep_material
        material: SecretKey | None = None
        try:
            for ref, rec in records.items():
                ours = made.get(rec.key_id)
                material = None
                if ours is not None and (ours[0] is rec or ours[0] == rec):
                    key = fmt.ValueKey(Aead(ours[1]), rec.key_id, rec.version, ref)
                    new_read_keys.append((key.header, key))
                    if keep:
                        material = SecretKey(ours[1])
                else:
                    key, material = self._value_key(rec, generation)
                entries.append((ref, key, rec, material if keep else None))
                out[ref] = key
            with self._cache_lock:
                if generation == self._generation:  # else every key was dropped meanwhile
                    kept = entries
                    if len(self._fenced):  # no per-key lookup while nothing is fenced
                        fenced = self._fenced.get
                        new_read_keys = [e for e in new_read_keys if fenced(e[1].ref) is None]
                        kept = [e for e in entries if fenced(e[0]) is None]
                    if new_read_keys:
                        self._read_keys.put_many(new_read_keys)
                    self._write_keys.put_many((ref, key) for ref, key, _, _ in kept)
                    self._write_recs.put_many(
                        (ref, _WriteRecord(rec, material)) for ref, _, rec, material in kept
                    )
        finally:
            made.clear()  # no key material left in this frame
            entries.clear()
            material = None
        return out

    # -- suite-2 keys (retention periods) --------------------------------------------------------

    def period_key_for_write(self, subject: object, period: PeriodSecret) -> fmt.ValueKey:
        """The suite-2 key that seals ``subject``'s values of retention period ``period``: its
        current data key's key derived with the period secret (docs/format.md, suite 2).
        SubjectShreddedError for a shredded subject; TypeError for a wrong type (vault-wide
        data has no retention)."""
        self._check()
        if subject is NO_SUBJECT:
            raise TypeError(VAULTWIDE_NO_RETENTION)
        ref = self.subject_ref(subject)
        pid = period.period_id
        key = self._period_keys.get((ref, pid))
        if key is not None:
            return key
        generation = self._generation
        entry = self._write_recs.get(ref)
        if entry is None or self._write_keys.get(ref) is None:
            if ref not in self._load_or_create([ref]):
                raise SubjectShreddedError
            entry = self._write_recs.get(ref)
            if entry is None:  # fenced meanwhile: a shred is under way
                raise SubjectShreddedError
        rec, material = entry.rec, entry.material
        if material is None:
            # Not in hand when the write key was loaded (its value key was cached already):
            # unwrapped once, and kept with the write key from now on.
            material = self._epochs.unwrap_record(rec)
            with self._cache_lock:
                if (
                    self._keep_material
                    and self._fenced.get(ref) is None
                    and generation == self._generation
                ):
                    entry.material = material
        key = self._derive(rec, material, period.secret, pid)
        del material
        with self._cache_lock:
            if self._fenced.get(ref) is None and generation == self._generation:
                self._period_keys.put((ref, pid), key)
                self._track(ref, key.header)
        return key

    @staticmethod
    def _derive(
        rec: KeyRecord, material: SecretKey, secret: SecretKey, period_id: bytes
    ) -> fmt.ValueKey:
        """The suite-2 value key of subject key ``material`` (row ``rec``) in ``period_id``."""
        derived = fmt.derive_period_key(
            material.reveal(), secret.reveal(), rec.key_id, rec.version, period_id
        )
        return fmt.ValueKey(Aead(derived), rec.key_id, rec.version, rec.ref or NO_REF, period_id)

    def value_key(self, rec: KeyRecord, generation: int | None = None) -> fmt.ValueKey:
        """The value key of a live subject or vault-wide key row, unwrapped once and cached by
        its header (unless every key was dropped since ``generation``, when the caller read the
        row); DecryptionError for a row no value header can name or that does not
        authenticate."""
        return self._value_key(rec, generation)[0]

    def _value_key(
        self, rec: KeyRecord, generation: int | None
    ) -> tuple[fmt.ValueKey, SecretKey | None]:
        """:meth:`value_key`, and the row's key material when this call unwrapped it (None
        when the value key was cached)."""
        if generation is None:
            generation = self._generation
        if not _names_value_key(rec.key_id, rec.version):
            raise DecryptionError  # a damaged row: no value can name it, none opens under it
        header = fmt.build_header(fmt.SUITE_AES256GCM, rec.key_id, rec.version)
        cached = self._read_keys.get(header)
        if isinstance(cached, fmt.ValueKey):
            return cached, None
        material = self._epochs.unwrap_record(rec)
        key = fmt.ValueKey(Aead(material.reveal()), rec.key_id, rec.version, rec.ref or NO_REF)
        self._cache_read_key(header, key, generation)
        return key, material

    # -- keys for reading ------------------------------------------------------------------------

    def single_lookup(self) -> tuple[Invalidations, Clock, _CachedAt]:
        """(invalidations, clock, cached) for single values, bound once: with ``now`` the clock's
        reading, and ``now = invalidations.check()`` when ``now >= invalidations.next_poll``,
        ``cached(header, now)`` is the cached key of one value header (:meth:`lookup` for one
        value, with no call between the clock and the cache)."""
        return self.invalidations, self._monotonic, self._read_keys.get

    def lookup(self) -> Callable[[bytes], fmt.ValueKey | Tombstone | None]:
        """Cached keys by a value's full header, for one batch of rows (one clock reading for the
        invalidation check, one for the cache); a miss (cold, expired or unknown) is for
        :meth:`keys`."""
        self._check()
        return self._read_keys.getter()

    def keys(self, headers: Iterable[bytes]) -> dict[bytes, fmt.ValueKey | Tombstone]:
        """The keys of many value headers, with one key-store query per 500 cold ones.

        A header is a value's full header: 22 bytes for suite 1, 38 for suite 2 (a reader
        slices by ``blob[1]``). Suite-2 headers name retention periods, of which none exist yet:
        they are left out, as are unknown ids, non-value keys and keys that fail to unwrap (the
        caller raises DecryptionError for those values only). Shredded ones map to a
        :class:`Tombstone`, and so do live subject keys whose subject head (read in the same
        query) is shredded, fails its MAC or is missing.
        """
        self._check()
        generation = self._generation
        out: dict[bytes, fmt.ValueKey | Tombstone] = {}
        lookup = self._read_keys.getter()
        missing: dict[tuple[bytes, int], bytes] = {}
        suite2: list[tuple[bytes, tuple[bytes, int, bytes]]] = []
        for header in headers:
            cached = lookup(header)
            if cached is not None:
                out[header] = cached
                continue
            pair = fmt.suite1_key_ref(header)
            if pair is not None:
                missing[pair] = header
            else:
                named = fmt.suite2_key_ref(header)
                if named is not None:
                    suite2.append((header, named))
        for i in range(0, len(suite2), _BATCH):
            out.update(self._suite2_keys(suite2[i : i + _BATCH], generation))
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
                    key = self._unwrapped(rec)
                except DecryptionError:
                    continue  # the row does not authenticate: unreadable, whatever its head says
                if rec.kind == KeyKind.SUBJECT and self.heads.fenced_read(rec, head):
                    # A key row that authenticates, under a shredded head (a row restored from a
                    # backup), a head that fails its MAC, or none: read as shredded.
                    out[header] = self._tombstone(header, rec)
                    continue
                self._cache_read_key(header, key, generation)
                out[header] = key
        return out

    def _suite2_keys(
        self, named: Sequence[tuple[bytes, tuple[bytes, int, bytes]]], generation: int
    ) -> dict[bytes, fmt.ValueKey | Tombstone]:
        """Suite-2 headers resolved by one batched lookup of their subject keys, periods and
        held keys (DESIGN.md rule 7: a held key's id is derived from the header). Outcome per
        header, first match wins: the subject key unknown, not a subject key or unreadable —
        left out (DecryptionError); shredded — Tombstone; the period unknown or unreadable —
        left out; the period live — the derived key; tombstoned — the subject's held key for it
        if live, else :class:`Expired`."""
        wanted: set[tuple[bytes, int]] = set()
        for _header, (key_id, version, pid) in named:
            wanted.add((key_id, version))
            wanted.add((pid, PERIOD_VERSION))
            wanted.add((fmt.held_key_id(key_id, version, pid), version))
        rows = self._store.value_keys(list(wanted))
        secrets: dict[bytes, SecretKey | None] = {}
        opened: dict[tuple[bytes, int], SecretKey | None] = {}  # subject keys, once each
        out: dict[bytes, fmt.ValueKey | Tombstone] = {}
        for header, (key_id, version, pid) in named:
            found = rows.get((key_id, version))
            if found is None:
                continue
            rec, head = found
            if rec.kind != KeyKind.SUBJECT:
                continue  # vault-wide values take no retention; other kinds are no value keys
            if rec.state == State.DESTROYED:
                out[header] = self._tombstone(header, rec)
                continue
            if not rec.is_live:
                continue
            if self.heads.fenced_read(rec, head):
                out[header] = self._tombstone(header, rec)
                continue
            period = rows.get((pid, PERIOD_VERSION))
            if period is None or period[0].kind != KeyKind.PERIOD:
                continue  # an unknown period id: a DecryptionError
            prec = period[0]
            ref = rec.ref or NO_REF
            if prec.state == State.DESTROYED:
                held = rows.get((fmt.held_key_id(key_id, version, pid), version))
                hrec = held[0] if held is not None else None
                if hrec is None or hrec.kind != KeyKind.HELD or not hrec.is_live or hrec.ref != ref:
                    expired = Expired(ref)
                    self._read_keys.put(header, expired)
                    out[header] = expired
                    continue
                try:
                    material = self._epochs.unwrap_record(hrec).reveal()
                except DecryptionError:
                    continue
                key = fmt.ValueKey(Aead(material), key_id, version, ref, pid)
            else:
                if pid not in secrets:
                    try:
                        secrets[pid] = self._epochs.unwrap_record(prec)
                    except DecryptionError:
                        secrets[pid] = None
                secret = secrets[pid]
                if secret is None:
                    continue
                if (key_id, version) not in opened:
                    try:
                        opened[(key_id, version)] = self._epochs.unwrap_record(rec)
                    except DecryptionError:
                        opened[(key_id, version)] = None
                subject_key = opened[(key_id, version)]
                if subject_key is None:
                    continue
                key = self._derive(rec, subject_key, secret, pid)
            self._cache_read_key(header, key, generation)
            out[header] = key
        return out

    def _unwrapped(self, rec: KeyRecord) -> fmt.ValueKey:
        material = self._epochs.unwrap_record(rec)
        return fmt.ValueKey(Aead(material.reveal()), rec.key_id, rec.version, rec.ref or NO_REF)

    def _cache_read_key(self, header: bytes, key: fmt.ValueKey, generation: int) -> None:
        with self._cache_lock:
            if generation != self._generation:
                return  # every key was dropped after the caller read this one's row
            if not key.ref or self._fenced.get(key.ref) is None:
                self._read_keys.put(header, key)
                if key.period_id is not None:
                    self._track(key.ref, header)

    def _tombstone(self, header: bytes, rec: KeyRecord) -> Tombstone:
        tombstone = Tombstone(rec.ref or NO_REF)
        self._read_keys.put(header, tombstone)
        return tombstone

    # -- shreds ----------------------------------------------------------------------------------

    def is_shredded(self, subject: object) -> bool:
        """Whether ``subject`` is shredded or treated as such (:meth:`Vault.is_shredded`)."""
        ref = self.subject_ref(subject)
        found = self._store.subject_keys([ref]).get(ref)
        if found is None:
            if self._store.keyed_refs([ref]):
                self.heads.report(ref, HEADLESS)
                return True
            return False
        head, rec = found
        try:
            return self.heads.usable_key(ref, head, rec) is None
        except KeyStoreError:
            return False  # active, but its key row is broken: not a shred

    def fence(self, ref: bytes) -> None:
        """Keep ``ref``'s keys out of every cache of this process from now on (a shred is
        about to destroy them: a read in flight must not cache them again)."""
        with self._cache_lock:
            self._fenced.put(ref, True)
            self._forget_by_subject()

    def evict_subject(self, ref: bytes, keys: Sequence[tuple[bytes, int]] | None = None) -> None:
        """Evict a subject's keys: its write key, and the value keys ``keys`` names as
        (key id, version) pairs (a receipt lists them: no cache scan), or with ``keys=None``
        every value key of the subject, found by scanning the cache."""
        with self._cache_lock:
            self._forget_by_subject()
            self._write_keys.pop(ref)
            self._write_recs.pop(ref)
            self._evict_derived(ref)
            if keys is None:
                self._read_keys.discard_where(lambda _header, key: key.ref == ref)
                return
            for key_id, version in keys:
                if _names_value_key(key_id, version):  # no other pair can be a cached header
                    self._read_keys.pop(fmt.build_header(fmt.SUITE_AES256GCM, key_id, version))

    def evict_subjects(self, refs: set[bytes]) -> None:
        """Fence each ref and evict its keys, one pass over the read-key cache for all of them:
        what the invalidation poll does with subjects shredded elsewhere, and ``shred_many`` with
        a batch whose outcome it does not know."""
        with self._cache_lock:
            self._forget_by_subject()
            for ref in refs:
                self._fenced.put(ref, True)
                self._write_keys.pop(ref)
                self._write_recs.pop(ref)
                self._evict_derived(ref)
            self._read_keys.discard_where(lambda _header, key: key.ref in refs)

    def _track(self, ref: bytes, header: bytes) -> None:
        """Note a cached suite-2 header of ``ref``; the caller holds the cache lock. Entries the
        caches dropped by age are pruned when the index outgrows them."""
        if len(self._derived) >= self._options.cache_max_entries:
            live = self._read_keys.get_many
            for r in list(self._derived):
                headers = self._derived[r]
                kept = {
                    h for h, k in zip(headers, live(list(headers)), strict=True) if k is not None
                }
                kept |= {
                    h for h in headers if self._period_keys.get((r, h[_PERIOD_AT:])) is not None
                }
                if kept:
                    self._derived[r] = kept
                else:
                    del self._derived[r]
        self._derived.setdefault(ref, set()).add(header)

    def _evict_derived(self, ref: bytes) -> None:
        """Drop ``ref``'s suite-2 keys (read and write); the caller holds the cache lock."""
        for header in self._derived.pop(ref, ()):
            self._read_keys.pop(header)
            self._period_keys.pop((ref, header[_PERIOD_AT:]))

    def evict_derived(self, refs: set[bytes]) -> None:
        """Drop the suite-2 keys and outcomes cached for ``refs`` (their held keys were
        destroyed: a hold released), without fencing them: no shred."""
        with self._cache_lock:
            for ref in refs:
                self._evict_derived(ref)
            self._read_keys.discard_where(
                lambda header, key: len(header) == fmt.SUITE2_HEADER_BYTES and key.ref in refs
            )

    def evict_periods(self, period_ids: set[bytes] | None) -> None:
        """Drop every cached key and outcome of the retention periods ``period_ids`` (None:
        of every period): an expiry, here or in another process, or a held key destroyed."""

        def named(header: bytes, _key: object) -> bool:
            return len(header) == fmt.SUITE2_HEADER_BYTES and (
                period_ids is None or header[_PERIOD_AT:] in period_ids
            )

        self.periods.forget(period_ids)
        with self._cache_lock:
            self._read_keys.discard_where(named)
            self._period_keys.discard_where(lambda k, _v: period_ids is None or k[1] in period_ids)
            for headers in self._derived.values():
                headers.difference_update([h for h in headers if named(h, None)])

    def evict_all(self) -> None:
        """Drop every cached ref, key and lease of this process (fences stay); a load already
        under way does not cache what it read."""
        with self._cache_lock:
            self._generation += 1
            self._forget_by_subject()
        self._vaultwide.clear()
        self.periods.forget(None)
        for cache in (self._refs, self._write_keys, self._read_keys):
            cache.clear()
        with self._cache_lock:
            self._write_recs.clear()
            self._period_keys.clear()
            self._derived.clear()

    # -- blind indexes ---------------------------------------------------------------------------

    def blind_indexer(self, label: str, normalizer: Normalizer, length: int) -> BlindIndexer:
        """The blind index of one column as a callable (:meth:`Vault.blind_indexer`)."""
        return self._blind.indexer(label, normalizer, length)

    def searchable_labels(self) -> frozenset[str]:
        """Context labels of every column with blind indexes in this installation."""
        return self._blind.searchable_labels()


_UNCACHEABLE: Final = object()
"""Looked up in place of a subject that has no cache key: never in the cache."""


class _WriteRecord:
    """The subject key row behind a cached write key and, when it was in hand, the row's key
    material (a suite-2 period key is derived from it). Cached, fenced and evicted with the
    write key; its repr names neither the key nor its material."""

    __slots__ = ("material", "rec")

    def __init__(self, rec: KeyRecord, material: SecretKey | None) -> None:
        self.rec = rec
        self.material = material

    @safe_repr
    def __repr__(self) -> str:
        kept = "kept" if self.material is not None else "not kept"
        return f"<write record v{self.rec.version}, material {kept}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a write record cannot be pickled")


# A cache's get with the caller's clock reading: (header, now) -> the cached key or None.
_CachedAt = Callable[[bytes, float], "fmt.ValueKey | Tombstone | None"]


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
        return subject.int  # type: ignore[attr-defined,no-any-return]  # no cast() call: hot
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


def _names_value_key(key_id: bytes, version: int) -> bool:
    """A (key id, version) that a value header can name: a 16-byte id and a version in 1..2^32-1.
    Anything else read from the key store (a damaged or tampered row, or receipt) names none."""
    return len(key_id) == 16 and 1 <= version <= 0xFFFFFFFF
