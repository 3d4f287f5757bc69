"""ORM workload: 20,000 customer rows with 4 encrypted columns, of which 2 searchable.

Three tables of the same shape, timed in the same repeats (order rotated each repeat):

* ``plain``: the baseline, four ``String`` columns, ``phone`` and ``email`` indexed;
* ``ccvault``: ``Encrypted(String(n), subject="id")`` columns, ``phone`` and ``email`` with
  ``searchable="phone"`` / ``"email"`` (an indexed blind-index companion column each), the vault
  attached to the engine with ``vault.attach``; the key store is a separate SQLite file for the
  SQLite runs (one writer per SQLite file) and prefixed tables in the same database for
  PostgreSQL;
* ``peer``: sqlalchemy-utils ``StringEncryptedType``; ``phone`` and ``email`` use its
  deterministic ``AesEngine`` (the engine its documentation says to use for lookups), ``name`` and
  ``note`` its ``AesGcmEngine``.

Each repeat inserts all rows with new customer ids through an ORM session (``add_all`` +
``commit``) into each emptied table: for ccvault this is the *first write*, which creates a key
per customer. ccvault's table is then emptied and the same rows inserted again, their keys now
existing and cached: the *insert* figure. Then every table is read back whole with a fresh
session, every attribute of every row read: the *first read* (``select_first``: for ccvault the
first read of keys created in this repeat, warm in the cache but never read), then the same
select again, another fresh session: *steady state* (``select_steady``). On PostgreSQL the
plaintext and ccvault tables are then read a third time through an engine whose psycopg cursors
ask for the binary result format (``select_binary``, steady state). Ratios are taken to the
plaintext table of the same repeat and the same read.

*Floors*: in each repeat, the bare ``cryptography`` calls that any per-value AES-GCM design with
these blind indexes must make for the same rows (see ``_Floor``) are timed too, twice: with the
key objects made in row order and reused in that order (*floor*), and scattered in memory in a
dict, looked up once a row (*scattered floor*). The floor ratios are (plaintext + those calls) /
plaintext; the *added-time* ratios are (ccvault - plaintext) / (floor - plaintext), per repeat.

*Retention* (reported, not gated): two more tables of the same four encrypted columns, none
searchable (``searchable=`` does not combine with ``retention=``) and a plain ``started_at``:
``unsearchable`` (suite 1) and ``retained`` (``retention="calls", retention_from="started_at"``,
suite 2: each value sealed under its customer's key of the call's month). Each repeat inserts
the same rows into both after ccvault's insert (keys existing and cached); their ratio is
``orm_insert_retention_ratio_{db}``.

After the repeats each table is grown to ``orm_lookup_population`` customers (100,000) and
looked up by phone, one row at a time (*lookup*), in as many rounds as there were repeats.

Last, in as many rounds again, the plaintext insert and ccvault's first write of new customers
with Python's cyclic GC on during both (``insert_gc``, ``first_write_gc``): every other timing
keeps the GC out of its timed part, as timeit does, but an application runs with it, and each
full collection visits every object the process keeps, the vault's cached keys among them (here
those of every customer above). Measured last so that no other figure sees these keys.

PostgreSQL is reached at ``CCVAULT_BENCH_PG`` (else ``CCVAULT_TEST_PG``, else the local test
server); if it cannot be reached its figures are null, with the error as the note.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks import _peers
from benchmarks._config import Config, Results, missing, put
from benchmarks._measure import Summary, no_gc

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KINDS = ("plain", "ccvault", "peer")
COLUMNS = ("phone", "email", "name", "note")

# (figure, (operation, candidate), (operation, baseline)); "{db}" is sqlite or postgres, "{sfx}" is
# "" for SQLite and "_postgres" for PostgreSQL (issue 5 names the SQLite lookup figure alone).
# Operations: "first_write", "insert", "first_write_gc" / "insert_gc" (the same with Python's
# cyclic GC on, as in an application: every other figure keeps it out of the timed part, as
# timeit does), "select_first" (the first read of the rows the repeat
# wrote, fresh session), "select_steady" (the same select again, fresh session), "lookup"; on
# PostgreSQL also "select_binary" (a steady-state read with psycopg's binary result format).
# Kinds: "plain", "ccvault", "peer", "floor", "scattered" (the floors: plaintext + bare calls).
RATIOS = (
    ("orm_insert_ratio_{db}", ("insert", "ccvault"), ("insert", "plain")),
    ("orm_select_first_ratio_{db}", ("select_first", "ccvault"), ("select_first", "plain")),
    ("orm_select_steady_ratio_{db}", ("select_steady", "ccvault"), ("select_steady", "plain")),
    ("orm_first_write_ratio_{db}", ("first_write", "ccvault"), ("insert", "plain")),
    ("orm_first_write_ratio_gc_{db}", ("first_write_gc", "ccvault"), ("insert_gc", "plain")),
    ("orm_insert_floor_ratio_{db}", ("insert", "floor"), ("insert", "plain")),
    ("orm_insert_scattered_floor_ratio_{db}", ("insert", "scattered"), ("insert", "plain")),
    ("orm_select_floor_ratio_{db}", ("select_first", "floor"), ("select_first", "plain")),
    (
        "orm_select_scattered_floor_ratio_{db}",
        ("select_first", "scattered"),
        ("select_first", "plain"),
    ),
    ("orm_select_steady_floor_ratio_{db}", ("select_steady", "floor"), ("select_steady", "plain")),
    (
        "orm_select_steady_scattered_floor_ratio_{db}",
        ("select_steady", "scattered"),
        ("select_steady", "plain"),
    ),
    ("blind_index_lookup_ratio{sfx}", ("lookup", "ccvault"), ("lookup", "plain")),
    ("peer_sqlalchemy_utils_insert_ratio_{db}", ("insert", "peer"), ("insert", "plain")),
    (
        "peer_sqlalchemy_utils_select_ratio_{db}",
        ("select_first", "peer"),
        ("select_first", "plain"),
    ),
    (
        "peer_sqlalchemy_utils_select_steady_ratio_{db}",
        ("select_steady", "peer"),
        ("select_steady", "plain"),
    ),
    ("peer_sqlalchemy_utils_lookup_ratio_{db}", ("lookup", "peer"), ("lookup", "plain")),
    ("orm_insert_retention_ratio_{db}", ("insert", "retained"), ("insert", "unsearchable")),
)
BINARY_RATIOS = (  # PostgreSQL only, both sides read with the binary result format
    (
        "orm_select_steady_floor_ratio_postgres_binary",
        ("select_binary", "floor"),
        ("select_binary", "plain"),
    ),
    (
        "orm_select_steady_scattered_floor_ratio_postgres_binary",
        ("select_binary", "scattered"),
        ("select_binary", "plain"),
    ),
    (
        "orm_select_steady_ratio_postgres_binary",
        ("select_binary", "ccvault"),
        ("select_binary", "plain"),
    ),
    (
        "plaintext_select_binary_vs_text_ratio_postgres",
        ("select_binary", "plain"),
        ("select_steady", "plain"),
    ),
    (
        "orm_select_binary_vs_text_ratio_postgres",
        ("select_binary", "ccvault"),
        ("select_steady", "ccvault"),
    ),
)
# (figure, candidate, floor): ccvault's added time over plaintext divided by the floor's,
# (candidate - plaintext) / (floor - plaintext), per repeat; the plaintext of the same operation.
ADDED = (
    ("orm_insert_added_vs_floor_{db}", ("insert", "ccvault"), ("insert", "floor")),
    ("orm_insert_added_vs_scattered_floor_{db}", ("insert", "ccvault"), ("insert", "scattered")),
    (
        "orm_select_first_added_vs_floor_{db}",
        ("select_first", "ccvault"),
        ("select_first", "floor"),
    ),
    (
        "orm_select_first_added_vs_scattered_floor_{db}",
        ("select_first", "ccvault"),
        ("select_first", "scattered"),
    ),
    (
        "orm_select_steady_added_vs_floor_{db}",
        ("select_steady", "ccvault"),
        ("select_steady", "floor"),
    ),
    (
        "orm_select_steady_added_vs_scattered_floor_{db}",
        ("select_steady", "ccvault"),
        ("select_steady", "scattered"),
    ),
)
BINARY_ADDED = (
    (
        "orm_select_steady_added_vs_floor_postgres_binary",
        ("select_binary", "ccvault"),
        ("select_binary", "floor"),
    ),
)
ABSOLUTE = (
    ("plaintext_insert_ms_{db}", "insert", "plain"),
    ("plaintext_select_ms_{db}", "select_first", "plain"),
    ("plaintext_select_steady_ms_{db}", "select_steady", "plain"),
    ("orm_insert_ms_{db}", "insert", "ccvault"),
    ("orm_first_write_ms_{db}", "first_write", "ccvault"),
    ("orm_floor_insert_ms_{db}", "insert", "floor"),
    ("orm_scattered_floor_insert_ms_{db}", "insert", "scattered"),
    ("orm_floor_select_ms_{db}", "select_first", "floor"),
    ("orm_scattered_floor_select_ms_{db}", "select_first", "scattered"),
    ("orm_select_first_ms_{db}", "select_first", "ccvault"),
    ("orm_select_steady_ms_{db}", "select_steady", "ccvault"),
    ("peer_sqlalchemy_utils_insert_ms_{db}", "insert", "peer"),
    ("peer_sqlalchemy_utils_select_ms_{db}", "select_first", "peer"),
    ("orm_insert_unsearchable_ms_{db}", "insert", "unsearchable"),
    ("orm_insert_retention_ms_{db}", "insert", "retained"),
)
BINARY_ABSOLUTE = (
    ("plaintext_select_ms_postgres_binary", "select_binary", "plain"),
    ("orm_select_ms_postgres_binary", "select_binary", "ccvault"),
)

RETENTION_CATEGORY = "calls"


def retention_policy() -> Any:
    """The retention policy of the benchmarks' vaults: the ``retained`` table's category."""
    from ccvault.retention import Category, RetentionPolicy

    return RetentionPolicy(
        categories=(Category(name=RETENTION_CATEGORY, keep_for="P90D", granularity="month"),)
    )


def _pg_url() -> str:
    return os.environ.get("CCVAULT_BENCH_PG") or os.environ.get("CCVAULT_TEST_PG") or DEFAULT_PG


def _models(suffix: str, peer_key: str) -> tuple[dict[str, type[Any]], sa.MetaData]:
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesEngine, AesGcmEngine

    from ccvault.sqlalchemy import Encrypted

    class Base(DeclarativeBase):
        pass

    class Plain(Base):
        __tablename__ = f"bench_plain_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        phone: Mapped[str] = mapped_column(sa.String(32), index=True)
        email: Mapped[str] = mapped_column(sa.String(254), index=True)
        name: Mapped[str] = mapped_column(sa.String(100))
        note: Mapped[str] = mapped_column(sa.String(255))

    class Sealed(Base):
        __tablename__ = f"bench_ccvault_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        phone: Mapped[str] = mapped_column(
            Encrypted(sa.String(32), subject="id", searchable="phone")
        )
        email: Mapped[str] = mapped_column(
            Encrypted(sa.String(254), subject="id", searchable="email")
        )
        name: Mapped[str] = mapped_column(Encrypted(sa.String(100), subject="id"))
        note: Mapped[str] = mapped_column(Encrypted(sa.String(255), subject="id"))

    def deterministic(n: int) -> Any:
        return StringEncryptedType(sa.String(n), peer_key, AesEngine, "pkcs5")

    def sealed(n: int) -> Any:
        return StringEncryptedType(sa.String(n), peer_key, AesGcmEngine)

    class Peer(Base):
        __tablename__ = f"bench_sqlau_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        phone: Mapped[str] = mapped_column(deterministic(32), index=True)
        email: Mapped[str] = mapped_column(deterministic(254), index=True)
        name: Mapped[str] = mapped_column(sealed(100))
        note: Mapped[str] = mapped_column(sealed(255))

    def unsearchable(n: int, **kw: Any) -> Any:
        return mapped_column(Encrypted(sa.String(n), subject="id", **kw))

    class Unsearchable(Base):
        __tablename__ = f"bench_unsearchable_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        started_at: Mapped[dt.datetime] = mapped_column(sa.DateTime())
        phone: Mapped[str] = unsearchable(32)
        email: Mapped[str] = unsearchable(254)
        name: Mapped[str] = unsearchable(100)
        note: Mapped[str] = unsearchable(255)

    keep = {
        "retention": RETENTION_CATEGORY,
        "retention_from": "started_at",
        "retention_tz": "UTC",
    }

    class Retained(Base):
        __tablename__ = f"bench_retained_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        started_at: Mapped[dt.datetime] = mapped_column(sa.DateTime())
        phone: Mapped[str] = unsearchable(32, **keep)
        email: Mapped[str] = unsearchable(254, **keep)
        name: Mapped[str] = unsearchable(100, **keep)
        note: Mapped[str] = unsearchable(255, **keep)

    return {
        "plain": Plain,
        "ccvault": Sealed,
        "peer": Peer,
        "unsearchable": Unsearchable,
        "retained": Retained,
    }, Base.metadata


def forget(metadata: sa.MetaData) -> None:
    """Leave ``metadata``'s tables out of later ``attach()`` checks in this process (a vault
    without the ``calls`` retention category refuses the ``retained`` table)."""
    from ccvault.sqlalchemy._types import encrypted_tables

    for table in metadata.tables.values():
        encrypted_tables.discard(table)


def timed_rows(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``data`` with a ``started_at`` (now, naive UTC) for the unsearchable and retained
    tables."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return [{**d, "started_at": now} for d in data]


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` customers with new ids, numbered from ``start``; the same values in every repeat.
    Phone numbers and e-mails are unique (the lookups go by phone)."""
    return [
        {
            "id": uuid.uuid4(),
            "phone": f"+44 20 {7000 + i // 10_000:04d} {i % 10_000:04d}",
            "email": f"customer{i}@example.com",
            "name": f"Customer Number {i}",
            "note": f"called about order {i:06d}; prefers e-mail; account in good standing",
        }
        for i in range(start, start + n)
    ]


def _timed(fn: Callable[[], object]) -> float:
    with no_gc():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _empty(engine: sa.Engine, model: type[Any]) -> None:
    with Session(engine) as session:
        session.execute(sa.delete(model))
        session.commit()


def _add(engine: sa.Engine, model: type[Any], data: list[dict[str, Any]]) -> None:
    with Session(engine) as session:
        session.add_all([model(**row) for row in data])
        session.commit()


def _insert(engine: sa.Engine, model: type[Any], data: list[dict[str, Any]]) -> float:
    _empty(engine, model)
    return _timed(lambda: _add(engine, model, data))


def _insert_gc(engine: sa.Engine, model: type[Any], data: list[dict[str, Any]]) -> float:
    """:func:`_insert` with the cyclic GC on during the insert (collected before it), as it is
    in an application: the collections the insert's new objects set off are in its time, and
    each full one visits every object the process keeps (the vault's cached keys among them)."""
    _empty(engine, model)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        t0 = time.perf_counter()
        _add(engine, model, data)
        return time.perf_counter() - t0
    finally:
        if not was_enabled:
            gc.disable()


def _select(engine: sa.Engine, model: type[Any], data: list[dict[str, Any]]) -> float:
    """Select every row with a fresh session and read every attribute (what the issue's figure
    times); then, untimed, check every value of every row against ``data``."""
    found: list[Any] = []

    def run() -> None:
        with Session(engine) as session:
            found.extend(session.scalars(sa.select(model)).all())
            for r in found:
                r.id, r.phone, r.email, r.name, r.note  # noqa: B018

    elapsed = _timed(run)
    expected = {d["id"]: tuple(d[c] for c in COLUMNS) for d in data}
    got = {r.id: (r.phone, r.email, r.name, r.note) for r in found}
    if len(found) != len(data) or got != expected:
        raise RuntimeError(f"{model.__tablename__}: select did not return the rows")
    return elapsed


def _lookup(engine: sa.Engine, model: type[Any], phones: list[str]) -> float:
    """Look rows up by phone, one at a time; seconds per lookup."""
    got: list[Any] = []

    def run() -> None:
        with Session(engine) as session:
            for phone in phones:
                got.append(session.scalars(sa.select(model).where(model.phone == phone)).one())

    elapsed = _timed(run)
    if [r.phone for r in got] != phones:
        raise RuntimeError(f"{model.__tablename__}: lookup returned other rows")
    return elapsed / len(phones)


class _Floor:
    """The least any per-value AES-GCM design with blind indexes adds to this workload in
    Python: the bare ``cryptography`` calls, inputs prepared, no framing, no key lookups, no
    codec. One AES-256-GCM key per customer (as ccvault has), 4 values a row, associated data
    of ccvault's length, and one HMAC-SHA256 (key state precomputed) per searchable value,
    the cheapest way Python has: ``cryptography``'s ``HMAC.copy`` + ``update`` + ``finalize``
    (about half the time of the ``hmac`` module's ``copy``, whose object is a Python wrapper,
    and a third of ``hmac.digest``, which hashes the key's pads again each call).

    ``scattered``: the same calls with the keys held as a cache holds them. One ``AESGCM``
    object per customer, created in a shuffled order between other allocations of random sizes
    (so that the keys of consecutive rows lie apart in memory, as the vault's cache entries do,
    made among the ORM's objects), held in a dict; each row looks its key up once, by the
    customer id on insert and by the first value's 22-byte header on select, and the select
    slices nonce and ciphertext out of each stored value (header + nonce + ciphertext and tag).
    No subject check, codec, decode or row building."""

    HEADER = 22

    def __init__(self, data: list[dict[str, Any]], rng: random.Random) -> None:
        from cryptography.hazmat.primitives import hashes, hmac
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        ad = os.urandom(110)
        mac = hmac.HMAC(os.urandom(32), hashes.SHA256())
        self.seal: list[tuple[Any, bytes, bytes, bytes]] = []
        self.open: list[tuple[Any, bytes, bytes, bytes]] = []
        self.index: list[tuple[Any, bytes]] = []
        secrets = [os.urandom(32) for _ in data]
        headers = [os.urandom(self.HEADER) for _ in data]
        for row, secret in zip(data, secrets, strict=True):
            aead = AESGCM(secret)
            for column in COLUMNS:
                nonce, value = os.urandom(12), b"\x01" + row[column].encode()
                self.seal.append((aead.encrypt, nonce, value, ad))
                self.open.append((aead.decrypt, nonce, aead.encrypt(nonce, value, ad), ad))
            for column in ("phone", "email"):
                self.index.append((mac.copy, row[column].encode()))
        # The scattered keys: made in a shuffled order, each between allocations kept alive.
        self._ballast: list[bytes] = []
        by_id: dict[Any, Any] = {}
        by_header: dict[bytes, Any] = {}
        for i in rng.sample(range(len(data)), len(data)):
            self._ballast.append(os.urandom(rng.randrange(64, 2048)))
            aead = AESGCM(secrets[i])
            by_id[data[i]["id"]] = by_header[headers[i]] = aead
        self.ad = ad
        self.by_id = by_id
        self.by_header = by_header
        self.scattered_seal: list[tuple[Any, list[tuple[bytes, bytes]]]] = []
        self.scattered_open: list[list[bytes]] = []
        it = iter(self.seal)
        for row, header in zip(data, headers, strict=True):
            values = [(nonce, value) for _, nonce, value, _ in (next(it) for _ in COLUMNS)]
            self.scattered_seal.append((row["id"], values))
            aead = by_header[header]
            self.scattered_open.append(
                [header + nonce + aead.encrypt(nonce, value, ad) for nonce, value in values]
            )

    def insert_calls(self) -> None:
        """The floor's calls of an insert, untimed (``benchmarks.instructions`` counts them)."""
        for encrypt, nonce, value, ad in self.seal:
            encrypt(nonce, value, ad)
        for copy, value in self.index:
            h = copy()
            h.update(value)
            h.finalize()

    def select_calls(self) -> None:
        """The floor's calls of a select, untimed."""
        for decrypt, nonce, blob, ad in self.open:
            decrypt(nonce, blob, ad)

    def insert(self) -> float:
        return _timed(self.insert_calls)

    def select(self) -> float:
        return _timed(self.select_calls)

    def scattered_insert(self) -> float:
        keys, ad = self.by_id, self.ad

        def run() -> None:
            for subject, values in self.scattered_seal:
                encrypt = keys[subject].encrypt
                for nonce, value in values:
                    encrypt(nonce, value, ad)
            for copy, value in self.index:
                h = copy()
                h.update(value)
                h.finalize()

        return _timed(run)

    def scattered_select(self) -> float:
        keys, ad, h = self.by_header, self.ad, self.HEADER
        n = h + 12

        def run() -> None:
            for blobs in self.scattered_open:
                decrypt = keys[blobs[0][:h]].decrypt
                for blob in blobs:
                    decrypt(blob[h:n], blob[n:], ad)

        return _timed(run)


def _keystore(label: str, cfg: Config, app_url: str, prefix: str) -> tuple[Any, Callable[[], None]]:
    """A key store beside the application database, and how to remove it afterwards."""
    from ccvault.keystore import SqlKeyStore

    if label == "sqlite":  # one writer per SQLite file: keys in their own file
        return f"sqlite:///{cfg.workdir / 'orm-keys.db'}", lambda: None
    engine = sa.create_engine(app_url)

    def drop() -> None:
        md = sa.MetaData()
        md.reflect(engine, only=lambda name, _md: name.startswith(prefix))
        md.drop_all(engine)
        engine.dispose()

    return SqlKeyStore(engine, prefix=prefix), drop


def _backend(cfg: Config, out: Results, label: str, url: str) -> None:
    from ccvault import Vault
    from ccvault.kms import LocalKms

    suffix = uuid.uuid4().hex[:8]
    models, metadata = _models(suffix, os.urandom(32).hex())
    engine = sa.create_engine(url)
    keystore, drop_keystore = _keystore(label, cfg, url, f"bench_ccv_{suffix}_")
    # a cache as large as the keys the run creates: warm means warm, nothing evicted
    cache = cfg.orm_rows * (2 * cfg.orm_repeats + 1) + cfg.orm_lookup_population
    vault = Vault(
        LocalKms.ephemeral(),
        keystore,
        cache_ttl=86_400,
        cache_max_entries=cache,
        retention_policy=retention_policy(),
    )
    vault.attach(engine)
    metadata.create_all(engine)
    times: dict[tuple[str, str], list[float]] = {}

    def record(op: str, kind: str, seconds: float) -> None:
        times.setdefault((op, kind), []).append(seconds)

    rng = random.Random(5)
    binary = _binary_engine(url) if label == "postgres" else None
    if binary is not None:
        vault.attach(binary)
    elif label == "postgres":
        for name, *_ in BINARY_RATIOS + BINARY_ADDED:
            missing(out, name, "the binary result format is measured with psycopg (3) only")
    try:
        for r in range(cfg.orm_repeats):
            data = rows(cfg.orm_rows)
            floor = _Floor(data, rng)
            order = KINDS[r % 3 :] + KINDS[: r % 3]
            for kind in order:
                op = "first_write" if kind == "ccvault" else "insert"
                record(op, kind, _insert(engine, models[kind], data))
            record("insert", "ccvault", _insert(engine, models["ccvault"], data))
            timed = timed_rows(data)
            for kind in ("unsearchable", "retained")[:: 1 if r % 2 else -1]:
                record("insert", kind, _insert(engine, models[kind], timed))
            plain_insert = times[("insert", "plain")][-1]
            record("insert", "floor", plain_insert + floor.insert())
            record("insert", "scattered", plain_insert + floor.scattered_insert())
            # The first read of the rows this repeat wrote (their keys new in this repeat), then
            # the same select again: steady state. A fresh session each time.
            for op in ("select_first", "select_steady"):
                for kind in order:
                    record(op, kind, _select(engine, models[kind], data))
                plain = times[(op, "plain")][-1]
                record(op, "floor", plain + floor.select())
                record(op, "scattered", plain + floor.scattered_select())
            if binary is not None:  # both sides, steady state, the binary result format
                for kind in ("plain", "ccvault")[:: 1 if r % 2 else -1]:
                    record("select_binary", kind, _select(binary, models[kind], data))
                plain = times[("select_binary", "plain")][-1]
                record("select_binary", "floor", plain + floor.select())
                record("select_binary", "scattered", plain + floor.scattered_select())
        # Lookups among a larger population: the last repeat's rows plus new customers.
        cfg.log(f"orm: {label}, growing each table to {cfg.orm_lookup_population} customers")
        more = rows(cfg.orm_lookup_population - cfg.orm_rows, start=cfg.orm_rows)
        for kind in KINDS:
            with engine.begin() as conn:  # Core executemany: through ccvault's hook all the same
                conn.execute(sa.insert(models[kind]), more)
        # every customer's key warm, as for the other figures (the cache holds them all)
        vault.warm(d["id"] for d in data + more)
        phones = [d["phone"] for d in data + more]
        for r in range(cfg.orm_repeats):
            sample = rng.sample(phones, cfg.orm_lookups)
            for kind in KINDS[r % 3 :] + KINDS[: r % 3]:
                record("lookup", kind, _lookup(engine, models[kind], sample))
        # Last, so that no figure above sees its keys: the first write of new customers again
        # (other ids, the same values), with the cyclic GC on during both inserts, the vault
        # holding the keys of every customer above.
        for r in range(cfg.orm_repeats):
            fresh = [{**row, "id": uuid.uuid4()} for row in rows(cfg.orm_rows)]
            for kind in ("plain", "ccvault")[:: 1 if r % 2 else -1]:
                op = "first_write_gc" if kind == "ccvault" else "insert_gc"
                record(op, kind, _insert_gc(engine, models[kind], fresh))
    finally:
        metadata.drop_all(engine)
        vault.close()
        engine.dispose()
        if binary is not None:
            binary.dispose()
        drop_keystore()
        forget(metadata)

    ratios, added, absolute = RATIOS, ADDED, ABSOLUTE
    if binary is not None:
        ratios, added, absolute = (
            RATIOS + BINARY_RATIOS,
            ADDED + BINARY_ADDED,
            ABSOLUTE + BINARY_ABSOLUTE,
        )
    for name, candidate, baseline in ratios:
        ratio = Summary.of([c / b for c, b in zip(times[candidate], times[baseline], strict=True)])
        put(out, _name(name, label), ratio)
    for name, candidate, floor_of in added:
        plain = times[(candidate[0], "plain")]
        put(
            out,
            _name(name, label),
            Summary.of(added_ratios(times[candidate], times[floor_of], plain)),
        )
    for name, op, kind in absolute:
        put(out, name.format(db=label), Summary.of(times[(op, kind)]).scaled(1e3))
    put(out, f"orm_lookup_us_{label}", Summary.of(times[("lookup", "ccvault")]).scaled(1e6))
    put(out, f"plaintext_lookup_us_{label}", Summary.of(times[("lookup", "plain")]).scaled(1e6))
    version = ".".join(str(v) for v in engine.dialect.server_version_info or ())
    driver = engine.dialect.driver
    out[f"orm_{label}_driver"] = f"{engine.dialect.name}+{driver} ({_driver_version(driver)})"
    out[f"orm_{label}_server_version"] = version


def added_ratios(candidate: list[float], floor: list[float], plain: list[float]) -> list[float]:
    """Per repeat, the candidate's time over plaintext divided by the floor's:
    ``(candidate - plain) / (floor - plain)``."""
    return [(c - p) / (f - p) for c, f, p in zip(candidate, floor, plain, strict=True)]


def _binary_engine(url: str) -> sa.Engine | None:
    """An engine on ``url`` whose psycopg (3) cursors ask for results in the binary format
    (``cursor.format = BINARY``, as ``connection.cursor(binary=True)`` sets it): bytea arrives
    as raw bytes instead of hex text. None for another driver."""
    if sa.make_url(url).get_driver_name() != "psycopg":
        return None
    import psycopg
    from psycopg import pq

    class BinaryCursor(psycopg.Cursor[Any]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.format = pq.Format.BINARY

    return sa.create_engine(url, connect_args={"cursor_factory": BinaryCursor})


def _driver_version(driver: str) -> str:
    if driver == "pysqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    return f"{driver} {_peers.version(driver) or '?'}"


def _name(template: str, label: str) -> str:
    return template.format(db=label, sfx="" if label == "sqlite" else f"_{label}")


def _figures(label: str) -> list[str]:
    names = [_name(name, label) for name, *_ in RATIOS + ADDED]
    if label == "postgres":
        names += [name for name, *_ in BINARY_RATIOS + BINARY_ADDED]
    return names


def run(cfg: Config) -> Results:
    out: Results = {}
    try:
        import ccvault.sqlalchemy  # noqa: F401
    except ImportError as exc:
        for label in ("sqlite", "postgres"):
            for name in _figures(label):
                missing(out, name, f"ccvault.sqlalchemy cannot be imported ({exc})")
        return out
    if _peers.version("sqlalchemy-utils") is None:
        for label in ("sqlite", "postgres"):
            for name in _figures(label):
                missing(out, name, "sqlalchemy-utils is not installed (the ORM peer)")
        return out
    out["orm_rows"] = cfg.orm_rows
    out["orm_repeats"] = cfg.orm_repeats
    out["orm_lookups_per_repeat"] = cfg.orm_lookups
    out["orm_lookup_population"] = cfg.orm_lookup_population
    out["orm_columns"] = (
        "4 encrypted: phone, email searchable (ccvault blind index; sqlalchemy-utils AesEngine), "
        "name, note (ccvault Encrypted; sqlalchemy-utils AesGcmEngine)"
    )
    cfg.log(f"orm: sqlite, {cfg.orm_rows} rows, {cfg.orm_repeats} repeats")
    _backend(cfg, out, "sqlite", f"sqlite:///{cfg.workdir / 'orm.db'}")

    url = _pg_url()
    reason = pg_unreachable(url)
    if reason is not None:
        for name in _figures("postgres"):
            missing(out, name, reason)
    else:
        cfg.log(f"orm: postgres, {cfg.orm_rows} rows, {cfg.orm_repeats} repeats")
        _backend(cfg, out, "postgres", url)
    return out


def pg_unreachable(url: str) -> str | None:
    """Why the PostgreSQL server at ``url`` cannot be measured, or None when it answers."""
    probe = sa.create_engine(url)
    try:
        with probe.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect: "not measured here"
        return f"PostgreSQL not reachable at {probe.url!r}: {type(exc).__name__}"
    finally:
        probe.dispose()
    return None
