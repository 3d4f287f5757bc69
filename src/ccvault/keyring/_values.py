"""Owns opening values one by one or in batches (vault.decrypt, decrypt_many) and what each returns,
and sealing values in batches (vault.encrypt_many). Must not load, cache or create keys (the key
ring does, through KeyRing.keys and KeyRing.write_keys) nor know of columns.

One implementation, :meth:`Values.read`, serves both: ``decrypt`` is a batch of one item that
raises. A batch is read in three passes: the arguments of every item are checked first (a
``TypeError`` names the item and nothing is decrypted), then the cold keys of the whole batch are
resolved together (``KeyRing.keys``: one key-store query per 500 cold headers, whatever the
number of values), then each value gets its outcome, in the order DESIGN.md's "Lifecycle design"
rule 6 ranks them (see :meth:`Values.read`).

The column types' read loop (``ccvault.sqlalchemy._read``) is the other reader: it names table,
column and primary key, which a value alone does not have.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from hmac import compare_digest
from typing import Final, Literal, cast

from .._sentinels import NO_SUBJECT, Sentinel
from ..crypto import _format as fmt
from ..crypto._primitives import nonce_batch
from ..errors import DecryptionError, SubjectShreddedError
from ._epochs import NO_REF
from ._ring import Expired, KeyRing, Tombstone

__all__ = [
    "CONTEXT_LPS",
    "SEAL_CHUNK",
    "UNCHECKED",
    "Item",
    "Outcome",
    "SealItem",
    "Values",
    "context_bytes",
    "context_lp",
]

_Key = fmt.ValueKey | Tombstone

_HEADER: Final = fmt.SUITE1_HEADER_BYTES  # version, suite, key id, key version
_HEADER2: Final = fmt.SUITE2_HEADER_BYTES  # ... and the period id
_SUITE1_MIN: Final = fmt.OVERHEAD[fmt.SUITE_AES256GCM]  # header, nonce and tag of an empty value
_SUITE2_MIN: Final = fmt.OVERHEAD[fmt.SUITE_AES256GCM_PERIOD]
_SUITE1: Final = bytes((fmt.FORMAT_VERSION, fmt.SUITE_AES256GCM))
_SUITE2: Final = bytes((fmt.FORMAT_VERSION, fmt.SUITE_AES256GCM_PERIOD))


class _Unchecked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHECKED"


UNCHECKED: Final = _Unchecked()
"""The subject of an item read without an owner check (``decrypt`` without ``subject=``)."""

Item = tuple[bytes, str] | tuple[bytes, str, object]
"""An item of ``decrypt_many``: ``(blob, context)`` or ``(blob, context, subject)``."""

Outcome = bytes | Sentinel | DecryptionError
"""What ``decrypt_many`` puts in an item's place: its plaintext, a sentinel, or (with
``errors="return"``) the item's DecryptionError."""

_SHAPE = "an item is (blob, context) or (blob, context, subject)"

SealItem = tuple[object, bytes] | tuple[object, bytes, str]
"""An item of ``encrypt_many``: ``(subject, plaintext)`` (under ``context=``) or ``(subject,
plaintext, context)``."""

_SEAL_SHAPE = "an item is (subject, plaintext) or (subject, plaintext, context)"

SEAL_CHUNK: Final = 5_000
"""Items ``encrypt_many`` seals per round: their subjects' keys are loaded (or created, in one
key-store transaction) together, and no more than this many keys are held beyond the caches."""


def context_bytes(context: object) -> bytes:
    """A context label as the bytes bound into a value; TypeError for anything but a non-empty
    str (the label never depends on data, so a wrong one is a programming error)."""
    if not isinstance(context, str) or not context:
        raise TypeError("context must be a non-empty str (e.g. 'customers.phone')")
    return context.encode("utf-8")


CONTEXT_LPS: dict[str, bytes] = {}
"""``context_lp`` of the labels met so far (read it inline before calling ``context_lp``)."""
_MAX_CONTEXT_LPS: Final = 4096  # labels are a schema's few column names, never data


def context_lp(context: object) -> bytes:
    """``u32(len(label)) || label`` of a context label (:func:`context_bytes`), kept for the
    labels met so far (the single-value API's per-call encoding, done once a label)."""
    if type(context) is str:
        found = CONTEXT_LPS.get(context)
        if found is not None:
            return found
    lp = fmt.context_lp(context_bytes(context))
    if type(context) is str and len(CONTEXT_LPS) < _MAX_CONTEXT_LPS:
        CONTEXT_LPS[context] = lp
    return lp


# Subject types whose equality is exact (no subclass can override it): a value key's
# ``checked`` subject equal to one of these, of the same type, is the same subject. (The row
# loops of the column types compare by type alone: their subjects are the driver's values.)
_EXACT: Final = frozenset((str, int, uuid.UUID))


class Values:
    """Opens values by their context label and, when given, their subject (:meth:`read`)."""

    __slots__ = ("_cached", "_clock", "_errors", "_invalidations", "_ring")

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._invalidations, self._clock, self._cached = ring.single_lookup()
        # The error ``decrypt`` raises for each sentinel a value can read as (the access issue
        # adds DENIED -> AccessDeniedError).
        self._errors: dict[type[Sentinel], type[Exception]] = {
            type(kind.sentinel): kind.error for kind in (Tombstone, Expired)
        }

    def decrypt(self, blob: object, context: object, subject: object) -> bytes:
        """``vault.decrypt``: :meth:`read` of one item, the same checks in the same order
        without the batch's lists; a sentinel is raised as its error, a failure as the bare
        DecryptionError (no index: there is one value).

        A warm key whose ``checked`` subject is this one (the key was found to belong to it, by a
        write or an earlier read: identity, or equality of the same exact str, int or UUID type,
        ``1 == True == 1.0`` being different subjects) skips the subject's ref; any other
        subject is checked by its ref, as :meth:`read` checks it."""
        if type(blob) is not bytes:
            if not isinstance(blob, bytes | bytearray | memoryview):
                raise TypeError(f"blob must be bytes from encrypt(), not {type(blob).__name__}")
            blob = bytes(blob)
        ctx_lp = CONTEXT_LPS.get(context) if type(context) is str else None
        if ctx_lp is None:
            ctx_lp = context_lp(context)
        ring = self._ring
        header: bytes | None = None
        if len(blob) >= _SUITE1_MIN and blob[:2] == _SUITE1:
            header = blob[:_HEADER]
        elif len(blob) >= _SUITE2_MIN and blob[:2] == _SUITE2:
            header = blob[:_HEADER2]
        key = None
        if header is not None:
            now = self._clock()
            if now >= self._invalidations.next_poll:  # Invalidations.check() inlined
                now = self._invalidations.check()
            key = self._cached(header, now)
        expected: bytes | None = None
        if subject is NO_SUBJECT:
            expected = NO_REF
        elif subject is not UNCHECKED:
            checked = None if key is None else key.checked
            if checked is None or (
                checked is not subject
                and not (
                    type(checked) is type(subject)
                    and type(subject) in _EXACT
                    and checked == subject
                )
            ):
                expected = ring.subject_ref(subject)  # None too: TypeError, never a silent skip
        if key is None and header is not None:
            key = ring.keys((header,)).get(header)
        if key is None or (expected is not None and not compare_digest(expected, key.ref)):
            raise DecryptionError  # an unknown key, a malformed value, another subject's value
        if expected is not None and expected:
            key.checked = subject
        if isinstance(key, Tombstone):
            raise self._errors[type(key.sentinel)]
        try:
            plaintext: bytes | None = key.decrypt(
                blob[key.nonce_at],
                blob[key.body_at],
                key.ads.get(ctx_lp) or key.associated_data(ctx_lp),
            )
        except fmt.InvalidTag:  # a wrong context, or tampering
            plaintext = None
        if plaintext is None:
            raise DecryptionError  # outside the handler: no __context__ to carry
        return plaintext

    def decrypt_many(
        self, items: Iterable[object], errors: Literal["raise", "return"]
    ) -> list[Outcome]:
        """``vault.decrypt_many``: :meth:`read` of every item, aligned with the input."""
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        batch = items if isinstance(items, list | tuple) else list(items)
        out = self.read(batch, stop=errors == "raise")
        if isinstance(out, int):
            # Raised here, from a frame that holds no plaintext (read() cleared its results)
            # and outside any handler (no __context__ leads back to the failure).
            raise DecryptionError(index=out)
        return out

    def encrypt_many(self, items: Iterable[object], context: object) -> list[bytes]:
        """``vault.encrypt_many``: each item sealed as ``vault.encrypt`` seals it, in order.

        Every item is checked first (shape, subject type, plaintext, context: a TypeError names
        the item, and no key is loaded or created); then, ``SEAL_CHUNK`` items at a time, the
        keys of their subjects are loaded or created together and the values sealed. A shredded
        subject raises SubjectShreddedError naming its item, and no blob is returned at all
        (keys already created for the batch's other new subjects stay, as ``warm`` leaves
        them)."""
        batch = items if isinstance(items, list | tuple) else list(items)
        ring = self._ring
        subject_ref = ring.subject_ref
        # (subject ref, or None for NO_SUBJECT; the subject; plaintext; context;
        # u32(len(context)) || context)
        prepared: list[tuple[bytes | None, object, bytes, str, bytes]] = []
        index = 0
        try:
            for index, item in enumerate(batch):  # noqa: B007 - read by the handler
                if not isinstance(item, tuple | list) or not 2 <= len(item) <= 3:
                    raise TypeError(_SEAL_SHAPE)
                subject, plaintext = item[0], item[1]
                label = item[2] if len(item) == 3 else context
                if label is None:
                    raise TypeError(
                        "an item (subject, plaintext) needs context= (or give each item its "
                        "own: (subject, plaintext, context))"
                    )
                if type(plaintext) is not bytes:
                    if not isinstance(plaintext, bytes | bytearray | memoryview):
                        raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
                    plaintext = bytes(plaintext)
                ctx_lp = context_lp(label)
                # None is a TypeError here (NO_SUBJECT names vault-wide data), never a skip
                ref = None if subject is NO_SUBJECT else subject_ref(subject)
                prepared.append((ref, subject, plaintext, cast(str, label), ctx_lp))
        except TypeError as exc:
            raise TypeError(f"items[{index}]: {exc}") from None
        out: list[bytes] = []
        try:
            for start in range(0, len(prepared), SEAL_CHUNK):
                chunk = prepared[start : start + SEAL_CHUNK]
                keys = ring.write_keys(ref for ref, *_ in chunk if ref is not None)
                nonces = nonce_batch(len(chunk))
                for offset, (ref, subject, plaintext, label, ctx_lp) in enumerate(chunk):
                    if ref is None:
                        key = ring.key_for_write(NO_SUBJECT, label)  # one use of its budget
                    else:
                        found = keys.get(ref)
                        if found is None:
                            raise SubjectShreddedError(index=start + offset)
                        if found.checked is not subject:
                            found.checked = subject  # its readers compare instead of an HMAC
                        key = found
                    out.append(key.seal(plaintext, ctx_lp, nonces))
        except BaseException:
            out.clear()  # no half batch: every blob or none
            raise
        return out

    def read(
        self, items: Sequence[object], *, stop: bool, single: bool = False
    ) -> list[Outcome] | int:
        """The outcome of each item, aligned with ``items``; with ``stop``, the index of the
        first item that fails instead (the values read before it are dropped).

        An item is ``(blob, context)`` or ``(blob, context, subject)``, the subject being
        ``UNCHECKED`` (no owner check), ``NO_SUBJECT`` (vault-wide data) or a subject of the
        installation's type. A wrong type anywhere is a TypeError (naming the item unless
        ``single``) before any key is looked up. Each value's outcome, first match wins
        (DESIGN.md rule 6; a failure is a DecryptionError, ranked where UNREADABLE ranks):

        1. DENIED — the access policy, when it exists, answers first: a denied caller learns
           nothing, not even that the subject was erased;
        2. failure — malformed or truncated bytes, an unknown key, suite or retention period,
           a value of another subject (checked *before* the shred and retention states: a
           moved value is no erasure), then, for a live key, a wrong context or any tampering
           (authentication);
        3. SHREDDED — the value's key is a tombstone (destroyed, or its subject's head is);
        4. EXPIRED — a suite-2 value whose retention period is tombstoned and whose subject
           holds no held key for it;
        5. masked — a partial view granted by the access policy;
        6. the plaintext.
        """
        ring = self._ring
        cached = ring.lookup()  # warm keys by header, one clock reading for the batch
        subject_ref = ring.subject_ref
        cold: set[bytes] = set()
        # (blob, u32(len(context)) || context, expected ref or None, header or None, warm key)
        prepared: list[tuple[bytes, bytes, bytes | None, bytes | None, _Key | None]] = []
        index = 0
        try:
            for index, item in enumerate(items):  # noqa: B007 - read by the handler
                if not isinstance(item, tuple | list) or not 2 <= len(item) <= 3:
                    raise TypeError(_SHAPE)
                blob, context = item[0], item[1]
                subject = item[2] if len(item) == 3 else UNCHECKED
                if type(blob) is not bytes:
                    if not isinstance(blob, bytes | bytearray | memoryview):
                        raise TypeError(
                            f"blob must be bytes from encrypt(), not {type(blob).__name__}"
                        )
                    blob = bytes(blob)
                ctx_lp = context_lp(context)
                if subject is UNCHECKED:
                    expected = None
                elif subject is NO_SUBJECT:
                    expected = NO_REF
                else:
                    expected = subject_ref(subject)  # None too: TypeError, never a silent skip
                key: _Key | None = None
                header: bytes | None = None
                if len(blob) >= _SUITE1_MIN and blob[:2] == _SUITE1:
                    header = blob[:_HEADER]
                elif len(blob) >= _SUITE2_MIN and blob[:2] == _SUITE2:
                    header = blob[:_HEADER2]  # a retention period's value (rule 7)
                # else malformed or truncated: a failure
                if header is not None:
                    key = cached(header)
                    if key is None:
                        cold.add(header)
                prepared.append((blob, ctx_lp, expected, header, key))
        except TypeError as exc:
            if single:
                raise
            raise TypeError(f"items[{index}]: {exc}") from None
        # Every cold key of the batch at once: one key-store query per 500 cold headers.
        found = ring.keys(cold) if cold else {}
        out: list[Outcome] = []
        append = out.append
        plaintext = b""
        try:
            for index, (blob, ctx_lp, expected, header, key) in enumerate(prepared):
                # 1. DENIED: the access policy answers here, before anything else is looked at.
                if key is None and header is not None:
                    key = found.get(header)
                if key is None or (expected is not None and not compare_digest(expected, key.ref)):
                    if stop:  # 2. a failure (an unknown key, or another subject's value)
                        out.clear()
                        return index
                    append(DecryptionError(index=index))
                elif isinstance(key, Tombstone):
                    # 3. SHREDDED: the key of a shredded subject; 4. EXPIRED: a period
                    # tombstoned, its subject not held (Expired is a Tombstone)
                    append(key.sentinel)
                else:
                    # 5. masked slots in here.
                    try:
                        plaintext = key.decrypt(
                            blob[key.nonce_at],
                            blob[key.body_at],
                            key.ads.get(ctx_lp) or key.associated_data(ctx_lp),
                        )
                    except fmt.InvalidTag:  # 2. a wrong context, or tampering
                        if stop:
                            out.clear()
                            return index
                        append(DecryptionError(index=index))
                        continue
                    append(plaintext)  # 6.
        except BaseException:
            # The traceback keeps this frame: leave in it none of the values opened so far.
            out.clear()
            plaintext = b""
            raise
        return out
