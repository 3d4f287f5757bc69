"""``vault.decrypt`` of one value takes its own path (issue 15, item 6), with every check of a
batch's: each outcome of one value must be the outcome ``decrypt_many`` gives the same item.
A warm key's remembered subject (``key.checked``) skips the subject's ref only for the same
subject, of the same exact type."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccvault import NO_SUBJECT, SHREDDED, DecryptionError, SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from raw_values import tampered

A, B, GONE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
CTX = "customers.phone"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vault, dict[str, bytes]]]:
    path: Path = tmp_path_factory.mktemp("single") / "keys.db"
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{path}", subject_type="uuid")
    blobs = {
        "a": vault.encrypt(A, b"value of a", context=CTX),
        "b": vault.encrypt(B, b"value of b", context=CTX),
        "gone": vault.encrypt(GONE, b"value of gone", context=CTX),
        "wide": vault.encrypt(NO_SUBJECT, b"vault-wide", context=CTX),
    }
    vault.shred(GONE)
    yield vault, blobs
    vault.close()


def _one(vault: Vault, blob: Any, context: Any, subject: Any) -> Any:
    try:
        if subject == "unchecked":
            return vault.decrypt(blob, context=context)
        return vault.decrypt(blob, context=context, subject=subject)
    except SubjectShreddedError:
        return SHREDDED
    except (DecryptionError, TypeError) as exc:
        return (type(exc), str(exc))


def _many(vault: Vault, blob: Any, context: Any, subject: Any) -> Any:
    item = (blob, context) if subject == "unchecked" else (blob, context, subject)
    try:
        (out,) = vault.decrypt_many([item], errors="return")
    except TypeError as exc:
        return (TypeError, str(exc).removeprefix("items[0]: "))
    if isinstance(out, DecryptionError):
        return (DecryptionError, str(DecryptionError()))
    return out


_BLOBS = st.sampled_from(["a", "b", "gone", "wide"])
_HOW = st.sampled_from(
    ["keep", "tampered", "short", "header", "memoryview", "bytearray", "str", "none", "unknown"]
)
_SUBJECTS = st.sampled_from(
    [A, B, GONE, str(A), A.hex, NO_SUBJECT, "unchecked", None, 1, True, "", "not a uuid", (A,)]
)
_CONTEXTS = st.sampled_from([CTX, "customers.email", "", None, 7])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=_BLOBS, how=_HOW, subject=_SUBJECTS, context=_CONTEXTS, warm_first=st.booleans())
def test_decrypt_reads_one_value_as_decrypt_many_does(
    sealed: tuple[Vault, dict[str, bytes]],
    name: str,
    how: str,
    subject: Any,
    context: Any,
    warm_first: bool,
) -> None:
    vault, blobs = sealed
    blob: Any = blobs[name]
    if how == "tampered":
        blob = tampered(blob)
    elif how == "short":
        blob = blob[:30]
    elif how == "header":
        blob = blob[:22]
    elif how == "memoryview":
        blob = memoryview(blob)
    elif how == "bytearray":
        blob = bytearray(blob)
    elif how == "str":
        blob = "text"
    elif how == "none":
        blob = None
    elif how == "unknown":
        blob = blob[:2] + uuid.uuid4().bytes + blob[18:]
    if warm_first:  # the key remembers the right subject (a write or read found it)
        vault.decrypt(blobs["a"], context=CTX, subject=A)
    assert _one(vault, blob, context, subject) == _many(vault, blob, context, subject)


def test_a_remembered_subject_skips_only_the_same_subject(
    sealed: tuple[Vault, dict[str, bytes]],
) -> None:
    vault, blobs = sealed
    assert vault.decrypt(blobs["a"], context=CTX, subject=A) == b"value of a"
    # spelled otherwise: checked by its ref (the same subject for a uuid installation)
    assert vault.decrypt(blobs["a"], context=CTX, subject=str(A)) == b"value of a"
    assert vault.decrypt(blobs["a"], context=CTX, subject=A.hex) == b"value of a"
    with pytest.raises(DecryptionError):
        vault.decrypt(blobs["a"], context=CTX, subject=B)
    with pytest.raises(TypeError):
        vault.decrypt(blobs["a"], context=CTX, subject=A.int)


def test_an_int_installation_never_takes_true_for_one(tmp_path: Path) -> None:
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}", subject_type="int")
    blob = vault.encrypt(1, b"one", context=CTX)  # the key remembers the int 1
    assert vault.decrypt(blob, context=CTX, subject=1) == b"one"
    with pytest.raises(TypeError):
        vault.decrypt(blob, context=CTX, subject=True)  # 1 == True in Python
    with pytest.raises(TypeError):
        vault.decrypt(blob, context=CTX, subject=1.0)
    vault.close()
