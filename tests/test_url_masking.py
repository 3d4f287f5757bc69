"""Passwords in key-store and KMS URLs never show (issue 11, item 2).

The key-store URL is shown as SQLAlchemy parses it (``render_as_string(hide_password=True)``),
so every password SQLAlchemy accepts is masked whatever characters it holds (``/ ? # & ,`` cut
the earlier regex short). Checked over random passwords in ``repr``/``str`` of the settings, the
key store's ``repr`` and ``location``, and the errors ccvault raises for an unreachable server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ccvault import CcvaultError, CcvaultSettings, ConfigurationError, KeyStoreError, Vault
from ccvault._settings import kms_from_url
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms
from conftest import _server_db
from leaks import chain_text

# Any text SQLAlchemy can carry in a URL (no lone surrogates: they cannot be encoded).
PASSWORDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=6, max_size=40)
DRIVERS = ("postgresql+psycopg", "mysql+pymysql")


def _forms(password: str) -> set[str]:
    """The password and the encodings it can take in a URL."""
    rendered = sa.URL.create("x", username="u", password=password, host="h")
    in_url = rendered.render_as_string(hide_password=False).split("u:", 1)[1].rsplit("@h", 1)[0]
    return {password, quote(password, safe=""), quote_plus(password, safe=""), in_url}


def _urls(driver: str, password: str) -> Iterator[str]:
    """The URL of an unreachable server (port 1) carrying ``password`` percent-encoded, as users
    must write it, and raw, where SQLAlchemy reads the raw form back as the same password."""
    yield sa.URL.create(
        driver, username="app", password=password, host="127.0.0.1", port=1, database="x"
    ).render_as_string(hide_password=False)
    raw = f"{driver}://app:{password}@127.0.0.1:1/x"
    try:
        if sa.make_url(raw).password == password and sa.make_url(raw).host == "127.0.0.1":
            yield raw
    except (sa.exc.ArgumentError, ValueError):
        pass


def _shown(url: str) -> str:
    """Everything ccvault shows of a key-store URL: settings repr and str, the key store's repr
    and location, and the error (with its whole chain) when the server is unreachable."""
    s = CcvaultSettings(keystore_url=url)
    store = SqlKeyStore(url, create=False)
    try:
        parts = [repr(s), str(s), f"{s}", repr(store), store.location]
    finally:
        store.close()
    with pytest.raises(KeyStoreError) as caught:
        SqlKeyStore(url)
    parts.append(chain_text(caught.value))
    return "\n".join(parts)


_REFERENCE: dict[str, str] = {}


def _reference(driver: str) -> str:
    """What is shown for a one-letter password: the parts that are no password."""
    if driver not in _REFERENCE:
        _REFERENCE[driver] = _shown(next(_urls(driver, "x")))
    return _REFERENCE[driver]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=PASSWORDS, driver=st.sampled_from(DRIVERS))
def test_no_keystore_password_shows_anywhere(password: str, driver: str) -> None:
    forms = _forms(password)
    # A password that is part of what is shown anyway ("127.0.0.1", "Connection refused") is
    # not a leak: such examples say nothing.
    assume(not any(form in _reference(driver) for form in forms))
    for url in _urls(driver, password):
        shown = _shown(url)
        assert [form for form in forms if form in shown] == []


@pytest.mark.parametrize(
    "password",
    ["ab/cd?ef#gh&ij,kl", "Zm9v/YmFy+YmF6==", "p@ss:w/rd", "pa%2Fss", "€uro-€uro"],
)
def test_known_hard_passwords(password: str) -> None:
    for driver in DRIVERS:
        for url in _urls(driver, password):
            shown = _shown(url)
            assert [form for form in _forms(password) if form in shown] == [], url


def test_a_password_the_driver_cannot_encode_is_a_typed_error_without_it() -> None:
    """PyMySQL encodes passwords as Latin-1: a "€" made it raise a bare UnicodeEncodeError whose
    arguments held the whole password."""
    url = sa.URL.create(
        "mysql+pymysql", username="app", password="s3cr€t-pw", host="127.0.0.1", port=1
    ).render_as_string(hide_password=False)
    with pytest.raises(KeyStoreError, match="driver refused the connection settings") as caught:
        SqlKeyStore(url)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert "s3cr" not in chain_text(caught.value)


def test_a_url_sqlalchemy_cannot_parse_is_not_shown() -> None:
    s = CcvaultSettings(keystore_url="not a url: hunter2")
    assert "hunter2" not in repr(s)
    assert "cannot parse" in repr(s)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the PostgreSQL server (see conftest.py)."""
    yield from _server_db("postgresql")


@pytest.mark.parametrize("password", ["ab/cd?ef#gh&ij,kl", "Zm9v/YmFy+YmF6=="])
def test_vault_and_store_reprs_on_a_live_server(password: str, pg_url: str) -> None:
    """PostgreSQL here trusts local connections, so any password opens the store."""
    url = sa.make_url(pg_url).set(password=password)
    try:
        with Vault(LocalKms.ephemeral(), url.render_as_string(hide_password=False)) as vault:
            shown = f"{vault!r} {vault._store!r} {vault._store.location}"
            vault.encrypt(uuid.uuid4(), b"x", context="a.b")
    except KeyStoreError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 does not trust local connections: {exc}")
    assert [form for form in _forms(password) if form in shown] == []
    assert "***" in shown


# -- KMS URLs -------------------------------------------------------------------------------


def _kms_urls(password: str) -> list[str]:
    """KMS URLs carrying ``password`` where people put secrets: userinfo (raw, whatever it
    holds), a URL in a parameter, and a secret parameter (percent-encoded, as a query must be),
    alone and after another URL of a list."""
    encoded = quote(password, safe="")
    one = [
        f"vault://app:{password}@transit/k?addr=https://v.example:8200",
        f"aws-kms://alias/x?region=eu-west-1&endpoint_url=https://AKIA:{password}@kms.internal",
        f"aws-kms://alias/x?endpoint_url=https://AKIA:{encoded}@kms.internal&region=eu-west-1",
        f"vault://transit/k?addr=https://v.example:8200&token={encoded}",
        f"vault://transit/k?secret_id={encoded}&addr=https://v.example:8200",
    ]
    return one + [f"local:///srv/k/master.key, {u}" for u in one]


def _kms_shown(url: str) -> str:
    s = CcvaultSettings(kms_url=url)
    parts = [repr(s), str(s)]
    try:
        built = kms_from_url(url)
    except CcvaultError as exc:
        parts.append(chain_text(exc))
    else:  # pragma: no cover - every URL here carries a credential, which is refused
        parts.append(repr(built))
    return "\n".join(parts)


@settings(max_examples=150, deadline=None)
@given(password=PASSWORDS)
def test_no_kms_url_secret_shows(password: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAULT_TOKEN", "s.not-a-real-token")
        reference = "\n".join(_kms_shown(u) for u in _kms_urls("x"))
        forms = _forms(password)
        assume(not any(form in reference for form in forms))
        for url in _kms_urls(password):
            shown = _kms_shown(url)
            assert [form for form in forms if form in shown] == [], url


def test_kms_url_masking_keeps_what_is_safe_to_show() -> None:
    s = CcvaultSettings(
        kms_url="local:///srv/k/a.key, aws-kms://alias/x?region=eu-west-1&profile=p&token=zz"
    )
    assert repr(s).startswith(
        "CcvaultSettings(kms_url='local:///srv/k/a.key,"
        "aws-kms://alias/x?region=eu-west-1&profile=p&token=***'"
    )


def test_a_comma_in_a_password_does_not_cut_the_kms_url() -> None:
    """Comma-separated KMS URLs are split only before a scheme ccvault knows: the tail of a
    password after its comma is no 'unknown scheme' to quote in a message."""
    with pytest.raises(ConfigurationError) as caught:
        kms_from_url("vault://app:sec,ret:tail@transit/k?addr=https://v.example:8200")
    assert "ret" not in str(caught.value)
    assert "credentials" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "aws-kms://alias/x?region=eu-west-1&endpoint_url=https://AKIA:12%2Fsecret@kms.internal",
        "vault://transit/k?addr=https://v:8200%2Fsecret@vault.example",
    ],
)
def test_userinfo_cut_short_by_a_slash_is_refused(url: str) -> None:
    """urllib ends the userinfo at the "/" of ``12/secret``: "12" reads as a port and
    "/secret@..." as a path, so the endpoint was accepted and quoted by connection errors."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAULT_TOKEN", "s.not-a-real-token")
        with pytest.raises(ConfigurationError, match=r"credentials|plain https") as caught:
            kms_from_url(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:hunter2@127.0.0.1:notaport/x",  # a port that is no number
        "not a url: hunter2",
    ],
)
def test_a_key_store_url_that_does_not_parse_is_a_configuration_error(
    url: str, tmp_path: Path
) -> None:
    from ccvault.kms import LocalKms

    kms = LocalKms.generate(tmp_path / "m.key")
    for readonly in (False, True):
        with pytest.raises(ConfigurationError) as caught:
            Vault(kms, url, readonly=readonly)
        assert "hunter2" not in chain_text(caught.value)
