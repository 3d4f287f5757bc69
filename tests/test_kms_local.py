"""LocalKms: master key files, permissions, root lifecycle, context binding."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from ccvault import ConfigurationError, DecryptionError, KmsError
from ccvault._secret import SecretKey
from ccvault.kms import Kms, LocalKms, RootState

CTX = {"ccvault:purpose": "epoch-key", "ccvault:epoch": "00"}


def test_generated_file_is_0600_and_reopens(key_path: Path) -> None:
    kms = LocalKms.generate(key_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert isinstance(kms, Kms)
    key = SecretKey(os.urandom(32))
    wrapped = kms.wrap(key, context=CTX)
    again = LocalKms.from_file(key_path)
    assert again.kms_id == kms.kms_id
    assert again.unwrap(wrapped, context=CTX) == key
    with pytest.raises(ConfigurationError):
        LocalKms.generate(key_path)  # never overwrites


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700])
def test_group_or_world_accessible_file_is_refused(key_path: Path, mode: int) -> None:
    LocalKms.generate(key_path)
    os.chmod(key_path, mode)
    if mode & 0o077:
        with pytest.raises(ConfigurationError, match="chmod 600"):
            LocalKms.from_file(key_path)
    else:
        LocalKms.from_file(key_path)


def test_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        LocalKms.from_file(tmp_path / "absent.key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    os.chmod(junk, 0o600)
    with pytest.raises(ConfigurationError) as info:
        LocalKms.from_file(junk)
    assert "hello" not in str(info.value)


def test_wrong_context_or_tamper_is_decryption_error(kms: LocalKms) -> None:
    key = SecretKey(os.urandom(32))
    wrapped = kms.wrap(key, context=CTX)
    with pytest.raises(DecryptionError):
        kms.unwrap(wrapped, context={**CTX, "ccvault:epoch": "01"})
    flipped = type(wrapped)(wrapped.kms_id, wrapped.root_id, wrapped.blob[:-1] + b"\x00")
    with pytest.raises(DecryptionError):
        kms.unwrap(flipped, context=CTX)
    other = LocalKms.ephemeral()
    with pytest.raises(KmsError):
        other.unwrap(wrapped, context=CTX)


def test_root_lifecycle_newest_wraps_all_unwrap(kms: LocalKms, key_path: Path) -> None:
    first = kms.current_root()
    key = SecretKey(os.urandom(32))
    old = kms.wrap(key, context=CTX)
    second = kms.new_root()
    assert second != first
    assert kms.current_root() == second
    new = kms.wrap(key, context=CTX)
    assert new.root_id == second
    reopened = LocalKms.from_file(key_path)
    assert reopened.unwrap(old, context=CTX) == key
    assert reopened.unwrap(new, context=CTX) == key
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    # Another process (here: another instance) destroys the first root.
    reopened.destroy_root(first)
    assert reopened.root_state(first) is RootState.DESTROYED
    assert kms.root_state(first) is RootState.DESTROYED  # re-read from the file
    assert kms.root_state(second) is RootState.ENABLED
    assert kms.root_state("ff" * 16) is RootState.UNKNOWN
    with pytest.raises(KmsError):
        LocalKms.from_file(key_path).unwrap(old, context=CTX)
    assert LocalKms.from_file(key_path).unwrap(new, context=CTX) == key
    assert first not in key_path.read_text()


def test_reprs_hold_no_key_material(kms: LocalKms, key_path: Path) -> None:
    material = key_path.read_text().split()[-1]
    assert material not in repr(kms)
    wrapped = kms.wrap(SecretKey(os.urandom(32)), context=CTX)
    assert wrapped.blob.hex() not in repr(wrapped)
    with pytest.raises(TypeError):
        pickle.dumps(kms)


def test_symlinked_key_file_is_refused(key_path: Path, tmp_path: Path) -> None:
    LocalKms.generate(key_path)
    link = tmp_path / "link.key"
    link.symlink_to(key_path)
    with pytest.raises(ConfigurationError):
        LocalKms.from_file(link)


def test_deleted_key_file_stays_deleted(kms: LocalKms, key_path: Path) -> None:
    wrapped = kms.wrap(SecretKey(os.urandom(32)), context=CTX)
    key_path.unlink()
    with pytest.raises((KmsError, ConfigurationError)):
        kms.new_root()
    with pytest.raises((KmsError, ConfigurationError)):
        kms.unwrap(wrapped, context=CTX)
    assert not key_path.exists()


def test_concurrent_creation_yields_one_key_file(key_path: Path) -> None:
    import threading

    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_it() -> None:
        barrier.wait()
        try:
            ids.append(LocalKms.from_file(key_path, create=True).kms_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 1
    assert [p.name for p in key_path.parent.iterdir() if p.name.startswith(".master")] == []
