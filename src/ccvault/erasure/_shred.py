"""Owns shred and its receipts: fence, destroy in one key-store transaction whose last step
appends the receipt to the ledger (ledger first: :class:`~ccvault.erasure.LedgerLink`), evict,
run the after-shred hooks, sign; reading a stored receipt back; and the dry run (``preview``),
which writes nothing. Must not cache keys (the key ring does) nor talk to the KMS or the ledger
itself (the ledger link does). Failpoints (ccvault/_failpoints.py, a test hook):
``after-keystore-commit`` and ``after-sweep-1``; the ledger link has the two around the append.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from .._failpoints import failpoint
from .._secret import SecretKey
from ..audit._receipt import ErasureReceipt, sign_receipt
from ..crypto._primitives import ed25519_public_key
from ..errors import ErasureIncompleteError, KeyStoreError
from ..keyring import Epochs, Installation, KeyRing, Rotation, VaultOptions
from ..keystore._protocol import JournalTxn, KeyStore
from ..keystore._records import (
    EpochRecord,
    ErasureOrigin,
    ErasureRow,
    HeadRecord,
    KeyRecord,
    QueuedErasure,
    State,
)
from ._hold_records import check_text
from ._holds import HeldGuard
from ._link import LedgerLink
from ._preview import EnginePreview, ShredPreview, keys_a_shred_destroys
from ._queue import COMMIT_SLACK, ErasureQueue, Sealed
from ._reconcile import receipt_row
from ._sweep import sweep, warn_unswept

__all__ = ["Erasure", "check_override", "parse_receipt", "requeues", "unparsable_receipt"]

log = logging.getLogger("ccvault")

_PAGE = 500


class Erasure:
    """``shred(subject)``: see :meth:`Vault.shred` for what it promises."""

    def __init__(
        self,
        store: KeyStore,
        ring: KeyRing,
        epochs: Epochs,
        rotation: Rotation,
        installation: Installation,
        options: VaultOptions,
        *,
        receipt_seed: SecretKey,
        link: LedgerLink,
        queue: ErasureQueue,
    ) -> None:
        self._store = store
        self._ring = ring
        self._epochs = epochs
        self._rotation = rotation
        self._installation = installation
        self._options = options
        self._seed = receipt_seed
        self._link = link
        self._queue = queue

    @property
    def installation_id(self) -> str:
        return self._installation.id

    @property
    def receipt_public_key(self) -> bytes:
        """The Ed25519 public key that signs this installation's erasure receipts."""
        return ed25519_public_key(self._seed.reveal())

    def shred(
        self, subject: object, *, override_hold: bool = False, by: str | None = None
    ) -> ErasureReceipt:
        """Fence ``subject``, destroy its keys (keeping tombstones) in the transaction that
        appends the receipt to the ledger, evict them from this process, run the after-shred
        hooks and return the signed receipt. A subject under an active legal hold raises
        :class:`SubjectHeldError` (nothing destroyed) unless ``override_hold``: then the
        override entry (naming ``by``) goes to the ledger right before the receipt."""
        receipt, _ = self.destroy(subject, override_hold=override_hold, by=by)
        self._run_hooks(self._ring.subject_ref(subject), subject, receipt)
        return receipt

    def destroy(
        self, subject: object, *, override_hold: bool = False, by: str | None = None
    ) -> tuple[ErasureReceipt, bool]:
        """:meth:`shred` but the after-shred hooks: the receipt, and whether this call shredded
        the subject (False: the stored receipt of an earlier shred)."""
        self._options.writable("shred")
        check_override(override_hold, by)
        self._link.before_shred()
        ring = self._ring
        ref = ring.subject_ref(subject)
        now = self._options.now()
        guard = HeldGuard(now, override=override_hold, raising=True)
        epoch = self._store.active_epoch() or self._epochs.active()  # fresh, not the cached one

        made: dict[str, ErasureReceipt] = {}  # by its JSON: the journal step and the end reuse it

        def make_receipt(head: HeadRecord | None, keys: Sequence[KeyRecord]) -> str:
            receipt = self.new_receipt(ref, now, epoch, head, keys)
            text = receipt.model_dump_json()
            made[text] = receipt
            return text

        # The subject sealed for the erasure's completion (a ledger is where completions go):
        # sealed before the transaction, queued inside it with the receipt.
        sealed = self._queue.seal(subject, ref, now) if self._link.configured else None
        ring.fence(ref)  # a refused shred (a held subject) leaves it fenced: uncached, not refused
        parsed: tuple[ErasureReceipt, list[tuple[bytes, int]]] | None = None
        try:
            receipt_json, newly = self._shred_ledger_first(
                ref, now, make_receipt, made, sealed, guard, by
            )
            failpoint("after-keystore-commit")
            # Committed (or unknown, when the call failed): nothing may keep this process from
            # dropping the subject's cached keys, so parsing the receipt cannot raise and the
            # eviction runs whatever happened. A receipt this call made is not parsed again.
            mine = made.get(receipt_json)
            parsed = parse_receipt(receipt_json) if mine is None else (mine, destroyed(mine))
        finally:
            ring.evict_subject(ref, None if parsed is None else parsed[1])
        if parsed is None:
            raise unparsable_receipt(ref)
        receipt = parsed[0]
        if newly:
            log.info("subject shredded", extra={"subject_ref": ref.hex()[:16]})
        elif self._link.configured:
            self._requeue(subject, ref, receipt)
        return receipt, newly

    def _requeue(self, subject: object, ref: bytes, receipt: ErasureReceipt) -> None:
        """A repeated shred of an erasure not completed yet queues it again (a replay shreds
        with no subject in hand, a lapsed queue row cannot be opened): its completion can run."""
        if not requeues(self._store.erasure(receipt.receipt_id)):
            return
        now = self._options.now()
        sealed = self._queue.seal(subject, ref, now)
        self._store.queue_erasure(self.requeue_row(receipt, ref, sealed, now))

    def requeue_row(
        self, receipt: ErasureReceipt, ref: bytes, sealed: Sealed, now: float
    ) -> QueuedErasure:
        """The queue row of a repeated shred's erasure (see :func:`requeues`)."""
        # the bound runs from the shred's commit, long past for a repeat
        return self.queue_row(receipt.receipt_id, ref, sealed, receipt.shredded_at.timestamp(), now)

    def queue_row(
        self, receipt_id: str, ref: bytes, sealed: Sealed, shredded: float, now: float
    ) -> QueuedErasure:
        """The queue row of an erasure whose shred commits at (about) ``shredded``."""
        return QueuedErasure(
            receipt_id=receipt_id,
            ref=ref,
            key_id=sealed.key_id,
            key_version=sealed.key_version,
            sealed=sealed.blob,
            due=shredded + self._installation.propagation_bound + COMMIT_SLACK,
            queued_at=now,
        )

    def preview(self, subject: object) -> ShredPreview:
        """What :meth:`shred` would make unreadable now, destroying and writing nothing (a
        read-only vault previews too): the keys it would destroy, read from the key store as its
        transaction would read them, and each attached engine's tables, columns and rows, from
        the dry runs registered beside the after-shred hooks."""
        ring = self._ring
        ref = ring.subject_ref(subject)  # TypeError for a subject of another type
        head, keys = self._store.ref_keys(ref)
        now = self._options.now()
        held = tuple(r.hold_id for r in self._store.holds([ref], unreleased=True) if r.active(now))
        # As the key store's shred decides: a recorded shred returns its receipt and destroys
        # nothing more; otherwise every live or quarantined key row of the ref goes.
        shredded = head is not None and head.state == State.SHREDDED and head.receipt is not None
        engines = []
        for dry_run in ring.after_shred.previews():
            engine = dry_run(subject)
            if not isinstance(engine, EnginePreview):
                raise TypeError(
                    f"a shred preview hook returned {type(engine).__name__}, not EnginePreview"
                )
            engines.append(engine)
        swept = {c.label for e in engines for t in e.tables for c in t.columns if c.blind_index}
        return ShredPreview(
            installation_id=self._installation.id,
            subject_ref=ref.hex(),
            previewed_at=datetime.fromtimestamp(now, tz=timezone.utc),
            # the receipt's subject_was_known: a head with a key lineage (not a version-0 fence)
            subject_known=head is not None and head.current_version != 0,
            already_shredded=shredded,
            keys_to_destroy=() if shredded else keys_a_shred_destroys(keys),
            engines=tuple(engines),
            unswept_indexes=tuple(sorted(ring.searchable_labels() - swept)),
            held=bool(held),
            hold_ids=held,
        )

    def _shred_ledger_first(
        self,
        ref: bytes,
        now: float,
        make_receipt: Callable[[HeadRecord | None, Sequence[KeyRecord]], str],
        made: Mapping[str, ErasureReceipt],
        sealed: Sealed | None,
        guard: HeldGuard,
        by: str | None,
    ) -> tuple[str, bool]:
        """The key store's shred with the hold check (``guard``, first under the ledger lock)
        and the ledger step (and, with ``sealed``, the erasure queued for completion in the
        same transaction); when the ledger has moved past the store (another process crashed
        after its append, or a restore), catch up and retry: the replay may shred this subject
        with the ledger's receipt, which is then returned."""

        def journal(txn: JournalTxn, receipt_json: str) -> None:
            receipt = made[receipt_json]  # the store journals only the receipt just made
            receipt_id = receipt.receipt_id
            overrides = guard.overrides(self._installation.id, [(ref, receipt_id)], by)
            self._link.journal_receipts(txn, [receipt], overrides)
            if sealed is not None:
                now = self._options.now()
                txn.queue_erasure(self.queue_row(receipt_id, ref, sealed, now, now))

        return self._link.ledger_first(
            lambda: self._store.shred(
                ref, now, make_receipt, self._ring.heads.seal, journal, guard=guard
            )
        )

    def receipt(self, subject: object) -> ErasureReceipt | None:
        """The receipt the key store holds for ``subject``'s shred (the one a repeated
        :meth:`shred` returns), or None when no shred of it is recorded. Read-only: it reads the
        subject's head and nothing else, creates nothing, restores nothing, runs no hook.

        The receipt is checked before it is returned: it must parse, verify under this
        installation's receipt key and name this subject's ref, or a KeyStoreError says the
        stored receipt is damaged (never a receipt that is not what shred() signed)."""
        return self.stored_receipt(self._ring.subject_ref(subject))

    def stored_receipt(self, ref: bytes) -> ErasureReceipt | None:
        """:meth:`receipt` by subject ref."""
        return self.receipt_in(ref, self._store.subject_head(ref))

    def receipt_in(self, ref: bytes, head: HeadRecord | None) -> ErasureReceipt | None:
        """The receipt ``head`` (read by the caller) holds for ``ref``, checked as
        :meth:`receipt` checks it."""
        if head is None or head.state != State.SHREDDED or head.receipt is None:
            return None
        parsed = parse_receipt(head.receipt)
        if (
            parsed is None
            or parsed[0].subject_ref != ref.hex()
            or not parsed[0].verify(self.receipt_public_key, installation_id=self._installation.id)
        ):
            raise KeyStoreError(
                f"the erasure receipt the key store holds for subject ref {ref.hex()[:16]} does "
                "not parse or does not verify: the subject-heads row is corrupted or was "
                "tampered with"
            )
        return parsed[0]

    def record_legacy_erasures(self) -> int:
        """Give every receipt the key store holds without an erasure row a ``legacy`` one (a
        store written before the rows existed: ``upgrade-store``); returns how many receipts it
        read. Idempotent: rows present are kept."""
        seen = 0
        after: bytes | None = None
        while True:
            page = self._store.shredded_receipts(after, _PAGE)
            rows = []
            for ref, text in page:
                parsed = parse_receipt(text)
                if parsed is not None and parsed[0].subject_ref == ref.hex():
                    rows.append(receipt_row(parsed[0], ErasureOrigin.LEGACY, None, ref))
            self._store.record_erasures(rows)
            seen += len(page)
            if len(page) < _PAGE:
                return seen
            after = page[-1][0]

    def _run_hooks(self, ref: bytes, subject: object, receipt: ErasureReceipt) -> None:
        """Run the integrations' sweeps after a committed shred: never lose the receipt, never
        stay silent about what they could not clear."""
        outcome = sweep(self._ring, subject)
        failpoint("after-sweep-1")
        warn_unswept(self._ring, outcome, f"shred of subject ref {ref.hex()[:16]}")
        if not outcome.incomplete:
            return
        message = (
            f"subject ref {ref.hex()[:16]} is shredded (its keys are destroyed; the signed "
            f"receipt is this error's .receipt), but the sweep of what it left is incomplete: "
            f"{'; '.join(outcome.reasons())}. Repeat vault.shred() for this subject to sweep "
            "again (docs/sqlalchemy.md, 'When the sweep fails')."
        )
        log.error(message)
        raise ErasureIncompleteError(
            message,
            receipt=receipt,
            tables=[t for exc in outcome.failed for t in exc.tables],
            columns=sorted(outcome.not_swept),
            swept=outcome.labels,
        )

    def new_receipt(
        self,
        ref: bytes,
        now: float,
        epoch: EpochRecord,
        head: HeadRecord | None,
        keys: Sequence[KeyRecord],
    ) -> ErasureReceipt:
        shredded_at = datetime.fromtimestamp(now, tz=timezone.utc)
        horizon = (
            self._rotation.erasure_horizon(epoch, shredded_at)
            if self._options.per_epoch_roots
            else None
        )
        receipt = ErasureReceipt(
            receipt_id=uuid.uuid4().hex,
            installation_id=self._installation.id,
            subject_ref=ref.hex(),
            shredded_at=shredded_at,
            subject_was_known=head is not None,
            destroyed_keys=keys_a_shred_destroys(keys),
            epoch_seq=epoch.seq,
            # the installation's guaranteed bound (the poll), never NOTIFY's typical latency
            propagation_bound_seconds=self._installation.propagation_bound,
            erasure_horizon=horizon,
            signing_key="",
        )
        return sign_receipt(receipt, self._seed.reveal())


def check_override(override_hold: object, by: object) -> None:
    """``override_hold`` is a bool; ``by`` (who overrides, for the override entry) a case-like
    text or None, and only with ``override_hold``."""
    if not isinstance(override_hold, bool):
        raise TypeError("override_hold must be a bool")
    if by is not None:
        if not override_hold:
            raise ValueError("by= names who overrides a legal hold: only with override_hold=True")
        check_text(by, "by")


def requeues(row: ErasureRow | None) -> bool:
    """Whether a repeated shred queues its erasure again: recorded, not legacy, not completed."""
    return row is not None and row.completion_seq is None and row.origin != ErasureOrigin.LEGACY


def parse_receipt(text: object) -> tuple[ErasureReceipt, list[tuple[bytes, int]]] | None:
    """The receipt the key store returned and the (key id, version) pairs it lists, or None when
    it does not parse; never raises (it runs after the shred committed)."""
    try:
        receipt = ErasureReceipt.model_validate_json(text)  # type: ignore[arg-type]
        keys = destroyed(receipt)
    except Exception:  # whatever is wrong with it, the caller raises one KeyStoreError
        return None
    return receipt, keys


def destroyed(receipt: ErasureReceipt) -> list[tuple[bytes, int]]:
    """The (key id, version) pairs a receipt lists as destroyed."""
    return [(bytes.fromhex(k.key_id), k.version) for k in receipt.destroyed_keys]


def unparsable_receipt(ref: bytes) -> KeyStoreError:
    """The error of a shred whose stored receipt does not parse (committed, keys evicted)."""
    return KeyStoreError(
        f"subject ref {ref.hex()[:16]} is shredded (its keys are destroyed and this process no "
        "longer serves them), but the erasure receipt the key store holds for it does not "
        "parse: the subject-heads row is corrupted or was tampered with"
    )
