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
from keyring_doubles import shred_during_fill
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


# -- vault.encrypt's write key by subject ---------------------------------------------------------


def test_an_int_installation_never_writes_true_or_one_point_oh_under_one(tmp_path: Path) -> None:
    """The write key remembered for the int 1 is found by exact type and value: True and 1.0
    (equal to 1, hashing alike) reach the subject type's check."""
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}", subject_type="int")
    vault.encrypt(1, b"one", context=CTX)
    vault.encrypt(1, b"one", context=CTX)  # remembered by subject now
    for other in (True, 1.0):
        with pytest.raises(TypeError):
            vault.encrypt(other, b"x", context=CTX)
    vault.close()


def test_spellings_of_one_subject_write_under_its_one_key(
    sealed: tuple[Vault, dict[str, bytes]],
) -> None:
    vault, _ = sealed
    s = uuid.uuid4()
    blobs = [vault.encrypt(x, b"v", context=CTX) for x in (s, s, str(s), s.hex, str(s).upper())]
    assert len({b[:22] for b in blobs}) == 1
    assert all(vault.decrypt(b, context=CTX, subject=s) == b"v" for b in blobs)
    with pytest.raises(DecryptionError):
        vault.decrypt(blobs[-1], context=CTX, subject=uuid.uuid4())


def test_a_shred_while_a_write_key_is_being_found_is_not_undone(tmp_path: Path) -> None:
    """A shred that lands between ``encrypt`` finding a subject's write key and remembering it by
    subject: the next ``encrypt`` raises, as it does after any shred (the fill is dropped)."""
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}")
    s = uuid.uuid4()
    ring = vault._ring
    armed = shred_during_fill(ring, lambda: vault.shred(s))
    vault.encrypt(s, b"in flight", context=CTX)  # sealed before the shred: unreadable after it
    assert not armed
    with pytest.raises(SubjectShreddedError):
        vault.encrypt(s, b"after", context=CTX)
    with pytest.raises(SubjectShreddedError):
        vault.encrypt(str(s), b"after", context=CTX)
    vault.close()


def test_a_shred_in_this_process_stops_writes_remembered_by_subject(tmp_path: Path) -> None:
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}")
    s, kept = uuid.uuid4(), uuid.uuid4()
    for _ in range(2):
        vault.encrypt(s, b"x", context=CTX)
        vault.encrypt(kept, b"x", context=CTX)
    vault.shred(s)
    for spelling in (s, str(s), s.hex):
        with pytest.raises(SubjectShreddedError):
            vault.encrypt(spelling, b"x", context=CTX)
    blob = vault.encrypt(kept, b"still", context=CTX)
    assert vault.decrypt(blob, context=CTX, subject=kept) == b"still"
    vault.close()


def test_write_keys_remembered_by_subject_stay_within_the_cache_bound(tmp_path: Path) -> None:
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}", cache_max_entries=3)
    subjects = [uuid.uuid4() for _ in range(10)]
    for s in subjects * 2:
        blob = vault.encrypt(s, b"x", context=CTX)
        assert vault.decrypt(blob, context=CTX, subject=s) == b"x"
        assert len(vault._ring._by_subject) <= 3
    vault.close()
