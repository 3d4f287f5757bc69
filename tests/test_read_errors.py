"""Read errors name their place; on_error="sentinel" reads one bad value as UNREADABLE."""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sqla_models
from ccvault import ConfigurationError, DecryptionError, SubjectShreddedError, Vault
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import UNREADABLE, Encrypted
from raw_values import get_raw, set_raw, tampered, truncated, unknown_key
from sqla_models import Customer, Interaction

PHONES = ["+1 555 0100", "+1 555 0101", "+1 555 0102"]


def _three(engine: sa.Engine) -> list[uuid.UUID]:
    with Session(engine) as s:
        rows = [Customer(name=f"Name{i}", phone=p) for i, p in enumerate(PHONES)]
        s.add_all(rows)
        s.commit()
        return [c.id for c in rows]


@pytest.fixture
def sentinel_app(app: sa.Engine, vault: Vault) -> Iterator[sa.Engine]:
    """A second engine on the same application database, attached with on_error="sentinel"."""
    engine = sa.create_engine(app.url)
    vault.attach(engine, on_error="sentinel")
    yield engine
    engine.dispose()


def _bad_values(app: sa.Engine, vault: Vault, ids: list[uuid.UUID]) -> dict[str, bytes]:
    t = Customer.__table__
    good = get_raw(app, t, "phone", ids[1])
    return {
        "tampered": tampered(good),
        "truncated": truncated(good),
        "too short for its nonce": good[:30],
        "unknown key": unknown_key(good),
        "another customer's value": get_raw(app, t, "phone", ids[0]),
        "no codec tag": vault.encrypt(ids[1], b"\x99junk", context="customers.phone"),
    }


def _assert_located(exc: DecryptionError | SubjectShreddedError, pk: object) -> None:
    assert (exc.table, exc.column, exc.primary_key) == ("customers", "phone", (pk,))
    text = str(exc)
    assert "customers.phone" in text
    assert str(pk) in text
    for secret in [*PHONES, "Name1"]:
        assert secret not in text


def test_every_read_failure_names_table_column_and_primary_key(
    app: sa.Engine, vault: Vault
) -> None:
    ids = _three(app)
    t = Customer.__table__
    original = get_raw(app, t, "phone", ids[1])
    for kind, bad in _bad_values(app, vault, ids).items():
        set_raw(app, t, "phone", ids[1], bad)
        with Session(app) as s, pytest.raises(DecryptionError) as info:
            s.scalars(select(Customer)).all()
        _assert_located(info.value, ids[1])
        assert bad.hex()[-16:] not in str(info.value), kind
        assert info.value.__cause__ is None  # nothing of the crypto failure is chained
    set_raw(app, t, "phone", ids[1], original)
    with Session(app) as s:  # (MariaDB's UUID type does not sort as Python's UUIDs do)
        assert {c.id: c.phone for c in s.scalars(select(Customer))} == dict(
            zip(ids, PHONES, strict=True)
        )


def test_the_primary_key_is_the_rows_not_the_subject(app: sa.Engine) -> None:
    with Session(app) as s:
        customer = Customer(name="A", phone="+1")
        s.add(customer)
        s.flush()
        calls = [Interaction(customer_id=customer.id, transcript=f"call {i}") for i in range(3)]
        s.add_all(calls)
        s.commit()
        call_ids = [c.id for c in calls]
    t = Interaction.__table__
    set_raw(
        app, t, "transcript", call_ids[2], truncated(get_raw(app, t, "transcript", call_ids[2]))
    )
    with Session(app) as s, pytest.raises(DecryptionError) as info:
        s.scalars(select(Interaction)).all()
    assert (info.value.table, info.value.column) == ("interactions", "transcript")
    assert info.value.primary_key == (call_ids[2],)
    with app.connect() as conn, pytest.raises(DecryptionError) as info:  # no key selected
        conn.execute(select(Interaction.transcript)).all()
    assert info.value.primary_key is None
    assert "interactions.transcript, primary key not selected" in str(info.value)


def test_strict_reads_of_a_shredded_value_name_the_place(
    app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str
) -> None:
    ids = _three(app)
    vault.shred(ids[1])
    strict = sa.create_engine(app.url)
    with Vault(kms, db_url) as other:
        other.attach(strict, strict=True, on_error="sentinel")  # a shred is no read error
        with Session(strict) as s, pytest.raises(SubjectShreddedError) as info:
            s.scalars(select(Customer)).all()
    strict.dispose()
    assert (info.value.table, info.value.column) in {("customers", "name"), ("customers", "phone")}
    assert info.value.primary_key == (ids[1],)
    assert str(ids[1]) in str(info.value)


def test_on_error_sentinel_reads_the_bad_value_as_unreadable_and_logs_where(
    app: sa.Engine, sentinel_app: sa.Engine, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    ids = _three(app)
    t = Customer.__table__
    for kind, bad in _bad_values(app, vault, ids).items():
        set_raw(app, t, "phone", ids[1], bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ccvault"), Session(sentinel_app) as s:
            rows = {c.id: c for c in s.scalars(select(Customer))}
        assert rows[ids[1]].phone is UNREADABLE, kind
        assert rows[ids[1]].name == "Name1"  # the rest of the row reads normally
        assert [rows[i].phone for i in (ids[0], ids[2])] == [PHONES[0], PHONES[2]]
        (record,) = [r for r in caplog.records if r.name == "ccvault"]
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "customers.phone" in message
        assert str(ids[1]) in message
        assert "UNREADABLE" in message
        assert (record.table, record.column, record.primary_key) == (  # type: ignore[attr-defined]
            "customers",
            "phone",
            (ids[1],),
        )
        for secret in [*PHONES, "Name1", bad.hex()[-16:]]:
            assert secret not in message
    # the attachment with on_error="raise" still raises
    with app.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(select(Customer.phone)).all()


def test_one_bad_value_among_thousands(
    app: sa.Engine, sentinel_app: sa.Engine, vault: Vault
) -> None:
    n = 1200
    with Session(app) as s:
        rows = [{"id": uuid.uuid4(), "name": f"N{i}", "phone": f"+1 555 {i:04}"} for i in range(n)]
        s.execute(sa.insert(Customer), rows)
        s.commit()
    bad = rows[777]["id"]
    t = Customer.__table__
    set_raw(app, t, "phone", bad, unknown_key(get_raw(app, t, "phone", bad)))
    with Session(app) as s, pytest.raises(DecryptionError) as info:
        s.scalars(select(Customer)).all()
    assert info.value.primary_key == (bad,)
    for options in ({}, {"yield_per": 100}):
        with Session(sentinel_app) as s:
            got = list(s.scalars(select(Customer).execution_options(**options)))
        assert len(got) == n
        unreadable = [c.id for c in got if c.phone is UNREADABLE]
        assert unreadable == [bad]
        assert sum(1 for c in got if isinstance(c.phone, str) and c.phone.startswith("+1")) == n - 1
    with sentinel_app.connect() as conn:  # a Core result iterated row by row
        phones = [p for (p,) in conn.execute(select(Customer.phone))]
    assert phones.count(UNREADABLE) == 1
    assert len(phones) == n


def test_search_post_filter_never_returns_an_unreadable_row(
    app: sa.Engine, sentinel_app: sa.Engine
) -> None:
    ids = _three(app)
    t = Customer.__table__
    set_raw(app, t, "phone", ids[1], tampered(get_raw(app, t, "phone", ids[1])))
    with Session(sentinel_app) as s:
        assert s.scalars(select(Customer).where(Customer.phone == PHONES[1])).all() == []
        found = s.scalars(select(Customer).where(Customer.phone == PHONES[2])).all()
        assert [c.id for c in found] == [ids[2]]


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    """Columns that set on_error themselves (they override the attachment's setting)."""

    __tablename__ = "notes_on_error"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    lenient: Mapped[str] = mapped_column(Encrypted(String(50), subject="id", on_error="sentinel"))
    strict: Mapped[str] = mapped_column(Encrypted(String(50), subject="id", on_error="raise"))
    plain: Mapped[str] = mapped_column(Encrypted(String(50), subject="id"))


@pytest.mark.parametrize("attach_mode", ["raise", "sentinel"])
def test_a_columns_on_error_overrides_the_attachment(
    app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str, attach_mode: str
) -> None:
    _Base.metadata.create_all(app)
    nid = uuid.uuid4()
    with Session(app) as s:
        s.add(Note(id=nid, lenient="l", strict="s", plain="p"))
        s.commit()
    t = Note.__table__
    engine = sa.create_engine(app.url)
    with Vault(kms, db_url) as other:
        other.attach(engine, on_error=attach_mode)  # type: ignore[arg-type]

        def read() -> Note:
            with Session(engine) as s:
                return s.scalars(select(Note)).one()

        set_raw(app, t, "lenient", nid, tampered(get_raw(app, t, "lenient", nid)))
        assert read().lenient is UNREADABLE  # the column says sentinel, whatever the attachment
        set_raw(app, t, "plain", nid, tampered(get_raw(app, t, "plain", nid)))
        if attach_mode == "sentinel":  # the column follows the attachment
            assert read().plain is UNREADABLE
        else:
            with pytest.raises(DecryptionError) as info:
                read()
            assert info.value.column == "plain"
        set_raw(app, t, "strict", nid, tampered(get_raw(app, t, "strict", nid)))
        with pytest.raises(DecryptionError) as info:  # the column says raise
            read()
        assert (info.value.table, info.value.column) == ("notes_on_error", "strict")
    engine.dispose()


def test_on_error_values_are_checked(svault: Vault) -> None:
    for bad in ("ignore", "", None, True):
        with pytest.raises(ConfigurationError, match="on_error"):
            svault.attach(sa.create_engine("sqlite://"), on_error=bad)  # type: ignore[arg-type]
    for bad in ("ignore", "", "RAISE", 1):
        with pytest.raises(ConfigurationError, match="on_error"):
            Encrypted(String(5), subject="id", on_error=bad)  # type: ignore[arg-type]


def test_on_error_in_repr_copy_and_cache_key() -> None:
    default = Encrypted(String(5), subject="id")
    lenient = Encrypted(String(5), subject="id", on_error="sentinel")
    raising = Encrypted(String(5), subject="id", on_error="raise")
    assert "on_error" not in repr(default)
    assert repr(lenient) == "Encrypted(String(length=5), subject='id', on_error='sentinel')"
    assert repr(raising) == "Encrypted(String(length=5), subject='id', on_error='raise')"
    assert lenient.copy().on_error == "sentinel"
    assert default.copy().on_error is None
    keys = {t._static_cache_key for t in (default, lenient, raising)}
    assert len(keys) == 3


def test_the_cache_key_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy asks a column type for its cache key at each Core statement it runs: the key
    is made once per type (its wrapped type's repr costs microseconds), and stays the key of
    the type's arguments."""
    made: list[Encrypted] = []
    real = Encrypted._cache_key_of

    def counted(self: Encrypted) -> tuple[object, ...]:
        made.append(self)
        return real(self)

    monkeypatch.setattr(Encrypted, "_cache_key_of", counted)
    md = sa.MetaData()
    table = sa.Table(
        "cache_key_once",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("a", Encrypted(String(5), subject="id")),
        sa.Column("b", Encrypted(String(9), subject="id", searchable="phone")),
    )
    columns = (table.c.id, table.c.a, table.c.b)  # (a select of the table names the table)
    keys = [
        sa.select(*columns).where(table.c.b == f"+4420{i}")._generate_cache_key() for i in range(5)
    ]
    assert all(key == keys[0] for key in keys)
    assert sorted(made, key=id) == sorted([table.c.a.type, table.c.b.type], key=id)
    assert table.c.a.type._static_cache_key == Encrypted(String(5), subject="id")._static_cache_key
    assert table.c.a.type._static_cache_key != table.c.b.type._static_cache_key


def test_unlocated_errors_are_unchanged(svault: Vault) -> None:
    plain = DecryptionError()
    assert str(plain) == DecryptionError.MESSAGE
    assert (plain.table, plain.column, plain.primary_key) == (None, None, None)
    assert str(SubjectShreddedError()) == "the data subject has been shredded"
    subject = uuid.uuid4()
    blob = svault.encrypt(subject, b"secret", context="customers.phone")
    with pytest.raises(DecryptionError) as info:  # vault.decrypt stays opaque
        svault.decrypt(tampered(blob), context="customers.phone")
    assert str(info.value) == DecryptionError.MESSAGE
    assert info.value.table is None
    located = DecryptionError(table="t", column="c", primary_key=(1, "a"))
    assert str(located) == "ciphertext could not be decrypted: t.c, primary key (1, 'a')"
    assert pickle.loads(pickle.dumps(located)).args == located.args


def test_async_reads_locate_and_replace_bad_values(kms: LocalKms, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from test_async import _async_url

    async def main() -> None:
        url = _async_url(db_url)
        vault = await Vault.open_async(kms, url)
        app_url = url.replace("keys.db", "app.db")
        lenient, raising = create_async_engine(app_url), create_async_engine(app_url)
        vault.attach(lenient, on_error="sentinel")
        async with lenient.begin() as conn:
            await conn.run_sync(sqla_models.Base.metadata.create_all)
        vault.attach(raising)
        try:
            async with AsyncSession(lenient, expire_on_commit=False) as s:
                rows = [Customer(name=f"N{i}", phone=p) for i, p in enumerate(PHONES)]
                s.add_all(rows)
                await s.commit()
                ids = [c.id for c in rows]
            t = Customer.__table__
            stmt = sa.text("UPDATE customers SET phone = :b WHERE id = :i").bindparams(
                sa.bindparam("b", type_=sa.LargeBinary()), sa.bindparam("i", type_=sa.Uuid())
            )
            async with lenient.begin() as conn:
                raw = sa.select(sa.type_coerce(t.c.phone, sa.LargeBinary())).where(t.c.id == ids[1])
                blob = bytes((await conn.execute(raw)).scalar_one())
                await conn.execute(stmt, {"b": tampered(blob), "i": ids[1]})
            async with AsyncSession(lenient) as s:
                got = {c.id: c.phone for c in (await s.scalars(select(Customer))).all()}
            assert got == {ids[0]: PHONES[0], ids[1]: UNREADABLE, ids[2]: PHONES[2]}
            assert got[ids[1]] is UNREADABLE
            async with AsyncSession(raising) as s:
                with pytest.raises(DecryptionError) as info:
                    await s.scalars(select(Customer))
            assert info.value.primary_key == (ids[1],)
        finally:
            await vault.aclose()
            await lenient.dispose()
            await raising.dispose()

    asyncio.run(main())
