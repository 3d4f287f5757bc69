"""The behaviour every KMS backend must show, as test methods a test class inherits.

    from ccvault.testing import KmsContract

    class TestMyKms(KmsContract):
        def make_kms(self):
            return MyKms(...)          # a fresh backend on a real (test) server

pytest collects the inherited ``test_*`` methods. Root-lifecycle tests run only for backends whose
``supports_root_lifecycle`` is true. No test framework is imported: failures are plain asserts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

from .._secret import SecretKey
from ..errors import DecryptionError, KmsError
from ..kms._multi import MultiKms
from ..kms._protocol import Kms, RootState, WrappedKey

__all__ = ["KmsContract"]

_CONTEXT = {"ccvault:installation": "00" * 16, "ccvault:purpose": "epoch-key", "ccvault:epoch": "1"}


@contextlib.contextmanager
def _raises(kind: type[BaseException] | tuple[type[BaseException], ...]) -> Iterator[None]:
    try:
        yield
    except kind:
        return
    raise AssertionError(f"expected {kind!r} to be raised")


def _key() -> SecretKey:
    return SecretKey(os.urandom(32))


class KmsContract:
    """Subclass and implement :meth:`make_kms`; every ``test_*`` method is one contract clause."""

    def make_kms(self) -> Kms:
        raise NotImplementedError("implement make_kms() to return the backend under test")

    # -- wrap / unwrap ---------------------------------------------------------------------------

    def test_implements_the_protocol(self) -> None:
        kms = self.make_kms()
        assert isinstance(kms, Kms)
        assert isinstance(kms.kms_id, str)
        assert kms.kms_id
        assert isinstance(kms.current_root(), str)
        delay = kms.root_destruction_delay
        assert isinstance(delay, timedelta)
        assert delay >= timedelta(0)

    def test_round_trip(self) -> None:
        kms = self.make_kms()
        key = _key()
        wrapped = kms.wrap(key, context=_CONTEXT)
        assert isinstance(wrapped, WrappedKey)
        # The vault stores wraps by KMS id (a MultiKms hands out its primary's wraps).
        owner = kms.primary if isinstance(kms, MultiKms) else kms
        assert wrapped.kms_id == owner.kms_id
        assert wrapped.root_id
        assert key.reveal() not in wrapped.blob
        assert kms.unwrap(wrapped, context=dict(_CONTEXT)).reveal() == key.reveal()

    def test_context_order_does_not_matter(self) -> None:
        kms = self.make_kms()
        key = _key()
        wrapped = kms.wrap(key, context=_CONTEXT)
        reordered = dict(reversed(list(_CONTEXT.items())))
        assert kms.unwrap(wrapped, context=reordered).reveal() == key.reveal()

    def test_two_wraps_of_one_key_differ(self) -> None:
        kms = self.make_kms()
        key = _key()
        assert kms.wrap(key, context=_CONTEXT).blob != kms.wrap(key, context=_CONTEXT).blob

    def test_wrong_context_is_a_decryption_error(self) -> None:
        kms = self.make_kms()
        wrapped = kms.wrap(_key(), context=_CONTEXT)
        for changed in (
            {**_CONTEXT, "ccvault:epoch": "2"},
            {**_CONTEXT, "ccvault:purpose": "subject-key"},
            {k: v for k, v in _CONTEXT.items() if k != "ccvault:epoch"},
            {**_CONTEXT, "extra": "x"},
        ):
            with _raises(DecryptionError):
                kms.unwrap(wrapped, context=changed)

    def test_tampered_blob_is_a_decryption_error(self) -> None:
        kms = self.make_kms()
        wrapped = kms.wrap(_key(), context=_CONTEXT)
        blob = bytearray(wrapped.blob)
        blob[len(blob) // 2] ^= 0x01
        for bad in (bytes(blob), wrapped.blob[:-1], b""):
            tampered = WrappedKey(wrapped.kms_id, wrapped.root_id, bad)
            with _raises(DecryptionError):
                kms.unwrap(tampered, context=_CONTEXT)

    def test_another_kms_wrap_is_refused(self) -> None:
        kms = self.make_kms()
        wrapped = kms.wrap(_key(), context=_CONTEXT)
        foreign = WrappedKey("some-other-kms", wrapped.root_id, wrapped.blob)
        with _raises((KmsError, DecryptionError)):
            kms.unwrap(foreign, context=_CONTEXT)

    def test_repr_shows_no_secret(self) -> None:
        kms = self.make_kms()
        key = _key()
        wrapped = kms.wrap(key, context=_CONTEXT)
        for text in (repr(kms), str(kms), repr(wrapped)):
            assert key.reveal().hex() not in text
            assert wrapped.blob.hex() not in text

    # -- root lifecycle --------------------------------------------------------------------------

    def test_new_roots_wrap_independently(self) -> None:
        kms = self.make_kms()
        if not kms.supports_root_lifecycle:
            return
        first, second = kms.new_root(), kms.new_root()
        assert first != second
        key = _key()
        a = kms.wrap(key, context=_CONTEXT, root_id=first)
        b = kms.wrap(key, context=_CONTEXT, root_id=second)
        assert a.root_id != b.root_id
        assert kms.unwrap(a, context=_CONTEXT).reveal() == key.reveal()
        assert kms.unwrap(b, context=_CONTEXT).reveal() == key.reveal()
        assert kms.root_state(first) is RootState.ENABLED

    def test_destroyed_root_no_longer_unwraps(self) -> None:
        kms = self.make_kms()
        if not kms.supports_root_lifecycle:
            return
        doomed, kept = kms.new_root(), kms.new_root()
        key = _key()
        lost = kms.wrap(key, context=_CONTEXT, root_id=doomed)
        alive = kms.wrap(key, context=_CONTEXT, root_id=kept)
        kms.destroy_root(doomed)
        assert kms.root_state(doomed) in (RootState.PENDING_DELETION, RootState.DESTROYED)
        if kms.root_state(doomed) is RootState.PENDING_DELETION:
            # A root that can still come back must say for how long (receipts count on it).
            assert kms.root_destruction_delay > timedelta(0)
        with _raises(KmsError):
            kms.unwrap(lost, context=_CONTEXT)
        assert kms.unwrap(alive, context=_CONTEXT).reveal() == key.reveal()
        kms.destroy_root(doomed)  # idempotent
