"""Issue 11, item 6: one unreadable key row no longer blocks rotation and epoch destruction.

A key row whose wrap, commitment or bound ids do not authenticate (or whose epoch id names no
epoch) is quarantined by the rotation and reported by key id; the other keys are re-wrapped; an
epoch without live readable keys is destroyed on schedule; an epoch that still holds quarantined
keys is destroyed only by an explicit, recorded operator decision. A KMS that is down or refuses
never quarantines anything.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_cli import configure, run
from ccvault import (
    NO_SUBJECT,
    DecryptionError,
    KeyStoreError,
    KmsAccessDeniedError,
    KmsError,
    KmsUnavailableError,
    SubjectShreddedError,
    Vault,
)
from ccvault.crypto._blind import normalizer
from ccvault.keystore._schema import build_metadata
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import LocalKms, RootState
from ccvault.testing import FrozenClock
from ccvault.testing._basics import KmsWrapper

T = TypeVar("T")
CTX = "customers.phone"
DAY = 86_400.0
KEYS = build_metadata().tables["ccvault_keys"]


def _flip(blob: bytes, at: int = 3) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def _epoch_ids(url: str) -> dict[int, bytes]:
    store = SqlKeyStore(url, create=False)
    try:
        return {e.seq: e.epoch_id for e in store.epochs()}
    finally:
        store.close()


def _key_row(url: str, ref: bytes) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(KEYS).where(KEYS.c.ref == ref)).one()
    finally:
        engine.dispose()
    return {
        k: bytes(v) if isinstance(v, bytes | memoryview) else v for k, v in row._mapping.items()
    }


def _update_key(url: str, subject_ref: bytes, **values: Any) -> None:
    """What an insider (or a bad disk) does to the key store, bypassing ccvault."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(KEYS).where(KEYS.c.ref == subject_ref).values(**values))
    finally:
        engine.dispose()


# Each tampering of one subject key row, given (row, epoch ids by seq) -> the new column values.
TAMPERINGS: dict[str, Callable[[dict[str, Any], dict[int, bytes]], dict[str, Any]]] = {
    "wrapped bytes": lambda row, _: {"wrapped": _flip(row["wrapped"])},
    "commitment": lambda row, _: {"commitment": _flip(row["commitment"], 0)},
    "epoch id of no epoch": lambda row, _: {"epoch_id": os.urandom(16)},
    "epoch id of an older epoch": lambda _, epochs: {"epoch_id": epochs[1]},
    "no epoch id": lambda row, _: {"epoch_id": None},
    "ref (bound in the associated data)": lambda row, _: {"ref": os.urandom(32)},
    "kind (bound in the associated data)": lambda row, _: {"kind": "vaultwide"},
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_key_row_is_quarantined_and_blocks_nothing_but_its_epoch(
    tampering: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    victim, others = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
    with Vault(kms, db_url, per_epoch_roots=True, clock=clock) as vault:
        blobs = {s: vault.encrypt(s, f"+1 555 {s.hex[:4]}".encode(), context=CTX) for s in others}
        victim_blob = vault.encrypt(victim, b"+1 555 0100", context=CTX)
        vault.rotate_epoch()  # every key now under epoch 2
        ref = vault.subject_ref(victim)
        row = _key_row(db_url, ref)
        epochs = _epoch_ids(db_url)
        change = TAMPERINGS[tampering](row, epochs)
        _update_key(db_url, ref, **change)
        claimed = change.get("epoch_id", row["epoch_id"])  # the epoch the row now names

        with caplog.at_level("WARNING", logger="ccvault"):
            report = vault.rotate_epoch()
        assert report.epoch_seq == 3
        assert report.quarantined == ((row["key_id"].hex(), 1),)
        assert report.rewrapped == 6  # the three other subjects, K_ref, receipt and head-MAC keys
        assert f"key {row['key_id'].hex()} version 1" in caplog.text
        assert "quarantined" in caplog.text
        assert vault.quarantined_keys() == 1
        held = {e.seq: e.quarantined_keys for e in vault.epochs() if e.quarantined_keys}
        holder = next((seq for seq, eid in epochs.items() if eid == claimed), None)
        assert held == ({holder: 1} if holder is not None else {})
        # Rotating again: nothing to quarantine, nothing left under older epochs.
        again = vault.rotate_epoch()
        assert (again.rewrapped, again.quarantined) == (6, ())

        clock.advance(36 * DAY)  # epochs 1, 2 and 3 are past the backup window
        caplog.clear()
        with caplog.at_level("WARNING", logger="ccvault"):
            destroyed = vault.destroy_epochs()
        assert destroyed == sorted({1, 2, 3} - {holder})
        if holder is not None:
            assert f"epoch {holder} holds 1 quarantined key(s); not destroyed" in caplog.text
            assert vault.destroy_epochs(dry_run=True) == []
            assert vault.destroy_epochs(dry_run=True, accept_unreadable=True) == [holder]
            assert vault.destroy_epochs() == []  # still held: never without the decision
            caplog.clear()
            with caplog.at_level("WARNING", logger="ccvault"):
                assert vault.destroy_epochs(accept_unreadable=True) == [holder]
            assert f"epoch {holder} destroyed with 1 quarantined key(s)" in caplog.text
            root = next(e.roots for e in vault.epochs() if e.seq == holder)[0][1]
            assert kms.root_state(root) is RootState.DESTROYED
            store = SqlKeyStore(db_url, create=False)
            try:
                (record,) = store.meta("unreadable_accepted:").values()
            finally:
                store.close()
            assert json.loads(record) == {
                "epoch_seq": holder,
                "quarantined_keys": 1,
                "accepted_at": clock(),
            }
            assert vault.quarantined_keys() == 0  # the decision was taken
        else:
            assert vault.quarantined_keys() == 1  # names no epoch: holds none, still reported
        assert [e.state for e in vault.epochs()] == ["destroyed"] * 3 + ["active"]

    # A fresh process: the others read, the quarantined key does not.
    with Vault(kms, db_url, per_epoch_roots=True, clock=clock) as fresh:
        for subject, blob in blobs.items():
            assert fresh.decrypt(blob, context=CTX, subject=subject).startswith(b"+1 555 ")
        with pytest.raises(DecryptionError):
            fresh.decrypt(victim_blob, context=CTX)


def test_a_quarantined_key_is_never_made_live_again_silently(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    victim, other = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, db_url, clock=clock) as vault:
        blob = vault.encrypt(victim, b"+1 555 0100", context=CTX)
        vault.encrypt(other, b"+1 555 0101", context=CTX)
        ref = vault.subject_ref(victim)
        original = _key_row(db_url, ref)
        _update_key(db_url, ref, wrapped=_flip(original["wrapped"]))
        assert vault.rotate_epoch().quarantined == ((original["key_id"].hex(), 1),)
        assert _key_row(db_url, ref)["state"] == "quarantined"
        assert _key_row(db_url, ref)["wrapped"] == _flip(original["wrapped"])  # kept as found
        # The bytes are put back (a restore, or the insider covering tracks): the row still
        # says quarantined, and ccvault neither reads nor re-wraps it.
        _update_key(db_url, ref, wrapped=original["wrapped"])
        report = vault.rotate_epoch()
        assert (report.rewrapped, report.quarantined) == (4, ())  # other, K_ref, receipt, head key
        assert vault.quarantined_keys() == 1
    with Vault(kms, db_url, clock=clock) as fresh:
        with pytest.raises(DecryptionError):
            fresh.decrypt(blob, context=CTX, subject=victim)
        with pytest.raises(KeyStoreError, match="quarantined") as caught:
            fresh.encrypt(victim, b"new value", context=CTX)
        assert original["key_id"].hex() in str(caught.value)
        # A shred destroys the quarantined row like any key of the subject, and says so.
        receipt = fresh.shred(victim)
        assert [k.key_id for k in receipt.destroyed_keys] == [original["key_id"].hex()]
        assert fresh.quarantined_keys() == 0
        with pytest.raises(SubjectShreddedError):
            fresh.decrypt(blob, context=CTX)
        row = _key_row(db_url, ref)
        assert (row["state"], row["wrapped"], row["commitment"]) == ("destroyed", None, None)


def test_a_quarantined_vaultwide_key_gives_way_to_a_new_version(sqlite_url: str) -> None:
    kms = LocalKms.ephemeral()
    with Vault(kms, sqlite_url) as vault:
        old = vault.encrypt(NO_SUBJECT, b"campaign script", context="calls.scripts")
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            where = KEYS.c.kind == "vaultwide"
            (wrapped,) = conn.execute(sa.select(KEYS.c.wrapped).where(where)).one()
            conn.execute(sa.update(KEYS).where(where).values(wrapped=_flip(bytes(wrapped))))
    finally:
        engine.dispose()
    with Vault(kms, sqlite_url) as vault:
        (quarantined,) = vault.rotate_epoch().quarantined
        assert quarantined[1] == 1
    with Vault(kms, sqlite_url) as fresh:
        new = fresh.encrypt(NO_SUBJECT, b"new script", context="calls.scripts")
        assert fresh.decrypt(new, context="calls.scripts") == b"new script"
        with pytest.raises(DecryptionError):
            fresh.decrypt(old, context="calls.scripts")
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(KEYS.c.version, KEYS.c.state)
                .where(KEYS.c.kind == "vaultwide")
                .order_by(KEYS.c.version)
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "quarantined"), (2, "live")]


def test_a_quarantined_long_lived_key_is_not_read_even_when_its_bytes_come_back(
    sqlite_url: str,
) -> None:
    """The blind-index key is looked up by label, not through a live-key filter: its state is
    what keeps a quarantined row from being read again."""
    kms = LocalKms.ephemeral()
    exact = normalizer("exact")
    with Vault(kms, sqlite_url) as vault:
        vault.blind_index("customers.email", exact, "a@example.com", 16)
    bidx = KEYS.c.kind == "bidx"
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            (wrapped,) = conn.execute(sa.select(KEYS.c.wrapped).where(bidx)).one()
            conn.execute(sa.update(KEYS).where(bidx).values(wrapped=_flip(bytes(wrapped))))
        with Vault(kms, sqlite_url) as vault:
            assert len(vault.rotate_epoch().quarantined) == 1
        with engine.begin() as conn:
            conn.execute(sa.update(KEYS).where(bidx).values(wrapped=bytes(wrapped)))
    finally:
        engine.dispose()
    with Vault(kms, sqlite_url) as fresh, pytest.raises(DecryptionError):
        fresh.blind_index("customers.email", exact, "a@example.com", 16)


class _BrokenUnwrap(KmsWrapper):
    """Wraps as usual; every unwrap raises ``error`` while ``down`` is set."""

    def __init__(self, inner: LocalKms, error: KmsError) -> None:
        super().__init__(inner)
        self.error = error
        self.down = False

    def _call(self, name: str, op: Callable[[], T]) -> T:
        if self.down and name == "unwrap":
            raise self.error
        return op()


@pytest.fixture(
    params=[
        KmsUnavailableError("the KMS is unreachable (test)"),
        KmsAccessDeniedError("access denied (test)"),
    ],
    ids=["unavailable", "refusing"],
)
def broken_kms(request: pytest.FixtureRequest) -> _BrokenUnwrap:
    return _BrokenUnwrap(LocalKms.ephemeral(), request.param)


def test_a_kms_that_is_down_or_refuses_never_quarantines(
    broken_kms: _BrokenUnwrap, db_url: str
) -> None:
    clock = FrozenClock()
    with Vault(broken_kms, db_url, clock=clock) as vault:
        blobs = {s: vault.encrypt(s, b"x", context=CTX) for s in (uuid.uuid4(), uuid.uuid4())}
        clock.advance(3600)  # the cached epoch key has expired, grace period included
        broken_kms.down = True
        with pytest.raises(type(broken_kms.error)):
            vault.rotate_epoch()  # epoch 2 is made, but epoch 1 cannot be unwrapped
        assert vault.quarantined_keys() == 0
        assert {e.seq: e.live_keys for e in vault.epochs()} == {1: 5, 2: 0}
        broken_kms.down = False
        report = vault.rotate_epoch()  # finishes the interrupted rotation
        assert (report.epoch_seq, report.resumed, report.rewrapped) == (2, True, 5)
        assert report.quarantined == ()
        for subject, blob in blobs.items():
            assert vault.decrypt(blob, context=CTX, subject=subject) == b"x"


def test_cli_reports_quarantined_keys_and_destroys_only_when_told(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    kms, url = configure(tmp_path, monkeypatch, per_epoch_roots="true")
    first, second = uuid.uuid4(), uuid.uuid4()
    with Vault(kms, url, per_epoch_roots=True, clock=FrozenClock()) as vault:  # in 2023
        for subject in (first, second, uuid.uuid4()):
            vault.encrypt(subject, b"x", context=CTX)
        vault.rotate_epoch()
        refs = [vault.subject_ref(s) for s in (first, second)]
        rows = [_key_row(url, ref) for ref in refs]
        _update_key(url, refs[0], wrapped=_flip(rows[0]["wrapped"]))
        assert vault.rotate_epoch().quarantined == ((rows[0]["key_id"].hex(), 1),)  # under 2
    _update_key(url, refs[1], commitment=_flip(rows[1]["commitment"], 0))  # now under epoch 3

    rotated = run(capsys, "rotate-epoch")  # today
    assert rotated == {
        "epoch_seq": 4,
        "rewrapped": 4,
        "resumed": False,
        "quarantined": [{"key_id": rows[1]["key_id"].hex(), "version": 1}],
    }
    status = run(capsys, "status")
    assert status["quarantined_keys"] == 2
    assert [(e["seq"], e["quarantined_keys"]) for e in status["epochs"]] == [
        (1, 0),
        (2, 1),
        (3, 1),
        (4, 0),
    ]
    # Epochs 1 and 2 were retired in 2023; epoch 3 today (not due).
    dry = run(capsys, "destroy-epochs", "--dry-run")
    assert (dry["would_destroy_epochs"], dry["held_by_quarantined_keys"]) == ([1], [2])
    dry = run(capsys, "destroy-epochs", "--dry-run", "--accept-unreadable")
    assert (dry["would_destroy_epochs"], dry["held_by_quarantined_keys"]) == ([1, 2], [])
    with caplog.at_level("WARNING", logger="ccvault"):
        assert run(capsys, "destroy-epochs") == {
            "destroyed_epochs": [1],
            "held_by_quarantined_keys": [2],
        }
    assert "epoch 2 holds 1 quarantined key(s); not destroyed" in caplog.text
    assert run(capsys, "destroy-epochs") == {
        "destroyed_epochs": [],
        "held_by_quarantined_keys": [2],
    }
    assert run(capsys, "destroy-epochs", "--accept-unreadable") == {
        "destroyed_epochs": [2],
        "held_by_quarantined_keys": [],
    }
    status = run(capsys, "status")
    assert status["quarantined_keys"] == 1  # epoch 3's, still awaiting a decision
    assert [(e["seq"], e["state"]) for e in status["epochs"]] == [
        (1, "destroyed"),
        (2, "destroyed"),
        (3, "retired"),
        (4, "active"),
    ]


# -- the class: any damage to a key row ----------------------------------------------------------

_AUTHENTICATED = ("wrapped", "commitment", "epoch_id", "ref", "kind", "key_id", "version")


@st.composite
def _damage(draw: st.DrawFn) -> tuple[str, Any]:
    """One column of a subject key row and what it becomes (``None`` for "set NULL")."""
    column = draw(st.sampled_from([*_AUTHENTICATED, "label"]))
    if column in ("wrapped", "commitment"):
        size = 128 if column == "wrapped" else 32
        how = draw(st.sampled_from(["flip", "truncate", "random", "null"]))
        if how == "flip":
            return column, ("flip", draw(st.integers(0, 10_000)), draw(st.integers(0, 7)))
        if how == "truncate":
            return column, ("truncate", draw(st.integers(0, 10_000)))
        if how == "random":
            return column, draw(st.binary(min_size=0, max_size=size))
        return column, None
    if column == "epoch_id":
        return column, draw(
            st.sampled_from(["epoch 1", "null"]) | st.binary(min_size=16, max_size=16)
        )
    if column == "ref":
        return column, draw(st.binary(min_size=32, max_size=32))
    if column == "key_id":
        return column, draw(st.binary(min_size=16, max_size=16))
    if column == "version":
        return column, draw(st.integers(2, 2**31 - 1))
    if column == "kind":
        return column, draw(st.sampled_from(["vaultwide", "ref", "receipt", "bidx", "x"]))
    return column, draw(st.text(min_size=1, max_size=20))  # label: not authenticated


def _apply(row: dict[str, Any], damage: list[tuple[str, Any]], epoch1: bytes) -> dict[str, Any]:
    values = dict(row)
    for column, change in damage:
        old = values[column]
        if isinstance(change, tuple) and change[0] == "flip" and old:
            at = change[1] % len(old)
            values[column] = old[:at] + bytes([old[at] ^ (1 << change[2])]) + old[at + 1 :]
        elif isinstance(change, tuple) and change[0] == "truncate" and old:
            values[column] = old[: change[1] % len(old)]
        elif isinstance(change, tuple):
            values[column] = old  # nothing to flip or cut in an empty value
        elif change == "epoch 1":
            values[column] = epoch1
        elif change == "null":
            values[column] = None
        else:
            values[column] = change
    return values


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=st.lists(_damage(), min_size=1, max_size=3))
def test_any_damage_to_a_key_row_quarantines_it_and_only_it(
    damage: list[tuple[str, Any]],
) -> None:
    kms = LocalKms.ephemeral()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/keys.db"
        victim, other = uuid.uuid4(), uuid.uuid4()
        with Vault(kms, url) as vault:
            other_blob = vault.encrypt(other, b"kept", context=CTX)
            vault.encrypt(victim, b"damaged", context=CTX)
            ref = vault.subject_ref(victim)
            row = _key_row(url, ref)
            damaged = _apply(row, damage, _epoch_ids(url)[1])
            changed = {c: damaged[c] for c in (*_AUTHENTICATED, "label") if damaged[c] != row[c]}
            if changed:
                _update_key(url, ref, **changed)
            report = vault.rotate_epoch()  # never raises
            if any(c in _AUTHENTICATED for c in changed):
                expected = ((damaged["key_id"].hex(), damaged["version"]),)
                assert (report.quarantined, report.rewrapped) == (expected, 4)
            else:  # the label is not part of the key: the row is still good
                assert (report.quarantined, report.rewrapped) == ((), 5)
        with Vault(kms, url) as fresh:
            assert fresh.decrypt(other_blob, context=CTX, subject=other) == b"kept"
            assert fresh.quarantined_keys() == len(report.quarantined)
