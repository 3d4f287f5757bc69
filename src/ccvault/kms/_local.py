"""A KMS backed by master-key files on local disk, for development, tests and air-gapped sites.

File format (text, UTF-8, one record per line)::

    ccvault-local-kms v1 <file id: 32 hex>
    key <root id: 32 hex> <created: unix seconds> <key: urlsafe base64 of 32 bytes>
    ...

Several keys may be present; the newest wraps, every listed key unwraps. The file is created
with mode 0600 and a file readable or writable by group or others is refused, and so is a folder
that group or others can write (or that another user owns): whoever can write the folder can
replace the file. Adding or destroying a root rewrites the file (a temporary copy
``.<name>.tmp-<16 hex>`` beside it, fsync, rename) under an exclusive lock on ``<name>.lock``,
which is never opened through a symbolic link. A copy left by a process killed before its rename
still holds every root of its time, destroyed ones included: such copies are deleted when the
file is opened (a warning when that is not possible) and by every ``new_root`` and
``destroy_root`` (which fail when it is not possible).

The master key must never be backed up together with the key store: whoever holds both holds
every key. See docs/security.md.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from .._fs import fsync_dir
from .._repr import safe_repr
from .._secret import SecretKey
from ..crypto._encoding import lp
from ..crypto._primitives import KEY_BYTES, NONCE_BYTES, Aead, AeadFailure, random_bytes
from ..errors import ConfigurationError, DecryptionError, KmsError, KmsKeyNotFoundError
from ._protocol import RootState, WrappedKey, canonical_context

__all__ = ["LocalKms"]

_MAGIC = "ccvault-local-kms v1"
_AD_LABEL = b"ccvault/local-kms/v1"
_COPY = ".tmp-"  # temporary copies of the key file <name>: ".<name>.tmp-<16 hex>"

log = logging.getLogger("ccvault.kms.local")


@dataclass(frozen=True, slots=True)
class _Root:
    root_id: str
    created: int
    material: SecretKey
    aead: Aead

    @safe_repr
    def __repr__(self) -> str:
        return f"_Root({self.root_id!r})"


class LocalKms:
    """Master keys in a local file (or only in memory, for tests). Implements root lifecycle."""

    def __init__(self, *, path: Path | None, file_id: str, roots: list[_Root]) -> None:
        self._path = path
        self._file_id = file_id
        self._roots: dict[str, _Root] = {r.root_id: r for r in roots}
        self._destroyed: set[str] = set()
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.RLock()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, create: bool = False) -> LocalKms:
        """Open a master-key file; with ``create=True`` a missing file is generated (mode 0600)."""
        p = Path(path)
        if not p.exists():
            if not create:
                raise ConfigurationError(f"master key file {str(p)!r} does not exist")
            try:
                return cls.generate(p)
            except ConfigurationError:
                if not p.exists():
                    raise
                # Another process created it first: use theirs.
        file_id, roots = _read_file(p)
        return cls(path=p, file_id=file_id, roots=roots)._cleaned_at_open()

    @classmethod
    def generate(cls, path: str | os.PathLike[str]) -> LocalKms:
        """Create a new master-key file with one fresh key; refuses to overwrite a file."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(_open_folder(p.parent))  # refuses a folder that others can write
        kms = cls(path=p, file_id=random_bytes(16).hex(), roots=[_new_root()])
        # Write a complete file under a private name, then link it into place: a process that
        # races us sees either no file or a whole one, never a half-written file.
        tmp = _write_private(p, kms._render)
        try:
            os.link(tmp, p)
        except OSError:
            # FileExistsError, or FileNotFoundError when a process that created the file first
            # already removed our copy as a leftover.
            if p.exists():
                raise ConfigurationError(f"master key file {str(p)!r} already exists") from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(p.parent)
        return kms._cleaned_at_open()

    @classmethod
    def ephemeral(cls) -> LocalKms:
        """A LocalKms whose keys live only in memory (tests, benchmarks)."""
        return cls(path=None, file_id=random_bytes(16).hex(), roots=[_new_root()])

    @safe_repr
    def __repr__(self) -> str:
        where = str(self._path) if self._path else "memory"
        return f"LocalKms({where!r}, roots={len(self._roots)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("LocalKms cannot be pickled")

    # -- the Kms protocol ---------------------------------------------------------------------

    @property
    def kms_id(self) -> str:
        return f"local:{self._file_id}"

    @property
    def supports_root_lifecycle(self) -> bool:
        return True

    @property
    def root_destruction_delay(self) -> timedelta:
        """Zero: :meth:`destroy_root` removes the root from the key file at once."""
        return timedelta(0)

    def current_root(self) -> str:
        with self._lock:
            if not self._roots:
                raise KmsKeyNotFoundError("the local KMS has no master key left")
            return max(self._roots.values(), key=lambda r: (r.created, r.root_id)).root_id

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        root = self._root(root_id or self.current_root())
        nonce = random_bytes(NONCE_BYTES)
        blob = nonce + root.aead.seal(nonce, key.reveal(), _ad(root.root_id, context))
        return WrappedKey(self.kms_id, root.root_id, blob)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        if wrapped.kms_id != self.kms_id:
            raise KmsError("the wrapped key belongs to another KMS")
        root = self._root(wrapped.root_id)
        blob = wrapped.blob
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError
        try:
            key = root.aead.open(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _ad(root.root_id, context))
        except AeadFailure:
            raise DecryptionError from None
        return SecretKey(key)

    def new_root(self) -> str:
        with self._lock, self._file_lock():
            self._reload()
            self._remove_copies()
            root = _new_root(after=max((r.created for r in self._roots.values()), default=0))
            self._roots[root.root_id] = root
            self._persist()
            return root.root_id

    def destroy_root(self, root_id: str) -> None:
        """Remove the root from the key file, and every leftover temporary copy of the file (which
        may still hold it); raises ConfigurationError when a copy cannot be removed."""
        with self._lock, self._file_lock():
            self._reload()
            self._remove_copies()
            if root_id in self._roots:
                del self._roots[root_id]
                self._persist()
            self._destroyed.add(root_id)

    def root_state(self, root_id: str) -> RootState:
        with self._lock:
            self._refresh()
            if root_id in self._roots:
                return RootState.ENABLED
            if root_id in self._destroyed:
                return RootState.DESTROYED
            return RootState.UNKNOWN

    # -- internals ----------------------------------------------------------------------------

    def _root(self, root_id: str) -> _Root:
        with self._lock:
            self._refresh()  # another process may have added or destroyed a root
            root = self._roots.get(root_id)
            if root is None:
                raise KmsKeyNotFoundError(f"local KMS root {root_id} is destroyed or unknown")
            return root

    def _refresh(self) -> None:
        """Re-read the file when it changed, so a root destroyed elsewhere stops unwrapping."""
        if self._path is None:
            return
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read master key file {str(self._path)!r}") from exc
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._signature:
            self._reload()
            self._signature = signature

    def _reload(self) -> None:
        if self._path is None:
            return
        if not self._path.exists():
            # A deleted master key file is a destroyed key: never write it back from memory.
            raise KmsKeyNotFoundError("the master key file is gone: its keys are destroyed")
        file_id, roots = _read_file(self._path)
        if file_id != self._file_id:
            raise ConfigurationError("the master key file was replaced by another one")
        now = {r.root_id for r in roots}
        self._destroyed |= set(self._roots) - now
        self._roots = {r.root_id: r for r in roots}

    def _render(self) -> str:
        lines = [f"{_MAGIC} {self._file_id}"]
        for root in sorted(self._roots.values(), key=lambda r: (r.created, r.root_id)):
            encoded = base64.urlsafe_b64encode(root.material.reveal()).decode("ascii")
            lines.append(f"key {root.root_id} {root.created} {encoded}")
        return "\n".join(lines) + "\n"

    def _persist(self) -> None:
        if self._path is None:
            return
        tmp = _write_private(self._path, self._render)
        try:
            os.replace(tmp, self._path)
        except OSError:
            os.unlink(tmp)
            raise
        fsync_dir(self._path.parent)

    def _cleaned_at_open(self) -> LocalKms:
        """Delete leftover temporary copies of the key file (under the file lock, so that no
        writer's copy in progress is taken); warn when they cannot be deleted (a folder this
        process may not write): an admin's next new_root or destroy_root removes them."""
        if self._path is None or not _copies(self._path):
            return self
        try:
            with self._file_lock():
                self._remove_copies()
        except ConfigurationError as exc:
            if not isinstance(exc.__cause__, OSError):
                raise  # a refused lock file (a symlink, not a regular file of ours)
            log.warning("%s; they are removed by the next new_root or destroy_root", exc)
        return self

    def _remove_copies(self) -> None:
        """Delete every ``.<name>.tmp-<16 hex>`` beside the key file. Call with the file lock
        held: every writer of such a copy holds it, except :meth:`generate`, which tolerates it."""
        if self._path is None:
            return
        copies = _copies(self._path)
        for copy in copies:
            try:
                os.unlink(copy)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot remove {str(copy)!r}, a leftover copy of the master key file "
                    "(it may hold destroyed roots): remove it"
                ) from exc
        if copies:
            fsync_dir(self._path.parent)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        import fcntl

        lock_path = self._path.with_name(self._path.name + ".lock")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(lock_path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                # A planted symlink would make this process create or lock a file elsewhere.
                raise ConfigurationError(
                    f"the lock file {str(lock_path)!r} is a symbolic link: refusing to follow it"
                ) from None
            raise ConfigurationError(f"cannot open the lock file {str(lock_path)!r}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise ConfigurationError(
                    f"the lock file {str(lock_path)!r} is not a regular file of this user"
                )
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _make_root(root_id: str, created: int, material: bytes) -> _Root:
    return _Root(root_id, created, SecretKey(material), Aead(material))


def _new_root(after: int = 0) -> _Root:
    created = max(int(time.time()), after + 1)
    return _make_root(random_bytes(16).hex(), created, random_bytes(KEY_BYTES))


def _ad(root_id: str, context: Mapping[str, str]) -> bytes:
    return lp(_AD_LABEL, root_id.encode("ascii"), canonical_context(context))


def _copies(target: Path) -> list[Path]:
    """The temporary copies of ``target`` in its folder (see :func:`_write_private`)."""
    pattern = re.compile(re.escape(f".{target.name}{_COPY}") + "[0-9a-f]{16}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [target.parent / name for name in names if pattern.fullmatch(name)]


def _write_private(target: Path, render: Callable[[], str]) -> str:
    """Write the text ``render()`` returns to a new 0600 file ``.<name>.tmp-<16 hex>`` beside
    ``target`` (O_EXCL, never through a symlink). The text (every root) is made inside the write
    call, never bound to a name: a failed open, write or fsync leaves no root in the frames."""
    tmp = str(target.with_name(f".{target.name}{_COPY}{secrets.token_hex(8)}"))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _open_folder(folder: Path) -> int:
    """A descriptor of the key file's folder, refused when group or others can write it or it
    belongs to another user than this one or root: they could replace the key file."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the master key folder {str(folder)!r}") from exc
    st = os.fstat(fd)
    problem = None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = (
            f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): whoever can "
            f"write it can replace the key file; run: chmod go-w {folder}"
        )
    elif st.st_uid not in (os.geteuid(), 0):
        problem = "belongs to another user: that user can replace the key file"
    if problem is not None:
        os.close(fd)
        raise ConfigurationError(f"the master key folder {str(folder)!r} {problem}")
    return fd


def _read_file(path: Path) -> tuple[str, list[_Root]]:
    # Neither the file's text nor any part of it is bound to a name in a frame that raises: an
    # error tracker that captures locals would send every root with the error.
    parsed = _parse(_read_text(path))
    if parsed is None:
        raise ConfigurationError(f"{str(path)!r} is not a ccvault master key file")
    return parsed


def _read_text(path: Path) -> str:
    # Open the folder and check it, then the file within that very folder without following
    # symlinks, then check the descriptor we read from (no TOCTOU).
    folder = _open_folder(path.parent)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError as exc:
        raise ConfigurationError(f"cannot read master key file {str(path)!r}") from exc
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigurationError(
            f"master key path {str(path)!r} is {what}: give the path of the key file itself"
        )
    with os.fdopen(fd, "rb") as f:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"master key file {str(path)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        if st.st_uid != os.geteuid():
            raise ConfigurationError(f"master key file {str(path)!r} is owned by another user")
        try:
            text = _utf8(f.read(1 << 20))
        except OSError as exc:
            raise ConfigurationError(f"cannot read master key file {str(path)!r}") from exc
    if text is None:
        raise ConfigurationError(f"master key file {str(path)!r} is not UTF-8 text")
    return text


def _utf8(data: bytes) -> str | None:
    """``data`` decoded, or None: a UnicodeDecodeError carries all of ``data`` in its args."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse(text: str) -> tuple[str, list[_Root]] | None:
    """The file id and roots of a key file's text, or None when it is malformed (never an
    exception: its traceback would hold this frame, and the text with it)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or not lines[0].startswith(_MAGIC + " "):
        return None
    file_id = lines[0][len(_MAGIC) + 1 :]
    if len(file_id) != 32:
        return None
    roots: list[_Root] = []
    for line in lines[1:]:
        fields = line.split(" ")
        if len(fields) != 4 or fields[0] != "key" or len(fields[1]) != 32:
            return None
        try:
            material = base64.urlsafe_b64decode(fields[3])
            created = int(fields[2])
            bytes.fromhex(fields[1])
        except ValueError:
            return None
        if len(material) != KEY_BYTES:
            return None
        roots.append(_make_root(fields[1], created, material))
    return file_id, roots
