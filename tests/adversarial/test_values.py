"""Tampered value ciphertexts: 0 accepted, 0 unexpected exception types.

A real ciphertext of every suite-1 codec type is mutated every way ``harness.mutations`` knows —
every single-bit flip, every truncation, extensions, every other format version and suite byte,
other key versions and key ids (random, another subject's, the vault-wide key's, the long-lived
keys'), other values' headers (another subject's, a shredded subject's, a vault-wide one) and
splices with another value under the same key — and moved between columns, rows, customers and
tables. Each result is opened by ``vault.decrypt`` and read back through the column types on
every backend (ORM entity loads with and without ``strict``, ``on_error="sentinel"`` and
``"raise"``, and Core column-only selects). Nothing may decrypt; every failure must be
DecryptionError (located: table, column, primary key on column reads), or SubjectShreddedError /
SHREDDED only where the header names a shredded subject's key.

Not attacks here, because ccvault does not claim to detect them (docs/security.md): a value
moved between two rows of the same customer and column, and whole values moved between
customers when a read does not select the row's subject column (Core column-only reads).
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from adversarial.harness import (
    HEADER,
    SCALES,
    Donors,
    Figures,
    Scale,
    Verdicts,
    app_url,
    key_ref,
    kind_of,
    mutations,
)
from adversarial.models import CODECS, Base, Legacy, Other, Values, raw_table
from ccvault import NO_SUBJECT, DecryptionError, SubjectShreddedError, Vault
from ccvault.keystore._schema import build_metadata
from ccvault.sqlalchemy import SHREDDED, UNREADABLE
from ccvault.sqlalchemy._codec import codec_for

KEYS = build_metadata().tables["ccvault_keys"]
LONG_LIVED = ("ref", "receipt", "bidx")


def _long_lived_key_ids(vault: Vault) -> dict[str, bytes]:
    vault.blind_index("adv.bidx", _norm(), "x", 8)  # makes the blind-index key exist
    engine = vault._store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(KEYS.c.kind, KEYS.c.key_id).where(KEYS.c.kind.in_(LONG_LIVED))
        )
        return {f"{kind} key": bytes(key_id) for kind, key_id in rows}


def _norm() -> Any:
    from ccvault.crypto._blind import normalizer

    return normalizer("exact")


# -- vault.encrypt / vault.decrypt ----------------------------------------------------------


def test_decrypt_accepts_no_tampered_value(svault: Vault, figures: Figures) -> None:
    """Exhaustive at every scale: every bit, every length, every version and suite byte."""
    vault = svault
    rng = random.Random(1)
    s1, s2, s3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    plain = {c: codec_for(t).dumps(v) for c, (t, v) in CODECS.items()}
    ctx = {c: f"adv_api.{c}" for c in CODECS}
    blobs = {c: vault.encrypt(s1, plain[c], context=ctx[c]) for c in CODECS}
    again = vault.encrypt(s1, plain["s"], context=ctx["s"])
    theirs = {c: vault.encrypt(s3, plain[c], context=ctx[c]) for c in CODECS}
    vaultwide = vault.encrypt(NO_SUBJECT, plain["s"], context=ctx["s"])
    erased = vault.encrypt(s2, plain["s"], context=ctx["s"])
    vault.shred(s2)
    shredded_headers = {erased[:HEADER]}
    donors = Donors(
        headers={
            "another subject's header": theirs["s"][:HEADER],
            "a shredded subject's header": erased[:HEADER],
            "a vault-wide header": vaultwide[:HEADER],
        },
        key_ids={
            "another subject": key_ref(theirs["s"])[0],
            "shredded subject": key_ref(erased)[0],
            "vault-wide": key_ref(vaultwide)[0],
            **_long_lived_key_ids(vault),
        },
        same_key=again,
    )
    verdicts = Verdicts(figures)

    def judge(kind: str, case: str, blob: bytes, context: str, *subject: object) -> None:
        """Decrypt ``blob`` under ``context`` (for ``subject`` when one is given)."""
        read = functools.partial(vault.decrypt, blob, context=context)
        if subject:
            read = functools.partial(read, subject=subject[0])
        verdicts.judge_value(kind, case, read, shredded=blob[:HEADER] in shredded_headers)

    for c in CODECS:
        for kind, m in mutations(blobs[c], donors, rng):
            if m == blobs[c]:
                continue
            case = f"{c}: {kind} ({m.hex()})"
            judge(kind_of(kind), case, m, ctx[c], s1)
            judge(kind_of(kind), case, m, ctx[c])
    # whole values moved: to another column, customer, the vault-wide key, a shredded customer
    for c in CODECS:
        for other in CODECS:
            if other != c:
                judge("swap: another column", f"{c} read as {other}", blobs[c], ctx[other], s1)
        for case, blob, subject in (
            ("another customer's value", theirs[c], s1),
            ("read as another customer's", blobs[c], s3),
            ("read as the vault-wide key's", blobs[c], NO_SUBJECT),
            ("read as a shredded customer's", blobs[c], s2),
        ):
            judge("swap: another customer", f"{c}: {case}", blob, ctx[c], subject)
    judge("swap: another customer", "vault-wide value read as s1's", vaultwide, ctx["s"], s1)
    verdicts.check()
    # The shredded subject's own value is the one case that says "shredded".
    with pytest.raises(SubjectShreddedError):
        vault.decrypt(erased, context=ctx["s"], subject=s2)


# -- the column types' read path ------------------------------------------------------------


class _App:
    """An application database with the adversarial tables, attached three ways."""

    def __init__(self, vault: Vault, url: str) -> None:
        self.vault = vault
        self.raw = sa.create_engine(url)  # never attached: reads and writes stored bytes
        Base.metadata.create_all(self.raw)
        self.raising = sa.create_engine(url)
        vault.attach(self.raising)
        self.sentinel = sa.create_engine(url)
        vault.attach(self.sentinel, on_error="sentinel")
        self.strict = sa.create_engine(url)
        vault.attach(self.strict, strict=True)

    def close(self) -> None:
        for engine in (self.raw, self.raising, self.sentinel, self.strict):
            engine.dispose()

    def stored(self, table: sa.Table, pk: uuid.UUID) -> dict[str, Any]:
        raw = raw_table(table)
        with self.raw.connect() as conn:
            row = conn.execute(sa.select(raw).where(raw.c.id == pk)).one()
        return {
            k: bytes(v) if isinstance(v, bytes | memoryview) else v for k, v in row._mapping.items()
        }

    def plant(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        raw = raw_table(table)
        names = [c.name for c in raw.columns]
        with self.raw.begin() as conn:
            for i in range(0, len(rows), 500):
                chunk = [{n: r.get(n) for n in names} for r in rows[i : i + 500]]
                conn.execute(sa.insert(raw), chunk)


@pytest.fixture
def app(vault: Vault, db_url: str) -> Iterator[_App]:
    a = _App(vault, app_url(db_url))
    yield a
    a.close()


@pytest.fixture
def sapp(svault: Vault, sqlite_url: str) -> Iterator[_App]:
    a = _App(svault, app_url(sqlite_url))
    yield a
    a.close()


class _Planted:
    """Mutated values planted in rows: (row id, column, kind, case, stored bytes, shredded)."""

    def __init__(self) -> None:
        self.rows: dict[type, list[dict[str, Any]]] = {}
        self.cases: list[tuple[type, uuid.UUID, str, str, str, bytes, bool, bool]] = []

    def add(
        self,
        model: type,
        owner: uuid.UUID | None,
        column: str,
        kind: str,
        case: str,
        blob: bytes,
        *,
        shredded: bool,
        column_only: bool = True,
    ) -> None:
        pk = uuid.uuid4()
        self.rows.setdefault(model, []).append(
            {"id": pk, "owner": owner, "tag": "planted", column: blob}
        )
        self.cases.append((model, pk, column, kind, case, blob, shredded, column_only))


def _entities(engine: sa.Engine, model: Any, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    out = {}
    with Session(engine) as session:
        for i in range(0, len(ids), 500):
            stmt = sa.select(model).where(model.id.in_(ids[i : i + 500]))
            for obj in session.scalars(stmt):
                out[obj.id] = obj
    return out


def _column_only(
    engine: sa.Engine, model: Any, column: str, ids: list[uuid.UUID]
) -> dict[uuid.UUID, Any]:
    out = {}
    col = getattr(model, column)
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):
            for pk, value in conn.execute(
                sa.select(model.id, col).where(model.id.in_(ids[i : i + 500]))
            ):
                out[pk] = value
    return out


def _one(engine: sa.Engine, model: Any, pk: uuid.UUID, column: str) -> Any:
    with Session(engine) as session:
        obj = session.scalars(sa.select(model).where(model.id == pk)).one()
        return getattr(obj, column)


def _located(read: Callable[[], Any], table: str, column: str, pk: uuid.UUID) -> Callable[[], Any]:
    """``read``, whose DecryptionError or SubjectShreddedError must name the value's place."""

    def run() -> Any:
        try:
            return read()
        except (DecryptionError, SubjectShreddedError) as exc:
            where = (exc.table, exc.column, exc.primary_key)
            if where != (table, column, (pk,)):
                raise AssertionError(f"error located at {where}") from None
            raise

    return run


def _seed(app: _App) -> dict[str, Any]:
    """Real rows: two of customer s1, one of s3, one of s2 (then shredded), one in adv_other,
    and a vault-wide value; returns their stored bytes and the donors of header parts."""
    s1, s2, s3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    values = {c: v for c, (_t, v) in CODECS.items()}
    rows = [Values(owner=s, tag="seed", **values) for s in (s1, s1, s3, s2)]
    other = Other(owner=s1, tag="seed", s=values["s"])
    with Session(app.raising, expire_on_commit=False) as session, session.begin():
        session.add_all([*rows, other])
    ids = [r.id for r in rows]
    app.vault.shred(s2)
    vaultwide = app.vault.encrypt(
        NO_SUBJECT, codec_for(CODECS["s"][0]).dumps("x"), context="adv_values.s"
    )
    stored = [app.stored(Values.__table__, pk) for pk in ids]
    mine, again, theirs, erased = stored
    donors = Donors(
        headers={
            "another subject's header": theirs["s"][:HEADER],
            "a shredded subject's header": erased["s"][:HEADER],
            "a vault-wide header": vaultwide[:HEADER],
        },
        key_ids={
            "another subject": key_ref(theirs["s"])[0],
            "shredded subject": key_ref(erased["s"])[0],
            "vault-wide": key_ref(vaultwide)[0],
            **_long_lived_key_ids(app.vault),
        },
        same_key=again["s"],
    )
    return {
        "s1": s1,
        "s2": s2,
        "s3": s3,
        "values": values,
        "mine": mine,
        "again": again,
        "theirs": theirs,
        "erased": erased,
        "other": app.stored(Other.__table__, other.id),
        "vaultwide": vaultwide,
        "donors": donors,
        "shredded_headers": {erased["s"][:HEADER]},
    }


@pytest.mark.parametrize("scale", SCALES)
def test_column_reads_accept_no_tampered_value(
    app: _App, scale: Scale, figures: Figures, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ccvault")  # one WARNING per UNREADABLE value
    rng = random.Random(2)
    seed = _seed(app)
    s1, s2, s3 = seed["s1"], seed["s2"], seed["s3"]
    mine, theirs = seed["mine"], seed["theirs"]
    shredded_headers = seed["shredded_headers"]
    planted = _Planted()

    dialect = app.raw.dialect.name
    codecs = list(CODECS)
    if dialect != "sqlite":  # every codec on SQLite; at the quick scale a few on the servers
        codecs = codecs[:: max(1, len(codecs) // scale.server_codecs)][: scale.server_codecs]

    def add(
        model: Any,
        owner: uuid.UUID | None,
        column: str,
        kind: str,
        case: str,
        blob: bytes,
        *,
        column_only: bool = True,
    ) -> None:
        width = model.__table__.c[column].type.storage_length()
        if dialect in ("mysql", "mariadb") and width is not None and len(blob) > width:
            figures.add(f"not storable in a VARBINARY({width}) column: {kind}")
            return
        planted.add(
            model,
            owner,
            column,
            kind,
            case,
            blob,
            shredded=blob[:HEADER] in shredded_headers,
            column_only=column_only,
        )

    for c in codecs:
        for kind, m in mutations(mine[c], seed["donors"], rng):
            if m != mine[c]:
                add(Values, s1, c, kind_of(kind), f"{c}: {kind} ({m.hex()})", m)
    # whole values moved (checked by entity loads, which select the row's subject)
    for c in codecs:
        for other in CODECS:
            if other != c:
                add(Values, s1, other, "swap: another column", f"{c} stored in {other}", mine[c])
        add(
            Values,
            s1,
            c,
            "swap: another customer",
            f"{c}: s3's value in s1's row",
            theirs[c],
            column_only=False,
        )
        add(
            Values,
            s3,
            c,
            "swap: another customer",
            f"{c}: s1's value in s3's row",
            mine[c],
            column_only=False,
        )
        add(
            Values,
            s1,
            c,
            "swap: another customer",
            f"{c}: a shredded customer's value",
            seed["erased"][c],
            column_only=False,
        )
        add(
            Values,
            s2,
            c,
            "swap: another customer",
            f"{c}: s1's value in a shredded customer's row",
            mine[c],
            column_only=False,
        )
    add(
        Values,
        s1,
        "s",
        "swap: another customer",
        "a vault-wide value in s1's row",
        seed["vaultwide"],
        column_only=False,
    )
    add(
        Values,
        None,
        "s",
        "swap: another customer",
        "s1's value in a row without subject",
        mine["s"],
        column_only=False,
    )
    add(Other, s1, "s", "swap: another table", "adv_values.s stored in adv_other.s", mine["s"])
    add(
        Values,
        s1,
        "s",
        "swap: another table",
        "adv_other.s stored in adv_values.s",
        seed["other"]["s"],
    )

    for model, rows in planted.rows.items():
        app.plant(model.__table__, rows)  # type: ignore[attr-defined]
    verdicts = Verdicts(figures)
    by_model: dict[type, list[uuid.UUID]] = {}
    for model, pk, *_ in planted.cases:
        by_model.setdefault(model, []).append(pk)

    # every planted value, in batches: ORM entity loads and Core column-only selects
    for engine, how in ((app.sentinel, "sentinel"),):
        loaded = {m: _entities(engine, m, ids) for m, ids in by_model.items()}
        columns: dict[tuple[type, str], dict[uuid.UUID, Any]] = {}
        for model, pk, column, kind, case, _blob, shredded, column_only in planted.cases:
            obj = loaded[model].get(pk)
            verdicts.judge_value(
                f"{kind} [entity, {how}]",
                case,
                lambda obj=obj, column=column: getattr(obj, column),
                shredded=shredded,
            )
            if column_only:
                key = (model, column)
                if key not in columns:
                    columns[key] = _column_only(engine, model, column, by_model[model])
                got = columns[key][pk]
                verdicts.judge_value(
                    f"{kind} [column-only, {how}]", case, lambda got=got: got, shredded=shredded
                )
    # a sample one value at a time, raising: a located DecryptionError, or strict and shredded
    sample = list(planted.cases)
    rng.shuffle(sample)
    for model, pk, column, kind, case, _blob, shredded, _ in sample[: scale.read_sample]:
        table = model.__tablename__  # type: ignore[attr-defined]
        for engine, how in ((app.raising, "raise"), (app.strict, "strict")):
            read = functools.partial(_one, engine, model, pk, column)
            verdicts.judge_value(
                f"{kind} [entity, {how}]",
                case,
                _located(read, table, column, pk),
                shredded=shredded,
            )
    figures.add("planted values", len(planted.cases))
    verdicts.check()
    # the real rows still read, and the shredded one says so
    with Session(app.raising) as session:
        seeded = session.scalars(sa.select(Values).where(Values.tag == "seed")).all()
        by_owner = {r.owner: r for r in seeded}
        for c, value in seed["values"].items():
            assert getattr(by_owner[s1], c) == value
            assert getattr(by_owner[s2], c) is SHREDDED
    with Session(app.strict) as session, pytest.raises(SubjectShreddedError):
        session.scalars(sa.select(Values).where(Values.owner == s2, Values.tag == "seed")).all()
    assert UNREADABLE is not SHREDDED


_SEALED = (b"\x01\x01", b"\x01\x02")  # a ccvault format version and suite


@pytest.mark.parametrize("scale", SCALES)
def test_legacy_columns_read_no_tampered_ciphertext_as_plaintext(
    sapp: _App, scale: Scale, figures: Figures, caplog: pytest.LogCaptureFixture
) -> None:
    """While a column still migrates from plaintext (``legacy_plaintext=True``), a stored value
    that is no ciphertext reads as the old plaintext, by design; but a value that begins with a
    ccvault format version and suite byte is a ciphertext, whatever its length, and a damaged one
    must never read as plaintext."""
    caplog.set_level(logging.ERROR, logger="ccvault")
    rng = random.Random(3)
    seed = _seed(sapp)
    s1 = seed["s1"]
    values = {c: seed["values"][c] for c in ("s", "raw", "doc")}
    row = Legacy(owner=s1, tag="seed", **values)
    with Session(sapp.raising, expire_on_commit=False) as session, session.begin():
        session.add(row)
    mine = sapp.stored(Legacy.__table__, row.id)
    planted = _Planted()
    for c in values:
        for kind, m in mutations(mine[c], seed["donors"], rng):
            if m != mine[c] and m[:2] in _SEALED:
                shredded = m[:HEADER] in seed["shredded_headers"]
                planted.add(
                    Legacy, s1, c, kind_of(kind), f"{c}: {kind} ({m.hex()})", m, shredded=shredded
                )
    sapp.plant(Legacy.__table__, planted.rows[Legacy])
    verdicts = Verdicts(figures)
    ids = [pk for _m, pk, *_ in planted.cases]
    loaded = _entities(sapp.sentinel, Legacy, ids)
    for _model, pk, column, kind, case, _blob, shredded, _ in planted.cases:
        obj = loaded[pk]
        verdicts.judge_value(
            kind, case, lambda obj=obj, column=column: getattr(obj, column), shredded=shredded
        )
    verdicts.check()
