"""Held keys made in one batch (issue 15, performance round 2): ``enforce_retention`` unwraps the
held subjects' keys in one pass (``Epochs.unwrap_records``), wraps the held keys in one batch
with the material they derive (``Epochs.new_records(materials=)``) and inserts them in one
statement (COPY on PostgreSQL). These tests check that the batch makes exactly what the
one-at-a-time path made: each held key's material is the subject's suite-2 value key in the
period, bound to the subject's ref under the active epoch, and a fresh vault in another process
opens the held subjects' values of the expired period and nobody else's; the replay over held
keys that are already there keeps them (the COPY's fallback); the batched unwraps and wraps
agree with the single ones; and on SQLite the statements that select keys by ref probe the ref
index.

Real components: key stores on SQLite, PostgreSQL and MariaDB (``db_url``), a SQL ledger in a
SQLite file, a child process started by ``spawn``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import held_reader_child
from ccvault import Vault
from ccvault.crypto._primitives import Aead
from ccvault.crypto._wrap import KeyBinding, unwrap_key, unwrap_keys, wrap_keys
from ccvault.keystore import KeyKind, SqlKeyStore, State
from ccvault.kms import LocalKms
from ccvault.testing import FrozenClock
from conftest import run_sql
from test_enforce_retention import CTX, POLICY, POLICY_DICT, T0, expected_held, stored_held


def _rows(url: str, kind: str) -> list[Any]:
    engine = sa.create_engine(url)
    cols = ("key_id", "version", "kind", "label", "ref", "epoch_id", "wrapped", "state")
    try:
        with engine.connect() as conn:
            t = sa.table("ccvault_keys", *(sa.column(c) for c in cols))
            return list(conn.execute(sa.select(t).where(t.c.kind == kind)).all())
    finally:
        engine.dispose()


def test_batched_held_keys_open_in_another_process_as_before(tmp_path: Path, db_url: str) -> None:
    key_path = tmp_path / "m.key"
    kms = LocalKms.generate(key_path)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    clock = FrozenClock(T0.timestamp())
    subjects = [uuid.uuid4() for _ in range(40)]
    held = set(subjects[:25])
    with Vault(
        kms, db_url, ledger=ledger, create=True, clock=clock, retention_policy=POLICY,
        listen_url="off",
    ) as vault:  # fmt: skip
        blobs = [
            vault.encrypt(s, f"notes {i}".encode(), context=CTX, retention="chats")
            for i, s in enumerate(subjects)
        ]
        period = vault._periods.for_write(POLICY.category("chats"), None)
        for subject in held:
            vault.hold(subject, case="LIT-1", by="legal")
        # what the one-at-a-time path made: each held key's material computed from the rows
        want: dict[bytes, bytes] = {}
        for subject in held:
            want.update(expected_held(vault, subject, period))
        assert len(want) == 25
        clock.advance(2 * 86_400)
        report = vault.enforce_retention()
        assert report.destroyed == {"chats": (period.label,)}
        assert (report.held_subjects, report.held_keys) == (25, 25)
        got: dict[bytes, bytes] = {}
        for subject in held:
            got.update(stored_held(vault, subject))
        assert got == want
        active = vault._epochs.active().epoch_id
        refs = {vault.subject_ref(s) for s in held}
        rows = _rows(db_url, "held")
        assert len(rows) == 25
        assert {bytes(r.ref) for r in rows} == refs
        assert {(r.version, r.label, r.state, bytes(r.epoch_id)) for r in rows} == {
            (1, None, "live", active)
        }
        assert len({bytes(r.wrapped)[:12] for r in rows}) == 25  # a nonce each
        now = clock()
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        read = pool.apply(
            held_reader_child.read,
            (
                str(key_path), db_url, ledger, now, POLICY_DICT,
                list(zip(subjects, blobs, strict=True)), CTX,
            ),
        )  # fmt: skip
    assert read == [
        f"notes {i}" if s in held else "RetentionExpiredError" for i, s in enumerate(subjects)
    ]


def test_the_replay_keeps_held_keys_already_there(tmp_path: Path, db_url: str) -> None:
    """A period row put back live while its held keys are still there: the reconciliation makes
    the held keys again and finds them stored (on PostgreSQL the COPY fails and the rows go in
    by an insert that skips them): the stored rows are kept as they were, the period goes
    again, and a second reconciliation changes nothing."""
    clock = FrozenClock(T0.timestamp())
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Vault(
        LocalKms.ephemeral(), db_url, ledger=ledger, create=True, clock=clock,
        retention_policy=POLICY, listen_url="off",
    ) as vault:  # fmt: skip
        vault._periods.for_write(POLICY.category("chats"), None)
        subjects = [uuid.uuid4() for _ in range(12)]
        for subject in subjects:
            vault.encrypt(subject, b"call notes", context=CTX)
        for subject in subjects[:8]:
            vault.hold(subject, case="LIT-1", by="legal")
        [row] = _rows(db_url, "period")
        full = sa.table(
            "ccvault_keys",
            *(sa.column(c) for c in ("key_id", "kind", "state", "wrapped", "commitment",
                                     "epoch_id", "destroyed_at")),
        )  # fmt: skip
        with sa.create_engine(db_url).connect() as conn:
            before = conn.execute(sa.select(full).where(full.c.key_id == row.key_id)).one()
        clock.advance(2 * 86_400)
        assert vault.enforce_retention().held_keys == 8
        held_before = sorted((bytes(r.key_id), bytes(r.wrapped)) for r in _rows(db_url, "held"))
        assert len(held_before) == 8
        run_sql(
            db_url,
            sa.update(full)
            .where(full.c.key_id == row.key_id, full.c.kind == "period")
            .values(
                state="live",
                wrapped=before.wrapped,
                commitment=before.commitment,
                epoch_id=before.epoch_id,
                destroyed_at=None,
            ),
        )
        assert vault.verify_erasures().counts["not_applied"] == 1
        fixed = vault.reconcile_erasures()
        assert fixed.check is not None
        assert fixed.check.ok, fixed.check.lines()
        assert {r.state for r in _rows(db_url, "period")} == {"destroyed"}
        held_after = sorted((bytes(r.key_id), bytes(r.wrapped)) for r in _rows(db_url, "held"))
        assert held_after == held_before  # the stored rows, untouched
        assert vault.reconcile_erasures().check.ok  # type: ignore[union-attr]
        assert (
            sorted((bytes(r.key_id), bytes(r.wrapped)) for r in _rows(db_url, "held"))
            == held_before
        )
        for subject in subjects[:8]:
            assert len(stored_held(vault, subject)) == 1


# -- the batched unwraps and wraps ----------------------------------------------------------------


def test_unwrap_keys_opens_what_unwrap_key_opens_and_refuses_the_rest() -> None:
    epoch = Aead(os.urandom(32))
    installation, epoch_id = os.urandom(16), os.urandom(16)
    items = [
        (os.urandom(32), os.urandom(16), v, os.urandom(32) if v % 2 else b"") for v in (1, 2, 3, 4)
    ]
    wraps = wrap_keys(epoch, installation, KeyKind.HELD, epoch_id, items)
    rows = [
        (wrapped, commit, key_id, version, ref)
        for (_key, key_id, version, ref), (wrapped, commit) in zip(items, wraps, strict=True)
    ]
    assert unwrap_keys(epoch, installation, KeyKind.HELD, epoch_id, rows) == [k for k, *_ in items]
    for row, (key, key_id, version, ref) in zip(rows, items, strict=True):
        binding = KeyBinding(installation, KeyKind.HELD, key_id, version, epoch_id, ref)
        assert unwrap_key(epoch, row[0], row[1], binding) == key
    bad = list(rows)
    bad[0] = (rows[0][0], rows[0][1], rows[0][2], rows[0][3] + 1, rows[0][4])  # another version
    bad[1] = (rows[1][0], rows[2][1], *rows[1][2:])  # another key's commitment
    bad[2] = (rows[2][0][:-1], *rows[2][1:])  # truncated
    out = unwrap_keys(epoch, installation, KeyKind.HELD, epoch_id, bad)
    assert out == [None, None, None, items[3][0]]
    assert unwrap_keys(epoch, installation, KeyKind.SUBJECT, epoch_id, rows) == [None] * 4
    assert unwrap_keys(epoch, installation, "h\u00e9ld", epoch_id, rows) == [None] * 4
    assert unwrap_keys(epoch, installation, KeyKind.HELD, epoch_id, []) == []


def test_unwrap_records_and_new_records_with_material_agree_with_the_single_calls(
    tmp_path: Path,
) -> None:
    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'keys.db'}", create=True) as vault:
        epochs = vault._epochs
        materials = [os.urandom(32) for _ in range(5)]
        named = [(os.urandom(16), 1 + i, os.urandom(32)) for i in range(5)]
        made = epochs.new_records(KeyKind.HELD, named, materials=materials)
        assert [m for _, m in made] == materials
        recs = [rec for rec, _ in made]
        single = [epochs.unwrap_record(rec).reveal() for rec in recs]
        assert single == materials
        quarantined = dataclasses.replace(recs[1], state=State.QUARANTINED)
        unknown_epoch = dataclasses.replace(recs[2], epoch_id=os.urandom(16))
        no_wrap = dataclasses.replace(recs[3], wrapped=None)
        opened = epochs.unwrap_records([recs[0], quarantined, unknown_epoch, no_wrap, recs[4]])
        assert [k.reveal() if k is not None else None for k in opened] == [
            materials[0],
            None,
            None,
            None,
            materials[4],
        ]
        assert "SecretKey(<256-bit, redacted>)" in repr(opened)
        with pytest.raises(ValueError, match="one key material per name"):
            epochs.new_records(KeyKind.HELD, named, materials=materials[:4])
        assert epochs.new_records(KeyKind.HELD, [], materials=[]) == []


def test_the_statements_that_select_keys_by_ref_probe_the_ref_index_on_sqlite(
    tmp_path: Path,
) -> None:
    """The held subjects' live keys, and the held keys of released subjects destroyed: given
    ``kind = ?`` and no statistics, SQLite's planner took the (kind, label, version) index and
    scanned every key of that kind."""
    s = SqlKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        seen: list[tuple[str, Any]] = []

        def capture(_c: Any, _cur: Any, statement: str, params: Any, *_a: Any) -> None:
            if "ccvault_keys" in statement and "ref IN" in statement:
                seen.append((statement, params))

        sa.event.listen(s.engine, "before_cursor_execute", capture)
        refs = [os.urandom(32) for _ in range(10)]
        assert s.live_subject_keys(refs) == {}
        with s.engine.begin() as conn:
            assert s._period_sql.destroy_held_keys(conn, refs, 1.0) == 0
        sa.event.remove(s.engine, "before_cursor_execute", capture)
        assert len(seen) == 2
        for statement, params in seen:
            with s.engine.connect() as conn:
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            details = " ".join(str(row[-1]) for row in plan)
            assert "ccvault_keys_ref_ix" in details, (statement, details)
    finally:
        s.close()
