"""A KMS backed by the Transit secrets engine of HashiCorp Vault or OpenBao.

A *root* is a Transit key created with ``derived=True`` (type ``aes256-gcm96``): every wrap and
unwrap sends the canonical context (:func:`~ccvault.kms._protocol.canonical_context`, base64) as
the key-derivation ``context``, so a wrapped key only opens with the context it was wrapped with.
The wrapped bytes are Transit's own ciphertext (``vault:v<N>:<base64>``), so ``rotate`` (a new
key version) keeps old wraps readable, and trimming or deleting the key makes them unreadable:
that is how an epoch reaches its erasure horizon.

Root ids come from the key store, which someone with write access to the database controls, so
only this backend's own names are accepted: the configured ``key_name`` and per-epoch roots
``<key_name>-<32 hex>``. Anything else is refused before any request (``unwrap`` with the
opaque :class:`~ccvault.errors.DecryptionError`), and :meth:`VaultTransitKms.destroy_root` deletes
per-epoch roots only, never ``key_name`` itself. The first wrap or unwrap under a root in each
process checks that the Transit key is derived (a different context must be refused).

Authentication is a token or an AppRole. The token's TTL is looked up on first use and the token
renewed (``renew-self``) once less than a third of its TTL remains; with AppRole the backend logs
in again when the token cannot be renewed (revoking the token it replaces), or after a 403 when
``lookup-self`` shows the token itself is dead, at most once per 30 s. Tokens never appear in
``repr``, logs or error text.

Failures go through one translation (:func:`_translate`) and the shared bounded retry loop
(:func:`~ccvault.kms._retry.call_with_retries`): a sealed or overloaded server (any 5xx, 429), a
timeout or a refused connection is retried with jittered backoff and ends as
:class:`~ccvault.errors.KmsUnavailableError`; a refused token or policy is
:class:`~ccvault.errors.KmsAccessDeniedError`; an unknown key is
:class:`~ccvault.errors.KmsKeyNotFoundError`; a TLS verification failure or any other unexpected
status is a plain :class:`~ccvault.errors.KmsError`; a ciphertext that does not authenticate
(tampered, wrong context, malformed) is the opaque :class:`~ccvault.errors.DecryptionError`. Only
unavailability is retried. hvac's exceptions are never chained, not even as ``__context__``: their
text names request URLs and server messages. Key material is never held in a local variable of a
frame that can end up in a traceback (error reporters capture frame locals).

hvac is imported lazily; without it, construction raises
:class:`~ccvault.errors.ConfigurationError` naming the extra: ``pip install 'ccvault[vault]'``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .._repr import safe_repr
from .._secret import SecretKey
from ..errors import (
    CcvaultError,
    ConfigurationError,
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
)
from ._protocol import RootState, WrappedKey, canonical_context
from ._retry import RetryPolicy, call_with_retries

__all__ = ["VaultTransitKms"]

T = TypeVar("T")

log = logging.getLogger("ccvault.kms.vault")

_INSTALL_HINT = "the Vault backend needs hvac: pip install 'ccvault[vault]'"
_KEY_TYPE = "aes256-gcm96"
# Transit key names are path segments: keep them to a safe alphabet (no "/", no "..").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_MAX_KEY_NAME = 128  # leaves room for the "-<32 hex>" of per-epoch roots
_MOUNT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
_NAMESPACE = _MOUNT
_MAX_BLOB = 8192  # a wrapped 32-byte key is ~70 bytes; anything far larger is not ours
# A Transit ciphertext: "vault:v<version>:<standard base64>"; versions start at 1 (Transit would
# read v0 as v1 and answers "disallowed by policy" for a negative one, so both are refused here).
_BLOB = re.compile(
    rb"vault:v[1-9][0-9]{0,9}:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})"
)
# The fraction of a token's TTL left when it is renewed.
_RENEW_FRACTION = 1 / 3
# After a 403, AppRole checks its token (lookup-self) and logs in again at most this often (s).
_RELOGIN_INTERVAL = 30.0
# Query parameters that would put a secret into a URL (and so into settings files and logs).
_SECRET_PARAMS = frozenset({"token", "vault_token", "secret_id", "role_id", "password"})
# The parameters a vault:// URL takes (none secret: a masked URL shows their values).
URL_PARAMS = frozenset({"addr", "namespace", "allow_insecure_http", "ca_cert", "timeout"})


def _hvac() -> Any:
    try:
        import hvac
    except ImportError:
        raise ConfigurationError(_INSTALL_HINT) from None
    return hvac


@dataclass(frozen=True, slots=True)
class _AppRole:
    role_id: str
    secret_id: str
    mount: str

    @safe_repr
    def __repr__(self) -> str:
        return f"_AppRole(role_id=<redacted>, secret_id=<redacted>, mount={self.mount!r})"


@dataclass(slots=True)
class _TokenState:
    """What the backend knows of its token's lifetime, on the injected monotonic clock."""

    expires_at: float | None  # None: the token does not expire (root or periodic-less service)
    period: float  # the TTL granted at the last lookup, renewal or login
    renewable: bool

    @property
    def managed(self) -> bool:
        return self.expires_at is not None


class VaultTransitKms:
    """Wrap epoch keys with a Vault/OpenBao Transit key (derived, ``aes256-gcm96``).

    ``addr`` must be ``https://`` unless ``allow_insecure_http=True`` (development only). TLS
    certificates are always verified: ``verify`` is ``True`` (system CAs) or the path of a CA
    bundle. Authenticate with ``token`` or ``approle=(role_id, secret_id)``, or inject a
    configured ``hvac.Client`` as ``client`` (its token is used as it is unless one is given).
    ``policy`` bounds the retries of unavailable-server failures; ``timeout`` (seconds) bounds
    each connection attempt and each socket read, not a whole request: a server that trickles
    its answer is not cut off, and one attempt may make several requests (token upkeep, the
    operation, a login), so there is no overall deadline. ``clock`` (monotonic seconds) drives
    token renewal and the AppRole re-login interval, ``sleep`` the pauses between retries, both
    injectable for tests.

    Root lifecycle: :meth:`new_root` creates a Transit key ``<key_name>-<32 hex>`` and makes it
    current in this process; :meth:`destroy_root` allows deletion and deletes it (only keys of that
    form: never ``key_name`` itself, never another application's key). Both are admin
    operations, as are :meth:`ensure_key` and :meth:`rotate`; the application's token needs only
    ``update`` on ``<mount>/decrypt/<key_name>*`` (and on ``<mount>/encrypt/<key_name>*`` if it
    wraps new epochs). See docs/kms-vault.md.
    """

    def __init__(
        self,
        addr: str,
        key_name: str,
        *,
        mount: str = "transit",
        token: str | None = None,
        approle: tuple[str, str] | None = None,
        approle_mount: str = "approle",
        namespace: str | None = None,
        client: Any = None,
        verify: bool | str = True,
        timeout: float = 5.0,
        policy: RetryPolicy | None = None,
        allow_insecure_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._addr = _normalise_addr(addr, allow_insecure_http=allow_insecure_http)
        if (
            not isinstance(key_name, str)
            or len(key_name) > _MAX_KEY_NAME
            or not _NAME.fullmatch(key_name)
        ):
            raise ConfigurationError(
                "key_name must be 1-128 characters of letters, digits, '_', '.' or '-'"
            )
        if not isinstance(mount, str) or not _MOUNT.fullmatch(mount.strip("/")):
            raise ConfigurationError(f"invalid Transit mount path {mount!r}")
        if not isinstance(approle_mount, str) or not _MOUNT.fullmatch(approle_mount.strip("/")):
            raise ConfigurationError(f"invalid AppRole mount path {approle_mount!r}")
        if namespace is not None and (
            not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace.strip("/"))
        ):
            raise ConfigurationError(f"invalid Vault namespace {namespace!r}")
        if verify is False or not isinstance(verify, bool | str):
            raise ConfigurationError(
                "TLS verification cannot be turned off: pass verify=True or a CA bundle path"
            )
        if isinstance(verify, str) and not Path(verify).is_file():
            raise ConfigurationError(f"CA bundle {verify!r} does not exist")
        if not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError("token must be a non-empty string")
        if token is not None and approle is not None:
            raise ConfigurationError("pass either token or approle, not both")
        role: _AppRole | None = None
        if approle is not None:
            if (
                not isinstance(approle, tuple)
                or len(approle) != 2
                or not all(isinstance(p, str) and p for p in approle)
            ):
                raise ConfigurationError("approle must be a (role_id, secret_id) pair of strings")
            role = _AppRole(approle[0], approle[1], approle_mount.strip("/"))
        if client is None and token is None and role is None:
            raise ConfigurationError("VaultTransitKms needs a token, an AppRole or a client")

        self._key_name = key_name
        self._mount = mount.strip("/")
        self._namespace = namespace.strip("/") if namespace else None
        self._approle = role
        self._policy = policy if policy is not None else RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._current = key_name
        self._destroyed: set[str] = set()
        self._verified: set[str] = set()  # roots known to be derived keys
        self._token: _TokenState | None = None
        self._needs_login = role is not None
        self._token_is_ours = False  # the client's token came from our own AppRole login
        self._last_reauth: float | None = None  # clock of the last login or post-403 check

        hvac = _hvac()
        if client is None:
            # token="" (never None): hvac would otherwise read VAULT_TOKEN or ~/.vault-token.
            client = hvac.Client(
                url=self._addr,
                token=token or "",
                namespace=self._namespace,
                verify=verify,
                timeout=timeout,
            )
        elif token is not None:
            client.token = token
        self._client = client
        self._transit = client.secrets.transit

    # -- construction from a URL ------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        environ: Mapping[str, str] | None = None,
        client: Any = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> VaultTransitKms:
        """Build from ``vault://<mount>/<key>?addr=https://...&namespace=...``.

        Parameters: ``addr`` (else ``VAULT_ADDR``), ``namespace`` (else ``VAULT_NAMESPACE``),
        ``ca_cert`` (CA bundle path), ``timeout`` (seconds), ``allow_insecure_http`` (``true`` or
        ``false``). The mount may have several segments (``vault://team/transit/key``).

        Credentials come from the environment only: AppRole when ``CCVAULT_VAULT_ROLE_ID`` is
        set (with ``CCVAULT_VAULT_SECRET_ID``), otherwise the token in ``CCVAULT_VAULT_TOKEN`` or
        ``VAULT_TOKEN``. A URL carrying a token or any other secret is refused.
        """
        env = os.environ if environ is None else environ
        if not isinstance(url, str):
            raise ConfigurationError("the KMS URL must be a string")
        parts = urlsplit(url)
        if parts.scheme != "vault":
            raise ConfigurationError("a Vault Transit KMS URL starts with vault://")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                "credentials do not belong in a vault:// URL: set CCVAULT_VAULT_TOKEN"
            )
        if parts.fragment:
            raise ConfigurationError("a vault:// URL has no fragment")
        segments = [s for s in (parts.netloc + parts.path).split("/") if s]
        if len(segments) < 2:
            raise ConfigurationError(
                "a Vault KMS URL names a mount and a key: vault://<mount>/<key>"
            )
        mount, key_name = "/".join(segments[:-1]), segments[-1]

        params: dict[str, str] = {}
        pairs: list[tuple[str, str]] | None = None
        # The ValueError's message quotes the URL, which may hold a secret: it is not chained.
        with contextlib.suppress(ValueError):
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        if pairs is None:
            raise ConfigurationError("malformed query string in the vault:// URL")
        for name, value in pairs:
            if name.lower() in _SECRET_PARAMS:
                raise ConfigurationError(
                    f"{name!r} must not be in the KMS URL: tokens and AppRole credentials come "
                    "from the environment (CCVAULT_VAULT_TOKEN or VAULT_TOKEN, or "
                    "CCVAULT_VAULT_ROLE_ID and CCVAULT_VAULT_SECRET_ID)"
                )
            if name not in URL_PARAMS:
                raise ConfigurationError(f"unknown parameter {name!r} in the vault:// URL")
            if name in params:
                raise ConfigurationError(f"parameter {name!r} repeated in the vault:// URL")
            params[name] = value

        addr = params.get("addr") or env.get("VAULT_ADDR")
        if not addr:
            raise ConfigurationError("the vault:// URL needs addr=https://... (or VAULT_ADDR)")
        namespace = params.get("namespace") or env.get("VAULT_NAMESPACE") or None
        insecure = params.get("allow_insecure_http", "false").lower()
        if insecure not in ("true", "false"):
            raise ConfigurationError("allow_insecure_http must be true or false")
        timeout = 5.0
        if "timeout" in params:
            try:
                timeout = float(params["timeout"])
            except ValueError:
                raise ConfigurationError("timeout must be a number of seconds") from None
        verify: bool | str = params.get("ca_cert") or True

        role_id, secret_id = env.get("CCVAULT_VAULT_ROLE_ID"), env.get("CCVAULT_VAULT_SECRET_ID")
        token = env.get("CCVAULT_VAULT_TOKEN") or env.get("VAULT_TOKEN") or None
        approle: tuple[str, str] | None = None
        if role_id:
            if not secret_id:
                raise ConfigurationError(
                    "CCVAULT_VAULT_ROLE_ID is set but CCVAULT_VAULT_SECRET_ID is not"
                )
            approle, token = (role_id, secret_id), None
        elif token is None and client is None:
            raise ConfigurationError(
                "no Vault credentials: set CCVAULT_VAULT_TOKEN (or VAULT_TOKEN), or "
                "CCVAULT_VAULT_ROLE_ID and CCVAULT_VAULT_SECRET_ID"
            )
        return cls(
            addr,
            key_name,
            mount=mount,
            token=token,
            approle=approle,
            namespace=namespace,
            client=client,
            verify=verify,
            timeout=timeout,
            policy=policy,
            allow_insecure_http=insecure == "true",
            clock=clock,
            sleep=sleep,
        )

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"VaultTransitKms(addr={self._addr!r}, mount={self._mount!r}, key={self._key_name!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("VaultTransitKms cannot be pickled")

    def close(self) -> None:
        """Close the HTTP session of the hvac client."""
        adapter = getattr(self._client, "adapter", None)
        if adapter is not None:
            adapter.close()

    # -- the Kms protocol -------------------------------------------------------------------------

    @property
    def kms_id(self) -> str:
        """``vault:<addr>/<namespace>/<mount>``: the Transit engine, not one key (roots vary)."""
        path = "/".join(p for p in (self._namespace, self._mount) if p)
        return f"vault:{self._addr}/{path}"

    @property
    def supports_root_lifecycle(self) -> bool:
        return True

    @property
    def root_destruction_delay(self) -> timedelta:
        """Zero: :meth:`destroy_root` deletes the Transit key at once (Transit has no waiting
        period; snapshots of Vault's own storage are the operator's to expire)."""
        return timedelta(0)

    @property
    def key_name(self) -> str:
        return self._key_name

    def current_root(self) -> str:
        with self._lock:
            return self._current

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        root = self._own_root(root_id if root_id is not None else self.current_root())
        if root is None:
            raise KmsError(
                f"root id {root_id!r} is not a root of this backend "
                f"({self._key_name!r} or {self._key_name!r}-<32 hex>)"
            )
        with self._lock:
            if root in self._destroyed:
                # Transit would silently create a fresh key of that name on encrypt ("upsert").
                raise KmsKeyNotFoundError(f"Transit key {root!r} was destroyed")
        derivation = _derivation(context)

        def encrypt() -> str:
            # The base64 key is built inside the call expression, never bound to a name: a frame
            # of this function (or of wrap) in a traceback must not hold key material.
            response = self._transit.encrypt_data(
                root,
                plaintext=base64.b64encode(key.reveal()).decode("ascii"),
                context=derivation,
                mount_point=self._mount,
            )
            return _field(response, "ciphertext")

        ciphertext = self._call(encrypt, "encrypt", root)
        if not ciphertext.startswith("vault:v"):
            raise KmsError(f"unexpected ciphertext from Transit key {root!r}")
        blob = ciphertext.encode("ascii")
        self._check_derived(root, blob, context)
        return WrappedKey(self.kms_id, root, blob)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        if wrapped.kms_id != self.kms_id:
            raise KmsError("the wrapped key belongs to another KMS")
        root = self._own_root(wrapped.root_id)
        if root is None:
            # A root id from the key store that is not one of ours (a database writer could name
            # any Transit key, e.g. a non-derived one that ignores the context): opaque refusal.
            raise DecryptionError
        ciphertext = _ciphertext(wrapped.blob)
        derivation = _derivation(context)

        def decrypt() -> SecretKey | CcvaultError:
            return _plain_key(
                self._transit.decrypt_data(
                    root, ciphertext=ciphertext, context=derivation, mount_point=self._mount
                )
            )

        result = self._call(decrypt, "decrypt", root)
        if isinstance(result, CcvaultError):
            raise result
        self._check_derived(root, wrapped.blob, context)
        return result

    def new_root(self) -> str:
        """Create a derived Transit key ``<key_name>-<32 hex>`` and make it current (admin)."""
        root = f"{self._key_name}-{secrets.token_hex(16)}"
        self._create(root)
        with self._lock:
            self._current = root
        log.info("created Transit key %s on %s", root, self.kms_id)
        return root

    def destroy_root(self, root_id: str) -> None:
        """Allow deletion of the Transit key and delete it; deleting a missing key is a no-op.

        Only per-epoch roots ``<key_name>-<32 hex>`` are ever deleted: deletion in Transit is
        immediate and irreversible, and root ids come from the key store. ``key_name`` itself,
        and any other name, is refused with :class:`~ccvault.errors.KmsError` before any request.
        """
        if not isinstance(root_id, str) or not _is_root_name(self._key_name, root_id):
            raise KmsError(
                f"refusing to destroy {root_id!r}: only per-epoch roots "
                f"{self._key_name!r}-<32 hex> are ever deleted"
            )
        root = root_id

        def delete() -> None:
            try:
                self._transit.update_key_configuration(
                    root, deletion_allowed=True, mount_point=self._mount
                )
                self._transit.delete_key(root, mount_point=self._mount)
            except _hvac().exceptions.VaultError as exc:
                if not _is_missing(exc):
                    raise

        self._call(delete, "delete", root)
        with self._lock:
            self._destroyed.add(root)
            self._verified.discard(root)
            if self._current == root:
                self._current = self._key_name
        log.info("destroyed Transit key %s on %s", root, self.kms_id)

    def root_state(self, root_id: str) -> RootState:
        """ENABLED while the Transit key exists; DESTROYED once a root made here is gone."""
        root = self._own_root(root_id)
        if root is None:
            raise KmsError(f"root id {root_id!r} is not a root of this backend")
        exists = self._call(lambda: self._read(root) is not None, "read", root)
        if exists:
            return RootState.ENABLED
        with self._lock:
            destroyed = root in self._destroyed
        if destroyed or _is_root_name(self._key_name, root):
            return RootState.DESTROYED
        return RootState.UNKNOWN

    # -- admin operations -------------------------------------------------------------------------

    def ensure_key(self) -> None:
        """Create the configured key (derived, ``aes256-gcm96``) if missing; check it if present.

        An existing key that is not derived is refused: Transit would ignore the context and the
        wrapped keys would not be bound to their purpose.
        """
        name = self._key_name
        info = self._call(lambda: self._read(name), "read", name)
        if info is None:
            self._create(name)
            return
        if not info.get("derived"):
            raise ConfigurationError(
                f"Transit key {name!r} is not a derived key; create a new key with derived=true"
            )
        if not info.get("supports_encryption") or not info.get("supports_decryption"):
            raise ConfigurationError(f"Transit key {name!r} cannot encrypt and decrypt")
        with self._lock:
            self._verified.add(name)

    def rotate(self) -> None:
        """Add a key version to the configured key; new wraps use it, old wraps still unwrap."""
        name = self._key_name
        self._call(lambda: self._transit.rotate_key(name, mount_point=self._mount), "rotate", name)
        log.info("rotated Transit key %s on %s", name, self.kms_id)

    # -- internals --------------------------------------------------------------------------------

    def _own_root(self, root_id: object) -> str | None:
        """``root_id`` if it names a root of this backend (``key_name`` or a per-epoch root)."""
        if not isinstance(root_id, str):
            return None
        if root_id == self._key_name or _is_root_name(self._key_name, root_id):
            return root_id
        return None

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            response = self._transit.read_key(name, mount_point=self._mount)
        except _hvac().exceptions.InvalidPath:
            return None
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise KmsError(f"unexpected answer reading Transit key {name!r}")
        return data

    def _create(self, name: str) -> None:
        self._call(
            lambda: self._transit.create_key(
                name, derived=True, key_type=_KEY_TYPE, mount_point=self._mount
            ),
            "create",
            name,
        )
        with self._lock:
            self._verified.add(name)
            self._destroyed.discard(name)

    def _check_derived(self, root: str, blob: bytes, context: Mapping[str, str]) -> None:
        """Once per root and process: refuse a non-derived key, which would ignore the context.

        The probe decrypts ``blob`` (a fresh wrap, or a wrap that just unwrapped with ``context``)
        under a different context; a derived key must refuse. Nothing the probe returns is kept.
        """
        with self._lock:
            if root in self._verified:
                return
        probe = _derivation({**context, "ccvault:probe": "derived-key-check"})
        ciphertext = blob.decode("ascii")

        def decrypt() -> None:
            self._transit.decrypt_data(
                root, ciphertext=ciphertext, context=probe, mount_point=self._mount
            )

        try:
            self._call(decrypt, "decrypt", root)
        except DecryptionError:
            with self._lock:
                self._verified.add(root)
            return
        except KmsAccessDeniedError:
            # A token allowed to encrypt but not to decrypt cannot run the probe: say so, and
            # rely on ensure_key()/new_root(), which create derived keys only.
            log.warning("cannot check that Transit key %s is derived (no decrypt permission)", root)
            return
        raise ConfigurationError(
            f"Transit key {root!r} is not a derived key: it ignores the context; "
            "create the key with derived=true (see VaultTransitKms.ensure_key)"
        )

    def _call(self, op: Callable[[], T], what: str, key: str) -> T:
        """Run one Transit operation with token upkeep, translation and bounded retries."""

        def attempt() -> T:
            self._ensure_token()
            token = self._client.token
            try:
                return op()
            except _hvac().exceptions.Forbidden:
                if self._approle is None:
                    raise
            # Outside the except block: nothing raised from here chains hvac's exception.
            # A 403 is a policy denial or a dead token (revoked, expired early); only the latter
            # is helped by a new login, and a denial storm must not become a login storm.
            if not self._relogin_after_denial(token):
                raise KmsAccessDeniedError(
                    f"Transit {what} with key {key!r} at {self._addr}: "
                    "permission denied (token or policy)"
                ) from None
            return op()

        return call_with_retries(
            attempt,
            translate=lambda exc: _translate(exc, what=what, key=key, addr=self._addr),
            policy=self._policy,
            sleep=self._sleep,
        )

    # -- token upkeep -----------------------------------------------------------------------------

    def _ensure_token(self) -> None:
        with self._lock:
            if self._needs_login:
                self._login(revoke_old=False)
                return
            if self._token is None:
                self._token = self._lookup()
            state = self._token
            if state.expires_at is None:
                return
            remaining = state.expires_at - self._clock()
            if remaining > state.period * _RENEW_FRACTION:
                return
            if state.renewable and self._renew(state):
                return
            if self._approle is not None:
                self._login(revoke_old=True)  # the old token still works until it expires

    def _lookup(self) -> _TokenState:
        hvac = _hvac()
        try:
            response = self._client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            # A token without lookup-self permission (or a bad one): manage nothing here; the
            # Transit call itself says whether the token is good.
            log.debug("cannot look up the Vault token; its TTL is not managed")
            return _TokenState(expires_at=None, period=0.0, renewable=False)
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            return _TokenState(expires_at=None, period=0.0, renewable=False)
        ttl = float(data.get("ttl") or 0)
        if ttl <= 0:  # root and other non-expiring tokens: never renewed
            return _TokenState(expires_at=None, period=0.0, renewable=False)
        period = max(ttl, float(data.get("creation_ttl") or 0))
        return _TokenState(self._clock() + ttl, period, bool(data.get("renewable")))

    def _renew(self, state: _TokenState) -> bool:
        """Renew the token; False when renewal was refused or no longer extends its life."""
        hvac = _hvac()
        now = self._clock()
        try:
            response = self._client.auth.token.renew_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
            # Not renewable after all, or already revoked: AppRole logs in again; a plain token
            # is used until Vault refuses it, and that refusal is the error the caller sees.
            log.warning("Vault token renewal was refused")
            state.renewable = False
            return False
        auth = response.get("auth") if isinstance(response, dict) else None
        lease = float(auth.get("lease_duration") or 0) if isinstance(auth, dict) else 0.0
        if lease <= 0:
            state.renewable = False
            return False
        old_expiry = state.expires_at or now
        state.expires_at = now + lease
        state.renewable = bool(auth.get("renewable")) if isinstance(auth, dict) else False
        if state.expires_at <= old_expiry + 1.0:
            # Capped by the token's max TTL: renewing again would not help.
            state.renewable = False
        state.period = max(state.period, lease)
        log.info("renewed the Vault token (ttl %ds)", int(lease))
        return True

    def _relogin_after_denial(self, token_before: object) -> bool:
        """After a 403 under AppRole: True when a fresh token is in place and the call may run
        once more. Logs in again only when ``lookup-self`` shows the token itself is no longer
        valid, and checks at most once per ``_RELOGIN_INTERVAL`` on the injected clock."""
        with self._lock:
            if self._client.token != token_before:
                return True  # another thread logged in meanwhile: try with its token
            now = self._clock()
            if self._last_reauth is not None and now - self._last_reauth < _RELOGIN_INTERVAL:
                return False
            self._last_reauth = now
            if self._token_is_valid():
                return False  # the token is fine: the policy refused this request
            log.warning("the Vault token is no longer valid; logging in again with AppRole")
            self._login(revoke_old=False)  # a dead token has nothing left to revoke
            return True

    def _token_is_valid(self) -> bool:
        ex = _hvac().exceptions
        try:
            self._client.auth.token.lookup_self()
        except (ex.Forbidden, ex.Unauthorized, ex.InvalidRequest):
            # Vault answers 403 for a revoked or expired token. A live token whose policy lacks
            # lookup-self (it is in Vault's default policy) also lands here: the login is then
            # merely unnecessary, and rate-limited.
            return False
        return True

    def _revoke_current(self) -> None:
        """Best effort: revoke the client's current token (``revoke-self``) before replacing it."""
        ex = _hvac().exceptions
        import requests

        failed = False
        try:
            self._client.auth.token.revoke_self()
        except (ex.VaultError, requests.exceptions.RequestException):
            failed = True
        if failed:
            log.info("could not revoke the replaced Vault token; it expires with its TTL")

    def _login(self, *, revoke_old: bool) -> None:
        role = self._approle
        assert role is not None
        ex = _hvac().exceptions
        with self._lock:
            refused = False
            response: object = None
            try:
                response = self._client.auth.approle.login(
                    role_id=role.role_id,
                    secret_id=role.secret_id,
                    mount_point=role.mount,
                    use_token=False,
                )
            except (ex.InvalidRequest, ex.Forbidden, ex.Unauthorized, ex.InvalidPath):
                # 400 "invalid role or secret ID", or no AppRole at that mount.
                refused = True
            if refused:  # raised outside the except block: hvac's exception is not chained
                raise KmsAccessDeniedError(
                    f"AppRole login at {self._addr} (auth/{role.mount}) was refused"
                )
            auth = response.get("auth") if isinstance(response, dict) else None
            del response
            if not isinstance(auth, dict) or not auth.get("client_token"):
                raise KmsAccessDeniedError("AppRole login returned no token")
            if revoke_old and self._token_is_ours:
                self._revoke_current()
            self._client.token = auth["client_token"]
            self._token_is_ours = True
            lease = float(auth.get("lease_duration") or 0)
            renewable = bool(auth.get("renewable"))
            del auth
            now = self._clock()
            if lease > 0:
                self._token = _TokenState(now + lease, lease, renewable)
            else:
                self._token = _TokenState(expires_at=None, period=0.0, renewable=False)
            self._needs_login = False
            self._last_reauth = now
            log.info("logged in to Vault with AppRole (ttl %ds)", int(lease))


# -- helpers --------------------------------------------------------------------------------------


def _normalise_addr(addr: str, *, allow_insecure_http: bool) -> str:
    if not isinstance(addr, str):
        raise ConfigurationError("addr must be a URL string")
    parts = urlsplit(addr.strip())
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_insecure_http:
        raise ConfigurationError(
            "refusing http:// for Vault: tokens and keys would cross the network in clear; "
            "use https:// (allow_insecure_http=True is for local development only)"
        )
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError("addr must be an https:// URL with a host")
    if (
        parts.username is not None
        or parts.password is not None
        or "@" in addr  # userinfo cut short by a "/", "?" or "#" in its password
        or parts.query
        or parts.fragment
    ):
        raise ConfigurationError("addr must be a plain https://host:port URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigurationError("addr has an invalid port") from None
    return f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _derivation(context: Mapping[str, str]) -> str:
    """The Transit ``context`` parameter: base64 of the canonical context bytes."""
    data = canonical_context(context)
    if not data:
        raise ValueError("VaultTransitKms needs a non-empty context (its keys are derived)")
    return base64.b64encode(data).decode("ascii")


def _ciphertext(blob: bytes) -> str:
    """The Transit ciphertext in a wrapped blob, checked locally before any request.

    Only ``vault:v<N>:<base64>`` with N ≥ 1 is sent: a malformed version would otherwise come back
    as "disallowed by policy" (read as a retired key version) or be read as another version.
    """
    if not isinstance(blob, bytes) or len(blob) > _MAX_BLOB or not _BLOB.fullmatch(blob):
        raise DecryptionError
    return blob.decode("ascii")


def _plain_key(response: object) -> SecretKey | CcvaultError:
    """The unwrapped key in a decrypt answer, or the error to raise (returned, not raised, so
    that no frame holding the answer's plaintext ends up in a traceback)."""
    data = response.get("data") if isinstance(response, dict) else None
    value = data.get("plaintext") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return KmsError("unexpected answer from Transit (no plaintext)")
    try:
        return SecretKey(base64.b64decode(value, validate=True))
    except ValueError:
        return DecryptionError()


def _field(response: object, name: str) -> str:
    data = response.get("data") if isinstance(response, dict) else None
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise KmsError(f"unexpected answer from Transit (no {name})")
    return value


def _is_root_name(key_name: str, root: str) -> bool:
    prefix = key_name + "-"
    suffix = root[len(prefix) :]
    return (
        root.startswith(prefix)
        and len(suffix) == 32
        and all(c in "0123456789abcdef" for c in suffix)
    )


def _messages(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple):
        return " ".join(str(e) for e in errors).lower()
    return str(exc.args[0] if exc.args else "").lower()


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an hvac exception (hvac keeps it only in its raising frames)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    tb = exc.__traceback__
    while tb is not None:
        names = tb.tb_frame.f_locals
        status = names.get("status_code")
        if not isinstance(status, int):
            status = getattr(names.get("response"), "status_code", None)
        if isinstance(status, int):
            return status
        tb = tb.tb_next
    return None


def _is_missing(exc: BaseException) -> bool:
    hvac = _hvac()
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return True
    text = _messages(exc)
    return isinstance(exc, hvac.exceptions.InvalidRequest) and (
        "not found" in text or "no existing key" in text
    )


def _translate(exc: Exception, *, what: str, key: str, addr: str) -> CcvaultError | None:
    """Map an hvac or requests exception to a ccvault error (the only place that does)."""
    import requests

    hvac = _hvac()
    ex = hvac.exceptions
    where = f"Transit {what} with key {key!r} at {addr}"
    if isinstance(exc, requests.exceptions.SSLError):
        return KmsError(f"{where}: TLS verification failed (check the CA bundle)")
    if isinstance(exc, requests.exceptions.Timeout):
        return KmsUnavailableError(f"{where}: timed out")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return KmsUnavailableError(f"{where}: cannot connect")
    if isinstance(exc, requests.exceptions.RequestException):
        return KmsUnavailableError(f"{where}: HTTP failure ({type(exc).__name__})")
    if not isinstance(exc, ex.VaultError):
        return None
    if isinstance(exc, ex.VaultDown):
        return KmsUnavailableError(f"{where}: Vault is sealed or down (503)")
    if isinstance(exc, ex.RateLimitExceeded):
        return KmsUnavailableError(f"{where}: rate limited (429)")
    if isinstance(exc, ex.InternalServerError | ex.BadGateway | ex.VaultNotInitialized):
        return KmsUnavailableError(f"{where}: server error")
    if isinstance(exc, ex.PreconditionFailed | ex.UnexpectedError):
        # Statuses hvac has no class for (409, 413, 504, ...): only a 5xx or 429 is transient.
        status = _status(exc)
        if status is not None and (status >= 500 or status == 429):
            return KmsUnavailableError(f"{where}: server error ({status})")
        shown = status if status is not None else "unknown"
        return KmsError(f"{where}: unexpected answer (HTTP status {shown})")
    if isinstance(exc, ex.Unauthorized | ex.Forbidden):
        return KmsAccessDeniedError(f"{where}: permission denied (token or policy)")
    if isinstance(exc, ex.InvalidPath):
        return KmsKeyNotFoundError(f"{where}: key or mount not found")
    if isinstance(exc, ex.InvalidRequest):
        text = _messages(exc)
        if "not found" in text or "no existing key" in text:
            return KmsKeyNotFoundError(f"{where}: key not found")
        if "disallowed by policy" in text:
            # Malformed versions (v0, v-1) never get here: _ciphertext refuses them locally.
            return KmsKeyDisabledError(
                f"{where}: the wrap's key version is below the key's min_decryption_version; "
                "lowering it again restores access unless the version was trimmed, in which "
                "case it is gone for good"
            )
        if what == "decrypt":
            return DecryptionError()
        return KmsError(f"{where}: request refused")
    return KmsError(f"{where}: refused ({type(exc).__name__})")
