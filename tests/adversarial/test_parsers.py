"""Every parser of untrusted bytes or text, fuzzed: only its documented exception types.

=====================================  ========================  ================================
parser                                 attacker's input          may raise
=====================================  ========================  ================================
value format: ``_format.parse``,       a stored value            ``FormatError`` (internal)
``ValueKey.open``
``Vault.decrypt``                      a stored value            ``DecryptionError``;
                                                                 ``SubjectShreddedError`` when
                                                                 its header names a shredded key
column types' read path                a stored value            located ``DecryptionError``, or
                                                                 ``UNREADABLE``
codecs: ``Codec.loads``                a decrypted payload       ``CodecError`` (internal)
wrapped keys: ``_wrap.unwrap_key``     a key-store row           ``UnwrapError`` (internal)
``LocalKms.unwrap``                    an epoch wrap row         ``DecryptionError``, ``KmsError``
master-key file: ``_local._parse``,    the file                  nothing (None) /
``LocalKms.from_file``                                           ``ConfigurationError``
receipts: ``model_validate_json``,     a receipt's JSON          ``pydantic.ValidationError`` /
``verify``                                                       nothing (False)
``CcvaultSettings``,                   the environment           ``ConfigurationError``
``check_environment``
``kms_from_url``, ``SqlKeyStore``,     a setting                 ``ConfigurationError`` / nothing
``mask_url``
=====================================  ========================  ================================

A verified receipt is also never a changed one: ``verify`` returns True only for the signed
content itself.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from adversarial.harness import HEADER, SCALES, Figures, Scale, app_url, header_of, key_ref
from adversarial.models import CODECS, Base, Values, raw_table
from ccvault import (
    NO_SUBJECT,
    CcvaultSettings,
    ConfigurationError,
    DecryptionError,
    ErasureReceipt,
    KmsError,
    SubjectShreddedError,
    Vault,
)
from ccvault._settings import _redact, check_environment, kms_from_url
from ccvault.crypto import _format as fmt
from ccvault.crypto._primitives import Aead
from ccvault.crypto._wrap import KeyBinding, UnwrapError, unwrap_key, wrap_key
from ccvault.erasure._shred import parse_receipt
from ccvault.keystore._sql import SqlKeyStore, mask_url
from ccvault.kms import LocalKms, WrappedKey
from ccvault.kms._local import _parse
from ccvault.sqlalchemy import UNREADABLE
from ccvault.sqlalchemy._codec import CodecError, codec_for

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


def _fuzz(scale: Scale, *, db: bool = False) -> settings:
    return settings(
        max_examples=scale.hypothesis_db if db else scale.hypothesis,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def _only(
    allowed: tuple[type[BaseException], ...],
    what: str,
    call: Callable[[], object],
    unexpected: list[str],
) -> bool:
    """Run ``call``: True when it returns, False when it raises one of ``allowed``; any other
    exception is recorded in ``unexpected``."""
    try:
        call()
    except allowed:
        return False
    except Exception as exc:
        unexpected.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
        return False
    return True


# -- stored values --------------------------------------------------------------------------


@st.composite
def _values(draw: st.DrawFn, headers: list[bytes]) -> bytes:
    """Random bytes, and random bytes behind a header of this installation's keys."""
    tail = draw(st.binary(max_size=120))
    how = draw(st.sampled_from(["raw", "header", "prefix"]))
    if how == "raw":
        return tail
    if how == "prefix":
        return draw(st.sampled_from([b"\x01\x01", b"\x01\x02", b"\x01"])) + tail
    return draw(st.sampled_from(headers)) + tail


@pytest.mark.parametrize("scale", SCALES)
def test_value_parsers_raise_only_their_errors(
    svault: Vault, scale: Scale, figures: Figures
) -> None:
    vault = svault
    s1, s2 = uuid.uuid4(), uuid.uuid4()
    mine = vault.encrypt(s1, b"x", context="c.x")
    erased = vault.encrypt(s2, b"y", context="c.x")
    vw = vault.encrypt(NO_SUBJECT, b"z", context="c.x")
    vault.shred(s2)
    headers = [
        mine[:HEADER],
        erased[:HEADER],
        vw[:HEADER],
        header_of(key_ref(mine)[0], 2),
        header_of(key_ref(mine)[0], 1, suite=2) + os.urandom(16),
    ]
    key = fmt.ValueKey(Aead(os.urandom(32)), key_ref(mine)[0], 1, b"r" * 32)
    unexpected: list[str] = []
    accepted: list[str] = []

    @_fuzz(scale)
    @given(blob=_values(headers), subject=st.sampled_from([None, s1, s2, NO_SUBJECT]))
    def check(blob: bytes, subject: object) -> None:
        figures.add("hypothesis cases: value format parser, ValueKey.open, Vault.decrypt")
        try:
            header, nonce, body = fmt.parse(blob)
        except fmt.FormatError:
            pass
        else:
            assert header.raw + nonce + body == blob
            assert len(nonce) == 12
            assert len(body) >= 16
            if header.suite == fmt.SUITE_AES256GCM:
                # (ValueKey.open takes what parse accepted under the key its header names)
                try:
                    key.open(blob, fmt.context_lp(b"c.x"))
                    accepted.append(f"ValueKey.open: {blob.hex()}")
                except fmt.FormatError:
                    pass
        shredded = blob[:HEADER] == erased[:HEADER]
        try:
            if subject is None:
                vault.decrypt(blob, context="c.x")
            else:
                vault.decrypt(blob, context="c.x", subject=subject)
            accepted.append(f"decrypt: {blob.hex()}")
        except DecryptionError:
            pass
        except SubjectShreddedError:
            if not shredded:
                unexpected.append(f"SubjectShreddedError for {blob.hex()}")
        except Exception as exc:
            unexpected.append(f"{type(exc).__name__} for {blob.hex()}")

    check()
    figures.add("accepted", len(accepted))
    figures.add("unexpected exception types", len(unexpected))
    assert not [*accepted, *unexpected], [*accepted[:10], *unexpected[:10]]


@pytest.fixture
def reader(
    svault: Vault, sqlite_url: str
) -> Iterator[tuple[Vault, sa.Engine, sa.Engine, sa.Engine]]:
    url = app_url(sqlite_url)
    raw = sa.create_engine(url)
    Base.metadata.create_all(raw)
    sentinel, raising = sa.create_engine(url), sa.create_engine(url)
    svault.attach(sentinel, on_error="sentinel")
    svault.attach(raising)
    yield svault, raw, sentinel, raising
    for e in (raw, sentinel, raising):
        e.dispose()


@pytest.mark.parametrize("scale", SCALES)
def test_the_read_path_refuses_random_values(
    reader: tuple[Vault, sa.Engine, sa.Engine, sa.Engine],
    scale: Scale,
    figures: Figures,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ccvault")
    vault, raw, sentinel, raising = reader
    owner = uuid.uuid4()
    with Session(raising, expire_on_commit=False) as session, session.begin():
        row = Values(owner=owner, tag="seed", **{c: v for c, (_t, v) in CODECS.items()})
        session.add(row)
    headers = [vault.encrypt(owner, b"\x01x", context="adv_values.s")[:HEADER]]
    table = raw_table(Values.__table__)  # type: ignore[arg-type]
    columns = list(CODECS)
    unexpected: list[str] = []

    @_fuzz(scale, db=True)
    @given(blobs=st.lists(_values(headers), min_size=1, max_size=len(columns)))
    def check(blobs: list[bytes]) -> None:
        figures.add("hypothesis cases: column read path (rows)")
        figures.add("hypothesis cases: column read path (values)", len(blobs))
        pk = uuid.uuid4()
        stored = dict(zip(columns, blobs, strict=False))
        with raw.begin() as conn:
            conn.execute(sa.insert(table), [{"id": pk, "owner": owner, "tag": "fuzz", **stored}])
        with Session(sentinel) as session:
            obj = session.scalars(sa.select(Values).where(Values.id == pk)).one()
            for c in stored:
                if getattr(obj, c) is not UNREADABLE:
                    unexpected.append(f"{c} read as {getattr(obj, c)!r}")
        try:
            with Session(raising) as session:
                session.scalars(sa.select(Values).where(Values.id == pk)).one()
            unexpected.append("a random row read without error")
        except DecryptionError as exc:
            if exc.table != "adv_values" or exc.primary_key != (pk,):
                unexpected.append(f"located at {exc.table}, {exc.primary_key}")
        except Exception as exc:
            unexpected.append(f"{type(exc).__name__}: {exc}")

    check()
    figures.add("accepted or unexpected", len(unexpected))
    assert not unexpected, unexpected[:10]


# -- codecs ---------------------------------------------------------------------------------


def _payloads(tag: int) -> st.SearchStrategy[bytes]:
    texts = st.one_of(
        TEXT.map(str.encode),
        st.from_regex(r"-?[0-9]{0,30}(\.[0-9]{0,30})?([eE][-+]?[0-9]{1,12})?", fullmatch=True).map(
            str.encode
        ),
        st.sampled_from([b"nan", b"inf", b"-inf", b"1_000", b" 1", b"\x00", b"", b"null"]),
        st.integers(1, 6000).map(lambda n: b"9" * n),
        st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),  # nested past the parser
    )
    body = st.one_of(st.binary(max_size=80), texts)
    return st.one_of(body.map(lambda b: bytes([tag]) + b), st.binary(max_size=40))


@pytest.mark.parametrize("scale", SCALES)
def test_codecs_raise_only_codec_error(scale: Scale, figures: Figures) -> None:
    unexpected: list[str] = []

    def fuzz(name: str, codec: Any) -> None:
        @settings(_fuzz(scale), max_examples=max(1, scale.hypothesis // 3))
        @given(data=_payloads(codec.tag))
        def check(data: bytes) -> None:
            figures.add("hypothesis cases: codecs")
            _only(
                (CodecError,), f"{name} {data[:40].hex()}", partial(codec.loads, data), unexpected
            )

        check()

    for name, (type_, _value) in CODECS.items():
        fuzz(name, codec_for(type_))
    figures.add("unexpected exception types", len(unexpected))
    assert not unexpected, unexpected[:10]


# -- wrapped keys and the local KMS --------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_wrapped_key_parsing_raises_only_unwrap_error(scale: Scale, figures: Figures) -> None:
    epoch = Aead(os.urandom(32))
    real = KeyBinding(os.urandom(16), "subject", os.urandom(16), 1, os.urandom(16), os.urandom(32))
    wrapped, commitment = wrap_key(epoch, os.urandom(32), real)
    accepted: list[str] = []
    unexpected: list[str] = []

    @_fuzz(scale)
    @given(
        blob=st.one_of(st.binary(max_size=100), st.just(wrapped)),
        commit=st.one_of(st.binary(max_size=40), st.just(commitment)),
        kind=st.one_of(st.sampled_from(["subject", "vaultwide", "ref"]), TEXT),
        version=st.integers(0, 2**32 - 1),
        same_ids=st.booleans(),
    )
    def check(blob: bytes, commit: bytes, kind: str, version: int, same_ids: bool) -> None:
        figures.add("hypothesis cases: wrapped keys")
        binding = (
            KeyBinding(
                real.installation_id, kind, real.key_id, version, real.epoch_id, real.subject_ref
            )
            if same_ids
            else KeyBinding(os.urandom(16), kind, os.urandom(16), version, os.urandom(16))
        )
        try:
            unwrap_key(epoch, blob, commit, binding)
        except UnwrapError:
            return
        except Exception as exc:
            unexpected.append(f"{type(exc).__name__}: kind {kind!r}")
            return
        if (blob, commit, binding) != (wrapped, commitment, real):
            accepted.append(f"unwrapped under {binding}")

    check()
    figures.add("accepted", len(accepted))
    figures.add("unexpected exception types", len(unexpected))
    assert not [*accepted, *unexpected], [*accepted[:10], *unexpected[:10]]


@pytest.mark.parametrize("scale", SCALES)
def test_local_kms_parsers_raise_only_their_errors(
    scale: Scale, figures: Figures, tmp_path: Path
) -> None:
    kms = LocalKms.from_file(tmp_path / "master.key", create=True)
    good = (tmp_path / "master.key").read_text()
    root = kms.current_root()
    unexpected: list[str] = []
    folder = tmp_path / "files"
    folder.mkdir(mode=0o700)

    @_fuzz(scale)
    @given(
        text=st.one_of(
            TEXT,
            st.builds(lambda a, b: good[:a] + b, st.integers(0, len(good)), TEXT),
            st.lists(
                st.tuples(st.sampled_from(["key", "kee", ""]), TEXT, TEXT, TEXT), max_size=3
            ).map(
                lambda ls: (
                    "ccvault-local-kms v1 " + "0" * 32 + "\n" + "\n".join(" ".join(x) for x in ls)
                )
            ),
        ),
        raw=st.binary(max_size=60),
        root_id=st.one_of(st.just(root), TEXT),
        blob=st.binary(max_size=100),
        context=st.dictionaries(TEXT, TEXT, max_size=3),
    )
    def check(text: str, raw: bytes, root_id: str, blob: bytes, context: dict[str, str]) -> None:
        figures.add("hypothesis cases: master-key file and local KMS")
        # _parse never raises: its traceback would hold the file's text
        _only((), "_parse", partial(_parse, text), unexpected)
        path = folder / f"{uuid.uuid4().hex}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw if len(text) % 5 == 0 else text.encode("utf-8", "surrogatepass"))
        _only((ConfigurationError,), "from_file", partial(LocalKms.from_file, path), unexpected)
        path.unlink()
        wrapped = WrappedKey(kms.kms_id, root_id, blob)
        unwrap = partial(kms.unwrap, wrapped, context=context)
        if _only((DecryptionError, KmsError), "unwrap", unwrap, unexpected):
            unexpected.append("a random blob unwrapped")

    check()
    figures.add("unexpected exception types", len(unexpected))
    assert not unexpected, unexpected[:10]


# -- receipts -------------------------------------------------------------------------------


def _mutated_json(draw: st.DrawFn, receipt: dict[str, Any]) -> str:
    data = json.loads(json.dumps(receipt))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(data)))
        data[field] = draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**70), 2**70),
                st.floats(allow_nan=True),
                TEXT,
                st.just(str(data[field]).upper()),
                st.just(str(data[field])[:-1]),
                st.lists(st.dictionaries(TEXT, st.integers()), max_size=2),
            )
        )
    if draw(st.booleans()):
        data[draw(TEXT)] = draw(TEXT)
    return json.dumps(data)


@pytest.mark.parametrize("scale", SCALES)
def test_receipts_parse_and_verify_only_as_documented(
    svault: Vault, scale: Scale, figures: Figures
) -> None:
    receipt = svault.shred(uuid.uuid4())
    pinned = svault.receipt_public_key
    original = receipt.model_dump(mode="json")
    signed = receipt.signed_bytes()
    accepted: list[str] = []
    unexpected: list[str] = []

    @_fuzz(scale)
    @given(
        data=st.data(),
        flip=st.integers(0, 10_000),
        key=st.one_of(st.just(pinned), st.just(pinned.hex()), st.binary(max_size=40), TEXT),
    )
    def check(data: st.DataObject, flip: int, key: bytes | str) -> None:
        figures.add("hypothesis cases: receipts")
        text = json.dumps(original)
        candidates = [
            data.draw(
                st.builds(lambda: None).flatmap(
                    lambda _: st.composite(lambda d: _mutated_json(d, original))()
                )
            ),
            text[: flip % len(text)]
            + chr((ord(text[flip % len(text)]) + 1) % 0x110000).replace("\ud800", "x")
            + text[flip % len(text) + 1 :],
            data.draw(TEXT),
        ]
        for candidate in candidates:
            if parse_receipt(candidate) is None:  # never raises
                pass
            try:
                parsed = ErasureReceipt.model_validate_json(candidate)
            except pydantic.ValidationError:
                continue
            except Exception as exc:
                unexpected.append(f"model_validate_json: {type(exc).__name__}")
                continue
            try:
                ok = parsed.verify(key)
            except Exception as exc:
                unexpected.append(f"verify: {type(exc).__name__}")
                continue
            if ok and (
                parsed.signed_bytes() != signed
                or bytes.fromhex(parsed.signature) != bytes.fromhex(receipt.signature)
            ):
                accepted.append(candidate)
            if ok and key not in (pinned, pinned.hex()):
                accepted.append(f"verified under another key: {candidate}")

    check()
    assert receipt.verify(pinned, installation_id=svault.installation_id)
    figures.add("accepted", len(accepted))
    figures.add("unexpected exception types", len(unexpected))
    assert not [*accepted, *unexpected], [*accepted[:5], *unexpected[:10]]


# -- settings and URLs ----------------------------------------------------------------------

# Inputs that once got through as other exceptions than ConfigurationError.
_HARD_URLS = [
    "postgresql+psycopg://u@h:abc/x",  # a port that is no number
    "sqlite:///x.db?timeout=abc",  # a parameter the dialect converts
    "sqlite:///x.db?timeout=",
    "sqlite://host/x.db",  # a host the SQLite dialect refuses
    "mysql+pymysql://u@[::1/x",
    "vault://[::1/k?addr=http://x",
    "aws-kms://alias/x?max_attempts=1e3",
]
_SCHEMES = ["local", "aws-kms", "vault", "postgresql+psycopg", "mysql+pymysql", "sqlite", "x"]


@st.composite
def _urls(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["text", "scheme", "known"]))
    if how == "text":
        return draw(TEXT)
    if how == "known":
        return draw(st.sampled_from(_HARD_URLS))
    scheme = draw(st.sampled_from(_SCHEMES))
    rest = draw(TEXT)
    query = draw(st.lists(st.tuples(TEXT, TEXT), max_size=3))
    q = "&".join(f"{k}={v}" for k, v in query)
    return f"{scheme}://{rest}" + (f"?{q}" if q else "")


_FIELDS = sorted(CcvaultSettings.model_fields)


@pytest.mark.parametrize("scale", SCALES)
def test_settings_and_url_parsers_raise_only_configuration_error(
    scale: Scale, figures: Figures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("CCVAULT_", "AWS_", "VAULT_")):
            monkeypatch.delenv(name)
    unexpected: list[str] = []

    @_fuzz(scale)
    @given(
        url=_urls(),
        values=st.dictionaries(
            st.sampled_from([*_FIELDS, "kms_ulr"]),
            st.one_of(TEXT, _urls(), st.sampled_from(["inf", "nan", "-1", "1e999", "0", "true"])),
            max_size=4,
        ),
        env=st.dictionaries(
            st.from_regex(r"CCVAULT_[A-Z_]{0,20}", fullmatch=True), TEXT, max_size=3
        ),
    )
    def check(url: str, values: dict[str, str], env: dict[str, str]) -> None:
        figures.add("hypothesis cases: settings and URLs")
        for what, parse in (
            ("kms_from_url", partial(kms_from_url, url)),
            ("SqlKeyStore", lambda: SqlKeyStore(url, create=False).close()),
            ("CcvaultSettings", partial(CcvaultSettings, **values)),
            ("check_environment", partial(check_environment, env)),
        ):
            _only((ConfigurationError,), what, parse, unexpected)
        for what, show in (("mask_url", mask_url), ("_redact", _redact)):
            _only((), what, partial(show, url), unexpected)

    check()
    figures.add("unexpected exception types", len(unexpected))
    assert not unexpected, sorted(set(unexpected))[:15]
