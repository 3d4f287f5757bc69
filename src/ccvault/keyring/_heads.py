"""Owns the shred fences' authenticity: subject-head MACs, the decision whether a key row may be
used, fence reports, and the head check and upgrade of the admin commands. Must not cache or
unwrap keys: it judges key-store rows, the key ring acts on the verdict.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from .._secret import SecretKey
from ..crypto._heads import head_mac_message
from ..crypto._primitives import HmacSha256
from ..errors import KeyStoreError
from ..keystore._cache import TtlCache
from ..keystore._protocol import HeadSealer, KeyStore
from ..keystore._records import HeadRecord, KeyKind, KeyRecord, State
from ..keystore._schema import SCHEMA_VERSION
from ._epochs import NO_REF
from ._options import Progress

__all__ = ["FENCE_BREAKS", "HEADLESS", "HeadCheck", "Heads", "StoreUpgrade"]

log = logging.getLogger("ccvault")

_BATCH = 500
_REPORT_SECONDS = 3600.0  # a broken fence is logged once an hour per ref, not once per use
_LISTED = 1000  # refs a HeadCheck lists of each kind (it counts them all)

HEADLESS: Final = (
    "its ref has key rows but no subject head (ccvault never deletes one): the head row was "
    "deleted or its ref altered"
)

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


@dataclass(frozen=True, slots=True)
class StoreUpgrade:
    """What :meth:`Vault.upgrade_store` did: the schema version it found and left, the subject
    heads it authenticated (a repeat finds none, unless a process of an older version wrote
    some meanwhile) and the never-seen shredded subjects it gave a tombstone."""

    from_version: int
    to_version: int
    heads_authenticated: int
    tombstones_added: int


class Heads:
    """The fence rows of subjects: a head per subject ref says active or shredded and names the
    subject's current key, under a MAC with the installation's head-MAC key (docs/format.md,
    section 3a). A ref whose rows are not what ccvault writes is treated as shredded, and
    reported at ERROR once an hour."""

    def __init__(
        self,
        store: KeyStore,
        installation: bytes,
        mac_key: SecretKey,
        monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._installation = installation
        self._mac = HmacSha256(mac_key.reveal())
        self._reported: TtlCache[bytes, bool] = TtlCache(10_000, _REPORT_SECONDS, monotonic)
        # refs a ledger entry shreds that the store has not applied (a read-only vault, which
        # never replays: DESIGN.md lifecycle rule 2); frozen, replaced whole
        self._ledger_shredded: frozenset[bytes] = frozenset()

    def treat_as_shredded(self, refs: set[bytes]) -> None:
        """Read these refs as shredded in this process, whatever their heads say: the ledger
        shreds them and this read-only vault does not replay it into the store."""
        self._ledger_shredded = self._ledger_shredded | frozenset(refs)

    def seal(self, ref: bytes, key_id: bytes, state: str, current_version: int) -> bytes:
        """The MAC of a subject head's fence state (the key store's ``HeadSealer``)."""
        return self._mac(head_mac_message(self._installation, ref, key_id, state, current_version))

    def recording_sealer(self, sealed: dict[bytes, tuple[bytes, str, int, bytes]]) -> HeadSealer:
        """:meth:`seal` that also notes, by ref, each head it sealed (key id, state, version,
        MAC): :meth:`usable_key` given ``sealed`` then authenticates a head that is exactly one
        of those without computing its MAC again (the same inputs give the same MAC)."""
        seal = self.seal

        def recording(ref: bytes, key_id: bytes, state: str, current_version: int) -> bytes:
            mac = seal(ref, key_id, state, current_version)
            sealed[ref] = (key_id, state, current_version, mac)
            return mac

        return recording

    def _mac_of(self, head: HeadRecord) -> bytes:
        return self.seal(head.ref, head.key_id, head.state, head.current_version)

    def authentic(self, head: HeadRecord) -> bool:
        if head.mac is None:
            return False
        try:
            expected = self._mac_of(head)
        except ValueError:
            return False
        return hmac.compare_digest(head.mac, expected)

    def usable_key(
        self,
        ref: bytes,
        head: HeadRecord,
        rec: KeyRecord | None,
        sealed: Mapping[bytes, tuple[bytes, str, int, bytes]] | None = None,
    ) -> KeyRecord | None:
        """The key a subject's head names, if the head authenticates, says active and names
        this subject's live key; None when the subject is shredded or treated as shredded (a
        head that fails authentication, or that says active but names a destroyed key: both
        reported). A head whose key row is missing or broken is a KeyStoreError. ``sealed``:
        the heads this process just sealed (:meth:`recording_sealer`); a head equal to its
        entry there authenticates without a second MAC."""
        if ref in self._ledger_shredded:
            return None
        ours = sealed.get(ref) if sealed is not None else None
        if ours is not None and _is_sealed(head, ours):
            pass  # the MAC we computed over exactly these fields a moment ago
        elif not self.authentic(head):
            self.report(ref, "its subject head fails authentication (MAC)")
            return None
        if head.state != State.ACTIVE:
            return None
        if rec is None:
            raise KeyStoreError("a subject head names a key the key store does not hold")
        if rec.state == State.DESTROYED:
            self.report(
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

    def fenced_read(self, rec: KeyRecord, head: HeadRecord | None) -> bool:
        """Whether a live subject key must read as shredded: its ref has no head, or a head
        that fails authentication or does not say active (each reported)."""
        ref = rec.ref or NO_REF
        if ref in self._ledger_shredded:
            return True
        if head is None:
            self.report(ref, "a live key of its ref has no subject head")
        elif not self.authentic(head):
            self.report(ref, "its subject head fails authentication (MAC)")
        elif head.state != State.ACTIVE:
            self.report(ref, "a key of its ref is live under a shredded head (a restored key row?)")
        else:
            return False
        return True

    def report(self, ref: bytes, why: str) -> None:
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

    # -- admin: check every head, authenticate the heads of an older store ----------------------

    def verify(self) -> HeadCheck:
        """Every head's MAC, and the key rows outside their fence (:meth:`Vault.verify_heads`)."""
        found: dict[str, list[bytes]] = {kind: [] for kind in FENCE_BREAKS}
        heads = 0
        after: bytes | None = None
        while page := self._store.heads_after(after, _BATCH):
            for head, rec in page:
                heads += 1
                if not self.authentic(head):
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

    def upgrade(
        self,
        now: Callable[[], float],
        progress: Progress | None,
        facts: Mapping[str, str] | None = None,
    ) -> StoreUpgrade:
        """Bring the store to this library's schema, authenticating every head without a MAC
        and recording the installation ``facts`` it lacks (:meth:`Vault.upgrade_store`)."""
        before = self._store.schema_version() or SCHEMA_VERSION
        self._store.upgrade_schema()
        for name, value in (facts or {}).items():
            self._store.put_meta_if_absent(name, value)
        total = sealed = tombstones = 0
        after: bytes | None = None
        while True:
            page = self._store.heads_after(after, _BATCH, unsealed=True)
            if not page:
                break
            updates = []
            for head, _ in page:
                with contextlib.suppress(ValueError):  # a version outside u32: stays unsealed
                    updates.append((head, self._mac_of(head)))
            done, added = self._store.seal_heads(updates, now())
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


def _is_sealed(head: HeadRecord, sealed: tuple[bytes, str, int, bytes]) -> bool:
    """Whether ``head`` holds exactly the fields and the MAC of a head this process sealed."""
    key_id, state, version, mac = sealed
    return (
        head.mac is not None
        and head.key_id == key_id
        and head.state == state
        and type(head.current_version) is int
        and head.current_version == version
        and hmac.compare_digest(head.mac, mac)
    )
