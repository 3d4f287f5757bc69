"""Subject types: coercion and the canonical encoding (frozen vectors)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ccvault.crypto._primitives import hmac_sha256
from ccvault.crypto._subject import SubjectType

VECTORS = json.loads((Path(__file__).parent / "vectors" / "subject_refs.json").read_text())


def _decode(enc: dict[str, object]) -> object:
    ((kind, value),) = enc.items()
    if kind == "str":
        return value
    if kind == "int":
        return int(str(value))
    if kind == "uuid":
        return uuid.UUID(str(value))
    assert isinstance(value, list)
    return tuple(_decode(v) for v in value)


@pytest.mark.parametrize(
    "vec", VECTORS, ids=[f"{v['subject_type']}-{v['canonical'][:12]}" for v in VECTORS]
)
def test_canonical_and_ref_vectors(vec: dict[str, object]) -> None:
    st = SubjectType.parse(vec["subject_type"])
    canon = st.canonical(_decode(vec["subject"]))  # type: ignore[arg-type]
    assert canon.hex() == vec["canonical"]
    assert hmac_sha256(bytes.fromhex(str(vec["k_ref"])), canon).hex() == vec["ref"]


def test_parse_spellings() -> None:
    assert SubjectType.parse(uuid.UUID).spec == "uuid"
    assert SubjectType.parse((uuid.UUID, str)).spec == "tuple[uuid,str]"
    assert SubjectType.parse("Tuple[ UUID, int ]").spec == "tuple[uuid,int]"
    with pytest.raises(ValueError, match="unsupported subject type"):
        SubjectType.parse(float)
    with pytest.raises(ValueError, match="unsupported subject type"):
        SubjectType.parse("bytes")


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        (
            "uuid",
            [uuid.UUID(int=3), str(uuid.UUID(int=3)), f"{{{uuid.UUID(int=3)}}}"],
            ["nope", 3, b"\x00" * 16, None, 3.0],
        ),
        ("int", [-5, "-5"], [True, 5.0, "05", "+5", " 5", "1e3", None, "5" * 200]),
        ("str", ["\u00fc", "u\u0308"], ["", 5, uuid.UUID(int=1), None, b"a"]),
        (
            "tuple[uuid,str]",
            [(uuid.UUID(int=1), "x"), [str(uuid.UUID(int=1)), "x"]],
            [(uuid.UUID(int=1),), (uuid.UUID(int=1), "x", "y"), "x", ("x", uuid.UUID(int=1))],
        ),
    ],
)
def test_coercion(spec: str, good: list[object], bad: list[object]) -> None:
    st = SubjectType.parse(spec)
    canon = {st.canonical(g) for g in good}
    assert len(canon) == 1, "every accepted spelling is the same subject"
    for b in bad:
        with pytest.raises(TypeError):
            st.canonical(b)


def test_types_never_collide() -> None:
    # "1" as str, 1 as int: different tags, so different canonical bytes and refs.
    assert SubjectType.parse("str").canonical("1") != SubjectType.parse("int").canonical(1)
    t = SubjectType.parse("tuple[str,str]")
    assert t.canonical(("ab", "c")) != t.canonical(("a", "bc"))


def test_oversized_subjects_are_refused() -> None:
    with pytest.raises(TypeError):
        SubjectType.parse("str").canonical("x" * 2000)
    with pytest.raises(TypeError):
        SubjectType.parse("int").canonical(10**400)


def test_lone_surrogates_are_type_errors() -> None:
    with pytest.raises(TypeError) as info:
        SubjectType.parse("str").canonical("cust-\udcff")
    assert "cust" not in str(info.value)


@pytest.mark.parametrize("key_len", [0, 1, 32, 64, 65, 200])
def test_prepared_hmac_is_hmac_sha256(key_len: int) -> None:
    from ccvault.crypto._primitives import HmacSha256

    key = bytes(range(256))[:key_len] * 1
    for msg in (b"", b"x", b"\x03" + bytes(16), b"m" * 1000):
        assert HmacSha256(key)(msg) == hmac_sha256(key, msg)
