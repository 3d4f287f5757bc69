"""Owns the epoch lifecycle: rotation (re-wrap, quarantine), destruction after the backup window
with the KMS roots, extra KMS wraps, and the epoch report. Must not cache keys nor touch subject
heads: it moves wrapped key rows from one epoch to the next and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

from .._secret import SecretKey
from ..crypto._wrap import UnwrapError, unwrap_key, wrap_key
from ..errors import ConfigurationError, KmsError, KmsUnavailableError
from ..keystore._protocol import KeyStore
from ..keystore._records import EpochRecord, KeyRecord, State
from ..kms._multi import kms_by_id
from ..kms._protocol import Kms, RootState, WrappedKey
from ._epochs import Epochs
from ._options import Progress, VaultOptions

__all__ = ["EpochInfo", "Rotation", "RotationReport"]

log = logging.getLogger("ccvault")

_BATCH = 500

_DESTROY_JOB_INTERVAL: Final = timedelta(days=1)
"""``destroy_epochs()`` runs daily: an epoch may be destroyed up to this long after it is due."""

_GONE = (RootState.PENDING_DELETION, RootState.DESTROYED, RootState.UNKNOWN)


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


class Rotation:
    """Rotation and destruction of epochs (see :meth:`Vault.rotate_epoch` and
    :meth:`Vault.destroy_epochs` for the behaviour; this is where it is done)."""

    def __init__(self, kms: Kms, store: KeyStore, epochs: Epochs, options: VaultOptions) -> None:
        self._kms = kms
        self._store = store
        self._epochs = epochs
        self._options = options

    def rotate(self, progress: Progress | None = None) -> RotationReport:
        """Start a new epoch and re-wrap every live key under it, or finish an interrupted
        rotation."""
        self._options.writable("rotate the epoch")
        current = self._store.active_epoch()
        if current is not None and self._store.rewrap_pending() == current.seq:
            self._epochs.set_active(current)
            done, bad = self._rewrap_under(current, progress, self._live_keys_before(current.seq))
            log.info("epoch rotation finished", extra={"epoch_seq": current.seq, "rewrapped": done})
            return RotationReport(current.seq, done, resumed=True, quarantined=bad)
        seq = (current.seq if current else 0) + 1
        total = sum(self._store.live_keys_by_epoch().values())  # all older than the new epoch
        epoch = self._epochs.create(seq, rewrap_pending=True)
        self._epochs.set_active(epoch)
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
        new_aead = self._epochs.aead(epoch)
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
                binding = self._epochs.binding(rec, epoch.epoch_id)
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
        aead = self._epochs.aead(owner)
        try:
            binding = self._epochs.binding(rec, owner.epoch_id)
            return SecretKey(unwrap_key(aead, wrapped, commit, binding))
        except UnwrapError:
            return None

    def destroy(
        self, *, dry_run: bool, progress: Progress | None, accept_unreadable: bool
    ) -> list[int]:
        """Destroy the epochs retired longer than the backup window (see
        :meth:`Vault.destroy_epochs`)."""
        if not dry_run:
            self._options.writable("destroy epochs")
        now = self._options.now()
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
                self._epochs.forget(record.epoch_id)
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
        if self._options.per_epoch_roots:
            self._destroy_dead_roots()
        return destroyed

    def _destroy_horizon(self) -> float:
        """Seconds an epoch stays retired before :meth:`destroy` destroys it: the backup
        retention, and never less than a day nor than this process's cache TTL plus KMS grace
        (whatever the attributes were set to after construction): processes that have not seen
        the rotation yet still write keys under a just-retired epoch."""
        from .._settings import MIN_BACKUP_RETENTION

        o = self._options
        return max(
            o.backup_retention.total_seconds(),
            MIN_BACKUP_RETENTION.total_seconds(),
            o.cache_ttl + o.kms_grace_period,
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

    def infos(self, *, check_roots: bool = False) -> list[EpochInfo]:
        """Every epoch, oldest first, with its live keys and due dates (:meth:`Vault.epochs`)."""
        records = self._store.epochs()
        counts = self._store.live_keys_by_epoch()
        held = self._store.quarantined_keys_by_epoch()
        rotation = self._options.epoch_rotation_period.total_seconds()
        retention = self._options.backup_retention.total_seconds()
        alive = _live_roots(records)
        backends = kms_by_id(self._kms)
        out = []
        for e in records:
            fates: tuple[str, ...] = ()
            if check_roots and self._options.per_epoch_roots and e.state == State.DESTROYED:
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
        """Quarantined key rows under an epoch not destroyed yet, or under no epoch."""
        gone = {e.epoch_id for e in self._store.epochs() if e.state == State.DESTROYED}
        held = self._store.quarantined_keys_by_epoch()
        return sum(n for epoch_id, n in held.items() if epoch_id not in gone)

    def add_kms_wraps(self) -> int:
        """Wrap every live epoch under the MultiKms members that hold no wrap of it yet."""
        self._options.writable("add KMS wraps")
        backends = kms_by_id(self._kms)
        if len(backends) < 2:
            raise ConfigurationError("add_kms_wraps needs a MultiKms")
        added = 0
        per_epoch_roots = self._options.per_epoch_roots
        for record in self._store.epochs():
            if record.state == State.DESTROYED:
                continue
            present = {w.kms_id for w in record.wraps}
            missing = [b for kms_id, b in backends.items() if kms_id not in present]
            if not missing:
                continue
            key = self._epochs.unwrap_epoch(record)
            context = self._epochs.context(record.epoch_id)
            wraps = [
                m.wrap(key, context=context, root_id=m.new_root() if per_epoch_roots else None)
                for m in missing
            ]
            self._store.add_epoch_wraps(record.epoch_id, wraps)
            added += len(wraps)
        return added

    def erasure_horizon(self, epoch: EpochRecord, shredded_at: datetime) -> datetime:
        """The date after which no backup of the key store can bring back what a shred under
        ``epoch`` destroyed, under the operating assumptions of docs/security.md ("Erasure
        horizon"): the epoch retires when its rotation is due — or, already overdue at the shred,
        within one rotation period of it —, is destroyed by the daily job once the backup window
        has passed, and its roots are then beyond recall after the KMS's own waiting period."""
        period = self._options.epoch_rotation_period
        retires = datetime.fromtimestamp(epoch.created_at, tz=timezone.utc) + period
        if retires <= shredded_at:  # rotation overdue: its date says nothing any more
            retires = shredded_at + period
        return (
            retires
            + self._options.backup_retention
            + _DESTROY_JOB_INTERVAL
            + self._kms.root_destruction_delay
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
