"""AwsKms against a real HTTP endpoint: moto's KMS server on 127.0.0.1 (tests/aws_server.py).

moto is patched to refuse disabled and pending-deletion keys as AWS does, and to fix its lookups
by ARN; faults (throttling, 5xx) are injected server-side, so botocore's own retry machinery runs.
Without moto[server] the tests that need the server skip; with CI=true they fail instead.
"""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccvault import Vault
from ccvault._secret import SecretKey
from ccvault.errors import (
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
from ccvault.kms import Kms, RootState, WrappedKey
from ccvault.kms._aws import ROOT_TAG, AwsKms, _translate
from ccvault.testing import CountingKms, KmsContract
from leaks import raised, secrets_in

CTX = {"ccvault:installation": "ab" * 16, "ccvault:purpose": "epoch-key", "ccvault:epoch": "01"}
FOREIGN_ARN = "arn:aws:kms:us-east-1:999999999999:key/11111111-2222-3333-4444-555555555555"
MISSING_ARN = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"


def _key() -> SecretKey:
    return SecretKey(os.urandom(32))


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for clients AwsKms builds itself; nothing can reach real AWS."""
    from aws_server import aws_environment

    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def server(moto_server: Any) -> Iterator[Any]:
    moto_server.faults.clear()
    yield moto_server
    moto_server.faults.clear()


@pytest.fixture(scope="session")
def client(moto_server: Any) -> Any:
    return moto_server.client()


@pytest.fixture
def arn(server: Any, client: Any) -> str:
    key: str = server.create_key(client)
    return key


@pytest.fixture
def kms(arn: str, client: Any) -> AwsKms:
    return AwsKms(arn, client=client)


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, bool]]:
    """botocore's standard-mode backoff still computes every delay (recorded here as
    (attempt, delay, throttled)); the test just does not sleep it."""
    from botocore.retries.standard import ExponentialBackoff

    delays: list[tuple[int, float, bool]] = []
    original = ExponentialBackoff.delay_amount

    def record(self: Any, context: Any) -> float:
        delay: float = original(self, context)
        throttled = self._throttling_detector.is_throttling_error_from_context(context)
        delays.append((context.attempt_number, delay, throttled))
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", record)
    return delays


def _counted(server: Any, **config: Any) -> tuple[Any, Any]:
    from aws_server import count_requests

    client = server.client(**config)
    return client, count_requests(client)


def _key_ids_sent(client: Any) -> list[tuple[str, str]]:
    """(operation, KeyId) of every call ``client`` makes, recorded before it is sent."""
    sent: list[tuple[str, str]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, str(params.get("KeyId"))))

    client.meta.events.register("before-parameter-build.kms", record)
    return sent


# -- the contract ----------------------------------------------------------------------------------


class TestAwsKms(KmsContract):
    """A fresh key per backend, configured by ARN, on an injected client."""

    @pytest.fixture(autouse=True)
    def _bind(self, server: Any, client: Any) -> None:
        self.server, self.client = server, client

    def make_kms(self) -> Kms:
        return AwsKms(self.server.create_key(self.client), client=self.client)


class TestAwsKmsByAliasUrl(KmsContract):
    """A fresh key behind an alias, configured by URL: AwsKms builds its own client."""

    @pytest.fixture(autouse=True)
    def _bind(self, server: Any, client: Any) -> Iterator[None]:
        self.server, self.client = server, client
        self.built: list[AwsKms] = []
        yield
        for kms in self.built:
            kms.close()

    def make_kms(self) -> Kms:
        alias = f"alias/ccvault-test-{uuid.uuid4().hex[:8]}"
        self.client.create_alias(AliasName=alias, TargetKeyId=self.server.create_key(self.client))
        kms = AwsKms.from_url(
            f"aws-kms://{alias}?region=us-east-1&endpoint_url={self.server.endpoint_url}"
        )
        self.built.append(kms)
        return kms


# -- wrap and unwrap -------------------------------------------------------------------------------


def test_wrap_records_the_key_arn_and_kms_id(server: Any, client: Any, arn: str) -> None:
    alias = f"alias/ccvault-{uuid.uuid4().hex[:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=arn)
    by_alias = AwsKms(alias, client=client)
    wrapped = by_alias.wrap(_key(), context=CTX)
    assert wrapped.root_id == arn  # the key actually used, not the alias
    assert wrapped.kms_id == by_alias.kms_id == f"aws:us-east-1:{alias}"
    assert by_alias.current_root() == arn
    assert AwsKms(arn, client=client).kms_id == f"aws:us-east-1:{arn}"


def test_alias_is_resolved_once(server: Any, arn: str) -> None:
    client, sent = _counted(server)
    alias = f"alias/ccvault-{uuid.uuid4().hex[:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=arn)
    kms = AwsKms(alias, client=client)
    assert [kms.current_root() for _ in range(3)] == [arn] * 3
    assert sent["DescribeKey"] == 1


def test_unwrap_binds_the_encryption_context(kms: AwsKms) -> None:
    wrapped = kms.wrap(_key(), context=CTX)
    with pytest.raises(DecryptionError):
        kms.unwrap(wrapped, context={**CTX, "ccvault:installation": "cd" * 16})
    with pytest.raises(DecryptionError):
        kms.unwrap(wrapped, context={})


def test_a_blob_redirected_to_another_key_never_unwraps(
    server: Any, client: Any, kms: AwsKms
) -> None:
    wrapped = kms.wrap(_key(), context=CTX)
    other = server.create_key(client)
    redirected = WrappedKey(wrapped.kms_id, other, wrapped.blob)
    # AWS answers IncorrectKeyException (→ DecryptionError), moto AccessDeniedException.
    with pytest.raises((DecryptionError, KmsError)):
        kms.unwrap(redirected, context=CTX)


def test_foreign_or_malformed_root_ids_are_refused_before_any_call(server: Any, arn: str) -> None:
    client, sent = _counted(server)
    kms = AwsKms(arn, client=client)
    wrapped = kms.wrap(_key(), context=CTX)
    sent.clear()
    other_region = arn.replace("us-east-1", "eu-west-1")
    for root, error in (
        (FOREIGN_ARN, KmsError),  # another account than the configured key's
        (other_region, KmsError),
        ("alias/x", DecryptionError),
        ("", DecryptionError),
        (arn + "\n", DecryptionError),
    ):
        with pytest.raises(error):
            kms.unwrap(WrappedKey(wrapped.kms_id, root, wrapped.blob), context=CTX)
    for blob in (b"", b"x" * 6145):
        with pytest.raises(DecryptionError):
            kms.unwrap(WrappedKey(wrapped.kms_id, arn, blob), context=CTX)
    assert sum(sent.values()) == 0


@pytest.mark.parametrize("configured", ["alias", "key id"])
def test_alias_or_key_id_configuration_pins_the_account(
    server: Any, arn: str, configured: str
) -> None:
    """A process configured by ``alias/<name>`` or bare key id learns its account from
    DescribeKey of that key (once) and refuses roots of other accounts before any call names them
    (a key-store writer controls root ids)."""
    client, sent = _counted(server)
    key_ids = _key_ids_sent(client)
    if configured == "alias":
        key_id = f"alias/ccvault-{uuid.uuid4().hex[:8]}"
        client.create_alias(AliasName=key_id, TargetKeyId=arn)
    else:
        key_id = arn.rsplit("/", 1)[1]
    wrapped = AwsKms(arn, client=client).wrap(_key(), context=CTX)
    sent.clear()
    key_ids.clear()

    kms = AwsKms(key_id, client=client)
    foreign_root = WrappedKey(kms.kms_id, FOREIGN_ARN, wrapped.blob)  # account 9999…, us-east-1
    with pytest.raises(KmsError, match="outside") as caught:
        kms.unwrap(foreign_root, context=CTX)
    assert type(caught.value) is KmsError
    assert key_ids == [("DescribeKey", key_id)]  # only the configured key was ever named
    for refused in (
        lambda: kms.wrap(_key(), context=CTX, root_id=FOREIGN_ARN),
        lambda: kms.destroy_root(FOREIGN_ARN),
        lambda: kms.root_state(FOREIGN_ARN),
        lambda: kms.unwrap(foreign_root, context=CTX),
    ):
        with pytest.raises(KmsError, match="outside"):
            refused()
    assert key_ids == [("DescribeKey", key_id)]
    # Roots of the pinned account still work, and the account is not looked up again.
    mine = WrappedKey(kms.kms_id, arn, wrapped.blob)
    assert kms.unwrap(mine, context=CTX).reveal()
    assert kms.current_root() == arn
    assert sent == {"DescribeKey": 1, "Decrypt": 1}

    # Malformed root ids and other regions need no account: refused without any call at all.
    fresh_client, fresh_sent = _counted(server)
    fresh = AwsKms(key_id, client=fresh_client)
    for root, error in (
        ("alias/x", DecryptionError),
        ("", DecryptionError),
        (arn + "\n", DecryptionError),
        (arn.replace("us-east-1", "eu-west-1"), KmsError),
    ):
        with pytest.raises(error):
            fresh.unwrap(WrappedKey(fresh.kms_id, root, wrapped.blob), context=CTX)
    assert sum(fresh_sent.values()) == 0


def test_wrap_refuses_a_malformed_or_foreign_root_before_any_call(server: Any, arn: str) -> None:
    client, sent = _counted(server)
    kms = AwsKms(arn, client=client)
    for root in ("alias/x", "", arn + "\n"):
        with pytest.raises(ConfigurationError):
            kms.wrap(_key(), context=CTX, root_id=root)
    for root in (FOREIGN_ARN, arn.replace("us-east-1", "eu-west-1")):
        with pytest.raises(KmsError, match="outside"):
            kms.wrap(_key(), context=CTX, root_id=root)
    assert sum(sent.values()) == 0


def test_unwrapped_key_must_be_32_bytes(client: Any, kms: AwsKms, arn: str) -> None:
    short = client.encrypt(KeyId=arn, Plaintext=b"k" * 16, EncryptionContext=CTX)
    with pytest.raises(DecryptionError):
        kms.unwrap(WrappedKey(kms.kms_id, arn, short["CiphertextBlob"]), context=CTX)


def test_wrap_refuses_keys_that_are_not_32_bytes_and_bad_contexts(kms: AwsKms) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        kms.wrap(SecretKey(b"k" * 16), context=CTX)
    with pytest.raises(TypeError):
        kms.wrap(_key(), context={"a": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("failure", ["disabled", "pending deletion", "throttled", "unreachable"])
def test_a_failed_wrap_leaves_no_key_material_in_the_traceback(
    server: Any, arn: str, backoff: Any, failure: str
) -> None:
    """Error reporters (Sentry...) capture the locals of every frame of a traceback: none may
    hold the epoch key being wrapped, nor may the chained botocore exception."""
    from aws_server import closed_port

    if failure == "unreachable":
        kms = AwsKms(arn, endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=2)
    else:
        kms = AwsKms(arn, client=server.client(max_attempts=2))
    if failure == "disabled":
        kms._client.disable_key(KeyId=arn)
    elif failure == "pending deletion":  # KMSInvalidStateException, then a DescribeKey
        kms._client.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    elif failure == "throttled":
        server.faults.fail("Encrypt", "ThrottlingException", times=2)
    key = _key()
    exc = raised(lambda: kms.wrap(key, context=CTX))
    assert isinstance(exc, KmsError)
    assert exc.__context__ is None
    assert exc.__cause__ is None
    assert secrets_in(exc, key.reveal()) == []
    assert "botocore" not in {tb.tb_frame.f_globals.get("__package__") for tb in _tbs(exc)}
    kms.close()


def _tbs(exc: BaseException) -> list[Any]:
    tbs, tb = [], exc.__traceback__
    while tb is not None:
        tbs.append(tb)
        tb = tb.tb_next
    return tbs


def test_a_refused_unwrap_leaves_no_plaintext_in_the_traceback(
    client: Any, kms: AwsKms, arn: str
) -> None:
    """What KMS decrypted but ccvault refuses (here: not 32 bytes) is not in a frame either."""
    plaintext = os.urandom(16)
    short = client.encrypt(KeyId=arn, Plaintext=plaintext, EncryptionContext=CTX)
    wrapped = WrappedKey(kms.kms_id, arn, short["CiphertextBlob"])
    exc = raised(lambda: kms.unwrap(wrapped, context=CTX))
    assert isinstance(exc, DecryptionError)
    assert secrets_in(exc, plaintext) == []


def test_the_traceback_check_finds_key_material() -> None:
    """secrets_in is not vacuous: a frame holding the key, its hex or base64 is reported."""
    secret = os.urandom(32)

    def leaky(held: object) -> None:
        raise KmsError("boom")

    for held in (secret, {"Plaintext": secret}, secret.hex(), base64.b64encode(secret)):
        assert secrets_in(raised(lambda held=held: leaky(held)), secret) != []


# -- key states ------------------------------------------------------------------------------------


def test_disabled_key_is_a_distinct_error_and_not_retried(server: Any, arn: str) -> None:
    client, sent = _counted(server)
    kms = AwsKms(arn, client=client)
    wrapped = kms.wrap(_key(), context=CTX)
    client.disable_key(KeyId=arn)
    sent.clear()
    with pytest.raises(KmsKeyDisabledError) as caught:
        kms.unwrap(wrapped, context=CTX)
    with pytest.raises(KmsKeyDisabledError):
        kms.wrap(_key(), context=CTX)
    assert sent == {"Decrypt": 1, "Encrypt": 1}
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert kms.root_state(arn) is RootState.DISABLED
    client.enable_key(KeyId=arn)
    assert kms.unwrap(wrapped, context=CTX).reveal()


def test_pending_deletion_key_is_a_distinct_error(server: Any, arn: str) -> None:
    client, sent = _counted(server)
    kms = AwsKms(arn, client=client)
    wrapped = kms.wrap(_key(), context=CTX)
    client.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    sent.clear()
    with pytest.raises(KmsKeyPendingDeletionError):
        kms.unwrap(wrapped, context=CTX)
    assert sent["Decrypt"] == 1  # never retried (a DescribeKey may follow, to name the state)
    with pytest.raises(KmsKeyPendingDeletionError):
        kms.wrap(_key(), context=CTX)
    assert kms.root_state(arn) is RootState.PENDING_DELETION


def test_other_invalid_states_are_kms_errors_but_not_pending_deletion(
    server: Any, kms: AwsKms, arn: str
) -> None:
    wrapped = kms.wrap(_key(), context=CTX)
    server.set_key_state(arn, "Unavailable")  # e.g. a disconnected custom key store
    with pytest.raises(KmsError) as caught:
        kms.unwrap(wrapped, context=CTX)
    assert not isinstance(caught.value, KmsKeyPendingDeletionError | KmsUnavailableError)
    assert kms.root_state(arn) is RootState.UNKNOWN


def test_unknown_key(client: Any, kms: AwsKms, arn: str) -> None:
    with pytest.raises(KmsKeyNotFoundError):
        AwsKms(MISSING_ARN, client=client).wrap(_key(), context=CTX)
    with pytest.raises(KmsKeyNotFoundError):
        AwsKms("alias/does-not-exist", client=client).current_root()
    wrapped = kms.wrap(_key(), context=CTX)
    with pytest.raises(KmsKeyNotFoundError):
        kms.unwrap(WrappedKey(wrapped.kms_id, MISSING_ARN, wrapped.blob), context=CTX)
    assert kms.root_state(MISSING_ARN) is RootState.DESTROYED  # a key ARN KMS no longer knows
    assert kms.root_state("alias/does-not-exist") is RootState.UNKNOWN


# -- retries and timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ThrottlingException", 400),
        ("LimitExceededException", 400),
        ("KMSInternalException", 500),
        ("DependencyTimeoutException", 503),
    ],
)
def test_transient_errors_are_retried_then_succeed(
    server: Any, arn: str, backoff: list[tuple[int, float, bool]], code: str, status: int
) -> None:
    client, sent = _counted(server, max_attempts=4)
    kms = AwsKms(arn, client=client)
    wrapped = kms.wrap(_key(), context=CTX)
    sent.clear()
    server.faults.fail("Decrypt", code, times=2, status=status)
    assert kms.unwrap(wrapped, context=CTX).reveal()
    assert sent == {"Decrypt": 3}
    # botocore's jittered exponential backoff: 1 s base for throttling, 50 ms otherwise.
    throttling = code in ("ThrottlingException", "LimitExceededException")
    base = 1.0 if throttling else 0.05
    assert [(a, t) for a, _, t in backoff] == [(1, throttling), (2, throttling)]
    assert all(0 <= d <= base * 2 ** (a - 1) for a, d, _ in backoff)


@pytest.mark.parametrize(
    ("code", "status"), [("ThrottlingException", 400), ("KMSInternalException", 500)]
)
def test_persistent_transient_errors_become_unavailable_after_max_attempts(
    server: Any, arn: str, backoff: list[tuple[int, float, bool]], code: str, status: int
) -> None:
    client, sent = _counted(server, max_attempts=3)
    kms = AwsKms(arn, client=client)
    server.faults.fail("Encrypt", code, times=10, status=status)
    with pytest.raises(KmsUnavailableError, match=code) as caught:
        kms.wrap(_key(), context=CTX)
    assert sent == {"Encrypt": 3}
    assert len(backoff) == 2
    assert "3 attempts" in str(caught.value)
    assert caught.value.__context__ is None


def test_built_client_uses_standard_retries_and_timeouts(arn: str, server: Any) -> None:
    kms = AwsKms(
        arn, endpoint_url=server.endpoint_url, max_attempts=2, connect_timeout=0.7, read_timeout=3
    )
    config = kms._client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}  # calls, not retries
    assert (config.connect_timeout, config.read_timeout) == (0.7, 3)
    assert kms.unwrap(kms.wrap(_key(), context=CTX), context=CTX).reveal()
    kms.close()


def test_server_down_is_unavailable_quickly(arn: str) -> None:
    from aws_server import closed_port

    kms = AwsKms(
        arn,
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        max_attempts=2,
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(KmsUnavailableError, match="EndpointConnectionError") as caught:
        kms.wrap(_key(), context=CTX)
    assert time.monotonic() - started < 5
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    kms.close()


def test_hung_server_times_out_as_unavailable(arn: str) -> None:
    from aws_server import silent_server

    with silent_server() as url:
        kms = AwsKms(arn, endpoint_url=url, max_attempts=2, connect_timeout=0.5, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(KmsUnavailableError, match="ReadTimeoutError"):
            kms.wrap(_key(), context=CTX)
        assert time.monotonic() - started < 5
        kms.close()


def test_tls_verification_failure_is_a_kms_error_and_not_retried(arn: str) -> None:
    """An untrusted certificate (wrong CA bundle, TLS interception) is a configuration or
    security problem: KmsError, never KmsUnavailableError (which the vault's outage grace period
    would cover), and the client AwsKms builds does not retry it."""
    import boto3
    from botocore.config import Config

    from aws_server import count_requests
    from tls_server import untrusted_tls_server

    with untrusted_tls_server() as (url, accepted):
        kms = AwsKms(arn, endpoint_url=url, max_attempts=4, connect_timeout=1, read_timeout=1)
        sent = count_requests(kms._client)
        with pytest.raises(KmsError, match="SSLError") as caught:
            kms.unwrap(WrappedKey(kms.kms_id, arn, b"x" * 64), context=CTX)
        assert type(caught.value) is KmsError
        assert caught.value.__context__ is None
        assert sent == {"Decrypt": 1}
        assert accepted["connections"] == 1
        kms.close()

        # An injected client retries as it was configured to; the error is a KmsError still.
        accepted.clear()
        injected = boto3.session.Session().client(
            "kms",
            region_name="us-east-1",
            endpoint_url=url,
            config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
        )
        with pytest.raises(KmsError, match="SSLError") as caught:
            AwsKms(arn, client=injected).wrap(_key(), context=CTX)
        assert type(caught.value) is KmsError
        assert accepted["connections"] == 2


@pytest.mark.parametrize(
    "endpoint",
    ["http://kms.internal", "http://10.1.2.3:4566", "http://[2001:db8::1]:80", "http://0.0.0.0:1"],
)
def test_plain_http_endpoints_are_refused_unless_loopback(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    with pytest.raises(ConfigurationError, match="https"):
        AwsKms("alias/k", region="us-east-1", endpoint_url=endpoint)
    with pytest.raises(ConfigurationError, match="https"):
        AwsKms.from_url(f"aws-kms://alias/k?region=us-east-1&endpoint_url={endpoint}")
    injected = boto3.session.Session().client("kms", region_name="us-east-1", endpoint_url=endpoint)
    with pytest.raises(ConfigurationError, match="https"):
        AwsKms("alias/k", client=injected)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", endpoint)  # boto3 takes it from the environment
    with pytest.raises(ConfigurationError, match="https"):
        AwsKms("alias/k", region="us-east-1")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:1",
        "http://127.0.0.2:1",
        "http://localhost:1",
        "http://[::1]:1",
        "https://kms.internal",
        "https://10.1.2.3:4566",
    ],
)
def test_https_or_loopback_endpoints_are_accepted(endpoint: str) -> None:
    kms = AwsKms("alias/k", region="us-east-1", endpoint_url=endpoint)
    assert kms._client.meta.endpoint_url == endpoint
    kms.close()


# -- access control (moto enforcing signatures and IAM identity policies) --------------------------

ADMIN_ACTIONS = [
    "kms:CreateKey",
    "kms:TagResource",
    "kms:DescribeKey",
    "kms:ListResourceTags",
    "kms:ScheduleKeyDeletion",
    "kms:Encrypt",
    "kms:Decrypt",
]


def test_application_principal_may_only_decrypt(server: Any, kms: AwsKms, arn: str) -> None:
    wrapped = kms.wrap(_key(), context=CTX)
    app = server.principal(f"app-{uuid.uuid4().hex[:8]}", ["kms:Decrypt"])
    admin = server.principal(f"admin-{uuid.uuid4().hex[:8]}", ADMIN_ACTIONS)
    with server.enforce_iam():
        as_app = AwsKms(arn, client=server.client(credentials=app))
        assert as_app.unwrap(wrapped, context=CTX).reveal()
        with pytest.raises(KmsAccessDeniedError):
            as_app.wrap(_key(), context=CTX)
        with pytest.raises(KmsAccessDeniedError):
            as_app.new_root()
        as_admin = AwsKms(arn, client=server.client(credentials=admin))
        root = as_admin.new_root()
        as_admin.wrap(_key(), context=CTX, root_id=root)
        as_admin.destroy_root(root)
        assert as_admin.root_state(root) is RootState.PENDING_DELETION
        with pytest.raises(KmsAccessDeniedError):
            as_app.destroy_root(root)  # DescribeKey is not the application's either


def test_application_principal_configured_by_alias_needs_describe_key(
    server: Any, kms: AwsKms, arn: str, client: Any
) -> None:
    """By alias name the account is resolved with DescribeKey before the first Decrypt: without
    that permission the application fails closed rather than unwrapping unpinned."""
    alias = f"alias/ccvault-{uuid.uuid4().hex[:8]}"
    client.create_alias(AliasName=alias, TargetKeyId=arn)
    wrapped = AwsKms(alias, client=client).wrap(_key(), context=CTX)
    decrypt_only = server.principal(f"app-{uuid.uuid4().hex[:8]}", ["kms:Decrypt"])
    with_describe = server.principal(
        f"app-{uuid.uuid4().hex[:8]}", ["kms:Decrypt", "kms:DescribeKey"]
    )
    with server.enforce_iam():
        with pytest.raises(KmsAccessDeniedError, match="DescribeKey"):
            AwsKms(alias, client=server.client(credentials=decrypt_only)).unwrap(
                wrapped, context=CTX
            )
        as_app = AwsKms(alias, client=server.client(credentials=with_describe))
        assert as_app.unwrap(wrapped, context=CTX).reveal()


def test_bad_credentials_are_access_denied(server: Any, kms: AwsKms, arn: str) -> None:
    wrapped = kms.wrap(_key(), context=CTX)
    forged = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "wrong"}
    with server.enforce_iam():
        stranger = AwsKms(arn, client=server.client(credentials=forged))
        with pytest.raises(KmsAccessDeniedError) as caught:
            stranger.unwrap(wrapped, context=CTX)
    assert "wrong" not in str(caught.value)


# -- the translation table (what moto cannot produce is checked on botocore's own exceptions) ------


def _client_error(code: str, status: int = 400, message: str = "secret-echo") -> Exception:
    from botocore.exceptions import ClientError

    error: Exception = ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "Decrypt",
    )
    return error


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDeniedException", 400, KmsAccessDeniedError),
        ("UnrecognizedClientException", 400, KmsAccessDeniedError),
        ("InvalidSignatureException", 400, KmsAccessDeniedError),
        ("ExpiredTokenException", 400, KmsAccessDeniedError),
        ("InvalidGrantTokenException", 400, KmsAccessDeniedError),
        ("SomethingNew", 403, KmsAccessDeniedError),
        ("NotFoundException", 400, KmsKeyNotFoundError),
        ("DisabledException", 400, KmsKeyDisabledError),
        ("KMSInvalidStateException", 400, KmsKeyPendingDeletionError),
        ("InvalidCiphertextException", 400, DecryptionError),
        ("IncorrectKeyException", 400, DecryptionError),
        ("InvalidKeyUsageException", 400, DecryptionError),
        ("ThrottlingException", 400, KmsUnavailableError),
        ("LimitExceededException", 400, KmsUnavailableError),
        ("KMSInternalException", 500, KmsUnavailableError),
        ("DependencyTimeoutException", 503, KmsUnavailableError),
        ("KeyUnavailableException", 500, KmsUnavailableError),
        ("SomethingNew", 502, KmsUnavailableError),
        ("ValidationException", 400, KmsError),
    ],
)
def test_translation_of_client_errors(code: str, status: int, expected: type[Exception]) -> None:
    error = _translate(_client_error(code, status), operation="Decrypt", key="alias/k", attempts=4)
    assert type(error) is expected
    assert "secret-echo" not in str(error)


def test_translation_depends_on_the_operation() -> None:
    usage = _translate(
        _client_error("InvalidKeyUsageException"), operation="Encrypt", key="k", attempts=1
    )
    assert type(usage) is KmsError
    quota = _translate(
        _client_error("LimitExceededException"), operation="CreateKey", key="k", attempts=1
    )
    assert type(quota) is KmsError


def test_translation_of_botocore_errors() -> None:
    from botocore import exceptions as bx

    cases: list[tuple[Exception, type[CcvaultError]]] = [
        (bx.EndpointConnectionError(endpoint_url="http://h"), KmsUnavailableError),
        (bx.ConnectTimeoutError(endpoint_url="http://h"), KmsUnavailableError),
        (bx.ReadTimeoutError(endpoint_url="http://h"), KmsUnavailableError),
        (bx.ConnectionClosedError(endpoint_url="http://h"), KmsUnavailableError),
        (bx.NoCredentialsError(), ConfigurationError),
        (bx.NoRegionError(), ConfigurationError),
        (bx.CredentialRetrievalError(provider="sso", error_msg="expired"), KmsAccessDeniedError),
        (bx.ParamValidationError(report="CiphertextBlob=secret-echo"), KmsError),
    ]
    for exc, expected in cases:
        error = _translate(exc, operation="Decrypt", key="k", attempts=2)
        assert type(error) is expected, exc
        assert "secret-echo" not in str(error)
    assert _translate(ValueError("bug"), operation="Decrypt", key="k", attempts=1) is None


def test_translation_of_tls_errors() -> None:
    from botocore import exceptions as bx

    exc = bx.SSLError(endpoint_url="https://h", error="CERTIFICATE_VERIFY_FAILED secret-echo")
    error = _translate(exc, operation="Decrypt", key="k", attempts=4)
    assert type(error) is KmsError  # not KmsUnavailableError: no grace period, no retry
    assert "SSLError" in str(error)
    assert "secret-echo" not in str(error)


# -- root lifecycle --------------------------------------------------------------------------------


def test_new_root_is_a_tagged_symmetric_key(client: Any, arn: str) -> None:
    kms = AwsKms(arn, client=client, root_tags={"team": "contact-center"})
    root = kms.new_root()
    assert kms.current_root() == root
    meta = client.describe_key(KeyId=root)["KeyMetadata"]
    assert (meta["KeyUsage"], meta["KeySpec"], meta["KeyState"]) == (
        "ENCRYPT_DECRYPT",
        "SYMMETRIC_DEFAULT",
        "Enabled",
    )
    assert "ccvault" in meta["Description"]
    tags = {t["TagKey"]: t["TagValue"] for t in client.list_resource_tags(KeyId=root)["Tags"]}
    assert tags == {ROOT_TAG[0]: ROOT_TAG[1], "team": "contact-center"}
    assert kms.wrap(_key(), context=CTX).root_id == root  # the new root wraps by default


def test_destroy_root_schedules_deletion_with_the_configured_window(client: Any, arn: str) -> None:
    kms = AwsKms(arn, client=client, pending_window_days=10)
    root = kms.new_root()
    before = time.time()
    kms.destroy_root(root)
    meta = client.describe_key(KeyId=root)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    days = (meta["DeletionDate"].timestamp() - before) / 86400
    assert 9.9 < days < 10.1
    kms.destroy_root(root)  # idempotent
    assert kms.current_root() == arn  # the destroyed root no longer wraps


@pytest.mark.parametrize("window", [7, 30])
def test_the_pending_window_is_the_declared_destruction_delay_and_in_the_horizon(
    client: Any, arn: str, tmp_path: Path, window: int
) -> None:
    """AWS can cancel a deletion inside its waiting period: receipts count it (issue 11, 10)."""
    from datetime import datetime, timedelta, timezone

    from ccvault.kms import LocalKms, MultiKms
    from ccvault.testing import FrozenClock

    kms = AwsKms(arn, client=client, pending_window_days=window)
    assert kms.root_destruction_delay == timedelta(days=window)
    # Never understated: AWS deletes the root no later than that after destroy_root.
    root = kms.new_root()
    before = time.time()
    kms.destroy_root(root)
    deletion = client.describe_key(KeyId=root)["KeyMetadata"]["DeletionDate"].timestamp()
    assert deletion - before <= kms.root_destruction_delay.total_seconds() + 60

    clock = FrozenClock(time.time())
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(kms, url, per_epoch_roots=True, clock=clock) as vault:
        created = datetime.fromtimestamp(vault.epochs()[0].created_at, tz=timezone.utc)
        clock.advance(5 * 86_400)
        receipt = vault.shred(uuid.uuid4())
        retire_by = created + vault.epoch_rotation_period
        assert receipt.erasure_horizon is not None
        assert receipt.erasure_horizon >= (
            retire_by + vault.backup_retention + timedelta(days=window)
        )
    multi = MultiKms(LocalKms.ephemeral(), kms)
    assert multi.root_destruction_delay == timedelta(days=window)


def test_destroy_root_refuses_keys_ccvault_did_not_create(
    server: Any, client: Any, arn: str
) -> None:
    kms = AwsKms(arn, client=client)
    with pytest.raises(ConfigurationError, match="configured key"):
        kms.destroy_root(arn)
    stranger = server.create_key(client)
    with pytest.raises(ConfigurationError, match="not tagged"):
        kms.destroy_root(stranger)
    for bad in ("alias/x", "", "not-an-arn"):
        with pytest.raises(ConfigurationError):
            kms.destroy_root(bad)
    assert client.describe_key(KeyId=stranger)["KeyMetadata"]["KeyState"] == "Enabled"
    assert client.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.destroy_root(MISSING_ARN)  # already gone: nothing to do


def test_new_root_in_another_account_is_refused_and_cleaned_up(client: Any) -> None:
    kms = AwsKms(FOREIGN_ARN, client=client)  # configured key in account 9999…; moto is 1234…
    before = {k["KeyId"] for k in client.list_keys()["Keys"]}
    with pytest.raises(ConfigurationError, match="outside the account"):
        kms.new_root()
    (created,) = {k["KeyId"] for k in client.list_keys()["Keys"]} - before
    assert client.describe_key(KeyId=created)["KeyMetadata"]["KeyState"] == "PendingDeletion"


# -- with the Vault --------------------------------------------------------------------------------


class _RecordingAwsKms(AwsKms):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created: list[str] = []

    def new_root(self) -> str:
        root = super().new_root()
        self.created.append(root)
        return root


def test_vault_with_per_epoch_roots(client: Any, arn: str, tmp_path: Path) -> None:
    kms = _RecordingAwsKms(arn, client=client)
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    subject = uuid.uuid4()
    with Vault(kms, url, per_epoch_roots=True) as vault:
        old = vault.encrypt(subject, b"+1 555 0100", context="customers.phone")
    shutil.copy(tmp_path / "keys.db", tmp_path / "backup.db")  # a backup taken in epoch 1
    with Vault(kms, url, per_epoch_roots=True) as vault:
        vault.rotate_epoch()
        new = vault.encrypt(subject, b"+1 555 0199", context="customers.phone")
        assert vault.decrypt(old, context="customers.phone", subject=subject) == b"+1 555 0100"
        assert vault.decrypt(new, context="customers.phone", subject=subject) == b"+1 555 0199"
    first, second = kms.created
    assert first != second
    assert arn not in kms.created

    # Past the backup window the admin destroys epoch 1's root: live data (re-wrapped under
    # epoch 2) still reads, the backup taken during epoch 1 no longer does.
    kms.destroy_root(first)
    assert kms.root_state(first) is RootState.PENDING_DELETION
    with Vault(AwsKms(arn, client=client), url, per_epoch_roots=True) as live:
        assert live.decrypt(old, context="customers.phone", subject=subject) == b"+1 555 0100"
    backup = f"sqlite:///{tmp_path / 'backup.db'}"
    with (
        pytest.raises(KmsKeyPendingDeletionError),
        Vault(AwsKms(arn, client=client), backup) as restored,
    ):
        restored.decrypt(old, context="customers.phone", subject=subject)


def test_kms_call_budget(server: Any, arn: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    subjects = [uuid.uuid4() for _ in range(100)]
    with Vault(AwsKms(arn, client=server.client()), url) as writer:
        blobs = [
            writer.encrypt(s, b"transcript", context="interactions.transcript") for s in subjects
        ]

    def fresh_reader() -> tuple[Vault, CountingKms, Any]:
        client, sent = _counted(server)
        counting = CountingKms(AwsKms(arn, client=client))
        return Vault(counting, url, cache_ttl=3600), counting, sent

    reader, counting, sent = fresh_reader()
    with reader:
        for s, blob in zip(subjects, blobs, strict=True):
            assert reader.decrypt(blob, context="interactions.transcript", subject=s)
        assert counting.calls == {"unwrap": 1}  # the one epoch, once
        assert sent == {"Decrypt": 1}  # and nothing else went over the wire
        for s in subjects:  # warm: no KMS call per value
            reader.decrypt(reader.encrypt(s, b"more", context="x.y"), context="x.y", subject=s)
        assert counting.calls == {"unwrap": 1}
        assert sent == {"Decrypt": 1}
        reader.rotate_epoch()  # epoch 2: one wrap, its key is then cached
        assert counting.calls == {"unwrap": 1, "wrap": 1}

    reader, counting, sent = fresh_reader()
    with reader:
        for s, blob in zip(subjects, blobs, strict=True):
            reader.decrypt(blob, context="interactions.transcript", subject=s)
        assert counting.calls["unwrap"] <= 2  # at most one per epoch
        assert sent["Decrypt"] == counting.calls["unwrap"]


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:eu-west-1:123456789012:alias/prod/ccvault",
        "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
    ],
)
def test_from_url_with_arns(key: str) -> None:
    region = key.split(":")[3]
    kms = AwsKms.from_url(f"aws-kms://{key}")
    assert (kms.key_id, kms.region) == (key, region)
    assert kms.kms_id == f"aws:{region}:{key}"
    kms.close()


def test_from_url_parameters(server: Any, arn: str) -> None:
    kms = AwsKms.from_url(
        "aws-kms://alias/ccvault%2Fprod?region=eu-central-1&endpoint_url=http://127.0.0.1:1"
        "&max_attempts=2&connect_timeout=0.25&read_timeout=1.5&pending_window_days=30"
    )
    assert (kms.key_id, kms.region) == ("alias/ccvault/prod", "eu-central-1")
    assert kms._client.meta.endpoint_url == "http://127.0.0.1:1"
    assert kms._client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert kms._client.meta.config.connect_timeout == 0.25
    assert kms._pending_window_days == 30
    kms.close()
    # and a URL that works end to end, over HTTP, with a key id and the region from the env
    key_id = arn.rsplit("/", 1)[1]
    live = AwsKms.from_url(f"aws-kms://{key_id}?endpoint_url={server.endpoint_url}")
    assert live.region == "us-east-1"
    assert live.unwrap(live.wrap(_key(), context=CTX), context=CTX).reveal()
    live.close()


def test_from_url_with_a_profile(server: Any, arn: str, tmp_path: Path, monkeypatch: Any) -> None:
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile ccvault-admin]\nregion = us-east-1\n"
        "aws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    kms = AwsKms.from_url(
        f"aws-kms://{arn}?profile=ccvault-admin&endpoint_url={server.endpoint_url}"
    )
    assert kms.unwrap(kms.wrap(_key(), context=CTX), context=CTX).reveal()
    kms.close()
    with pytest.raises(ConfigurationError):
        AwsKms.from_url(f"aws-kms://{arn}?profile=nope")


@pytest.mark.parametrize(
    "query",
    [
        "access_key=AKIAIOSFODNN7EXAMPLE",
        "aws_access_key_id=AKIAIOSFODNN7EXAMPLE",
        "secret_key=TOPSECRETVALUE",
        "aws_secret_access_key=TOPSECRETVALUE",
        "session_token=TOPSECRETVALUE",
        "region=us-east-1&AWS_SECRET_ACCESS_KEY=TOPSECRETVALUE",
    ],
)
def test_from_url_refuses_credentials(query: str) -> None:
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        AwsKms.from_url(f"aws-kms://alias/k?{query}")
    assert "TOPSECRETVALUE" not in str(caught.value)
    assert "AKIAIOSFODNN7EXAMPLE" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "aws-kms://",
        "aws-kms://?region=us-east-1",
        "aws-kms:alias/k",
        "vault://transit/k",
        "aws-kms://alias/k?colour=blue",
        "aws-kms://alias/k?region=us-east-1&region=eu-west-1",
        "aws-kms://alias/k?region=",
        "aws-kms://alias/k?max_attempts=lots",
        "aws-kms://alias/k?max_attempts=0",
        "aws-kms://alias/k?read_timeout=-1",
        "aws-kms://alias/k?pending_window_days=3",
        "aws-kms://alias/k#frag",
        "aws-kms://alias/k?region=us-east-1&endpoint_url=http://user:pw@127.0.0.1:1",
        "aws-kms://alias/k?endpoint_url=ftp://127.0.0.1",
        "aws-kms://alias/k?region=us-east-1&endpoint_url=http://kms.internal",
        "aws-kms://not a key",
        "aws-kms://key/1234",
        "aws-kms://arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        "?region=eu-west-1",
    ],
)
def test_from_url_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AwsKms.from_url(url)
    assert "pw@" not in str(caught.value)


def test_constructor_validation(client: Any, arn: str) -> None:
    for kwargs in (
        {"max_attempts": 0},
        {"max_attempts": True},
        {"connect_timeout": 0},
        {"read_timeout": -1.0},
        {"pending_window_days": 6},
        {"pending_window_days": 31},
        {"root_tags": {ROOT_TAG[0]: "x"}},
        {"region": "us-east-1"},  # with client=: one or the other
        {"endpoint_url": "http://127.0.0.1:1"},
    ):
        with pytest.raises(ConfigurationError):
            AwsKms(arn, client=client, **kwargs)
    with pytest.raises(ConfigurationError, match="region"):
        AwsKms(arn.replace("us-east-1", "eu-west-1"), client=client)
    with pytest.raises(ConfigurationError):
        AwsKms("", client=client)


def test_missing_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigurationError, match="region"):
        AwsKms("alias/k")


def test_repr_and_pickling(arn: str, client: Any) -> None:
    kms = AwsKms.from_url(f"aws-kms://{arn}?endpoint_url=http://127.0.0.1:1")
    assert repr(kms) == f"AwsKms(region='us-east-1', key_id='{arn}')"
    assert "testing" not in repr(kms)
    with pytest.raises(TypeError):
        pickle.dumps(kms)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigurationError, match=r"ccvault\[aws\]"):
        AwsKms("alias/k", region="us-east-1")


def test_kms_package_imports_without_boto3() -> None:
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "import ccvault.kms, ccvault.kms._aws\n"
        "assert 'boto3' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
