"""No key material, and no plaintext, in any log line at any level (issue 11, item 1).

Every logger that can see a KMS call or a statement is turned all the way up (root, botocore,
urllib3, hvac, requests, sqlalchemy, ccvault at level 1, below DEBUG), a handler on the root logger
formats every record (exceptions and stacks included), and what SQLAlchemy's ``echo=True`` prints
to stdout is read too. The KMS calls go to real servers: moto (tests/aws_server.py) and an OpenBao
dev server (tests/bao_server.py). The secrets are known to the test without any production API:
keys the test wraps itself, and every 32-byte key the vault or LocalKms draws from the CSPRNG
(recorded by wrapping ``random_bytes`` where they call it). Every text form is looked for
(tests/leaks.py ``secret_forms``: hex, base64, URL-safe base64, repr).
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import Vault
from ccvault._secret import SecretKey
from ccvault.crypto._primitives import KEY_BYTES
from ccvault.kms import LocalKms, RootState
from leaks import secret_forms

CTX = {"ccvault:installation": "cd" * 16, "ccvault:purpose": "epoch-key", "ccvault:epoch": "3"}
LOGGERS = ("", "botocore", "boto3", "urllib3", "hvac", "requests", "sqlalchemy", "ccvault")


class _Capture(logging.Handler):
    """Every record, formatted as a handler would write it (message, exception, stack)."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[_Capture]:
    capture = _Capture()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(1)
    logging.getLogger().addHandler(capture)
    try:
        yield capture
    finally:
        logging.getLogger().removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _leaks(output: str, secret_values: Iterable[bytes]) -> list[str]:
    """Which secrets (by index and form, never the value) appear in ``output``."""
    text = output.replace("\\/", "/")  # a JSON encoder may escape '/' in base64
    found = []
    for i, secret in enumerate(secret_values):
        for form_no, form in enumerate(secret_forms(secret)):
            if form in text:
                found.append(f"secret #{i} (form {form_no})")
    return found


def _record_keys(monkeypatch: pytest.MonkeyPatch, *modules: str) -> list[bytes]:
    """Every KEY_BYTES-long draw of ``random_bytes`` in ``modules``, and each KEY_BYTES-long
    chunk of ``random_chunks`` where a module draws a batch's keys at once: epoch, subject,
    blind-index and root keys (16-byte ids are not secrets and are not recorded)."""
    import importlib

    drawn: list[bytes] = []
    for name in modules:
        module = importlib.import_module(name)
        original: Callable[[int], bytes] = module.random_bytes

        def recording(n: int, original: Callable[[int], bytes] = original) -> bytes:
            value = original(n)
            if n == KEY_BYTES:
                drawn.append(value)
            return value

        monkeypatch.setattr(module, "random_bytes", recording)
        chunks: Callable[[int, int], list[bytes]] | None = getattr(module, "random_chunks", None)
        if chunks is not None:

            def recording_chunks(
                size: int, count: int, chunks: Callable[[int, int], list[bytes]] = chunks
            ) -> list[bytes]:
                values = chunks(size, count)
                if size == KEY_BYTES:
                    drawn.extend(values)
                return values

            monkeypatch.setattr(module, "random_chunks", recording_chunks)
    return drawn


def _key() -> SecretKey:
    return SecretKey(os.urandom(KEY_BYTES))


# -- AWS KMS through a real moto server ----------------------------------------------------------


@pytest.fixture
def aws(moto_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from aws_server import aws_environment

    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment().items():
        monkeypatch.setenv(name, value)
    moto_server.faults.clear()
    yield moto_server
    moto_server.faults.clear()


def _aws_kms(server: Any, arn: str, how: str) -> Any:
    """An AwsKms that builds its own client from a URL, or one given a user-built boto3 client."""
    from ccvault.kms import AwsKms

    if how == "url":
        return AwsKms.from_url(f"aws-kms://{arn}?endpoint_url={server.endpoint_url}")
    return AwsKms(arn, client=server.client())


def _assert_botocore_logged_bodies(text: str) -> None:
    """The test saw botocore's body-printing lines: the redaction, not silence, kept keys out."""
    assert "Making request for OperationModel(name=Encrypt)" in text
    assert "Making request for OperationModel(name=Decrypt)" in text
    assert "Response body" in text
    assert '"Plaintext": "<redacted>"' in text


@pytest.mark.parametrize("how", ["url", "injected"])
def test_aws_kms_logs_no_key_material(aws: Any, how: str, logs: _Capture) -> None:
    arn = aws.create_key()
    kms = _aws_kms(aws, arn, how)
    keys = [_key() for _ in range(3)]
    wrapped = [kms.wrap(keys[0], context=CTX)]
    root = kms.new_root()
    wrapped.append(kms.wrap(keys[1], context=CTX))
    # Retries resend the same body and parse a second answer: throttle one of each.
    aws.faults.fail("Encrypt", "ThrottlingException", times=1)
    aws.faults.fail("Decrypt", "ThrottlingException", times=1)
    wrapped.append(kms.wrap(keys[2], context=CTX, root_id=arn))
    for key, w in zip(keys, wrapped, strict=True):
        assert kms.unwrap(w, context=CTX) == key
    assert aws.faults.served["Encrypt"] >= 4
    assert aws.faults.served["Decrypt"] >= 4
    kms.destroy_root(root)
    assert kms.root_state(root) is RootState.PENDING_DELETION
    kms.close()

    text = logs.text()
    assert _leaks(text, [k.reveal() for k in keys]) == []
    _assert_botocore_logged_bodies(text)


def test_aws_kms_redacts_every_kms_operation_of_an_injected_client(
    aws: Any, logs: _Capture
) -> None:
    """The guard is on the client, not on the calls ccvault makes: the application's own
    GenerateDataKey and GenerateRandom through the same client log no plaintext either."""
    from ccvault.kms import AwsKms

    client = aws.client()
    arn = aws.create_key(client)
    AwsKms(arn, client=client)
    AwsKms(arn, client=client)  # a second backend over the same client registers nothing twice
    data_key = client.generate_data_key(KeyId=arn, NumberOfBytes=32)["Plaintext"]
    random = client.generate_random(NumberOfBytes=32)["Plaintext"]
    encrypted = client.encrypt(KeyId=arn, Plaintext=random)["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=encrypted, KeyId=arn)["Plaintext"] == random

    text = logs.text()
    assert _leaks(text, [data_key, random]) == []
    assert text.count('"Plaintext": "<redacted>"') >= 4


@pytest.mark.parametrize("how", ["settings", "injected"])
def test_vault_over_aws_kms_logs_no_key_material(
    aws: Any,
    how: str,
    logs: _Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A vault creating epochs (per-epoch roots), subject keys and reading values back in a
    second vault (which unwraps every epoch key through Decrypt), with the key store's engine
    echoing: wrapped keys may show, epoch and subject keys must not, nor the plaintext."""
    drawn = _record_keys(monkeypatch, "ccvault.keyring._epochs")
    arn = aws.create_key()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}", echo="debug")

    def open_vault() -> Vault:
        if how == "settings":
            # kms_from_url builds the client; the key store is given as the echoing engine.
            from ccvault._settings import kms_from_url

            url = f"aws-kms://{arn}?endpoint_url={aws.endpoint_url}"
            return Vault(kms_from_url(url), engine, per_epoch_roots=True)
        return Vault(_aws_kms(aws, arn, "injected"), engine, per_epoch_roots=True)

    plaintext = f"note {secrets.token_hex(12)}".encode()
    subjects = [uuid.uuid4() for _ in range(3)]
    with open_vault() as writer:
        blobs = [writer.encrypt(subjects[0], plaintext, context="notes.body")]
        writer.rotate_epoch()
        blobs += [writer.encrypt(s, plaintext, context="notes.body") for s in subjects[1:]]
    with open_vault() as reader:
        for subject, blob in zip(subjects, blobs, strict=True):
            assert reader.decrypt(blob, context="notes.body", subject=subject) == plaintext
        reader.shred(subjects[0])
    engine.dispose()

    text = logs.text() + capsys.readouterr().out
    assert len(drawn) >= 5  # two epoch keys, three subject keys at least
    assert _leaks(text, [*drawn, plaintext]) == []
    _assert_botocore_logged_bodies(text)


# -- Vault/OpenBao Transit through a real OpenBao dev server -------------------------------------


def _transit_kms(bao: Any, how: str) -> tuple[Any, list[bytes]]:
    """A VaultTransitKms built from a URL (token or AppRole in the environment) or given an hvac
    client, with a fresh configured key; and the credentials it holds (never to be logged)."""
    from bao_server import admin_policy, enable_approle
    from ccvault.kms import VaultTransitKms

    name = f"logs-{secrets.token_hex(6)}"
    url = f"vault://transit/{name}?allow_insecure_http=true"
    if how == "url-token":
        kms = VaultTransitKms.from_url(
            url, environ={"VAULT_ADDR": bao.addr, "CCVAULT_VAULT_TOKEN": bao.root_token}
        )
        credentials = [bao.root_token.encode()]
    elif how == "url-approle":
        # The configured key exists before the role (whose admin policy covers its roots) logs in.
        VaultTransitKms(bao.addr, name, token=bao.root_token, allow_insecure_http=True).ensure_key()
        role_id, secret_id = enable_approle(bao, name, name, admin_policy(name))
        kms = VaultTransitKms.from_url(
            url,
            environ={
                "VAULT_ADDR": bao.addr,
                "CCVAULT_VAULT_ROLE_ID": role_id,
                "CCVAULT_VAULT_SECRET_ID": secret_id,
            },
        )
        credentials = [role_id.encode(), secret_id.encode()]
    else:
        kms = VaultTransitKms(bao.addr, name, client=bao.client(), allow_insecure_http=True)
        credentials = [bao.root_token.encode()]
    kms.ensure_key()
    return kms, credentials


@pytest.mark.parametrize("how", ["url-token", "url-approle", "injected"])
def test_transit_kms_logs_no_key_material(bao: Any, how: str, logs: _Capture) -> None:
    kms, credentials = _transit_kms(bao, how)
    keys = [_key() for _ in range(3)]
    wrapped = [kms.wrap(keys[0], context=CTX)]
    root = kms.new_root()
    wrapped.append(kms.wrap(keys[1], context=CTX))
    kms.rotate()
    wrapped.append(kms.wrap(keys[2], context=CTX, root_id=kms.key_name))
    for key, w in zip(keys, wrapped, strict=True):
        assert kms.unwrap(w, context=CTX) == key
    kms.destroy_root(root)
    assert kms.root_state(root) is RootState.DESTROYED
    # The client's token after an AppRole login is a credential too.
    credentials.append(kms._client.token.encode())
    kms.close()

    text = logs.text()
    assert _leaks(text, [*(k.reveal() for k in keys), *credentials]) == []
    # urllib3 logged every request line: the test watched the HTTP traffic.
    assert text.count("/v1/transit/encrypt/") >= 3
    assert text.count("/v1/transit/decrypt/") >= 3


def test_vault_over_transit_logs_no_key_material(
    bao: Any,
    logs: _Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drawn = _record_keys(monkeypatch, "ccvault.keyring._epochs")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}", echo="debug")
    kms, credentials = _transit_kms(bao, "injected")
    plaintext = f"note {secrets.token_hex(12)}".encode()
    subjects = [uuid.uuid4() for _ in range(3)]
    with Vault(kms, engine, per_epoch_roots=True) as writer:
        blobs = [writer.encrypt(subjects[0], plaintext, context="notes.body")]
        writer.rotate_epoch()
        blobs += [writer.encrypt(s, plaintext, context="notes.body") for s in subjects[1:]]
    # Another process: its own backend over the same Transit key and a fresh client.
    from ccvault.kms import VaultTransitKms

    reader_kms = VaultTransitKms(
        bao.addr, kms.key_name, client=bao.client(), allow_insecure_http=True
    )
    with Vault(reader_kms, engine, per_epoch_roots=True) as reader:
        for subject, blob in zip(subjects, blobs, strict=True):
            assert reader.decrypt(blob, context="notes.body", subject=subject) == plaintext
        reader.shred(subjects[0])
    reader_kms.close()
    engine.dispose()

    text = logs.text() + capsys.readouterr().out
    assert len(drawn) >= 5
    assert _leaks(text, [*drawn, plaintext, *credentials]) == []
    assert text.count("/v1/transit/decrypt/") >= 2


# -- SQLAlchemy echo on the key store and on an attached application engine ---------------------


def _app_workload(kms: LocalKms, keystore: sa.Engine, app_url: str, echo: Any) -> list[str]:
    """Customers and transcripts written, searched, read, updated and shredded through an
    attached application engine created with ``echo``, by two vaults in turn (the second one a
    fresh process: it unwraps the epoch keys). Returns every plaintext it handled."""
    from sqlalchemy.orm import Session

    from sqla_models import Base, Customer, Interaction

    def canary() -> str:
        return secrets.token_hex(10)

    names = [f"Name {canary()}" for _ in range(3)]
    phones = [f"+1 555 {secrets.randbelow(10**7):07d}" for _ in range(3)]
    emails = [f"{canary()}@example.com" for _ in range(3)]
    notes = [f"transcript {canary()}" for _ in range(3)]
    app = sa.create_engine(app_url, echo=echo)
    Base.metadata.create_all(app)
    with Vault(kms, keystore) as vault:
        vault.attach(app)
        with Session(app) as session:
            customers = [
                Customer(name=n, phone=p, email=e)
                for n, p, e in zip(names, phones, emails, strict=True)
            ]
            session.add_all(customers)
            session.flush()
            session.add_all(
                Interaction(customer_id=c.id, transcript=t)
                for c, t in zip(customers, notes, strict=True)
            )
            session.commit()
            ids = [c.id for c in customers]
        vault.rotate_epoch()
    app.dispose()
    app = sa.create_engine(app_url, echo=echo)
    with Vault(kms, keystore) as vault:
        vault.attach(app)
        with Session(app) as session:
            found = session.scalars(sa.select(Customer).where(Customer.phone == phones[1])).one()
            assert (found.name, found.email) == (names[1], emails[1])
            assert session.get(Customer, ids[0]).name == names[0]  # type: ignore[union-attr]
            assert sorted(session.scalars(sa.select(Interaction.transcript))) == sorted(notes)
            found.name = f"Renamed {canary()}"
            names.append(found.name)
            session.commit()
        vault.shred(ids[2])
    app.dispose()
    return [*names, *phones, *emails, *notes, *(p.replace(" ", "") for p in phones)]


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


def test_sqlalchemy_echo_logs_no_key_material_nor_plaintext(
    db_url: str,
    logs: _Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The key store's engine with ``echo="debug"`` (statements, parameters and result rows; an
    echoing engine logs at its echo level whatever ``sqlalchemy.engine`` is set to) and the
    application's with ``echo=True`` (statements and parameters): wrapped keys, ciphertexts and
    blind indexes may show; root, epoch and subject keys and the values' plaintext never do."""
    drawn = _record_keys(monkeypatch, "ccvault.keyring._epochs", "ccvault.kms._local")
    kms = LocalKms.from_file(tmp_path / "master.key", create=True)
    keystore = sa.create_engine(db_url, echo="debug")
    plain = _app_workload(kms, keystore, _app_url(db_url), echo=True)
    keystore.dispose()

    text = logs.text() + capsys.readouterr().out
    # The statements, their parameters and the key store's rows were all logged.
    assert "INSERT INTO customers" in text
    assert "INSERT INTO ccvault_keys" in text
    assert "Row (" in text
    assert len(drawn) >= 4  # root, two epoch keys, subject keys
    assert _leaks(text, [*drawn, *(p.encode() for p in plain)]) == []


def test_application_engine_at_debug_logs_decrypted_rows(
    sqlite_url: str, logs: _Capture, tmp_path: Path
) -> None:
    kms = LocalKms.from_file(tmp_path / "master.key", create=True)
    keystore = sa.create_engine(sqlite_url)
    plain = _app_workload(kms, keystore, _app_url(sqlite_url), echo="debug")
    keystore.dispose()
    assert _leaks(logs.text(), [p.encode() for p in plain]) == []


# -- the redacting body ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"Plaintext": "c2VjcmV0", "KeyId": "k"}', '{"Plaintext": "<redacted>", "KeyId": "k"}'),
        (b'{"PrivateKeyPlaintext": "c2VjcmV0"}', '{"PrivateKeyPlaintext": "<redacted>"}'),
        (b'{"SharedSecret": "c2VjcmV0"}', '{"SharedSecret": "<redacted>"}'),
        (b'{"a": [{"Plaintext": "c2VjcmV0"}]}', '{"a": [{"Plaintext": "<redacted>"}]}'),
        (b'{"KeyId": "k", "CiphertextBlob": "YmxvYg=="}', None),  # nothing secret: as it is
        (b'{"Plaintext": "c2VjcmV0"', "hidden"),  # truncated JSON
        (b"\xff\xfe c2VjcmV0", "hidden"),  # not UTF-8
        (b"[" * 100_000, "hidden"),  # deeper than the JSON parser goes
    ],
)
def test_redacted_body_prints_no_secret_field(body: bytes, shown: str | None) -> None:
    from ccvault.kms._aws import _RedactedBody

    redacted = _RedactedBody(body)
    assert redacted == body
    assert bytes(redacted) == body
    if shown is None:
        expected = repr(body)
    elif shown == "hidden":
        expected = f"<{len(body)} bytes, not shown>"
    else:
        expected = repr(shown.encode())
    assert repr(redacted) == str(redacted) == f"{redacted}" == expected
    assert "c2VjcmV0" not in repr({"body": redacted})
