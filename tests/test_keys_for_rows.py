"""The write hook's key lookup, ``KeyRing.keys_for_rows``, finds a UUID or str subject's write
key by the subject itself once a statement (or ``encrypt``) has found it through the caches:
one dict lookup a row instead of the ref and write-key caches. What it returns must be what
the caches return, and nothing a shred, an expiry or the cache bound took away."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import SubjectShreddedError, Vault
from ccvault.keystore import SqlKeyStore
from ccvault.keystore._cache import TtlCache
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import Encrypted
from keyring_doubles import Clock, CountingStore, shred_during_fill

CTX = "customers.phone"


def _vault(tmp_path: Path, **options: Any) -> Vault:
    return Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'k.db'}", **options)


def test_rows_get_the_keys_the_caches_give_and_are_remembered(tmp_path: Path) -> None:
    with _vault(tmp_path) as vault:
        ring = vault._ring
        subjects = [uuid.uuid4() for _ in range(5)]
        first = ring.keys_for_rows([subjects[0], None, *subjects[1:], subjects[0]])
        assert first[1] is None
        assert first[0] is first[-1]
        assert len({id(k) for k in first if k is not None}) == 5
        assert all(s.int in ring._by_subject for s in subjects)
        again = ring.keys_for_rows([subjects[0], None, *subjects[1:], subjects[0]])
        assert again == first
        for s in subjects:  # the single-value API finds the same key by the same subject
            assert (
                ring.key_for_write(s, CTX)
                is first[0 if s == subjects[0] else 2 + subjects[1:].index(s)]
            )


def test_every_spelling_of_a_subject_gets_its_one_key(tmp_path: Path) -> None:
    with _vault(tmp_path) as vault:
        s = uuid.uuid4()
        spellings = [s, str(s), s.hex, str(s).upper(), s]
        for _ in range(2):  # through the caches, then by subject
            keys = vault._ring.keys_for_rows(spellings)
            assert len({id(k) for k in keys}) == 1
            assert keys[0] is not None
            assert keys[0].checked is s  # the last row's subject


def test_wrong_subject_types_still_raise(tmp_path: Path) -> None:
    with _vault(tmp_path, subject_type="int") as vault:
        ring = vault._ring
        ring.keys_for_rows([1, 2])
        ring.keys_for_rows([1, 2])
        for wrong in (True, 1.0):
            with pytest.raises(TypeError):
                ring.keys_for_rows([1, wrong])
        for _ in range(2):  # the text a database may return for 1: 1's key, as before
            one, text = ring.keys_for_rows([1, "1"])
            assert one is text


def test_a_shred_in_this_process_stops_rows_remembered_by_subject(tmp_path: Path) -> None:
    with _vault(tmp_path) as vault:
        gone, kept = uuid.uuid4(), uuid.uuid4()
        vault._ring.keys_for_rows([gone, kept])
        vault._ring.keys_for_rows([gone, kept])
        vault.shred(gone)
        keys = vault._ring.keys_for_rows([gone, str(gone), kept])
        assert keys[:2] == [None, None]
        assert keys[2] is not None
        with pytest.raises(SubjectShreddedError):
            vault.encrypt(gone, b"x", context=CTX)


def test_a_shred_while_rows_keys_are_being_found_is_not_undone(tmp_path: Path) -> None:
    """A shred landing after ``keys_for_rows`` found a key through the caches and before it
    remembers it by subject: the fill is dropped, the next statement gets None."""
    with _vault(tmp_path) as vault:
        s, other = uuid.uuid4(), uuid.uuid4()
        ring = vault._ring
        armed = shred_during_fill(ring, lambda: vault.shred(s))
        assert all(ring.keys_for_rows([s, other]))  # found before the shred
        assert not armed
        assert ring._by_subject == {}
        keys = ring.keys_for_rows([s, other])
        assert keys[0] is None
        assert keys[1] is not None


def test_rows_remembered_by_subject_stay_within_the_cache_bound(tmp_path: Path) -> None:
    with _vault(tmp_path, cache_max_entries=3) as vault:
        subjects = [uuid.uuid4() for _ in range(10)]
        for _ in range(2):
            keys = vault._ring.keys_for_rows(subjects)
            assert len(vault._ring._by_subject) <= 3
            assert len({id(k) for k in keys}) == 10
        refs = vault._ring.subject_refs(subjects)
        for s, ref, key in zip(subjects, refs, keys, strict=True):
            assert key is not None, s
            assert key.ref == ref, s


def test_rows_remembered_by_subject_expire_with_cache_ttl(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    store = CountingStore(SqlKeyStore(f"sqlite:///{tmp_path / 'k.db'}"))
    with Vault(
        LocalKms.ephemeral(),
        store,  # type: ignore[arg-type]
        clock=clock,
        cache_ttl=10,
        propagation_interval=3_600,
        listen_url="off",
    ) as vault:
        customer = uuid.uuid4()
        vault._ring.keys_for_rows([customer])
        reads = store.reads
        clock.t += 9.9
        vault._ring.keys_for_rows([customer])
        assert store.reads == reads
        clock.t += 0.2
        vault._ring.keys_for_rows([customer])
        assert store.reads == reads + 1
    store._inner.close()


def test_inserts_through_the_hook_read_back_after_a_shred_between_statements(
    tmp_path: Path,
) -> None:
    """The same through the column types: the second statement finds its keys by subject, a
    shred in between stops the shredded customer's row and no other."""
    md = sa.MetaData()
    table = sa.Table(
        "people",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("phone", Encrypted(sa.String(32), subject="id")),
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    md.create_all(engine)
    with _vault(tmp_path) as vault:
        vault.attach(engine)
        people = [uuid.uuid4() for _ in range(3)]
        with engine.begin() as conn:
            conn.execute(
                table.insert(), [{"id": p, "phone": f"+1 555 {i}"} for i, p in enumerate(people)]
            )
        with engine.begin() as conn:
            conn.execute(table.delete())
        vault.shred(people[0])
        with pytest.raises(SubjectShreddedError), engine.begin() as conn:
            conn.execute(table.insert(), [{"id": p, "phone": "+1 555 9"} for p in people])
        with engine.begin() as conn:
            conn.execute(
                table.insert(), [{"id": p, "phone": f"+1 555 {p.int % 7}"} for p in people[1:]]
            )
        with engine.connect() as conn:
            got = {r.id: r.phone for r in conn.execute(sa.select(table))}
        assert got == {p: f"+1 555 {p.int % 7}" for p in people[1:]}
        vault.detach(engine)


def test_expiries_give_each_entrys_expiry_without_refreshing_it() -> None:
    clock = Clock(1_000.0)
    cache: TtlCache[str, int] = TtlCache(10, 5.0, clock)
    cache.put("a", 1)
    clock.t += 2
    cache.put("b", 2)
    assert cache.expiries(["a", "b", "c"]) == [(1_005.0, 1), (1_007.0, 2), None]
    clock.t += 3  # "a" is 5 s old: expired
    assert cache.expiries(["a", "b"]) == [None, (1_007.0, 2)]
    assert len(cache) == 2  # nothing dropped ...
    assert cache.get("a") is None  # ... until a get
