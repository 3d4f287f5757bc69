"""Issue 11, item 11: the shred fence is no longer an unauthenticated row.

Each subject head carries a MAC of (installation, ref, key id, state, current version) under a
long-lived key the key store cannot read. A head that fails it is treated as shredded (and
logged); a ref with key rows but no head never gets a new key; a key row restored under a
shredded (or missing, or unauthenticated) head reads as shredded, never as plaintext. Every
tampering here is done in SQL, bypassing ccvault, as an insider with write access to the key
store would.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from admin_cli import configure, run
from ccvault import DecryptionError, SubjectShreddedError, Vault
from ccvault.cli import main
from ccvault.crypto._heads import head_mac_message
from ccvault.crypto._primitives import HmacSha256
from ccvault.keystore._schema import build_metadata
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import SHREDDED
from ccvault.vault import FENCE_BREAKS
from conftest import run_sql

CTX = "customers.phone"
VECTORS = Path(__file__).parent / "vectors" / "heads_v1.json"
_MD = build_metadata()
HEADS, KEYS = _MD.tables["ccvault_subject_heads"], _MD.tables["ccvault_keys"]
NONE = dict.fromkeys(FENCE_BREAKS, 0)


def _flip(blob: bytes, bit: int) -> bytes:
    out = bytearray(blob)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def _rows(url: str, table: sa.Table, ref: bytes) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.ref == ref)).all()
    finally:
        engine.dispose()
    return [
        {k: bytes(v) if isinstance(v, bytes | memoryview) else v for k, v in r._mapping.items()}
        for r in rows
    ]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _assert_fenced(
    fresh: Vault, subject: uuid.UUID, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``subject`` is refused every new key, reads as shredded, and the refusal is reported by
    ref prefix (never the subject, never the whole ref)."""
    ref = fresh.subject_ref(subject)
    keys_before = _rows(url, KEYS, ref)
    with pytest.raises(SubjectShreddedError):
        fresh.encrypt(subject, b"new data for an erased customer", context=CTX)
    assert fresh.warm([subject]) == 0
    assert fresh.is_shredded(subject)
    assert _rows(url, KEYS, ref) == keys_before  # no key was created
    assert [k for k in keys_before if k["state"] == "live" and k["version"] > 1] == []
    errors = [e for e in _errors(caplog) if ref.hex()[:16] in e]
    assert errors, _errors(caplog)
    assert not any(ref.hex() in e or str(subject) in e for e in _errors(caplog))


@pytest.fixture
def kms() -> LocalKms:
    return LocalKms.ephemeral()


@pytest.fixture
def reopen(kms: LocalKms, db_url: str) -> Iterator[Callable[[], Vault]]:
    """Vaults with nothing cached, on the same store, as another process would open it."""
    opened: list[Vault] = []

    def make() -> Vault:
        opened.append(Vault(kms, db_url))
        return opened[-1]

    yield make
    for v in opened:
        v.close()


# -- the MAC's bytes are frozen --------------------------------------------------------------------


def test_head_mac_vectors() -> None:
    for case in json.loads(VECTORS.read_text()):
        message = head_mac_message(
            bytes.fromhex(case["installation_id"]),
            bytes.fromhex(case["ref"]),
            bytes.fromhex(case["key_id"]),
            case["state"],
            case["current_version"],
        )
        assert message.hex() == case["message"], case["name"]
        assert HmacSha256(bytes.fromhex(case["k_head"]))(message).hex() == case["mac"]


def test_a_head_version_outside_u32_never_authenticates() -> None:
    for version in (-1, 2**32, True):
        with pytest.raises(ValueError, match="outside u32"):
            head_mac_message(bytes(16), bytes(32), bytes(16), "active", version)


# -- a shredded head's ref altered: no new key for the erased subject ------------------------------


@pytest.mark.parametrize("known", [True, False], ids=["had keys", "never seen"])
def test_a_bit_flip_in_a_shredded_heads_ref_gives_the_subject_no_new_key(
    kms: LocalKms,
    db_url: str,
    reopen: Callable[[], Vault],
    caplog: pytest.LogCaptureFixture,
    known: bool,
) -> None:
    subjects = [uuid.uuid4() for _ in range(3)]
    blobs = {}
    with Vault(kms, db_url) as vault:
        for s in subjects:
            if known:
                blobs[s] = vault.encrypt(s, b"+1 555 0100", context=CTX)
            vault.shred(s)
        refs = [vault.subject_ref(s) for s in subjects]
    for ref, bit in zip(refs, (0, 131, 255), strict=True):  # first, middle and last bit
        run_sql(db_url, sa.update(HEADS).where(HEADS.c.ref == ref).values(ref=_flip(ref, bit)))
    caplog.set_level(logging.ERROR, logger="ccvault")
    fresh = reopen()
    for s in subjects:
        _assert_fenced(fresh, s, db_url, caplog)
        assert _rows(db_url, HEADS, fresh.subject_ref(s)) == []  # not re-created either
        if known:
            with pytest.raises(SubjectShreddedError):
                fresh.decrypt(blobs[s], context=CTX)
    check = fresh.verify_heads()
    assert check.counts == {**NONE, "unauthenticated": 3, "headless": 3}
    assert set(check.refs["headless"]) == {r.hex() for r in refs}
    flipped = {_flip(r, b).hex() for r, b in zip(refs, (0, 131, 255), strict=True)}
    assert set(check.refs["unauthenticated"]) == flipped


@pytest.mark.parametrize("known", [True, False], ids=["had keys", "never seen"])
def test_a_deleted_head_with_tombstones_gets_no_new_key(
    kms: LocalKms,
    db_url: str,
    reopen: Callable[[], Vault],
    caplog: pytest.LogCaptureFixture,
    known: bool,
) -> None:
    subject = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        if known:
            vault.encrypt(subject, b"x", context=CTX)
        vault.shred(subject)
        ref = vault.subject_ref(subject)
    assert [k["state"] for k in _rows(db_url, KEYS, ref)] == ["destroyed"]  # the tombstone
    run_sql(db_url, sa.delete(HEADS).where(HEADS.c.ref == ref))
    caplog.set_level(logging.ERROR, logger="ccvault")
    fresh = reopen()
    _assert_fenced(fresh, subject, db_url, caplog)
    assert _rows(db_url, HEADS, ref) == []
    check = fresh.verify_heads()
    assert (check.heads, check.counts) == (0, {**NONE, "headless": 1})
    assert check.refs["headless"] == (ref.hex(),)
    # A shred of it again puts a fence back (a new head, shredded and authenticated).
    assert not fresh.shred(subject).subject_was_known
    assert fresh.verify_heads().ok


# -- a head's state altered: it fails its MAC, and fails closed ------------------------------------


def test_a_head_flipped_from_shredded_to_active_fails_its_mac(
    kms: LocalKms, db_url: str, reopen: Callable[[], Vault], caplog: pytest.LogCaptureFixture
) -> None:
    known, never_seen = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url) as vault:
        blob = vault.encrypt(known, b"x", context=CTX)
        for s in (known, never_seen):
            vault.shred(s)
        refs = [vault.subject_ref(s) for s in (known, never_seen)]
    run_sql(
        db_url,
        sa.update(HEADS)
        .where(HEADS.c.ref.in_(refs))
        .values(state="active", shredded_at=None, receipt=None),
    )
    caplog.set_level(logging.ERROR, logger="ccvault")
    fresh = reopen()
    for s in (known, never_seen):
        _assert_fenced(fresh, s, db_url, caplog)
    assert any("fails authentication" in e for e in _errors(caplog))
    with pytest.raises(SubjectShreddedError):
        fresh.decrypt(blob, context=CTX)
    check = fresh.verify_heads()
    assert check.counts == {**NONE, "unauthenticated": 2}
    assert set(check.refs["unauthenticated"]) == {r.hex() for r in refs}


def test_a_head_restored_from_a_backup_over_a_shred_is_refused(
    kms: LocalKms, db_url: str, reopen: Callable[[], Vault], caplog: pytest.LogCaptureFixture
) -> None:
    """The whole head row as it was before the shred (its MAC was valid then): it names a key
    that is destroyed now, so the subject stays shredded."""
    subject = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        vault.encrypt(subject, b"x", context=CTX)
        ref = vault.subject_ref(subject)
        (before,) = _rows(db_url, HEADS, ref)
        vault.shred(subject)
    run_sql(db_url, sa.update(HEADS).where(HEADS.c.ref == ref).values(**before))
    caplog.set_level(logging.ERROR, logger="ccvault")
    fresh = reopen()
    _assert_fenced(fresh, subject, db_url, caplog)
    check = fresh.verify_heads()
    assert (check.counts, check.refs["inconsistent"]) == ({**NONE, "inconsistent": 1}, (ref.hex(),))


# Each alteration of one column of an *active* subject's head; all of them fail the MAC.
ALTERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "key id": lambda h: {"key_id": _flip(h["key_id"], 77)},
    "state": lambda h: {"state": "Active"},
    "current version": lambda h: {"current_version": h["current_version"] + 1},
    "mac bit": lambda h: {"mac": _flip(h["mac"], 200)},
    "mac removed": lambda h: {"mac": None},
    "mac of another head": lambda h: {"mac": h["other_mac"]},
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_an_altered_active_head_fails_closed(
    kms: LocalKms,
    db_url: str,
    reopen: Callable[[], Vault],
    caplog: pytest.LogCaptureFixture,
    alteration: str,
) -> None:
    subject, other = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url) as vault:
        blob = vault.encrypt(subject, b"+1 555 0100", context=CTX)
        vault.encrypt(other, b"kept", context=CTX)
        ref = vault.subject_ref(subject)
        (head,) = _rows(db_url, HEADS, ref)
        (head["other_mac"],) = (h["mac"] for h in _rows(db_url, HEADS, vault.subject_ref(other)))
    run_sql(
        db_url, sa.update(HEADS).where(HEADS.c.ref == ref).values(**ALTERATIONS[alteration](head))
    )
    caplog.set_level(logging.ERROR, logger="ccvault")
    fresh = reopen()
    with pytest.raises(SubjectShreddedError):
        fresh.decrypt(blob, context=CTX)
    _assert_fenced(fresh, subject, db_url, caplog)
    assert fresh.encrypt(other, b"others are untouched", context=CTX)
    assert fresh.verify_heads().refs["unauthenticated"] == (ref.hex(),)


def test_a_shred_restores_the_mac_of_a_shredded_head(kms: LocalKms, db_url: str) -> None:
    subject = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        receipt = vault.shred(subject)
        ref = vault.subject_ref(subject)
        run_sql(db_url, sa.update(HEADS).where(HEADS.c.ref == ref).values(mac=None))
        assert vault.verify_heads().counts["unauthenticated"] == 1
        assert vault.is_shredded(subject)
        assert vault.shred(subject) == receipt  # the stored receipt, and the MAC written again
        assert vault.verify_heads().ok


# -- a destroyed key row restored: its values read as shredded, never as plaintext ----------------


@pytest.fixture
def fresh_app(
    app: sa.Engine, kms: LocalKms, db_url: str
) -> Iterator[Callable[[bool], tuple[Vault, sa.Engine]]]:
    """The application database attached to a new vault that has nothing cached."""
    made: list[tuple[Vault, sa.Engine]] = []

    def attach(strict: bool) -> tuple[Vault, sa.Engine]:
        vault = Vault(kms, db_url)
        engine = sa.create_engine(app.url)
        vault.attach(engine, strict=strict)
        made.append((vault, engine))
        return vault, engine

    yield attach
    for vault, engine in made:
        engine.dispose()
        vault.close()


@pytest.mark.parametrize("head", ["shredded", "deleted"])
def test_a_restored_destroyed_key_row_reads_as_shredded(
    app: sa.Engine,
    vault: Vault,
    db_url: str,
    fresh_app: Callable[[bool], tuple[Vault, sa.Engine]],
    caplog: pytest.LogCaptureFixture,
    head: str,
) -> None:
    from sqla_models import Customer

    with Session(app) as s:
        customer = Customer(name="Ada", phone="+1 555 0100")
        s.add(customer)
        s.commit()
        subject = customer.id
    blob = vault.encrypt(subject, b"direct", context=CTX)
    ref = vault.subject_ref(subject)
    (backup,) = _rows(db_url, KEYS, ref)  # the key row, as a backup holds it
    vault.shred(subject)
    statements: list[Any] = [
        sa.update(KEYS)
        .where(KEYS.c.key_id == backup["key_id"], KEYS.c.version == backup["version"])
        .values(**backup)
    ]
    if head == "deleted":
        statements.append(sa.delete(HEADS).where(HEADS.c.ref == ref))
    run_sql(db_url, *statements)
    caplog.set_level(logging.ERROR, logger="ccvault")

    fresh, engine = fresh_app(False)
    with pytest.raises(SubjectShreddedError):
        fresh.decrypt(blob, context=CTX)
    with pytest.raises(SubjectShreddedError):
        fresh.decrypt(blob, context=CTX, subject=subject)
    with Session(engine) as s:
        got = s.get(Customer, subject)
        assert got is not None
        assert (got.name, got.phone) == (SHREDDED, SHREDDED)
    strict, strict_engine = fresh_app(True)
    with Session(strict_engine) as s, pytest.raises(SubjectShreddedError):
        s.get(Customer, subject)
    _assert_fenced(fresh, subject, db_url, caplog)
    kind = "orphan" if head == "deleted" else "restored"
    check = strict.verify_heads()
    assert (check.counts, check.refs[kind]) == ({**NONE, kind: 1}, (ref.hex(),))


def test_a_tampered_key_row_without_a_head_is_unreadable_not_shredded(
    kms: LocalKms, db_url: str, reopen: Callable[[], Vault]
) -> None:
    """A key row whose ref was altered has no head, but it does not authenticate either: its
    values are unreadable (DecryptionError), which outranks shredded."""
    subject = uuid.uuid4()
    with Vault(kms, db_url) as vault:
        blob = vault.encrypt(subject, b"x", context=CTX)
        ref = vault.subject_ref(subject)
    run_sql(db_url, sa.update(KEYS).where(KEYS.c.ref == ref).values(ref=_flip(ref, 9)))
    with pytest.raises(DecryptionError) as caught:
        reopen().decrypt(blob, context=CTX)
    assert not isinstance(caught.value, SubjectShreddedError)


# -- the hot path: warm keys never read heads again ---------------------------------------------


def test_warm_reads_and_writes_do_not_query_the_key_store(svault: Vault) -> None:
    subject = uuid.uuid4()
    blob = svault.encrypt(subject, b"x", context=CTX)
    svault.decrypt(blob, context=CTX)

    def forbidden(*_a: object, **_k: object) -> object:
        raise AssertionError("a warm key must not reach the key store")

    for name in ("value_keys", "get_keys", "subject_keys", "subject_head", "keyed_refs"):
        setattr(svault._store, name, forbidden)
    for _ in range(3):
        assert svault.decrypt(blob, context=CTX) == b"x"
        svault.encrypt(subject, b"y", context=CTX)


def test_one_query_loads_a_batch_of_keys_with_their_heads(kms: LocalKms, sqlite_url: str) -> None:
    subjects = [uuid.uuid4() for _ in range(40)]
    with Vault(kms, sqlite_url) as vault:
        blobs = [vault.encrypt(s, b"x", context=CTX) for s in subjects]
    with Vault(kms, sqlite_url) as fresh:
        statements: list[str] = []
        sa.event.listen(
            fresh._store.engine,  # type: ignore[attr-defined]
            "before_cursor_execute",
            lambda _c, _cur, statement, *_a: statements.append(statement),
        )
        keys = fresh._ring.keys(b[:22] for b in blobs)
    assert len(keys) == 40
    reads = [st for st in statements if "ccvault_keys" in st or "ccvault_subject_heads" in st]
    assert len(reads) == 1, reads
    assert "ccvault_subject_heads" in reads[0]


# -- operators: `ccvault verify-heads` -------------------------------------------------------------


def test_cli_verify_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kms, url = configure(tmp_path, monkeypatch)
    subject = uuid.uuid4()
    with Vault(kms, url) as vault:
        vault.encrypt(subject, b"x", context=CTX)
        vault.shred(uuid.uuid4())
        ref = vault.subject_ref(subject)
    report = run(capsys, "verify-heads")
    assert (report["heads"], report["ok"], report["unauthenticated"]["count"]) == (2, True, 0)
    run_sql(url, sa.update(HEADS).where(HEADS.c.ref == ref).values(state="shredded"))
    assert main(["verify-heads"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["unauthenticated"] == {"count": 1, "refs": [ref.hex()]}
