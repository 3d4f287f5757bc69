"""AWS KMS backend: epoch keys wrapped by KMS ``Encrypt``/``Decrypt`` under an encryption context.

This is the only module that imports boto3/botocore (``pip install 'ccvault[aws]'``); it does so
lazily, so ``import ccvault.kms`` works without the extra.

* ``wrap`` calls ``Encrypt`` with ``EncryptionContext`` = the context mapping (the vault passes
  installation, purpose and epoch id), so a wrapped key only unwraps for the purpose and id it was
  made for. ``WrappedKey.root_id`` is the ARN of the key KMS actually used.
* ``unwrap`` calls ``Decrypt`` naming ``KeyId=root_id``: a blob cannot be redirected to another key.
  Root ids come from the key store, whose writers must not be able to point this process at a key
  of theirs: every root id is checked against the region and account of the configured key (the
  account is resolved once with ``DescribeKey`` when the key is configured by alias name or bare
  key id) before any call names it.
* Per-epoch roots: ``new_root`` creates a symmetric KMS key tagged ``ccvault:role=epoch-root``,
  ``destroy_root`` schedules its deletion (7 to 30 days); both are admin operations.
* Retries are botocore's "standard" mode (bounded attempts, jittered exponential backoff on
  throttling, 5xx and connection errors) with connect/read timeouts; a TLS failure is not retried
  (a configuration or interception problem, not an outage). Every botocore failure is translated
  once, by :func:`_translate`, into the ccvault error tree, raised outside the ``except`` block
  (no chaining, no botocore frames: botocore's text and locals can echo request data) and described
  by identifiers only. Key material is never bound to a local that outlives the SDK call, so the
  frames of a traceback (which error reporters may capture with their locals) do not hold it.
* ``endpoint_url`` must be ``https://``, except on a loopback host (a local test server).
* Logging: at DEBUG, botocore prints every request body (``botocore.endpoint``, "Making request
  ... with params") and every response body (``botocore.parsers``, "Response body"), which for
  ``Encrypt`` and ``Decrypt`` hold the epoch key in base64. Every client this backend uses, built
  or injected, gets two event handlers (``before-call.kms`` and ``before-parse.kms``, registered
  first, once per client) that swap those bodies for equal bytes whose ``str``/``repr`` show the
  JSON with ``Plaintext`` replaced by ``<redacted>`` (see :class:`_RedactedBody`): the SDK sends
  and parses the same bytes, and no logger, handler or filter set-up can make it print the key.

See docs/kms-aws.md for the IAM policies and the error table.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

from .._repr import safe_repr
from .._secret import SecretKey
from ..crypto._primitives import KEY_BYTES
from ..errors import (
    CcvaultError,
    ConfigurationError,
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsKeyNotFoundError,
    KmsKeyPendingDeletionError,
    KmsUnavailableError,
)
from ._protocol import RootState, WrappedKey

__all__ = [
    "AwsKms",
    "aws_url_params",
    "build_aws_client",
    "check_client_options",
    "check_endpoint",
]

SCHEME = "aws-kms"
ROOT_TAG = ("ccvault:role", "epoch-root")
ROOT_DESCRIPTION = (
    "ccvault epoch root key (created by ccvault; deleted when its epoch is destroyed)"
)
MAX_CIPHERTEXT = 6144  # AWS KMS limit on CiphertextBlob

_PARTITION_REGION_ACCOUNT = (
    r"arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12})"
)
_KEY_ARN = re.compile(_PARTITION_REGION_ACCOUNT + r":key/(?P<id>[A-Za-z0-9-]{1,128})")
_ALIAS_ARN = re.compile(_PARTITION_REGION_ACCOUNT + r":alias/(?P<name>[A-Za-z0-9/_-]{1,250})")
_ALIAS = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")
_KEY_ID = re.compile(
    r"mrk-[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

# The parameters an aws-kms:// URL takes (none secret: a masked URL shows their values).
URL_PARAMS = frozenset(
    {
        "region",
        "endpoint_url",
        "profile",
        "max_attempts",
        "connect_timeout",
        "read_timeout",
        "pending_window_days",
    }
)
_CREDENTIAL_PARAMS = re.compile(r"access|secret|token|password|credential|session", re.IGNORECASE)

_STATES = {
    "Enabled": RootState.ENABLED,
    "Disabled": RootState.DISABLED,
    "PendingDeletion": RootState.PENDING_DELETION,
    "PendingReplicaDeletion": RootState.PENDING_DELETION,
}


def _boto3(what: str = "the AWS KMS backend") -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigurationError(f"{what} needs boto3: pip install 'ccvault[aws]'") from None
    return boto3


class AwsKms:
    """Root keys in AWS KMS. Implements root lifecycle (a KMS key per epoch, on request).

    ``key_id`` is the configured key: a key ARN (recommended), an alias ARN, ``alias/<name>`` or a
    key id. It names this KMS (:attr:`kms_id` is derived from region and ``key_id``, and is stored
    beside every wrap), so every process of an installation must configure the same string.

    Pass a ready boto3 KMS ``client`` (its own retry and timeout configuration then applies), or
    let the backend build one from ``region``, ``endpoint_url`` and ``profile`` with botocore's
    standard retry mode, ``max_attempts`` calls at most and the given timeouts (seconds).
    Credentials come from boto3's usual chain (environment, profile, IAM role), never from here.
    """

    def __init__(
        self,
        key_id: str,
        *,
        client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        pending_window_days: int = 7,
        root_tags: Mapping[str, str] | None = None,
        root_policy: str | None = None,
    ) -> None:
        if not isinstance(key_id, str) or not _is_key_identifier(key_id):
            raise ConfigurationError(
                "key_id must be a KMS key ARN, alias ARN, 'alias/<name>' or key id"
            )
        check_client_options(max_attempts, connect_timeout, read_timeout)
        if not isinstance(pending_window_days, int) or not 7 <= pending_window_days <= 30:
            raise ConfigurationError("pending_window_days must be an integer from 7 to 30")
        tags = dict(root_tags or {})
        if ROOT_TAG[0] in tags or not all(isinstance(v, str) for v in (*tags, *tags.values())):
            raise ConfigurationError(f"root_tags must map str to str and not set {ROOT_TAG[0]!r}")
        if endpoint_url is not None:
            check_endpoint(endpoint_url)

        arn = _KEY_ARN.fullmatch(key_id) or _ALIAS_ARN.fullmatch(key_id)
        if client is not None:
            if region is not None or endpoint_url is not None or profile is not None:
                raise ConfigurationError(
                    "pass either client= or region/endpoint_url/profile, not both"
                )
            region = getattr(getattr(client, "meta", None), "region_name", None)
            if not region:
                raise ConfigurationError("the injected KMS client has no region")
            self._owns_client = False
        else:
            if region is None and arn is not None:
                region = arn["region"]
            client = build_aws_client(
                "kms",
                region=region,
                endpoint_url=endpoint_url,
                profile=profile,
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                what="AWS KMS backend",
                no_region="no AWS region: pass region=, use a key ARN or set AWS_REGION",
            )
            region = client.meta.region_name
            self._owns_client = True
        # The endpoint the client really uses: also one from AWS_ENDPOINT_URL(_KMS) or a profile,
        # or the injected client's.
        actual_endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        if isinstance(actual_endpoint, str):
            check_endpoint(actual_endpoint)
        _hide_key_material_from_logs(client)
        if arn is not None and arn["region"] != region:
            raise ConfigurationError(
                f"the key {key_id} is in region {arn['region']}, the client in {region}"
            )
        self._client = client
        self._key_id = key_id
        self._region: str = region
        # The account whose keys this installation uses: from the ARN, else (alias name or bare
        # key id) resolved once by DescribeKey of the configured key, before any call that names
        # a root id read from the key store.
        self._account: str | None = arn["account"] if arn is not None else None
        # For messages only: an injected client retries as it was configured to.
        self._max_attempts = _configured_attempts(client) or max_attempts
        self._pending_window_days = pending_window_days
        self._root_tags = tags
        self._root_policy = root_policy
        # The configured key's ARN (an alias is resolved on first need), and the newest root made
        # by new_root in this process, which wraps by default from then on.
        self._configured_arn: str | None = key_id if _KEY_ARN.fullmatch(key_id) else None
        self._current: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, client: Any = None) -> AwsKms:
        """``aws-kms://<key ARN | alias ARN | alias/name | key id>?region=..&endpoint_url=..``.

        Other parameters: ``profile``, ``max_attempts``, ``connect_timeout``, ``read_timeout``,
        ``pending_window_days``. Credentials are refused: they belong in the environment, a
        profile or an IAM role, never in a URL that ends up in settings files and logs.
        """
        prefix = SCHEME + "://"
        if not isinstance(url, str) or not url.startswith(prefix):
            raise ConfigurationError(f"an AWS KMS URL starts with {prefix}")
        rest = url[len(prefix) :]
        if "#" in rest:
            raise ConfigurationError("an AWS KMS URL has no fragment")
        key_part, _, query = rest.partition("?")
        key_id = unquote(key_part)
        if not key_id:
            raise ConfigurationError("the AWS KMS URL names no key: aws-kms://<arn-or-alias>")
        where, options = aws_url_params(query, URL_PARAMS, what="AWS KMS")
        if client is not None:
            return cls(key_id, client=client, **options)
        return cls(key_id, **where, **options)

    @safe_repr
    def __repr__(self) -> str:
        return f"AwsKms(region={self._region!r}, key_id={self._key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("AwsKms cannot be pickled")

    def close(self) -> None:
        """Close the HTTP connections of a client this backend built (an injected one is left)."""
        if self._owns_client:
            self._client.close()

    @property
    def region(self) -> str:
        return self._region

    @property
    def key_id(self) -> str:
        """The configured key, as given."""
        return self._key_id

    # -- the Kms protocol ---------------------------------------------------------------------

    @property
    def kms_id(self) -> str:
        return f"aws:{self._region}:{self._key_id}"

    @property
    def supports_root_lifecycle(self) -> bool:
        return True

    @property
    def root_destruction_delay(self) -> timedelta:
        """``pending_window_days``: a root scheduled for deletion can be restored with
        ``CancelKeyDeletion`` until that window ends."""
        return timedelta(days=self._pending_window_days)

    def current_root(self) -> str:
        """The newest root made by :meth:`new_root` in this process, else the configured key's
        ARN (an alias is resolved once, with DescribeKey)."""
        with self._lock:
            if self._current is not None:
                return self._current
        return self._configured()

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        # The key's bytes go straight into the call, never into a local of this frame: a
        # traceback of a failed wrap must not carry them (see _call).
        if len(key) != KEY_BYTES:
            raise ValueError(f"AwsKms wraps {KEY_BYTES}-byte keys")
        encryption_context = _encryption_context(context)
        if root_id is not None:
            if not isinstance(root_id, str) or not _KEY_ARN.fullmatch(root_id):
                raise ConfigurationError("AwsKms wraps under the key ARN of a root")
            self._check_root(root_id, "the requested root")
        else:
            self._account_id()  # the answer's KeyId is checked against it
        with self._lock:
            target = root_id or self._current or self._configured_arn or self._key_id
        response = self._call(
            "Encrypt",
            target,
            KeyId=target,
            Plaintext=key.reveal(),
            EncryptionContext=encryption_context,
            EncryptionAlgorithm="SYMMETRIC_DEFAULT",
        )
        used = self._own_key_arn(response.get("KeyId"), "Encrypt")
        blob = response.get("CiphertextBlob")
        if not isinstance(blob, bytes) or not blob:
            raise KmsError(f"AWS KMS returned no ciphertext for {used}")
        return WrappedKey(self.kms_id, used, blob)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        if wrapped.kms_id != self.kms_id:
            raise KmsError("the wrapped key belongs to another KMS")
        if not 0 < len(wrapped.blob) <= MAX_CIPHERTEXT:
            raise DecryptionError
        if not isinstance(wrapped.root_id, str) or not _KEY_ARN.fullmatch(wrapped.root_id):
            raise DecryptionError
        self._check_root(wrapped.root_id, "the wrapped key")
        response = self._call(
            "Decrypt",
            wrapped.root_id,
            CiphertextBlob=wrapped.blob,
            KeyId=wrapped.root_id,
            EncryptionContext=_encryption_context(context),
            EncryptionAlgorithm="SYMMETRIC_DEFAULT",
        )
        # Taken out of the response in a helper, so no frame that raises DecryptionError below
        # holds what KMS decrypted.
        key = _take_key(response, wrapped.root_id)
        if key is None:
            raise DecryptionError
        return key

    def new_root(self) -> str:
        """Create a symmetric KMS key for a new epoch and make it current (admin principal)."""
        self._account_id()  # the new key must be in the configured key's account
        tags = {**self._root_tags, ROOT_TAG[0]: ROOT_TAG[1]}
        params: dict[str, Any] = {
            "Description": ROOT_DESCRIPTION,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "Tags": [{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())],
        }
        if self._root_policy is not None:
            params["Policy"] = self._root_policy
        meta = self._call("CreateKey", "(new key)", **params)["KeyMetadata"]
        arn = meta.get("Arn")
        try:
            arn = self._own_key_arn(arn, "CreateKey")
        except KmsError:
            # Created somewhere we would refuse to unwrap from (another account): do not leave
            # an orphan key behind.
            if isinstance(arn, str) and _KEY_ARN.fullmatch(arn):
                self._call(
                    "ScheduleKeyDeletion",
                    arn,
                    KeyId=arn,
                    PendingWindowInDays=self._pending_window_days,
                )
            raise ConfigurationError(
                f"the new root {arn} is outside the account of the configured key "
                f"{self._key_id}: run new_root with credentials of that account"
            ) from None
        with self._lock:
            self._current = arn
        return str(arn)

    def destroy_root(self, root_id: str) -> None:
        """Schedule deletion of an epoch root (admin principal). Idempotent.

        Only keys that ccvault created (tagged ``ccvault:role=epoch-root``) are deleted; the
        configured key never is. What the root wrapped is unrecoverable once the pending window
        (``pending_window_days``) is over; until then an administrator can cancel the deletion.
        """
        if not isinstance(root_id, str) or not _KEY_ARN.fullmatch(root_id):
            raise ConfigurationError("destroy_root takes the key ARN of an epoch root")
        self._check_root(root_id, "destroy_root")
        state = self.root_state(root_id)
        if state in (RootState.PENDING_DELETION, RootState.DESTROYED):
            return
        if root_id == self._configured():
            raise ConfigurationError(f"refusing to destroy the configured key {root_id}")
        listed = self._call("ListResourceTags", root_id, KeyId=root_id).get("Tags", [])
        tags = {t.get("TagKey"): t.get("TagValue") for t in listed}
        if tags.get(ROOT_TAG[0]) != ROOT_TAG[1]:
            raise ConfigurationError(
                f"refusing to destroy {root_id}: it is not tagged {ROOT_TAG[0]}={ROOT_TAG[1]}"
            )
        try:
            self._call(
                "ScheduleKeyDeletion",
                root_id,
                KeyId=root_id,
                PendingWindowInDays=self._pending_window_days,
            )
        except KmsKeyPendingDeletionError:
            pass  # scheduled meanwhile by someone else
        except KmsKeyNotFoundError:
            pass  # deleted meanwhile
        with self._lock:
            if self._current == root_id:
                self._current = None

    def root_state(self, root_id: str) -> RootState:
        """The KMS key state; a key ARN that KMS no longer knows is DESTROYED (deletion done).

        A key ARN of another region or account is refused (KmsError) without a call."""
        if isinstance(root_id, str) and _KEY_ARN.fullmatch(root_id):
            self._check_root(root_id, "root_state")
        try:
            meta = self._call("DescribeKey", root_id, KeyId=root_id)["KeyMetadata"]
        except KmsKeyNotFoundError:
            return RootState.DESTROYED if _KEY_ARN.fullmatch(root_id) else RootState.UNKNOWN
        return _STATES.get(meta.get("KeyState", ""), RootState.UNKNOWN)

    # -- internals ----------------------------------------------------------------------------

    def _configured(self) -> str:
        with self._lock:
            if self._configured_arn is not None:
                return self._configured_arn
        meta = self._call("DescribeKey", self._key_id, KeyId=self._key_id)["KeyMetadata"]
        arn = meta.get("Arn")
        match = _KEY_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if match is None or match["region"] != self._region:
            raise KmsError("AWS KMS DescribeKey answered with an unexpected key id")
        with self._lock:
            if self._account is None:
                # An alias name or bare key id names a key of the caller's account: pin it.
                self._account = match["account"]
            if match["account"] != self._account:
                raise KmsError("AWS KMS DescribeKey answered with a key of another account")
            self._configured_arn = str(arn)
            return self._configured_arn

    def _account_id(self) -> str:
        """The account of the configured key (one DescribeKey, once, when it is not in its ARN)."""
        with self._lock:
            if self._account is not None:
                return self._account
        self._configured()
        with self._lock:
            assert self._account is not None
            return self._account

    def _check_root(self, root_id: str, what: str) -> None:
        """Refuse a key ARN outside the configured key's region and account, before any call
        names it: root ids come from the key store, and its writers must not choose the key."""
        match = _KEY_ARN.fullmatch(root_id)
        if match is None:  # pragma: no cover - callers check the format first
            raise KmsError(f"{what} is not a key ARN")
        if match["region"] != self._region or match["account"] != self._account_id():
            raise KmsError(f"{what} names a root outside this KMS's region and account: {root_id}")

    def _own_key_arn(self, arn: object, operation: str) -> str:
        """Check that KMS answered with a key ARN of this region and account."""
        match = _KEY_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if match is None or match["region"] != self._region:
            raise KmsError(f"AWS KMS {operation} answered with an unexpected key id")
        if match["account"] != self._account_id():
            raise KmsError(f"AWS KMS {operation} answered with a key of another account")
        return str(arn)

    def _call(self, operation: str, key: str, **params: Any) -> dict[str, Any]:
        """Call ``operation``; translate a botocore failure into the ccvault error tree.

        The ccvault error is raised outside the ``except`` block, so neither the botocore
        exception (``__context__``) nor its frames (which hold the request) are in its traceback;
        and ``Plaintext`` is dropped from ``params`` once the call is over, so this frame does not
        hold the key being wrapped either. Error reporters that capture frame locals (Sentry and
        the like) then see identifiers only.
        """
        method = getattr(self._client, _snake(operation))
        try:
            response: dict[str, Any] = method(**params)
            return response
        except Exception as exc:  # translated below, outside the handler: nothing is chained
            error = _translate(exc, operation=operation, key=key, attempts=self._max_attempts)
            if error is None:
                raise
            invalid_state = _error_code(exc) == "KMSInvalidStateException"
        finally:
            params.pop("Plaintext", None)
        if invalid_state and operation != "DescribeKey":
            error = self._refine_invalid_state(error, operation, key)
        raise error

    def _refine_invalid_state(self, error: CcvaultError, operation: str, key: str) -> CcvaultError:
        """KMSInvalidStateException covers several states: ask which one (best effort)."""
        try:
            state = self.root_state(key)
        except CcvaultError:
            return error
        if state is RootState.DISABLED:
            return KmsKeyDisabledError(f"AWS KMS key {key} is disabled")
        if state in (RootState.PENDING_DELETION, RootState.DESTROYED):
            return error
        return KmsError(f"AWS KMS key {key} is in a state that refuses {operation}")


def _configured_attempts(client: Any) -> int | None:
    retries = getattr(getattr(getattr(client, "meta", None), "config", None), "retries", None)
    attempts = retries.get("total_max_attempts") if isinstance(retries, dict) else None
    return attempts if isinstance(attempts, int) else None


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _is_key_identifier(key_id: str) -> bool:
    return any(p.fullmatch(key_id) for p in (_KEY_ARN, _ALIAS_ARN, _ALIAS, _KEY_ID))


def check_endpoint(endpoint_url: str) -> None:
    """Refuse an endpoint that is no http(s) URL, carries credentials, or is plain http:// off
    loopback (also used by the S3 ledger, erasure/_ledger_s3.py)."""
    try:
        parts = urlsplit(endpoint_url)
        host = parts.hostname
    except ValueError:
        raise ConfigurationError("endpoint_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError("endpoint_url must be an http(s) URL")
    # Any "@": a password holding "/", "?" or "#" ends urllib's userinfo early, and its tail
    # would reach the endpoint, and every connection error that quotes it.
    if parts.username is not None or parts.password is not None or "@" in endpoint_url:
        raise ConfigurationError("endpoint_url must not carry credentials")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError(
            "endpoint_url must be https:// (plain http:// only on a loopback host, for a local "
            "test server): keys or ledger entries and the credentials' signatures travel over it"
        )


def check_client_options(max_attempts: object, connect_timeout: float, read_timeout: float) -> None:
    """The retry and timeout settings of a boto3 client ccvault builds."""
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ConfigurationError("max_attempts must be an integer ≥ 1")
    if not connect_timeout > 0 or not read_timeout > 0:
        raise ConfigurationError("connect_timeout and read_timeout must be positive")


def build_aws_client(
    service: str,
    *,
    region: str | None,
    endpoint_url: str | None,
    profile: str | None,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    what: str,
    no_region: str,
) -> Any:
    """A boto3 client for ``service`` (also the S3 ledger's): botocore's standard retries,
    ``max_attempts`` calls at most, the given timeouts, no retry of a TLS failure. Credentials
    from boto3's chain. ``what`` names the user in messages ("AWS KMS backend"); ``no_region`` is
    the message when no region is configured."""
    boto3 = _boto3(f"the {what}")
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    check_client_options(max_attempts, connect_timeout, read_timeout)
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        if not session.region_name:
            raise ConfigurationError(no_region)
        client = session.client(service, endpoint_url=endpoint_url, config=config)
    except BotoCoreError as exc:
        error = ConfigurationError(f"cannot build the {what}'s client ({type(exc).__name__})")
    else:
        client.meta.events.register_first(f"needs-retry.{service}", _no_retry_on_tls_failure)
        return client
    raise error


_NUMBERS = {
    "max_attempts": int,
    "pending_window_days": int,
    "connect_timeout": float,
    "read_timeout": float,
}


def aws_url_params(
    query: str, known: frozenset[str], *, what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters of an AWS URL's query (each ``known``, given once, not empty; names that
    look like credentials refused): ``region``, ``endpoint_url`` and ``profile`` (None when not
    given), and the numeric ones, converted."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigurationError(f"the query of the {what} URL is malformed") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if _CREDENTIAL_PARAMS.search(name):
            raise ConfigurationError(
                f"credentials never go in the {what} URL: use the environment, a profile or an "
                "IAM role"
            )
        if name not in known:
            raise ConfigurationError(f"unknown {what} URL parameter {name!r}")
        if name in params:
            raise ConfigurationError(f"{what} URL parameter {name!r} is given twice")
        if not value:
            raise ConfigurationError(f"{what} URL parameter {name!r} is empty")
        params[name] = value
    options: dict[str, Any] = {}
    for name, convert in _NUMBERS.items():
        if name in params:
            try:
                options[name] = convert(params[name])
            except ValueError:
                raise ConfigurationError(f"{what} URL parameter {name!r} is not a number") from None
    return {name: params.get(name) for name in ("region", "endpoint_url", "profile")}, options


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_retry_on_tls_failure(caught_exception: object = None, **_: Any) -> None:
    """A ``needs-retry`` handler (registered first) that stops botocore retrying a TLS failure.

    An untrusted or mismatched certificate is a configuration or interception problem that no
    retry fixes; raising the exception here ends the attempt loop before the standard retry
    handler runs (so it takes no retry quota either). :func:`_translate` makes it a KmsError.
    """
    from botocore.exceptions import SSLError

    if isinstance(caught_exception, SSLError):
        raise caught_exception


_SECRET_FIELD = re.compile(r"Plaintext|SharedSecret")
_REDACTED = "<redacted>"


class _RedactedBody(bytes):
    """A KMS request or response body that prints without its key material.

    The bytes are the body's own (the SDK signs, sends and parses them unchanged); only ``str``
    and ``repr``, which botocore's DEBUG lines and ``http.client``'s debug output use, differ:
    they show the JSON document with every ``Plaintext``/``SharedSecret`` field replaced by
    ``<redacted>``, or only the length when the body is not a JSON document.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        try:
            document = json.loads(self)
            return repr(json.dumps(_redact(document)).encode())
        except (ValueError, RecursionError):  # not JSON (or not UTF-8): show nothing of it
            return f"<{len(self)} bytes, not shown>"

    __str__ = __repr__


def _redact(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: _REDACTED if _SECRET_FIELD.search(str(k)) else _redact(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _redact_request_body(params: Any = None, **_: Any) -> None:
    """``before-call.kms``: the serialised request that botocore.endpoint is about to log."""
    if isinstance(params, dict):
        body = params.get("body")
        if isinstance(body, bytes) and not isinstance(body, _RedactedBody):
            params["body"] = _RedactedBody(body)


def _redact_response_body(response_dict: Any = None, **_: Any) -> None:
    """``before-parse.kms``: the raw answer that botocore.parsers is about to log."""
    if isinstance(response_dict, dict):
        body = response_dict.get("body")
        if isinstance(body, bytes) and not isinstance(body, _RedactedBody):
            response_dict["body"] = _RedactedBody(body)


def _hide_key_material_from_logs(client: Any) -> None:
    """Register the body-redacting handlers on a boto3 KMS client (idempotent: the unique ids
    make a second AwsKms over the same client a no-op). Something that is not a botocore client
    (no event system) has no botocore logging to guard."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:
        return
    events.register_first(
        "before-call.kms", _redact_request_body, unique_id="ccvault-redact-request-body"
    )
    events.register_first(
        "before-parse.kms", _redact_response_body, unique_id="ccvault-redact-response-body"
    )


def _take_key(response: dict[str, Any], root_id: str) -> SecretKey | None:
    """The unwrapped epoch key of a Decrypt answer, popped out of it; None if it is not one."""
    plaintext = response.pop("Plaintext", None)
    if response.get("KeyId") != root_id or not isinstance(plaintext, bytes):
        return None
    if len(plaintext) != KEY_BYTES:
        return None
    return SecretKey(plaintext)


def _encryption_context(context: Mapping[str, str]) -> dict[str, str]:
    ctx = dict(context)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
        raise TypeError("the KMS context maps str to str")
    return ctx


_UNAVAILABLE = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "LimitExceededException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredTokenException",
        "ExpiredToken",
        "RequestExpired",
        "NotAuthorizedException",
        "InvalidGrantTokenException",
    }
)
_BAD_CIPHERTEXT = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if isinstance(code, str):
            return code
    return ""


def _translate(
    exc: BaseException, *, operation: str, key: str, attempts: int
) -> CcvaultError | None:
    """The ccvault error for a botocore exception raised by ``operation`` on ``key``.

    Returns None for anything that is not a botocore exception (a programming error, raised as it
    is). Messages name the operation, the key identifier and the AWS error code, never request
    data: botocore's own text can echo parameters.
    """
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - without botocore no botocore exception exists
        return None
    if isinstance(exc, bx.ClientError):
        code = _error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "LimitExceededException" and operation == "CreateKey":
            return KmsError(
                f"AWS KMS refused CreateKey: the account's key quota is reached ({code})"
            )
        if code in _UNAVAILABLE or (isinstance(status, int) and status >= 500):
            return KmsUnavailableError(
                f"AWS KMS could not serve {operation} on {key} ({code or status}; "
                f"gave up after at most {attempts} attempts)"
            )
        if code in _DENIED or status == 403:
            return KmsAccessDeniedError(
                f"AWS KMS denied {operation} on {key} ({code}): check the IAM and key policies"
            )
        if code == "NotFoundException":
            return KmsKeyNotFoundError(f"AWS KMS key {key} does not exist or is not visible")
        if code == "DisabledException":
            return KmsKeyDisabledError(f"AWS KMS key {key} is disabled")
        if code == "KMSInvalidStateException":
            return KmsKeyPendingDeletionError(
                f"AWS KMS key {key} is pending deletion or otherwise unusable ({code})"
            )
        if code in _BAD_CIPHERTEXT:
            if operation == "Decrypt":
                return DecryptionError()
            return KmsError(f"AWS KMS key {key} cannot be used for {operation} ({code})")
        return KmsError(f"AWS KMS refused {operation} on {key} ({code or status})")
    if isinstance(exc, bx.SSLError):
        # Certificate verification (untrusted CA, wrong host name, interception) or a TLS
        # protocol failure: a configuration or security problem, not an outage. Not retried, and
        # not a KmsUnavailableError, so the vault's outage grace period never covers it.
        return KmsError(
            f"AWS KMS TLS connection failed for {operation} on {key} ({type(exc).__name__}): "
            "check the endpoint, its certificate and the CA bundle"
        )
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return KmsUnavailableError(
            f"AWS KMS is unreachable for {operation} on {key} ({type(exc).__name__}; "
            f"gave up after at most {attempts} attempts)"
        )
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.NoRegionError):
        return ConfigurationError(
            f"AWS credentials or region are missing for {operation} ({type(exc).__name__})"
        )
    if isinstance(
        exc,
        bx.CredentialRetrievalError | bx.TokenRetrievalError | bx.SSOError | bx.NoAuthTokenError,
    ):
        return KmsAccessDeniedError(
            f"AWS credentials could not be obtained for {operation} ({type(exc).__name__})"
        )
    if isinstance(exc, bx.BotoCoreError):
        return KmsError(f"AWS KMS {operation} on {key} failed ({type(exc).__name__})")
    return None
