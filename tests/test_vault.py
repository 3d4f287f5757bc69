"""The vault's public surface on every key-store backend."""

from __future__ import annotations

import logging
import os
import uuid

import pytest
import sqlalchemy as sa

from ccvault import (
    NO_SUBJECT,
    ConfigurationError,
    DecryptionError,
    DevelopmentDefaultWarning,
    ErasureReceipt,
    SubjectShreddedError,
    Vault,
)
from ccvault.crypto._blind import Normalizer, normalizer
from ccvault.kms import LocalKms

CTX = "customers.phone"


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024])
def test_round_trip_sizes(vault: Vault, size: int) -> None:
    s = uuid.uuid4()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    blob = vault.encrypt(s, data, context=CTX)
    assert vault.decrypt(blob, context=CTX) == data
    assert vault.decrypt(blob, context=CTX, subject=s) == data
    assert len(blob) == size + 50


@pytest.mark.parametrize(
    ("subject_type", "subject", "same"),
    [
        ("str", "cust-Ünïcode-42", "cust-U\u0308ni\u0308code-42"),  # NFC: composed == decomposed
        ("int", 123456789012, "123456789012"),
        (
            "uuid",
            uuid.UUID("6f1c2a8e-3b7d-4e1f-9a2b-5c6d7e8f9a0b"),
            "6f1c2a8e-3b7d-4e1f-9a2b-5c6d7e8f9a0b",
        ),
        ("tuple[int,uuid]", (7, uuid.UUID(int=5)), ("7", str(uuid.UUID(int=5)))),
    ],
)
def test_subject_types(
    kms: LocalKms, db_url: str, subject_type: str, subject: object, same: object
) -> None:
    with Vault(kms, db_url, subject_type=subject_type) as v:
        blob = v.encrypt(subject, b"x", context=CTX)
        assert v.decrypt(blob, context=CTX, subject=same) == b"x"
        v.shred(same)
        with pytest.raises(SubjectShreddedError):
            v.decrypt(blob, context=CTX)
        assert v.is_shredded(subject)


def test_subject_type_is_recorded_and_enforced(kms: LocalKms, db_url: str) -> None:
    with Vault(kms, db_url, subject_type="uuid") as v:
        with pytest.raises(TypeError):
            v.encrypt("not-a-uuid", b"x", context=CTX)
        with pytest.raises(TypeError):
            v.encrypt(42, b"x", context=CTX)
        with pytest.raises(TypeError):
            v.encrypt(None, b"x", context=CTX)
    with Vault(kms, db_url) as again:  # no declaration: the recorded type applies
        assert again.subject_type.spec == "uuid"
    with pytest.raises(ConfigurationError):
        Vault(kms, db_url, subject_type="str")


def test_wrong_context_or_subject_is_one_opaque_error(vault: Vault) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    blob = vault.encrypt(a, b"+15551230000", context=CTX)
    vault.encrypt(b, b"other", context=CTX)
    errors = []
    for kwargs in ({"context": "customers.email"}, {"context": CTX, "subject": b}):
        with pytest.raises(DecryptionError) as info:
            vault.decrypt(blob, **kwargs)
        errors.append(str(info.value))
    assert errors == [DecryptionError.MESSAGE] * 2


def test_never_seen_key_id_is_decryption_error(vault: Vault) -> None:
    blob = bytearray(vault.encrypt(uuid.uuid4(), b"v", context=CTX))
    blob[2:18] = bytes(16)
    with pytest.raises(DecryptionError):
        vault.decrypt(bytes(blob), context=CTX)


def test_shred_fences_and_returns_the_original_receipt(vault: Vault) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    blob_a = vault.encrypt(a, b"alice", context=CTX)
    blob_b = vault.encrypt(b, b"bob", context=CTX)
    receipt = vault.shred(a)
    assert isinstance(receipt, ErasureReceipt)
    assert receipt.verify(vault.receipt_public_key)
    assert receipt.subject_was_known
    assert len(receipt.destroyed_keys) == 1
    assert receipt.erasure_horizon is None  # one KMS root for every epoch: no horizon promised
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob_a, context=CTX)
    with pytest.raises(SubjectShreddedError):
        vault.encrypt(a, b"again", context=CTX)
    assert vault.decrypt(blob_b, context=CTX) == b"bob"
    assert vault.shred(a) == receipt
    assert vault.is_shredded(a)
    assert not vault.is_shredded(b)


def test_shred_is_seen_by_another_process_vault(kms: LocalKms, db_url: str) -> None:
    """A second Vault (another process) never re-creates a key for a shredded subject."""
    s = uuid.uuid4()
    with Vault(kms, db_url) as one, Vault(kms, db_url) as two:
        blob = one.encrypt(s, b"data", context=CTX)
        two.shred(s)
        with pytest.raises(SubjectShreddedError):
            Vault(kms, db_url).encrypt(s, b"new", context=CTX)
        with pytest.raises(SubjectShreddedError):
            Vault(kms, db_url).decrypt(blob, context=CTX)


def test_shred_of_never_seen_subject_still_fences(vault: Vault) -> None:
    s = uuid.uuid4()
    receipt = vault.shred(s)
    assert not receipt.subject_was_known
    assert receipt.destroyed_keys == ()
    assert vault.is_shredded(s)
    with pytest.raises(SubjectShreddedError):
        vault.encrypt(s, b"x", context=CTX)


def test_shred_uuid_string_erases_uuid_subject(vault: Vault) -> None:
    u = uuid.uuid4()
    blob = vault.encrypt(u, b"x", context=CTX)
    vault.shred(str(u).upper())
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob, context=CTX)
    assert vault.is_shredded(u)


def test_copied_wrapped_key_is_refused(vault: Vault, kms: LocalKms, db_url: str) -> None:
    """Put A's wrapped key (and commitment) on B's row: B's values must never decrypt with it."""
    a, b = uuid.uuid4(), uuid.uuid4()
    vault.encrypt(a, b"a", context=CTX)
    blob_b = vault.encrypt(b, b"b", context=CTX)
    eng = sa.create_engine(db_url)
    keys = sa.Table("ccvault_keys", sa.MetaData(), autoload_with=eng)
    ref_a, ref_b = vault.subject_ref(a), vault.subject_ref(b)
    with eng.begin() as c:
        row_a = c.execute(sa.select(keys).where(keys.c.ref == ref_a)).one()
        c.execute(
            sa.update(keys)
            .where(keys.c.ref == ref_b)
            .values(wrapped=row_a.wrapped, commitment=row_a.commitment)
        )
    eng.dispose()
    with Vault(kms, db_url) as fresh, pytest.raises(DecryptionError):
        fresh.decrypt(blob_b, context=CTX)


def test_epoch_rotation_rewraps_without_touching_data(
    vault: Vault, kms: LocalKms, db_url: str
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    blob_a = vault.encrypt(a, b"a", context=CTX)
    blob_b = vault.encrypt(b, b"b", context=CTX)
    wide = vault.encrypt(NO_SUBJECT, b"ivr-prompt", context="ivr.prompts")
    ref_before = vault.subject_ref(a)
    before = vault.active_epoch_seq()
    report = vault.rotate_epoch()
    assert report.epoch_seq == before + 1
    assert report.rewrapped == 6  # 2 subject keys, 1 vault-wide key, ref, receipt, head-MAC keys
    with Vault(kms, db_url) as fresh:  # nothing cached: everything unwraps via the new epoch
        assert fresh.active_epoch_seq() == report.epoch_seq
        assert fresh.subject_ref(a) == ref_before
        assert fresh.decrypt(blob_a, context=CTX) == b"a"
        assert fresh.decrypt(wide, context="ivr.prompts") == b"ivr-prompt"
        c = uuid.uuid4()
        fresh.encrypt(c, b"c", context=CTX)
        fresh.shred(b)
        with pytest.raises(SubjectShreddedError):
            fresh.decrypt(blob_b, context=CTX)
        with pytest.raises(SubjectShreddedError):
            fresh.encrypt(b, b"b", context=CTX)
    eng = sa.create_engine(db_url)
    epochs = sa.Table("ccvault_epochs", sa.MetaData(), autoload_with=eng)
    keys = sa.Table("ccvault_keys", sa.MetaData(), autoload_with=eng)
    with eng.connect() as conn:
        new_id = conn.execute(
            sa.select(epochs.c.epoch_id).where(epochs.c.seq == report.epoch_seq)
        ).scalar_one()
        live_epochs = set(
            conn.execute(sa.select(keys.c.epoch_id).where(keys.c.state == "live")).scalars()
        )
    eng.dispose()
    assert live_epochs == {new_id}  # the new subject key too


def test_vault_wide_keys(vault: Vault) -> None:
    blob = vault.encrypt(NO_SUBJECT, b"", context="ivr.prompts")
    assert vault.decrypt(blob, context="ivr.prompts") == b""
    assert vault.decrypt(blob, context="ivr.prompts", subject=NO_SUBJECT) == b""
    with pytest.raises(DecryptionError):
        vault.decrypt(blob, context="ivr.prompts", subject=uuid.uuid4())
    with pytest.raises(DecryptionError):
        vault.decrypt(blob, context="other.label")
    s = uuid.uuid4()
    subject_blob = vault.encrypt(s, b"x", context=CTX)
    with pytest.raises(DecryptionError):
        vault.decrypt(subject_blob, context=CTX, subject=NO_SUBJECT)


def test_bad_arguments(vault: Vault) -> None:
    with pytest.raises(TypeError):
        vault.encrypt(uuid.uuid4(), "text", context=CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault.encrypt(uuid.uuid4(), b"x", context="")
    for junk in (b"", b"\x01", bytearray(b"\x01\x01"), memoryview(b"\x01")):
        with pytest.raises(DecryptionError):
            vault.decrypt(junk, context=CTX)  # type: ignore[arg-type]
    # Not bytes at all: a programming error, not a ciphertext that failed (issue 10, item 9).
    blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    for wrong in (blob.hex(), blob.decode("latin-1"), None, 5):
        with pytest.raises(TypeError, match=f"not {type(wrong).__name__}"):
            vault.decrypt(wrong, context=CTX)  # type: ignore[arg-type]


def test_no_secrets_in_reprs_errors_or_logs(
    vault: Vault, kms: LocalKms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = uuid.uuid4()
    secret = b"SECRET-PLAINTEXT-4111111111111111"
    blob = vault.encrypt(s, secret, context=CTX)
    vault.shred(s)
    texts = [repr(vault), repr(kms), str(vault._store), caplog.text]
    for exc_type, call in (
        (SubjectShreddedError, lambda: vault.decrypt(blob, context=CTX)),
        (DecryptionError, lambda: vault.decrypt(blob[:20], context=CTX)),
        (SubjectShreddedError, lambda: vault.encrypt(s, secret, context=CTX)),
    ):
        with pytest.raises(exc_type) as info:
            call()
        texts.append(str(info.value) + repr(info.value))
    for text in texts:
        assert "SECRET-PLAINTEXT" not in text
        assert str(s) not in text
        assert s.hex not in text
    other = uuid.uuid4()
    vault.encrypt(other, b"x", context=CTX)
    ring = vault._ring
    key = ring.lookup()(ring.key_for_write(other, CTX).header)
    assert repr(key.aead) == "Aead(<redacted>)"
    assert "aead" not in repr(key).lower()


def test_erasure_horizon_only_with_per_epoch_roots(kms: LocalKms, db_url: str) -> None:
    with Vault(kms, db_url, per_epoch_roots=True) as v:
        root_before = kms.current_root()
        v.rotate_epoch()
        assert kms.current_root() != root_before  # the new epoch has a root of its own
        receipt = v.shred(uuid.uuid4())
        assert receipt.erasure_horizon is not None
        assert receipt.erasure_horizon - receipt.shredded_at >= v.backup_retention
        assert receipt.verify(v.receipt_public_key, installation_id=v.installation_id)
        assert not receipt.verify(v.receipt_public_key, installation_id="0" * 32)


def test_receipt_verification_needs_the_pinned_key(vault: Vault) -> None:
    from ccvault.audit._receipt import sign_receipt

    receipt = vault.shred(uuid.uuid4())
    forged = sign_receipt(receipt.model_copy(update={"destroyed_keys": ()}), os.urandom(32))
    assert not forged.verify(vault.receipt_public_key)
    assert forged.verify(forged.signing_key)  # valid only against its own key: pin yours
    tampered = receipt.model_copy(update={"epoch_seq": receipt.epoch_seq + 1})
    assert not tampered.verify(vault.receipt_public_key)


def test_decrypt_subject_none_is_refused_and_moves_are_not_shreds(vault: Vault) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    blob_b = vault.encrypt(b, b"b", context=CTX)
    vault.encrypt(a, b"a", context=CTX)
    with pytest.raises(TypeError):
        vault.decrypt(blob_b, context=CTX, subject=None)
    vault.shred(b)
    with pytest.raises(DecryptionError):  # B's value checked against A: wrong owner, not "shredded"
        vault.decrypt(blob_b, context=CTX, subject=a)
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(blob_b, context=CTX, subject=b)


def test_overlapping_rotations_never_move_keys_back(kms: LocalKms, db_url: str) -> None:
    with Vault(kms, db_url) as a, Vault(kms, db_url) as b:
        for _ in range(3):
            a.encrypt(uuid.uuid4(), b"x", context=CTX)
        seen: list[int] = []
        real = a._store.keys_before_epoch

        def interleaved(seq: int, limit: int) -> list[object]:
            batch = real(seq, limit)
            if not seen:
                seen.append(b.rotate_epoch().epoch_seq)  # B rotates while A is half-way
            return batch  # type: ignore[return-value]

        a._store.keys_before_epoch = interleaved  # type: ignore[method-assign]
        a.rotate_epoch()
        eng = sa.create_engine(db_url)
        keys = sa.Table("ccvault_keys", sa.MetaData(), autoload_with=eng)
        epochs = sa.Table("ccvault_epochs", sa.MetaData(), autoload_with=eng)
        with eng.connect() as conn:
            live = set(
                conn.execute(
                    sa.select(epochs.c.seq)
                    .join(keys, keys.c.epoch_id == epochs.c.epoch_id)
                    .where(keys.c.state == "live")
                ).scalars()
            )
        eng.dispose()
        assert live == {seen[0]}  # every live key under B's newer epoch


def test_tuple_subject_cache_respects_element_types(kms: LocalKms, sqlite_url: str) -> None:
    with Vault(kms, sqlite_url, subject_type="tuple[int,str]") as v:
        v.encrypt((1, "acme"), b"x", context=CTX)  # (1, "acme") is now cached
        for lookalike in ((True, "acme"), (1.0, "acme")):
            with pytest.raises(TypeError):
                v.encrypt(lookalike, b"x", context=CTX)


def test_ref_cache_keeps_types_apart(kms: LocalKms, sqlite_url: str) -> None:
    # UUIDs and str subjects take a cheaper cache key than a tuple: an int of the same value, or
    # a UUID on a str installation, must still not hit another subject's cached ref.
    u = uuid.UUID(int=5)
    with Vault(kms, sqlite_url, subject_type="int") as v:
        v.encrypt(5, b"x", context=CTX)  # 5 is now cached
        for lookalike in (u, True, 5.0, "5x"):
            with pytest.raises(TypeError):
                v.encrypt(lookalike, b"x", context=CTX)
        assert v.subject_ref("5") == v.subject_ref(5)
    with Vault(kms, sqlite_url.replace(".db", "_str.db"), subject_type="str") as v:
        v.encrypt(str(u), b"x", context=CTX)
        with pytest.raises(TypeError):
            v.encrypt(u, b"x", context=CTX)
    with Vault(kms, sqlite_url.replace(".db", "_uuid.db")) as v:
        refs = v.subject_refs([u, str(u), uuid.UUID(int=6), u])
        assert refs[0] == refs[1] == refs[3] != refs[2]
        assert refs == [v.subject_ref(s) for s in (u, str(u), uuid.UUID(int=6), u)]
        for bad in (None, NO_SUBJECT, 5, "nope"):
            with pytest.raises(TypeError):
                v.subject_refs([u, bad])


def test_batched_write_keys_never_let_an_equal_value_of_another_type_through(
    kms: LocalKms, sqlite_url: str
) -> None:
    with Vault(kms, sqlite_url, subject_type="int") as vault:
        assert set(vault._ring.keys_for_write([1, 2, 1])) == {1, 2}
        with pytest.raises(TypeError):
            vault._ring.keys_for_write([1, True])  # True == 1, but True is not an int subject
        with pytest.raises(TypeError):
            vault._ring.keys_for_write([True])
        with pytest.raises(TypeError):
            vault._ring.keys_for_rows([1, True])
        with pytest.raises(TypeError):
            vault._ring.keys_for_rows([None, True])
        # a row may lack a subject (keys_for_rows: None in its place); a subject list may not
        assert vault._ring.keys_for_rows([None, 1])[0] is None
        with pytest.raises(TypeError, match="a subject is required"):
            vault._ring.keys_for_write([1, None])


def test_keys_for_rows_are_keys_for_write_in_row_order(kms: LocalKms, sqlite_url: str) -> None:
    """The write key of each row's subject, in row order: None for a None or shredded subject,
    the same key for repeats and other spellings of a subject; keys created for new subjects;
    each key's ``checked`` set as keys_for_write sets it."""
    with Vault(kms, sqlite_url) as vault:
        ring = vault._ring
        a, b, gone, new = (uuid.uuid4() for _ in range(4))
        vault.warm([a, b, gone])
        vault.shred(gone)
        rows = [a, None, b, a, gone, str(b), new, None]
        got = ring.keys_for_rows(rows)
        assert len(got) == len(rows)
        by_write = ring.keys_for_write([a, b, new])
        assert got[0] is got[3] is by_write[a]
        assert got[2] is got[5] is by_write[b]
        assert got[6] is by_write[new]
        assert got[1] is got[4] is got[7] is None
        assert ring.keys_for_rows([]) == []
        assert ring.keys_for_rows([None]) == [None]
        ring.keys_for_rows([b])
        assert by_write[b].checked is b
        ring.keys_for_rows([str(b)])
        assert by_write[b].checked == str(b)
        for bad in (5, "nope", NO_SUBJECT):
            with pytest.raises(TypeError):
                ring.keys_for_rows([a, bad])


# -- read-only open (DESIGN.md, lifecycle rule 2) ----------------------------------------------


def _tables(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every table of the database and its rows, sorted: what a read-only vault must not change."""
    eng = sa.create_engine(url)
    try:
        md = sa.MetaData()
        md.reflect(eng)
        with eng.connect() as conn:
            return {
                name: sorted(map(tuple, conn.execute(sa.select(table)).all()), key=repr)
                for name, table in md.tables.items()
            }
    finally:
        eng.dispose()


@pytest.mark.parametrize("per_epoch_roots", [False, True])
def test_readonly_open_of_an_empty_store_creates_nothing(
    db_url: str, per_epoch_roots: bool
) -> None:
    from ccvault.testing import CountingKms

    kms = CountingKms(LocalKms.ephemeral())
    url = sa.make_url(db_url)
    if url.get_backend_name() == "postgresql":  # trust authentication ignores a password
        url = url.set(password="hunter2")
    with pytest.raises(ConfigurationError) as caught:
        Vault(
            kms,
            url.render_as_string(hide_password=False),
            readonly=True,
            per_epoch_roots=per_epoch_roots,
        )
    shown = url.render_as_string(hide_password=True)
    assert str(caught.value) == f"no ccvault installation at {shown}"
    assert "hunter2" not in str(caught.value)
    assert kms.calls == {}  # no root created, nothing wrapped
    if db_url.startswith("sqlite"):
        assert not os.path.exists(sa.make_url(db_url).database or "")
    else:
        assert _tables(db_url) == {}


def test_readonly_vault_reads_and_refuses_every_write(db_url: str) -> None:
    from ccvault.testing import CountingKms

    kms = CountingKms(LocalKms.ephemeral())
    kept, gone = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url, per_epoch_roots=True) as rw:
        blob = rw.encrypt(kept, b"kept", context=CTX)
        wide = rw.encrypt(NO_SUBJECT, b"prompt", context="ivr.prompts")
        gone_blob = rw.encrypt(gone, b"gone", context=CTX)
        rw.shred(gone)
        rw.blind_index("customers.phone", _digits(), "5551234", 16)
    before = _tables(db_url)
    kms.calls.clear()
    with Vault(kms, db_url, readonly=True, per_epoch_roots=True) as ro:
        assert ro.readonly
        assert ro.decrypt(blob, context=CTX, subject=kept) == b"kept"
        assert ro.decrypt(wide, context="ivr.prompts") == b"prompt"
        with pytest.raises(SubjectShreddedError):
            ro.decrypt(gone_blob, context=CTX)
        assert ro.is_shredded(gone)
        assert not ro.is_shredded(uuid.uuid4())
        assert [(e.seq, e.state, e.live_keys) for e in ro.epochs(check_roots=True)] == [
            (1, "active", 6)  # kept, the vault-wide key, K_ref, receipt, head and blind-index keys
        ]
        assert ro.destroy_epochs(dry_run=True) == []
        assert ro.blind_index("customers.phone", _digits(), "5551234", 16)
        assert ro.decrypt(ro.encrypt(kept, b"again", context=CTX), context=CTX) == b"again"
        for write in (
            lambda: ro.encrypt(uuid.uuid4(), b"new subject", context=CTX),
            lambda: ro.encrypt(NO_SUBJECT, b"new value", context="other.label"),
            lambda: ro.shred(kept),
            lambda: ro.shred(uuid.uuid4()),
            ro.rotate_epoch,
            ro.destroy_epochs,
            ro.add_kms_wraps,
            lambda: ro.warm([kept]),
        ):
            with pytest.raises(ConfigurationError, match="the vault is read-only"):
                write()
    assert _tables(db_url) == before
    assert set(kms.calls) <= {"unwrap"}  # no wrap, no new root, no destroyed root


def _digits() -> Normalizer:
    return normalizer("phone:1")


def test_readonly_on_a_store_without_a_blind_index_key_cannot_create_one(
    kms: LocalKms, db_url: str
) -> None:
    Vault(kms, db_url).close()
    with Vault(kms, db_url, readonly=True) as ro, pytest.raises(ConfigurationError, match="blind"):
        ro.blind_index("customers.phone", _digits(), "5551234", 16)


def test_readonly_from_settings_on_an_empty_folder_creates_nothing(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    monkeypatch.chdir(folder)
    for name in list(os.environ):
        if name.upper().startswith("CCVAULT_"):
            monkeypatch.delenv(name)
    with pytest.raises(
        ConfigurationError, match=r"no ccvault installation at sqlite:///\.ccvault/keys\.db"
    ):
        Vault.from_settings(readonly=True)
    assert list(folder.iterdir()) == []  # no .ccvault folder, no master.key, no keys.db
    with pytest.warns(DevelopmentDefaultWarning):
        Vault.from_settings().close()
    with pytest.warns(DevelopmentDefaultWarning):
        ro = Vault.from_settings(readonly=True)
    with ro:
        assert ro.readonly
        assert [e.seq for e in ro.epochs()] == [1]


def test_a_key_store_of_another_kms_says_which_and_how_to_migrate(sqlite_url: str) -> None:
    from ccvault import KmsError
    from ccvault.kms import MultiKms

    old, new, other = LocalKms.ephemeral(), LocalKms.ephemeral(), LocalKms.ephemeral()
    Vault(old, sqlite_url).close()
    for configured in (new, MultiKms(new, other)):
        with pytest.raises(KmsError) as caught:
            Vault(configured, sqlite_url)
        message = str(caught.value)
        assert (
            f"no wrap of this epoch belongs to the configured KMS {configured.kms_id!r}" in message
        )
        assert f"the key store's wraps are from {old.kms_id!r}" in message
        assert "`ccvault add-kms-wraps`" in message
    # The new KMS made primary before add-kms-wraps: still refused, now saying why.
    with pytest.raises(DecryptionError) as refused:
        Vault(MultiKms(new, old), sqlite_url)
    message = str(refused.value)
    assert f"no wrap of the primary KMS {new.kms_id!r}" in message
    assert f"the key store's wraps: {old.kms_id!r}" in message
    assert "add-kms-wraps" in message


def test_readonly_open_through_a_sqlite_file_uri(kms: LocalKms, tmp_path: object) -> None:
    path = f"{tmp_path}/keys.db"
    with Vault(kms, f"sqlite:///{path}") as rw:
        blob = rw.encrypt(uuid.uuid4(), b"x", context=CTX)
    with Vault(kms, f"sqlite:///file:{path}?mode=ro&uri=true", readonly=True) as ro:
        assert ro.decrypt(blob, context=CTX) == b"x"
