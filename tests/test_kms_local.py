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


# -- leftover copies, the key folder and the lock file (issue 11, item 13) -----------------------

_KILLED_AT_RENAME = """
import os, signal, sys
from ccvault.kms import LocalKms

kms = LocalKms.from_file(sys.argv[1])
# The moment between the fsynced temporary copy and its rename into place: SIGKILL.
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
os.link = os.replace  # generate() links its copy into place instead
getattr(kms, sys.argv[2])(*sys.argv[3:])
"""

_KILLED_IN_GENERATE = """
import os, signal, sys
from ccvault.kms import LocalKms

os.link = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
LocalKms.generate(sys.argv[1])
"""


def _sigkilled(code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself where the code says."""
    import signal
    import subprocess
    import sys

    import ccvault

    src = str(Path(ccvault.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, timeout=60)
    assert result.returncode == -signal.SIGKILL


def _copies(key_path: Path) -> list[Path]:
    return sorted(p for p in key_path.parent.iterdir() if p.name.startswith(f".{key_path.name}."))


def _materials(key_path: Path) -> dict[str, str]:
    """root id -> the key's encoding, read from the file (the test's own file)."""
    lines = key_path.read_text().splitlines()[1:]
    return {fields[1]: fields[3] for fields in (line.split(" ") for line in lines)}


def _files_holding(folder: Path, text: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file() and text in p.read_text()]


@pytest.mark.parametrize("killed_in", ["new_root", "destroy_root"])
def test_sigkill_mid_rewrite_leaves_no_destroyed_root_behind(
    kms: LocalKms, key_path: Path, killed_in: str
) -> None:
    """A real SIGKILL of another process between writing its temporary copy of the key file and
    renaming it leaves that copy (with every root of its time). The next destroy_root in a
    process that opened the file before the crash removes it: afterwards no file in the folder
    holds the destroyed root."""
    first = kms.current_root()
    second = kms.new_root()
    doomed = _materials(key_path)[first]
    args = [second] if killed_in == "destroy_root" else []
    _sigkilled(_KILLED_AT_RENAME, str(key_path), killed_in, *args)
    (left,) = _copies(key_path)
    assert doomed in left.read_text()  # the crash left the root in a copy

    kms.destroy_root(first)
    assert _copies(key_path) == []
    assert _files_holding(key_path.parent, doomed) == []
    assert kms.root_state(first) is RootState.DESTROYED
    assert LocalKms.from_file(key_path).root_state(second) is RootState.ENABLED


def test_leftover_copies_are_removed_at_open(key_path: Path) -> None:
    """Real SIGKILLs inside new_root and inside generate each leave a copy; opening the file
    removes them, and creating it again after a killed generate does too."""
    _sigkilled(_KILLED_IN_GENERATE, str(key_path))
    assert not key_path.exists()
    assert len(_copies(key_path)) == 1
    LocalKms.from_file(key_path, create=True)  # generates, then removes the leftover
    assert [p.name for p in _copies(key_path)] == []

    _sigkilled(_KILLED_AT_RENAME, str(key_path), "new_root")
    assert len(_copies(key_path)) == 1
    unrelated = key_path.with_name(f".{key_path.name}.tmp-backup")  # not a name ccvault writes
    unrelated.write_text("mine")
    LocalKms.from_file(key_path)
    assert _copies(key_path) == [unrelated]


def test_a_copy_that_cannot_be_removed(
    kms: LocalKms, key_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening warns and goes on; destroy_root and new_root refuse, naming the copy. (A
    directory planted under the exact name a copy takes: unlink fails even for root.)"""
    stuck = key_path.with_name(f".{key_path.name}.tmp-{'ab' * 8}")
    stuck.mkdir()
    with caplog.at_level("WARNING", logger="ccvault.kms.local"):
        LocalKms.from_file(key_path)
    assert str(stuck) in caplog.text
    assert "leftover copy" in caplog.text
    first = kms.current_root()
    with pytest.raises(ConfigurationError, match="leftover copy") as info:
        kms.destroy_root(first)
    assert str(stuck) in str(info.value)
    with pytest.raises(ConfigurationError, match="leftover copy"):
        kms.new_root()
    assert kms.root_state(first) is RootState.ENABLED  # nothing was half-done
    stuck.rmdir()
    kms.destroy_root(first)
    assert kms.root_state(first) is RootState.DESTROYED


@pytest.mark.parametrize("mode", [0o770, 0o730, 0o707, 0o703, 0o1777, 0o2775], ids=oct)
def test_key_folder_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    key_path = folder / "master.key"
    LocalKms.generate(key_path)
    os.chmod(folder, mode)
    for attempt in (
        lambda: LocalKms.from_file(key_path),
        lambda: LocalKms.from_file(key_path, create=True),
        lambda: LocalKms.generate(folder / "other.key"),
        lambda: LocalKms.from_file(folder / "new.key", create=True),
    ):
        with pytest.raises(ConfigurationError, match="master key folder") as info:
            attempt()
        assert str(folder) in str(info.value)
        assert "chmod go-w" in str(info.value)
    assert not (folder / "other.key").exists()
    assert not (folder / "new.key").exists()


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o711, 0o500], ids=oct)
def test_key_folder_private_or_read_only_for_others_is_accepted(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    kms = LocalKms.generate(folder / "master.key")
    os.chmod(folder, mode)
    try:
        assert LocalKms.from_file(folder / "master.key").kms_id == kms.kms_id
    finally:
        os.chmod(folder, 0o700)


def test_key_folder_made_writable_after_open_stops_key_changes(
    kms: LocalKms, key_path: Path
) -> None:
    os.chmod(key_path.parent, 0o777)
    try:
        with pytest.raises(ConfigurationError, match="master key folder"):
            kms.new_root()
        with pytest.raises(ConfigurationError, match="master key folder"):
            kms.destroy_root(kms.current_root())
    finally:
        os.chmod(key_path.parent, 0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_key_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    LocalKms.generate(folder / "master.key")
    os.chown(folder, 54321, 54321)
    with pytest.raises(ConfigurationError, match="another user") as info:
        LocalKms.from_file(folder / "master.key")
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("target_exists", [False, True])
def test_symlinked_lock_file_is_refused(
    kms: LocalKms, key_path: Path, tmp_path: Path, target_exists: bool
) -> None:
    """A symlink planted at ``<name>.lock`` would make this (perhaps root) process create or
    lock a file of the attacker's choosing: refused, nothing created or changed there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "victim"
    if target_exists:
        target.write_text("untouched")
    key_path.with_name(key_path.name + ".lock").symlink_to(target)
    first = kms.current_root()
    for change in (kms.new_root, lambda: kms.destroy_root(first)):
        with pytest.raises(ConfigurationError, match="symbolic link") as info:
            change()
        assert str(key_path) + ".lock" in str(info.value)
    assert kms.root_state(first) is RootState.ENABLED
    assert len(_materials(key_path)) == 1
    if target_exists:
        assert target.read_text() == "untouched"
    else:
        assert not target.exists()


def test_lock_file_that_is_not_a_regular_file_is_refused(kms: LocalKms, key_path: Path) -> None:
    """A FIFO at the lock path: refused at once (an open for writing would otherwise block; the
    alarm turns such a hang into a failure)."""
    import signal

    def hung(*_: object) -> None:
        raise AssertionError("opening the lock file blocked")

    os.mkfifo(key_path.with_name(key_path.name + ".lock"), 0o600)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(ConfigurationError, match="lock file"):
            kms.new_root()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_ephemeral_root_lifecycle() -> None:
    kms = LocalKms.ephemeral()
    first = kms.current_root()
    second = kms.new_root()
    kms.destroy_root(first)
    assert kms.root_state(first) is RootState.DESTROYED
    assert kms.current_root() == second
