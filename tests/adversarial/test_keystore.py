"""Tampered key stores: a tampered key is never used, a shredded subject never comes back, and
every failure is a ccvault error.

One installation (SQLite key store, local KMS) holds every kind of row: two epochs (one retired
by a rotation), their KMS wraps, subject keys, a vault-wide key, the long-lived keys (subject
refs, receipt signing, blind index), subject heads (live and shredded) and the installation
record; a second installation shares the KMS. Each tampering changes a copy of that store the
way an insider or a bad disk would — a bit flipped in a field, a field swapped with another
row's, a row's fields (or the whole row) replaced by the other installation's, a field set to
NULL — and then a fresh ``Vault`` uses it: it opens, decrypts every value it held (live
customers, vault-wide, the shredded customer), encrypts for a live, a new and the shredded
customer and vault-wide, shreds a customer, rotates the epoch and reads again.

**Accepted** (there must be none): a value decrypted with a key whose row or epoch was tampered
(its wrapped bytes, commitment, or anything bound in its associated data), any decryption or
encryption for the shredded customer, an encryption whose value does not open as its subject's,
and an encryption for a customer after this vault shredded it. **Unexpected**: any exception
that is not a ``CcvaultError``. Fields not bound to key material (a key's label and state, an
epoch's sequence number and state, the heads) may change what works, but never into one of those.

The tamperings are grouped by the kind of row they change: the shredded customer's rows (the
authenticated heads of issue 11, item 11) and the columns a vault finds its long-lived keys by
(found by this suite: a vault with subjects never makes a new subject-ref key) included.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adversarial.harness import HEADER, SCALES, Figures, Scale, key_ref
from ccvault import NO_SUBJECT, CcvaultError, Vault
from ccvault.kms import LocalKms

CTX = "customers.phone"
VW_CTX = "campaign.script"

# Per table: its primary key, and its fields with whether they bind key material (a change
# makes the row's keys unusable) or not (policy fields: they change what works, never how).
TABLES: dict[str, tuple[tuple[str, ...], dict[str, bool]]] = {
    "ccvault_keys": (
        ("key_id", "version"),
        {
            "key_id": True,
            "version": True,
            "kind": True,
            "label": False,
            "ref": True,
            "epoch_id": True,
            "wrapped": True,
            "commitment": True,
            "state": False,
        },
    ),
    "ccvault_epochs": (
        ("epoch_id",),
        {"epoch_id": True, "commitment": True, "seq": False, "state": False},
    ),
    "ccvault_epoch_wraps": (
        ("epoch_id", "kms_id"),
        {"epoch_id": True, "kms_id": True, "root_id": True, "wrapped": True},
    ),
    "ccvault_subject_heads": (
        ("ref",),
        {"ref": False, "key_id": False, "state": False, "current_version": False, "receipt": False},
    ),
    "ccvault_meta": (("name",), {"value": True}),
}


@dataclass(frozen=True)
class Row:
    """One row of the key store: its kind (for the figures), table and primary key values."""

    kind: str
    table: str
    key: tuple[Any, ...]

    def where(self) -> tuple[str, tuple[Any, ...]]:
        names = TABLES[self.table][0]
        return " AND ".join(f"{n} = ?" for n in names), self.key


@dataclass
class Installation:
    folder: Path
    kms_path: Path
    store: Path  # installation A, the one tampered with
    other: Path  # installation B: same KMS, same customers
    before_shred: Path  # A before s2 was shredded
    s1: uuid.UUID
    s2: uuid.UUID  # shredded
    s3: uuid.UUID
    values: dict[str, tuple[object, bytes, bytes]]  # name -> (subject, plaintext, ciphertext)
    receipt_key: bytes
    rows: dict[str, Row] = field(default_factory=dict)  # A's rows by name
    other_rows: dict[str, Row] = field(default_factory=dict)  # B's rows, same names
    keys_under: dict[bytes, set[tuple[bytes, int]]] = field(default_factory=dict)  # by epoch


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def _rows(
    path: Path, ref: Callable[[uuid.UUID], bytes], subjects: dict[str, uuid.UUID]
) -> dict[str, Row]:
    """Name the rows of an installation: ``epoch active``, ``key s1``, ``head s2``..."""
    out: dict[str, Row] = {}
    by_ref = {ref(s): name for name, s in subjects.items()}
    with sqlite3.connect(path) as db:
        for epoch_id, state in db.execute("SELECT epoch_id, state FROM ccvault_epochs"):
            which = "active" if state == "active" else "retired"
            out[f"epoch {which}"] = Row("epoch", "ccvault_epochs", (epoch_id,))
            for (kms_id,) in db.execute(
                "SELECT kms_id FROM ccvault_epoch_wraps WHERE epoch_id = ?", (epoch_id,)
            ):
                out[f"epoch wrap {which}"] = Row(
                    "epoch wrap", "ccvault_epoch_wraps", (epoch_id, kms_id)
                )
        for key_id, version, kind, r in db.execute(
            "SELECT key_id, version, kind, ref FROM ccvault_keys"
        ):
            if kind == "subject":
                name = f"key {by_ref[r]}"
                row_kind = "shredded subject" if name == "key s2" else "subject key"
            elif kind == "vaultwide":
                name, row_kind = "key vault-wide", "vault-wide key"
            else:
                name, row_kind = f"key {kind}", "long-lived key"
            out[name] = Row(row_kind, "ccvault_keys", (key_id, version))
        for (r,) in db.execute("SELECT ref FROM ccvault_subject_heads"):
            name = f"head {by_ref[r]}"
            row_kind = "shredded subject" if name == "head s2" else "head"
            out[name] = Row(row_kind, "ccvault_subject_heads", (r,))
        out["installation id"] = Row("installation", "ccvault_meta", ("installation_id",))
        out["subject type"] = Row("installation", "ccvault_meta", ("subject_type",))
    db.close()
    return out


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    folder = tmp_path_factory.mktemp("keystore")
    kms_path = folder / "master.key"
    kms = LocalKms.from_file(kms_path, create=True)
    s1, s2, s3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    subjects = {"s1": s1, "s2": s2, "s3": s3}
    store, other, before = folder / "a.db", folder / "b.db", folder / "a-before-shred.db"
    values: dict[str, tuple[object, bytes, bytes]] = {}
    with Vault(kms, f"sqlite:///{other}") as b:
        for s in subjects.values():
            b.encrypt(s, b"B", context=CTX)
        b.encrypt(NO_SUBJECT, b"B", context=VW_CTX)
        b.blind_index("adv.bidx", _exact(), "x", 8)
        b.rotate_epoch()
        b.shred(s2)
        other_rows = _rows(other, b.subject_ref, subjects)
    with Vault(kms, f"sqlite:///{store}") as a:
        for name, s in subjects.items():
            plaintext = f"{name}'s phone".encode()
            values[name] = (s, plaintext, a.encrypt(s, plaintext, context=CTX))
        values["vault-wide"] = (
            NO_SUBJECT,
            b"script",
            a.encrypt(NO_SUBJECT, b"script", context=VW_CTX),
        )
        a.blind_index("adv.bidx", _exact(), "x", 8)
        a.rotate_epoch()
        _copy_sqlite(store, before)
        a.shred(s2)
        rows = _rows(store, a.subject_ref, subjects)
        receipt_key = a.receipt_public_key
    inst = Installation(
        folder, kms_path, store, other, before, s1, s2, s3, values, receipt_key, rows, other_rows
    )
    with sqlite3.connect(store) as db:
        for key_id, version, epoch_id in db.execute(
            "SELECT key_id, version, epoch_id FROM ccvault_keys WHERE state = 'live'"
        ):
            inst.keys_under.setdefault(epoch_id, set()).add((key_id, version))
    db.close()
    return inst


def _exact() -> Any:
    from ccvault.crypto._blind import normalizer

    return normalizer("exact")


# -- tamperings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tampering:
    kind: str  # row kind, for the figures
    how: str  # "bit flip", "swap", "another installation", "NULL", "backup"
    case: str
    sql: tuple[tuple[str, tuple[Any, ...]], ...]
    targets: frozenset[tuple[bytes, int]]  # keys whose material it tampered with


def _read(db: sqlite3.Connection, row: Row, column: str) -> Any:
    where, args = row.where()
    found = db.execute(f"SELECT {column} FROM {row.table} WHERE {where}", args).fetchone()
    assert found is not None, row
    return found[0]


def _set(row: Row, column: str, value: Any) -> tuple[str, tuple[Any, ...]]:
    where, args = row.where()
    return f"UPDATE {row.table} SET {column} = ? WHERE {where}", (value, *args)


def _flips(value: Any, stride: int, rng: random.Random) -> Iterator[tuple[int, Any]]:
    """(bit, value with that bit flipped) for every ``stride``-th bit, from a random offset."""
    if isinstance(value, bytes):
        n = len(value) * 8
        for bit in sorted({0, n - 1, *range(rng.randrange(stride), n, stride)}):
            i, b = divmod(bit, 8)
            yield bit, value[:i] + bytes([value[i] ^ (1 << b)]) + value[i + 1 :]
    elif isinstance(value, str):
        n = len(value) * 8
        for bit in sorted({0, n - 1, *range(rng.randrange(stride), n, stride)}):
            i, b = divmod(bit, 8)
            yield bit, value[:i] + chr(ord(value[i]) ^ (1 << b)) + value[i + 1 :]
    elif isinstance(value, int):
        for bit in sorted({0, *range(rng.randrange(stride), 32, stride)}):
            yield bit, value ^ (1 << bit)


def tamperings(inst: Installation, scale: Scale) -> Iterator[Tampering]:
    rng = random.Random(4)
    db = sqlite3.connect(inst.store)
    other = sqlite3.connect(inst.other)
    try:
        for name, row in inst.rows.items():
            names, fields = TABLES[row.table]
            whole: list[tuple[str, tuple[Any, ...]]] = []
            whole_targets: frozenset[tuple[bytes, int]] = frozenset()
            for column in fields:
                kind = _kind(row, column)
                targets = _targets(inst, row, _binds(row, column))
                value = _read(db, row, column)
                stride = max(scale.bit_stride, 8) if column == "receipt" else scale.bit_stride
                changes = [(f"bit {bit}", "bit flip", v) for bit, v in _flips(value, stride, rng)]
                if value is not None:
                    changes.append(("NULL", "NULL", None))
                twin = inst.other_rows.get(name)
                theirs = None if twin is None else _read(other, twin, column)
                if twin is not None and theirs != value:
                    changes.append(("from the other installation", "another installation", theirs))
                for what, how, changed in changes:
                    update = (_set(row, column, changed),)
                    yield Tampering(kind, how, f"{name}.{column} {what}", update, targets)
                for peer_name, peer in inst.rows.items():
                    if peer.table != row.table or peer_name <= name:
                        continue
                    peers = _read(db, peer, column)
                    if peers == value:
                        continue
                    yield Tampering(
                        kind,
                        "swap",
                        f"{name}.{column} swapped with {peer_name}'s",
                        _swap(row, peer, column, value, peers),
                        targets | _targets(inst, peer, _binds(peer, column)),
                    )
                if twin is not None and column not in names:
                    whole.append((column, theirs))
                    whole_targets |= targets
            twin = inst.other_rows.get(name)
            if twin is not None and whole:
                yield Tampering(
                    row.kind,
                    "another installation",
                    f"{name}: every field but its primary key from the other installation",
                    tuple(_set(row, c, v) for c, v in whole),
                    whole_targets,
                )
                copied = other.execute(
                    f"SELECT * FROM {twin.table} WHERE {twin.where()[0]}", twin.key
                )
                cols = [d[0] for d in copied.description]
                values = copied.fetchone()
                where, args = row.where()
                yield Tampering(
                    row.kind,
                    "another installation",
                    f"{name}: replaced by the other installation's row",
                    (
                        (f"DELETE FROM {row.table} WHERE {where}", args),
                        (
                            f"INSERT INTO {row.table} ({', '.join(cols)}) VALUES "
                            f"({', '.join('?' for _ in cols)})",
                            tuple(values),
                        ),
                    ),
                    whole_targets | _targets(inst, row, any(_binds(row, c) for c in fields)),
                )
        # the shredded customer's key row as a backup from before the shred holds it
        row = inst.rows["key s2"]
        with sqlite3.connect(inst.before_shred) as backup:
            columns = ("wrapped", "commitment", "epoch_id", "state", "destroyed_at")
            where, args = row.where()
            old = backup.execute(
                f"SELECT {', '.join(columns)} FROM {row.table} WHERE {where}", args
            )
            restore = tuple(_set(row, c, v) for c, v in zip(columns, old.fetchone(), strict=True))
        backup.close()
        yield Tampering(
            "shredded subject",
            "backup",
            "key s2 restored from a backup taken before the shred",
            restore,
            frozenset(),
        )
    finally:
        db.close()
        other.close()


# Columns by which a vault finds its long-lived keys (kind, label, version): a change makes the
# row disappear from that lookup, which is another kind of attack than damaging it.
_LOOKUP = ("kind", "label", "version")


def _kind(row: Row, column: str) -> str:
    if row.kind == "long-lived key" and column in _LOOKUP:
        return "long-lived key lookup"
    return row.kind


def _swap(a: Row, b: Row, column: str, va: Any, vb: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Swap ``column`` between two rows (through a placeholder when it is a primary key)."""
    names = TABLES[a.table][0]
    if column not in names:
        return (_set(a, column, vb), _set(b, column, va))
    i = names.index(column)
    placeholder = b"\xff" * len(va) if isinstance(va, bytes) else -1 if isinstance(va, int) else "~"
    a2 = Row(a.kind, a.table, (*a.key[:i], placeholder, *a.key[i + 1 :]))
    return (_set(a, column, placeholder), _set(b, column, va), _set(a2, column, vb))


def _binds(row: Row, column: str) -> bool:
    """Whether ``column`` of ``row`` binds key material (the subject type shapes refs only)."""
    return TABLES[row.table][1].get(column, False) and row.key != ("subject_type",)


def _targets(inst: Installation, row: Row, binds: bool) -> frozenset[tuple[bytes, int]]:
    """The keys a change to ``row`` makes unusable when the field binds key material."""
    if not binds:
        return frozenset()
    if row.table == "ccvault_keys":
        return frozenset({(row.key[0], row.key[1])})
    if row.table in ("ccvault_epochs", "ccvault_epoch_wraps"):
        return frozenset(inst.keys_under.get(row.key[0], set()))
    return frozenset(k for keys in inst.keys_under.values() for k in keys)  # the installation


# -- using a tampered store -----------------------------------------------------------------


@dataclass
class Use:
    """The outcome of every operation on one tampered store."""

    case: str
    targets: frozenset[tuple[bytes, int]]
    accepted: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ops: int = 0
    refused: int = 0

    def run(self, what: str, op: Callable[[], Any]) -> tuple[bool, Any]:
        self.ops += 1
        try:
            return True, op()
        except CcvaultError:
            self.refused += 1
            return False, None
        except Exception as exc:
            self.unexpected.append(f"{self.case}: {what}: {type(exc).__name__}: {exc}")
            return False, None

    def accept(self, what: str) -> None:
        self.accepted.append(f"{self.case}: {what}")


def use(inst: Installation, url: str, kms: LocalKms, pristine: Vault, t: Tampering) -> Use:
    u = Use(t.case, t.targets)
    opened, vault = u.run("open", lambda: Vault(kms, url))
    if not opened:
        return u
    try:
        _exercise(inst, vault, pristine, u, shredding=True)
        u.run("rotate", vault.rotate_epoch)
    finally:
        vault.close()
    opened, again = u.run("open after rotation", lambda: Vault(kms, url))
    if opened:
        try:
            _exercise(inst, again, pristine, u, shredding=False)
        finally:
            again.close()
    return u


def _opens(vault: Vault, blob: bytes, context: str, subject: object) -> bool:
    try:
        vault.decrypt(blob, context=context, subject=subject)
    except CcvaultError:
        return False
    return True


def _exercise(
    inst: Installation, vault: Vault, pristine: Vault, u: Use, *, shredding: bool
) -> None:
    ctx = {"vault-wide": VW_CTX}
    for name, (subject, plaintext, blob) in inst.values.items():
        context = ctx.get(name, CTX)
        read = functools.partial(vault.decrypt, blob, context=context, subject=subject)
        ok, got = u.run(f"decrypt {name}", read)
        if ok:
            if subject == inst.s2:
                u.accept(f"decrypted the shredded customer's value after {name}")
            if key_ref(blob) in u.targets:
                u.accept(f"decrypted {name}'s value with its tampered key")
            if got != plaintext:  # impossible without a forged key: say so loudly
                u.accept(f"decrypted {name}'s value to something else")
    new = uuid.uuid4()
    for name, subject in (
        ("s1", inst.s1),
        ("s3", inst.s3),
        ("new", new),
        ("s2", inst.s2),
        ("vault-wide", NO_SUBJECT),
    ):
        context = VW_CTX if subject is NO_SUBJECT else CTX
        ok, blob = u.run(
            f"encrypt {name}", functools.partial(vault.encrypt, subject, b"new", context=context)
        )
        if not ok:
            continue
        if subject == inst.s2:
            u.accept("encrypted for the shredded customer")
        if (
            len(blob) >= HEADER
            and key_ref(blob) in u.targets
            and _opens(pristine, blob, context, subject)
        ):
            # (a new key may take the identity a tampered row left free: only the old material
            # opening it in the untampered store means the tampered row was used)
            u.accept(f"encrypted for {name} with a tampered key")
        opened, back = u.run(
            f"read back {name}",
            functools.partial(vault.decrypt, blob, context=context, subject=subject),
        )
        if not opened or back != b"new":
            u.accept(f"encrypted for {name} a value that does not open as {name}'s")
    if shredding:
        shredded, _receipt = u.run("shred s3", lambda: vault.shred(inst.s3))
        if shredded:
            ok, _ = u.run(
                "encrypt s3 after its shred", lambda: vault.encrypt(inst.s3, b"x", context=CTX)
            )
            if ok:
                u.accept("encrypted for a customer this vault had just shredded")


ROW_KINDS = [
    "epoch",
    "epoch wrap",
    "subject key",
    "vault-wide key",
    "long-lived key",
    "long-lived key lookup",
    "head",
    "shredded subject",
    "installation",
]


def _sample(found: list[Tampering], scale: Scale) -> list[Tampering]:
    """Up to ``scale.keystore_per_group`` tamperings of each field (or whole-row change), drawn
    among its bit flips, NULL, swaps and substitutions: at the quick scale every field of every
    row is still changed, in fewer ways."""
    groups: dict[str, list[Tampering]] = {}
    for t in found:
        field = t.case.split(" bit ")[0].split(" NULL")[0].split(" swapped")[0].split(" from ")[0]
        groups.setdefault(field, []).append(t)
    rng = random.Random(5)
    out = []
    for group in groups.values():
        out += (
            group
            if len(group) <= scale.keystore_per_group
            else rng.sample(group, scale.keystore_per_group)
        )
    return out


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("row_kind", ROW_KINDS)
def test_no_tampered_key_row_is_ever_used(
    installation: Installation, row_kind: str, scale: Scale, figures: Figures, tmp_path: Path
) -> None:
    kms = LocalKms.from_file(installation.kms_path)
    pristine = Vault(kms, f"sqlite:///{installation.store}", readonly=True)
    accepted: list[str] = []
    unexpected: list[str] = []
    work = tmp_path / "work.db"
    found = [t for t in tamperings(installation, scale) if t.kind == row_kind]
    for t in _sample(found, scale):
        for extra in ("", "-wal", "-shm"):
            Path(f"{work}{extra}").unlink(missing_ok=True)
        _copy_sqlite(installation.store, work)
        db = sqlite3.connect(work)
        try:
            with db:
                for statement, args in t.sql:
                    db.execute(statement, args)
        except sqlite3.IntegrityError:  # NOT NULL, UNIQUE: the schema itself refuses it
            figures.add("tamperings the schema refuses")
            continue
        finally:
            db.close()
        u = use(installation, f"sqlite:///{work}", kms, pristine, t)
        figures.add(f"tamperings: {t.kind}: {t.how}")
        figures.add("tamperings")
        figures.add("operations on tampered stores", u.ops)
        figures.add("operations refused with a ccvault error", u.refused)
        accepted += u.accepted
        unexpected += u.unexpected
    pristine.close()
    accepted, unexpected = list(dict.fromkeys(accepted)), list(dict.fromkeys(unexpected))
    figures.add("accepted", len(accepted))
    figures.add("unexpected exception types", len(unexpected))
    assert not [*accepted, *unexpected], "\n".join([*accepted[:30], *unexpected[:30]])
