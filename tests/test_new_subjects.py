"""Keys for many new subjects (issue 15, item 5): the batched path keeps every guarantee.

``create_subject_keys`` no longer reads back what it has just written when it can tell that
nothing else happened: the heads of a batch whose every head was inserted (the driver's row
count says so) and none fenced are the heads it wrote, and the key rows it inserted are the
candidates. These tests compare that shortcut with what the store holds, force the path where
another writer got there first, and check the wraps made in batches and the value keys used as
made (never unwrapped from the row just written) against what a second process reads.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import Vault
from ccvault.crypto._primitives import Aead
from ccvault.crypto._wrap import KeyBinding, commitment, unwrap_key, wrap_key, wrap_keys
from ccvault.keystore import KeyKind, KeyRecord, SqlKeyStore, State
from ccvault.kms import LocalKms, WrappedKey

CTX = "customers.phone"


def _candidate(epoch_id: bytes, ref: bytes | None = None) -> KeyRecord:
    return KeyRecord(
        key_id=os.urandom(16),
        version=1,
        kind=KeyKind.SUBJECT,
        label=None,
        ref=ref if ref is not None else os.urandom(32),
        epoch_id=epoch_id,
        wrapped=os.urandom(60),
        commitment=os.urandom(32),
        state=State.LIVE,
        created_at=12.5,
    )


def _mac(ref: bytes, key_id: bytes, state: str, version: int) -> bytes:
    """A stand-in head MAC that depends on every field it covers (the store only stores it)."""
    import hashlib

    return hashlib.sha256(ref + key_id + state.encode() + version.to_bytes(4, "big")).digest()


@pytest.fixture
def store(db_url: str) -> Iterator[tuple[SqlKeyStore, bytes]]:
    s = SqlKeyStore(db_url)
    epoch = os.urandom(16)
    s.add_epoch(epoch, 1, os.urandom(32), [WrappedKey("k", "r", b"w")], 0.0)
    try:
        yield s, epoch
    finally:
        s.close()


def test_new_heads_and_keys_are_returned_as_the_store_holds_them(
    store: tuple[SqlKeyStore, bytes],
) -> None:
    """A batch of 1,200 new subjects (three store batches) with one existing subject and one
    fenced ref (a tombstone, no head): the heads and keys returned equal what a read of the
    store gives, field by field, on every backend."""
    s, epoch = store
    existing = _candidate(epoch)
    s.create_subject_keys([existing], 1.0, _mac)
    fenced = os.urandom(32)
    with s.engine.begin() as conn:  # key rows of a ref whose head was lost: its fence
        conn.execute(
            sa.insert(s._keys).values(
                key_id=os.urandom(16),
                version=0,
                kind=KeyKind.SUBJECT,
                ref=fenced,
                state=State.DESTROYED,
                created_at=0.0,
                destroyed_at=0.0,
            )
        )
    new = [_candidate(epoch) for _ in range(1_200)]
    again = _candidate(epoch, ref=existing.ref)  # loses: the subject has a key already
    now = 1_765_000_000.123456789  # a clock reading: every digit must come back
    out = s.create_subject_keys([*new, again, _candidate(epoch, ref=fenced)], now, _mac)

    assert fenced not in out  # a fenced ref never gets a head
    assert set(out) == {c.ref for c in new} | {existing.ref}
    stored = s.subject_keys(list(out))
    assert out == stored
    for c in new:
        head, key = out[c.ref or b""]
        assert key == c
        assert head.key_id == c.key_id
        assert head.state == State.ACTIVE
        assert head.created_at == now
        assert head.mac == _mac(c.ref or b"", c.key_id, "active", 1)
    assert out[existing.ref or b""][1] == existing
    assert s.subject_head(fenced) is None
    with s.engine.connect() as conn:
        keys = conn.execute(sa.select(sa.func.count()).select_from(s._keys)).scalar_one()
        heads = conn.execute(sa.select(sa.func.count()).select_from(s._heads)).scalar_one()
    assert (heads, keys) == (1_201, 1_202)  # no key row for the loser, none for the fence


def test_a_head_another_writer_inserts_first_is_theirs(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (READ COMMITTED): another writer creates one subject's head and key after
    this batch's first locked read and commits before this batch inserts. Our insert of that
    head is ignored, the row count says so, and the batch reads the heads again: that subject
    gets the other writer's key, the rest ours, and the store holds one key per subject."""
    s = SqlKeyStore(pg_url)
    other = SqlKeyStore(pg_url)
    try:
        epoch = os.urandom(16)
        s.add_epoch(epoch, 1, os.urandom(32), [WrappedKey("k", "r", b"w")], 0.0)
        batch = [_candidate(epoch) for _ in range(20)]
        theirs = _candidate(epoch, ref=batch[7].ref)
        keyed = s._keyed
        raced: list[bool] = []

        def keyed_then_race(conn: Any, refs: Any) -> set[bytes]:
            found = keyed(conn, refs)
            if not raced:  # between our first locked read and our insert
                raced.append(bool(other.create_subject_keys([theirs], 1.0, _mac)))
            return found

        monkeypatch.setattr(s, "_keyed", keyed_then_race)
        out = s.create_subject_keys(batch, 2.0, _mac)
        assert raced == [True]
        assert out[theirs.ref or b""][1] == theirs
        assert out[theirs.ref or b""][0].key_id == theirs.key_id
        for c in batch:
            if c.ref != theirs.ref:
                assert out[c.ref or b""][1] == c
        assert out == s.subject_keys([c.ref or b"" for c in batch])
        with s.engine.connect() as conn:
            counts = conn.execute(
                sa.select(s._keys.c.ref, sa.func.count()).group_by(s._keys.c.ref)
            ).all()
        assert len(counts) == 20
        assert all(n == 1 for _, n in counts)
    finally:
        other.close()
        s.close()


def test_the_fence_check_probes_the_ref_index_on_sqlite(tmp_path: Any) -> None:
    """The fence check (key rows of refs without a head) must probe the keys' ref index, not
    scan every subject key: SQLite's planner, given ``kind = ?`` and no statistics, took the
    (kind, label, version) index and the check grew with the store."""
    s = SqlKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        seen: list[tuple[str, Any]] = []

        def capture(_c: Any, _cur: Any, statement: str, params: Any, *_a: Any) -> None:
            if "FROM ccvault_keys" in statement:
                seen.append((statement, params))

        sa.event.listen(s.engine, "before_cursor_execute", capture)
        with s.engine.connect() as conn:
            assert s._keyed(conn, [os.urandom(32) for _ in range(10)]) == set()
        sa.event.remove(s.engine, "before_cursor_execute", capture)
        assert len(seen) == 1
        statement, params = seen[0]
        with s.engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        details = " ".join(str(row[-1]) for row in plan)
        assert "ccvault_keys_ref_ix" in details, details
    finally:
        s.close()


# -- wraps made in batches ----------------------------------------------------------------------


def test_wrap_keys_makes_what_unwrap_key_opens() -> None:
    """Each wrap of a batch opens with its own binding and commitment, as a wrap_key of it
    does; a wrap moved to another key's binding does not."""
    epoch = Aead(os.urandom(32))
    installation, epoch_id = os.urandom(16), os.urandom(16)
    items = [
        (os.urandom(32), os.urandom(16), v, os.urandom(32) if v % 2 else b"") for v in (1, 2, 3)
    ]
    wraps = wrap_keys(epoch, installation, KeyKind.SUBJECT, epoch_id, items)
    assert len(wraps) == 3
    bindings = [
        KeyBinding(installation, KeyKind.SUBJECT, key_id, version, epoch_id, ref)
        for _key, key_id, version, ref in items
    ]
    for (key, key_id, version, _ref), (wrapped, commit), binding in zip(
        items, wraps, bindings, strict=True
    ):
        assert commit == commitment(key, KeyKind.SUBJECT, key_id, version)
        assert unwrap_key(epoch, wrapped, commit, binding) == key
        single, single_commit = wrap_key(epoch, key, binding)
        assert single_commit == commit
        assert len(single) == len(wrapped)
    from ccvault.crypto._wrap import UnwrapError

    with pytest.raises(UnwrapError):
        unwrap_key(epoch, wraps[0][0], wraps[0][1], bindings[1])
    assert len({w for w, _ in wraps}) == 3  # fresh nonces
    assert wrap_keys(epoch, installation, KeyKind.SUBJECT, epoch_id, []) == []


def test_keys_made_in_a_batch_open_in_another_process(tmp_path: Any) -> None:
    """The value keys of new subjects are used as made (not unwrapped from their rows): a
    second vault on the same store, which unwraps them, opens every value."""
    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    subjects = [uuid.uuid4() for _ in range(1_100)]
    with Vault(kms, url) as writer:
        assert writer.warm(subjects) == len(subjects)
        blobs = [writer.encrypt(s, s.bytes, context=CTX) for s in subjects]
    with Vault(kms, url) as reader:
        items = [(b, CTX, s) for b, s in zip(blobs, subjects, strict=True)]
        assert reader.decrypt_many(items) == [s.bytes for s in subjects]


# -- the cost of a new subject: nothing done twice, nothing weakened ------------------------------


def test_new_rows_given_as_tuples_skip_existing_ones_and_count_what_they_insert(
    store: tuple[SqlKeyStore, bytes],
) -> None:
    """The key store's insert of new head rows as tuples (SQLite: the driver's executemany;
    PostgreSQL: COPY, falling back to an insert-ignore): a row whose ref exists is skipped and
    not counted, on every backend; without ``ignore`` such a row is an error."""
    s, _epoch = store
    columns = ("ref", "key_id", "state", "current_version", "created_at", "mac")

    def row(ref: bytes) -> tuple[Any, ...]:
        return (ref, os.urandom(16), State.ACTIVE, 1, 3.25, os.urandom(32))

    first = [row(os.urandom(32)) for _ in range(3)]
    with s.engine.begin() as conn:
        assert s._insert_new_rows(conn, s._heads, first, ignore=True, columns=columns) == 3
    again = [row(first[1][0]), row(os.urandom(32))]
    with s.engine.begin() as conn:
        assert s._insert_new_rows(conn, s._heads, again, ignore=True, columns=columns) in (1, None)
    with s.engine.connect() as conn:
        stored = {bytes(r.ref): bytes(r.key_id) for r in conn.execute(sa.select(s._heads))}
    assert len(stored) == 4
    assert stored[first[1][0]] == first[1][1]  # the existing row is kept as it was
    # (COPY's error is the driver's own: no SQLAlchemy statement ran)
    refused = (sa.exc.IntegrityError, s.engine.dialect.loaded_dbapi.IntegrityError)
    with pytest.raises(refused), s.engine.begin() as conn:
        s._insert_new_rows(conn, s._heads, [row(first[0][0])], ignore=False, columns=columns)


def test_a_new_subjects_head_is_macd_once_and_a_head_read_back_altered_is_refused(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new subject's head is MACed once (sealed; not verified again by a second MAC when
    it comes back exactly as sealed). A head that comes back from the store with any of its
    fields or its MAC altered is verified by its MAC, fails, and the subject is treated as
    shredded (no key)."""
    from ccvault.keyring import _heads as heads_module

    kms = LocalKms.ephemeral()
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(kms, url) as vault:
        vault.warm([uuid.uuid4()])  # the installation's keys
        calls: list[bytes] = []
        real = heads_module.head_mac_message

        def counting(*args: Any) -> bytes:
            calls.append(args[1])
            return real(*args)

        monkeypatch.setattr(heads_module, "head_mac_message", counting)
        subjects = [uuid.uuid4() for _ in range(25)]
        assert vault.warm(subjects) == 25
        assert len(calls) == 25 == len(set(calls))  # one MAC per new subject

        store = vault._store  # type: ignore[attr-defined]
        create = store.create_subject_keys
        altered: dict[str, Any] = {}

        def altering(candidates: Any, now: float, seal: Any) -> Any:
            out = create(candidates, now, seal)
            (field, value) = next(iter(altered.items()))
            ref = candidates[0].ref
            head, rec = out[ref]
            if field == "mac":
                value = bytes([head.mac[0] ^ 1]) + head.mac[1:]
            out[ref] = (dataclasses.replace(head, **{field: value}), rec)
            return out

        monkeypatch.setattr(store, "create_subject_keys", altering)
        for field, value in [
            ("mac", None),
            ("state", State.SHREDDED),
            ("current_version", 2),
            ("key_id", os.urandom(16)),
        ]:
            altered.clear()
            altered[field] = value
            calls.clear()
            victim = uuid.uuid4()
            assert vault.warm([victim]) == 0, field  # treated as shredded
            assert len(calls) == 2, field  # sealed, then verified by its MAC (which fails)


def test_postgresql_tables_never_analyzed_are_analyzed_once_after_the_first_creation(
    pg_url: str,
) -> None:
    """Without statistics (autovacuum off or not yet run) PostgreSQL's planner scans the whole
    heads and keys tables for each ``ref IN (...)`` of a creation: the first creation of a
    process analyzes them when they have none, and no process does it again once they have."""
    analyzed: list[str] = []

    def capture(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.startswith("ANALYZE"):
            analyzed.append(statement)

    def stats(s: SqlKeyStore) -> set[str]:
        with s.engine.connect() as conn:
            return {
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT tablename FROM pg_stats WHERE attname = 'ref' "
                        "AND schemaname = current_schema()"
                    )
                )
            }

    s = SqlKeyStore(pg_url)
    epoch = os.urandom(16)
    s.add_epoch(epoch, 1, os.urandom(32), [WrappedKey("k", "r", b"w")], 0.0)
    sa.event.listen(s.engine, "before_cursor_execute", capture)
    try:
        assert stats(s) == set()
        s.create_subject_keys([_candidate(epoch) for _ in range(30)], 1.0, _mac)
        s.create_subject_keys([_candidate(epoch) for _ in range(30)], 2.0, _mac)
        assert len(analyzed) == 1  # once a process
        assert {"ccvault_subject_heads", "ccvault_keys"} <= stats(s)
    finally:
        s.close()
    again = SqlKeyStore(pg_url)
    sa.event.listen(again.engine, "before_cursor_execute", capture)
    try:
        again.create_subject_keys([_candidate(epoch)], 3.0, _mac)
        assert len(analyzed) == 1  # statistics there: not analyzed again
    finally:
        again.close()
