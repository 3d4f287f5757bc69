"""No key bytes are reachable from any exception ccvault raises (issue 11, item 4).

Error trackers (Sentry's default) send an exception's frame locals, and its ``__context__`` even
when ``raise ... from None`` suppressed it. ``tests/leaks.py`` walks all of that; here every path
where key material used to sit in a raising frame: a malformed master-key file, a failed write of
one, a wrapped key whose commitment fails (subject key, long-lived key, epoch key, MultiKms), a
new key generated before the KMS failed, a vault-wide key created before the key store failed.
"""

from __future__ import annotations

import base64
import builtins
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ccvault.keyring._epochs as epochs_module  # where the vault draws new keys
from ccvault import DecryptionError, KeyStoreError, KmsUnavailableError, Vault
from ccvault.crypto._primitives import Aead
from ccvault.keystore._records import KeyKind
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms, MultiKms
from ccvault.kms._local import _MAGIC
from ccvault.testing import FaultyKms, FrozenClock
from ccvault.vault import NO_SUBJECT
from leaks import raised, secrets_in

CTX = "calls.notes"


def _secret_found(exc: BaseException, secrets: list[bytes]) -> list[str]:
    return [where for secret in secrets for where in secrets_in(exc, secret)]


# -- the check itself ---------------------------------------------------------------------------


def test_the_check_follows_a_suppressed_context_into_its_frames() -> None:
    secret = os.urandom(32)
    holder = [secret]  # emptied by the call: only the inner frame keeps the secret

    def inner(material: bytes) -> None:
        raise ValueError("no secret in the text")

    def outer() -> None:
        try:
            inner(holder.pop())
        except ValueError:
            raise KeyError("clean") from None

    exc = raised(outer)
    assert exc.__suppress_context__
    assert secrets_in(exc, secret) == ["ValueError: inner.material"]
    group = getattr(builtins, "ExceptionGroup", None)
    if group is not None:  # Python 3.11+
        holder.append(secret)
        assert secrets_in(group("g", [raised(outer)]), secret) == ["ValueError: inner.material"]
    noted = ValueError("x")
    noted.__notes__ = [base64.b64encode(secret).decode()]
    assert "ValueError.__dict__['__notes__'][0]" in secrets_in(noted, secret)


# -- LocalKms: the master-key file ----------------------------------------------------------------


def _key_file(path: Path, roots: int = 3) -> list[bytes]:
    """A valid key file with ``roots`` roots; returns their material."""
    materials = [os.urandom(32) for _ in range(roots)]
    lines = [f"{_MAGIC} {'ab' * 16}"]
    for i, m in enumerate(materials):
        lines.append(f"key {os.urandom(16).hex()} {1_700_000_000 + i} {_b64(m)}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return materials


def _b64(material: bytes) -> str:
    return base64.urlsafe_b64encode(material).decode()


@pytest.mark.parametrize(
    "damage",
    [
        "key 00 1 AAAA\n",  # a malformed line after the good ones
        f"key {'cd' * 16} 1 !!not-base64!!\n",  # a bad key encoding
        f"key {'cd' * 16} notanumber {_b64(b'x' * 32)}\n",  # a bad timestamp
        f"key {'cd' * 16} 1 {_b64(b'short')}\n",  # a key of the wrong length
    ],
)
def test_a_malformed_key_file_leaves_no_root_in_the_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "master.key"
    materials = _key_file(path)
    with path.open("a") as f:
        f.write(damage)
    exc = raised(lambda: LocalKms.from_file(path))
    assert "is not a ccvault master key file" in str(exc)
    assert _secret_found(exc, materials) == []


def test_a_key_file_that_is_not_utf8_leaves_no_root_in_the_error(tmp_path: Path) -> None:
    """The UnicodeDecodeError carried the whole file in its arguments."""
    path = tmp_path / "master.key"
    materials = _key_file(path)
    with path.open("ab") as f:
        f.write(b"\xff\xfe\n")
    exc = raised(lambda: LocalKms.from_file(path))
    assert "is not UTF-8 text" in str(exc)
    assert _secret_found(exc, materials) == []


def test_a_key_file_replaced_under_a_running_kms_leaves_no_root(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    kms = LocalKms.generate(path)
    os.unlink(path)
    materials = _key_file(path)  # another file (another file id) at the same path
    exc = raised(kms.new_root)
    assert "replaced" in str(exc)
    assert _secret_found(exc, materials) == []


def test_a_failed_write_of_the_key_file_leaves_no_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """new_root writes every root to a temporary copy: a full disk (the fsync fails here) left
    the whole new file in the frame of the failed write."""
    path = tmp_path / "master.key"
    kms = LocalKms.generate(path)
    kms.new_root()
    materials = _key_file_materials(path)

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    exc = raised(kms.new_root)
    assert isinstance(exc, OSError)
    assert _secret_found(exc, materials) == []


def _key_file_materials(path: Path) -> list[bytes]:
    return [
        base64.urlsafe_b64decode(line.split(" ")[3])
        for line in path.read_text().splitlines()
        if line.startswith("key ")
    ]


def test_an_aead_refusing_a_wrong_length_key_does_not_keep_it() -> None:
    key = os.urandom(31)
    holder = [key]
    exc = raised(lambda: Aead(holder.pop()))
    assert isinstance(exc, ValueError)
    assert secrets_in(exc, key) == []


# -- wrapped keys whose commitment fails ----------------------------------------------------------


def _set_commitment(url: str, where: str, value: bytes) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            statement = f"UPDATE ccvault_keys SET commitment = :c WHERE {where}"
            conn.execute(sa.text(statement), {"c": value})
    finally:
        engine.dispose()


def test_a_long_lived_key_failing_its_commitment_leaves_no_key(db_url: str) -> None:
    """The key opened (its AEAD held) but is not the committed one: unwrap_key raised from the
    frame holding it, and the vault's ``raise DecryptionError from None`` kept that frame as the
    suppressed context. Here the subject-ref key, at the next start."""
    kms = LocalKms.ephemeral()
    with Vault(kms, db_url) as vault:
        ref_key = vault._epochs.long_lived_key(KeyKind.SUBJECT_REF).reveal()
    _set_commitment(db_url, "kind = 'ref'", b"\x00" * 32)
    exc = raised(lambda: Vault(kms, db_url))
    assert isinstance(exc, DecryptionError)
    assert exc.__context__ is None
    assert secrets_in(exc, ref_key) == []


def test_a_subject_key_failing_its_commitment_leaves_no_key(db_url: str) -> None:
    kms = LocalKms.ephemeral()
    subject = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        vault.encrypt(subject, b"x", context=CTX)
        store = vault._store
        rec = next(iter(store.subject_keys([vault.subject_ref(subject)]).values()))[1]
        assert rec is not None
        subject_key = vault._epochs.unwrap_record(rec).reveal()
    _set_commitment(db_url, "kind = 'subject'", b"\x00" * 32)
    with Vault(kms, db_url) as fresh:  # cold caches: the write path unwraps the key
        exc = raised(lambda: fresh.encrypt(subject, b"y", context=CTX))
    assert isinstance(exc, DecryptionError)
    assert secrets_in(exc, subject_key) == []


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multikms"])
def test_an_epoch_key_failing_its_commitment_leaves_no_key(sqlite_url: str, multi: bool) -> None:
    members = [LocalKms.ephemeral(), LocalKms.ephemeral()]
    kms = MultiKms(*members) if multi else members[0]
    with Vault(kms, sqlite_url) as vault:
        record = vault._store.active_epoch()
        assert record is not None
        epoch_key = vault._epochs.unwrap_epoch(record).reveal()
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ccvault_epochs SET commitment = :c"), {"c": b"\x00" * 32})
    engine.dispose()
    exc = raised(lambda: Vault(kms, sqlite_url))
    assert isinstance(exc, DecryptionError)
    assert secrets_in(exc, epoch_key) == []


# -- keys made just before a failure --------------------------------------------------------------


class _Recorded:
    """Records every 32-byte value ``random_bytes`` or ``random_chunks`` hands the epochs (new
    keys: one at a time, or a batch's with one CSPRNG call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[bytes] = []
        real, real_chunks = epochs_module.random_bytes, epochs_module.random_chunks

        def recording(n: int) -> bytes:
            out = real(n)
            if n == 32:
                self.keys.append(out)
            return out

        def recording_chunks(size: int, count: int) -> list[bytes]:
            out = real_chunks(size, count)
            if size == 32:
                self.keys.extend(out)
            return out

        monkeypatch.setattr(epochs_module, "random_bytes", recording)
        monkeypatch.setattr(epochs_module, "random_chunks", recording_chunks)


def test_a_new_subject_key_is_not_made_before_the_kms_answers(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key of a new subject was drawn before the epoch key was unwrapped: a KMS outage left
    it in the frame of the error."""
    clock = FrozenClock()
    kms = FaultyKms(LocalKms.ephemeral(), clock=clock)
    with Vault(kms, sqlite_url, clock=clock) as vault:
        recorded = _Recorded(monkeypatch)
        clock.advance(3600)  # past cache TTL and grace: the epoch key must be unwrapped again
        kms.outage()
        exc = raised(lambda: vault.encrypt(uuid.uuid4(), b"x", context=CTX))
        assert isinstance(exc, KmsUnavailableError)
        assert _secret_found(exc, recorded.keys) == []


class _FailingReservations:
    """A key store whose ``reserve_uses`` fails once, as a lost connection would; the rest is
    the real store."""

    def __init__(self, inner: SqlKeyStore) -> None:
        self._inner = inner
        self.fail = False

    def reserve_uses(self, *args: Any) -> bool:
        if self.fail:
            raise KeyStoreError("the key store could not be written")
        return self._inner.reserve_uses(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_new_vaultwide_key_is_not_kept_when_the_store_fails(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new vault-wide key was stored, then the reservation of its uses failed: its material
    was still bound to ``_`` in the failing frame."""
    store = _FailingReservations(SqlKeyStore(db_url))
    with Vault(LocalKms.ephemeral(), store) as vault:  # type: ignore[arg-type]
        recorded = _Recorded(monkeypatch)
        store.fail = True
        exc = raised(lambda: vault.encrypt(NO_SUBJECT, b"x", context=CTX))
        assert isinstance(exc, KeyStoreError)
        assert len(recorded.keys) == 1  # the key was made and stored
        assert _secret_found(exc, recorded.keys) == []
    store._inner.close()
