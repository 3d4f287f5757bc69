"""A real AWS KMS endpoint for tests and benchmarks: moto's server on 127.0.0.1, over HTTP.

    from aws_server import moto_kms

    with moto_kms() as server:              # raises ImportError without moto[server]
        client = server.client()            # boto3 over real HTTP, dummy credentials
        arn = server.create_key()
        server.faults.fail("Decrypt", "ThrottlingException", times=2)

moto ignores key state: a disabled or pending-deletion key still encrypts and decrypts. While the
server runs, its KMS backend is patched to answer as AWS does (``DisabledException``,
``KMSInvalidStateException``). The same server answers S3 (``server.client(service="s3")``):
moto 5.2.5 honours ``If-None-Match: *`` on PutObject (412 PreconditionFailed when the key exists)
but checks and stores in two steps, so two concurrent conditional puts of one key could both win;
while the server runs, its PutObject is made one atomic step, as S3's is. ``faults`` injects
AWS-shaped errors (throttling, 5xx) into named operations, and ``enforce_iam()`` makes the server
check signatures and IAM identity policies.
Only one server should run at a time: the patches and the fault plan are process-wide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# Operations whose server-side handling the fault plan can interrupt.
FAULTABLE = (
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "DescribeKey",
    "CreateKey",
    "ScheduleKeyDeletion",
    "ListResourceTags",
)


def aws_environment() -> dict[str, str]:
    """Environment for boto3 clients that ccvault builds itself: dummy credentials, our region,
    no shared config or instance metadata, so nothing can reach real AWS."""
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung KMS); yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def count_requests(client: Any) -> Counter[str]:
    """Count the HTTP requests ``client`` sends, per operation, retries included."""
    sent: Counter[str] = Counter()

    def on_send(event_name: str, **_: Any) -> None:
        sent[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.kms.*", on_send)
    return sent


class FaultPlan:
    """Errors to answer instead of serving an operation: ``fail("Decrypt", code, times=n)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, int]]] = {}
        self.served: Counter[str] = Counter()  # operations that reached the server, faults too

    def fail(self, operation: str, code: str, *, times: int = 1, status: int = 400) -> None:
        if operation not in FAULTABLE:
            raise ValueError(f"cannot inject faults into {operation}")
        with self._lock:
            self._pending.setdefault(operation, []).extend([(code, status)] * times)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self.served.clear()

    def remaining(self, operation: str) -> int:
        with self._lock:
            return len(self._pending.get(operation, []))

    def take(self, operation: str) -> tuple[str, int] | None:
        with self._lock:
            self.served[operation] += 1
            queue = self._pending.get(operation)
            return queue.pop(0) if queue else None


class MotoKmsServer:
    """A running moto server; see the module docstring."""

    def __init__(self, endpoint_url: str, faults: FaultPlan) -> None:
        self.endpoint_url = endpoint_url
        self.faults = faults

    def __repr__(self) -> str:
        return f"MotoKmsServer({self.endpoint_url!r})"

    def client(
        self,
        *,
        max_attempts: int = 4,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        credentials: dict[str, str] | None = None,
        service: str = "kms",
    ) -> Any:
        """A boto3 client for this server, configured as AwsKms configures its own."""
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        return boto3.session.Session().client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            config=config,
            **(credentials or DUMMY_CREDENTIALS),
        )

    def create_key(self, client: Any = None, *, tags: dict[str, str] | None = None) -> str:
        """A fresh symmetric key; returns its ARN."""
        params: dict[str, Any] = {"KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT"}
        if tags:
            params["Tags"] = [{"TagKey": k, "TagValue": v} for k, v in tags.items()]
        arn: str = (client or self.client()).create_key(**params)["KeyMetadata"]["Arn"]
        return arn

    def principal(self, name: str, actions: list[str]) -> dict[str, str]:
        """An IAM user allowed exactly ``actions`` on every KMS key; returns its credentials."""
        iam = self.client(service="iam")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }

    def set_key_state(self, arn: str, state: str) -> None:
        """Put a key into any KeyState (e.g. "Unavailable", "PendingImport"), as the KMS API
        cannot; the server runs in this process, so its backend is reachable."""
        from moto.kms.models import kms_backends

        region, account = arn.split(":")[3:5]
        backend = kms_backends[account][region]
        backend.keys[backend.get_key_id(arn)].key_state = state

    @contextlib.contextmanager
    def enforce_iam(self) -> Iterator[None]:
        """Make the server check request signatures and IAM identity policies (moto evaluates
        actions, not KMS condition keys such as kms:EncryptionContext)."""
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            previous: str = json.load(response)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        return previous


@contextlib.contextmanager
def _patched(owner: object, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _aws_shaped_errors() -> tuple[type[Exception], type[Exception], Any]:
    from moto.core.exceptions import JsonRESTError

    class DisabledException(JsonRESTError):
        code = 400

        def __init__(self, message: str) -> None:
            super().__init__("DisabledException", message)

    class KmsInvalidStateException(JsonRESTError):
        code = 400

        def __init__(self, message: str) -> None:
            super().__init__("KMSInvalidStateException", message)

    class InjectedFault(JsonRESTError):
        def __init__(self, error_type: str, status: int) -> None:
            super().__init__(error_type, "injected by the test")
            self.code = status

    return DisabledException, KmsInvalidStateException, InjectedFault


@contextlib.contextmanager
def _key_state_enforced() -> Iterator[None]:
    """Make moto's KMS refuse disabled and pending-deletion keys, as AWS does."""
    from moto.kms.models import KmsBackend

    disabled, invalid_state, _ = _aws_shaped_errors()

    def check(backend: Any, key_id: str) -> None:
        key = backend.keys.get(key_id)
        if key is None:
            return
        if key.key_state == "Disabled":
            raise disabled(f"{key.arn} is disabled.")
        if key.key_state == "PendingDeletion":
            raise invalid_state(f"{key.arn} is pending deletion.")
        if key.key_state != "Enabled":
            raise invalid_state(f"{key.arn} is {key.key_state}.")

    original_encrypt = KmsBackend.encrypt
    original_decrypt = KmsBackend.decrypt

    def encrypt(self: Any, key_id: str, plaintext: bytes, encryption_context: Any) -> Any:
        check(self, self.any_id_to_key_id(key_id))
        return original_encrypt(self, key_id, plaintext, encryption_context)

    def decrypt(
        self: Any, ciphertext_blob: bytes, encryption_context: Any, key_id: str | None = None
    ) -> Any:
        if key_id is not None:
            check(self, self.any_id_to_key_id(key_id))
        plaintext, arn = original_decrypt(self, ciphertext_blob, encryption_context, key_id)
        check(self, self.get_key_id(arn))
        return plaintext, arn

    def by_raw_id(original: Any) -> Any:
        # moto's disable/enable/schedule/cancel look the key up by raw id only (a KeyError, so a
        # 500, for an ARN); AWS accepts either.
        def method(self: Any, key_id: str, *args: Any) -> Any:
            return original(self, self.get_key_id(key_id), *args)

        return method

    with contextlib.ExitStack() as stack:
        # generate_data_key and re_encrypt go through encrypt/decrypt, so they are covered too.
        stack.enter_context(_patched(KmsBackend, "encrypt", encrypt))
        stack.enter_context(_patched(KmsBackend, "decrypt", decrypt))
        for name in ("disable_key", "enable_key", "schedule_key_deletion", "cancel_key_deletion"):
            stack.enter_context(_patched(KmsBackend, name, by_raw_id(getattr(KmsBackend, name))))
        yield


@contextlib.contextmanager
def _conditional_puts_atomic() -> Iterator[None]:
    """Make moto's conditional PutObject atomic, as S3's is.

    moto 5.2.5 checks ``If-None-Match``/``If-Match`` against the stored object, then stores the
    new one: two concurrent puts of one key with ``If-None-Match: *`` can both pass the check
    (seen here: 8 writers racing for one key, 4 rounds in 150 had two winners, and some requests
    failed with a 500 as one put closed the buffer of the object the other replaced). S3 lets
    one win and answers the other 412 (or 409 while the winner is in flight). One lock around
    the handler makes check and store one step."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        with lock:
            return original(self)

    with _patched(S3Response, "put_object", put_object):
        yield


@contextlib.contextmanager
def _faults_injected(plan: FaultPlan) -> Iterator[None]:
    from moto.kms.responses import KmsResponse

    _, _, injected = _aws_shaped_errors()

    def faulty(operation: str, original: Any) -> Any:
        def method(self: Any) -> Any:
            fault = plan.take(operation)
            if fault is not None:
                raise injected(*fault)
            return original(self)

        method.__name__ = original.__name__
        return method

    with contextlib.ExitStack() as stack:
        for operation in FAULTABLE:
            name = "".join("_" + c.lower() if c.isupper() else c for c in operation)[1:]
            stack.enter_context(
                _patched(KmsResponse, name, faulty(operation, getattr(KmsResponse, name)))
            )
        yield


@contextlib.contextmanager
def moto_kms() -> Iterator[MotoKmsServer]:
    """Start moto's server on a free loopback port with AWS-like key state; stop it after.

    Raises ImportError when moto[server] is not installed.
    """
    from moto.server import ThreadedMotoServer

    plan = FaultPlan()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    access_log = logging.getLogger("werkzeug")  # one line per request otherwise
    level = access_log.level
    access_log.setLevel(logging.ERROR)
    with _key_state_enforced(), _faults_injected(plan), _conditional_puts_atomic():
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield MotoKmsServer(f"http://{host}:{port}", plan)
        finally:
            server.stop()
            access_log.setLevel(level)
