"""vault.encrypt_many: many values sealed at once, the keys of new subjects created in batches
(issue 15, item 5: an import of many new customers is not one key-store transaction each).

Statements are counted as tests/test_decrypt_many.py counts them: every statement the key
store's engine sends, the invalidation channel's polls taken out.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ccvault.keyring._values as values_module
from ccvault import (
    NO_SUBJECT,
    ConfigurationError,
    SubjectShreddedError,
    Vault,
)
from ccvault.kms import LocalKms
from leaks import raised, secrets_in
from test_decrypt_many import _key_recorder, statements

CTX = "customers.phone"
NOTES = "customers.notes"
WIDE = "ivr.prompts"
SRC = Path(__file__).parents[1] / "src"


def _heads(vault: Vault) -> int:
    store = vault._store  # type: ignore[attr-defined]  # SqlKeyStore
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(store._heads)).scalar_one())


def test_items_are_sealed_in_order_as_encrypt_seals_them(
    vault: Vault, kms: LocalKms, db_url: str
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    old = vault.encrypt(a, b"existing customer", context=CTX)  # a has a key already
    items: list[Any] = [
        (a, b"a-phone"),
        (b, b"b-phone"),
        (a, b"a-notes", NOTES),
        [b, bytearray(b"b-notes"), NOTES],  # a list is an item too
        (NO_SUBJECT, b"press 1", WIDE),
        (str(b), memoryview(b"b again")),  # a UUID string is the same subject
        (a, b""),
    ]
    blobs = vault.encrypt_many(items, context=CTX)
    assert len(blobs) == len(items)
    assert all(type(blob) is bytes for blob in blobs)
    assert len(set(blobs)) == len(blobs)  # fresh nonces
    want = [b"a-phone", b"b-phone", b"a-notes", b"b-notes", b"press 1", b"b again", b""]
    contexts = [CTX, CTX, NOTES, NOTES, WIDE, CTX, CTX]
    owners: list[object] = [a, b, a, b, NO_SUBJECT, b, a]
    assert (
        vault.decrypt_many(zip(blobs, contexts, owners, strict=True))  # type: ignore[arg-type]
        == want
    )
    # the same keys as encrypt: a's values sit under the key it had
    assert blobs[0][:22] == old[:22]
    assert blobs[1][:22] == vault.encrypt(b, b"x", context=CTX)[:22]
    with Vault(kms, db_url) as fresh:  # cold caches: every key unwrapped from its row
        for blob, ctx, owner, plain in zip(blobs, contexts, owners, want, strict=True):
            assert fresh.decrypt(blob, context=ctx, subject=owner) == plain


def test_new_subjects_are_created_in_batches(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,201 new customers in rounds of 700: one key-creation transaction per round (up to
    10,000 new subjects each, statements of 500 rows), where encrypt of each would take 1,201;
    the rounds change nothing for the values."""
    monkeypatch.setattr(values_module, "SEAL_CHUNK", 700)  # two rounds: 700 + 501
    store = vault._store  # type: ignore[attr-defined]  # SqlKeyStore
    batches: list[int] = []
    transactions: list[int] = []
    create_batch, create_group = store._create_batch, store._create_group

    def batch_counted(conn: Any, *, batch: Any, **kw: Any) -> Any:
        batches.append(len(batch))
        return create_batch(conn, batch=batch, **kw)

    def group_counted(conn: Any, *, group: Any, **kw: Any) -> Any:
        transactions.append(len(group))
        return create_group(conn, group=group, **kw)

    monkeypatch.setattr(store, "_create_batch", batch_counted)  # statements of up to 500 rows
    monkeypatch.setattr(store, "_create_group", group_counted)  # one per transaction
    subjects = [uuid.uuid4() for _ in range(1_201)]
    with statements(vault) as seen:
        blobs = vault.encrypt_many([(s, s.bytes) for s in subjects], context=CTX)
    assert batches == [500, 200, 500, 1]  # ceil(700 / 500) + ceil(501 / 500)
    assert transactions == [700, 501]  # up to 10,000 new subjects per transaction
    # (PostgreSQL's COPY goes by the driver's cursor: no SQLAlchemy event sees it)
    assert seen["INSERT"] == (0 if store._copies() else 2 * 4)
    assert sum(seen.values()) <= 4 * 8, seen
    assert _heads(vault) == 1_201
    items = [(blob, CTX, s) for blob, s in zip(blobs, subjects, strict=True)]
    assert vault.decrypt_many(items) == [s.bytes for s in subjects]
    with statements(vault) as again:  # every key warm now: nothing sent
        vault.encrypt_many([(s, b"x") for s in subjects], context=CTX)
    assert again == {}


def test_wrong_types_raise_type_error_naming_the_item_before_any_key(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = uuid.uuid4()
    wrong: list[tuple[object, str]] = [
        (s, r"an item is \(subject, plaintext\) or \(subject, plaintext, context\)"),
        ((s,), "an item is"),
        ((s, b"x", CTX, CTX), "an item is"),
        ((s, "text"), "plaintext must be bytes, not str"),
        ((s, None), "plaintext must be bytes, not NoneType"),
        ((s, 5), "plaintext must be bytes, not int"),
        ((s, b"x", ""), "context must be a non-empty str"),
        ((s, b"x", b"customers.phone"), "context must be a non-empty str"),
        ((s, b"x", ["unhashable"]), "context must be a non-empty str"),
        ((None, b"x"), "a subject is required"),
        ((42, b"x"), "subject type is uuid: got int"),
        (("not-a-uuid", b"x"), "subject type is uuid: got a str that is not a UUID"),
    ]

    def forbidden(*_a: object, **_k: object) -> object:
        raise AssertionError("no key may be loaded or created before every item is checked")

    monkeypatch.setattr(vault._ring, "write_keys", forbidden)  # type: ignore[attr-defined]
    for bad, message in wrong:
        items = [(uuid.uuid4(), b"fine")] * 3 + [bad]
        with pytest.raises(TypeError, match=r"^items\[3\]: " + message) as info:
            vault.encrypt_many(items, context=CTX)  # type: ignore[arg-type]
        assert str(s) not in str(info.value)
    with pytest.raises(TypeError, match=r"^items\[0\]: an item \(subject, plaintext\) needs"):
        vault.encrypt_many([(s, b"x")])  # no context= and none in the item
    monkeypatch.undo()
    assert _heads(vault) == 0  # nothing created by any of them


def test_retention_is_refused_naming_encrypt(vault: Vault) -> None:
    with pytest.raises(TypeError, match=r"vault\.encrypt\(.*retention=") as info:
        vault.encrypt_many([(uuid.uuid4(), b"x")], context=CTX, retention="calls")
    assert "vault.warm" in str(info.value)
    with pytest.raises(TypeError, match="retention_from"):
        vault.encrypt_many([], context=CTX, retention_from=object())
    assert _heads(vault) == 0


def test_a_shredded_subject_fails_the_whole_batch(vault: Vault) -> None:
    """A shredded subject anywhere in the batch raises SubjectShreddedError naming its item:
    no blob of the batch is returned (every value or none); the keys made meanwhile for the
    other new subjects stay, as warm() makes them, and serve a retry without the subject."""
    gone = uuid.uuid4()
    vault.encrypt(gone, b"before", context=CTX)
    vault.shred(gone)
    never_seen = uuid.uuid4()
    vault.shred(never_seen)  # fenced before it ever had a key
    subjects = [uuid.uuid4() for _ in range(600)]
    for bad in (gone, never_seen):
        items = [(s, b"v") for s in subjects[:400]] + [(bad, b"v")] + [(s, b"v") for s in subjects]
        got: list[bytes] | None = None
        with pytest.raises(SubjectShreddedError) as info:
            got = vault.encrypt_many(items, context=CTX)
        assert got is None
        assert info.value.index == 400
        assert str(info.value) == "the data subject has been shredded: item 400"
        with pytest.raises(SubjectShreddedError):
            vault.encrypt(bad, b"v", context=CTX)  # the same fence as encrypt
    assert _heads(vault) == 2 + 600
    retry = vault.encrypt_many([(s, b"v") for s in subjects], context=CTX)
    assert (
        vault.decrypt_many((b, CTX, s) for b, s in zip(retry, subjects, strict=True))
        == [b"v"] * 600
    )


def test_empty_input_and_any_iterable(vault: Vault) -> None:
    with statements(vault) as seen:
        assert vault.encrypt_many([], context=CTX) == []
        assert vault.encrypt_many(()) == []
        assert vault.encrypt_many(iter([]), context=CTX) == []
    assert seen == {}
    s = uuid.uuid4()
    blobs = vault.encrypt_many(((s, f"v{i}".encode()) for i in range(3)), context=CTX)
    assert vault.decrypt_many((b, CTX, s) for b in blobs) == [b"v0", b"v1", b"v2"]


def test_a_read_only_vault_seals_for_existing_subjects_only(kms: LocalKms, db_url: str) -> None:
    known = uuid.uuid4()
    with Vault(kms, db_url) as writer:
        writer.encrypt(known, b"x", context=CTX)
        writer.encrypt(NO_SUBJECT, b"x", context=WIDE)
    with Vault(kms, db_url, readonly=True) as ro:
        with pytest.raises(ConfigurationError, match="read-only"):
            ro.encrypt_many([(known, b"a"), (uuid.uuid4(), b"b")], context=CTX)
        with pytest.raises(ConfigurationError, match="read-only"):
            ro.encrypt(uuid.uuid4(), b"b", context=CTX)  # as encrypt refuses it
        blobs = ro.encrypt_many([(known, b"a"), (known, b"b")], context=CTX)
        assert ro.decrypt_many((b, CTX, known) for b in blobs) == [b"a", b"b"]
    with Vault(kms, db_url) as writer:
        assert _heads(writer) == 1


def test_another_process_reads_the_values(
    vault: Vault, key_path: Path, db_url: str, tmp_path: Path
) -> None:
    subjects = [uuid.uuid4() for _ in range(700)]
    blobs = vault.encrypt_many(
        [(s, s.bytes + b"-" + s.hex.encode(), CTX) for s in subjects]
        + [(NO_SUBJECT, b"wide value", WIDE)]
    )
    data = tmp_path / "values.json"
    data.write_text(
        json.dumps({"subjects": [str(s) for s in subjects], "blobs": [b.hex() for b in blobs]})
    )
    script = textwrap.dedent(
        """
        import json, sys, uuid
        from ccvault import NO_SUBJECT, Vault
        from ccvault.kms import LocalKms

        key_path, url, path = sys.argv[1:]
        data = json.loads(open(path).read())
        blobs = [bytes.fromhex(b) for b in data["blobs"]]
        subjects = [uuid.UUID(s) for s in data["subjects"]]
        with Vault(LocalKms.from_file(key_path), url, readonly=True) as reader:
            items = [(b, "customers.phone", s) for b, s in zip(blobs, subjects)]
            got = reader.decrypt_many(items + [(blobs[-1], "ivr.prompts", NO_SUBJECT)])
        ok = got == [s.bytes + b"-" + s.hex.encode() for s in subjects] + [b"wide value"]
        print("ok" if ok else "MISMATCH")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(key_path), db_url, str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_no_plaintext_key_material_or_subject_in_errors_or_logs(
    kms: LocalKms,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The new subjects' keys are made inside the failing call (used as made, not unwrapped):
    none of them, and no plaintext or subject, is reachable from the error or in the logs."""
    caplog.set_level(logging.DEBUG)
    secret = b"SECRET-PLAINTEXT-4111111111111111"
    gone = uuid.uuid4()
    fresh = [uuid.uuid4() for _ in range(3)]
    with Vault(kms, sqlite_url) as vault:
        vault.encrypt(gone, b"x", context=CTX)
        vault.shred(gone)
        keys = _key_recorder(monkeypatch)
        items = [(s, secret) for s in fresh] + [(gone, secret)]
        exc = raised(lambda: vault.encrypt_many(items, context=CTX))
        assert isinstance(exc, SubjectShreddedError)
        assert len(keys) == 3  # the three new subjects' keys, made in the call
        for key in keys:
            assert secrets_in(exc, key) == [], key[:4]
        typed = raised(lambda: vault.encrypt_many([(fresh[0], secret), ("x" + str(gone), secret)]))
        assert isinstance(typed, TypeError)
    for text in (str(exc), repr(exc), str(typed), caplog.text):
        assert "SECRET-PLAINTEXT" not in text
        assert str(gone) not in text
        assert gone.hex not in text
        assert not any(str(s) in text or s.hex in text for s in fresh)
        assert not any(key.hex() in text for key in keys)
