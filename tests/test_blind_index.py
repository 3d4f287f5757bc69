"""Blind indexes: normalisers, golden vectors, searching, post-filtering and shred clearing."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from ccvault import Vault
from ccvault.crypto._blind import BlindIndexer, blind_index, column_key, normalizer
from ccvault.crypto._primitives import HmacSha256
from sqla_models import Customer

VECTORS = Path(__file__).parent / "vectors" / "blind_index_v1.json"


@pytest.mark.parametrize(
    ("spec", "raw", "normalised"),
    [
        ("phone", "+44 (20) 7946-0018", "+442079460018"),
        ("phone", "0044 20 7946 0018", "+442079460018"),
        ("phone:44", "020 7946 0018", "+442079460018"),
        ("phone:1", "(555) 010-0100", "+15550100100"),
        ("email", "  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
        ("exact", "Cafe\u0301", "Café"),
    ],
)
def test_normalisers(spec: str, raw: str, normalised: str) -> None:
    assert normalizer(spec)(raw) == normalised


def test_bad_normaliser_specs() -> None:
    for spec in ("phone:+44", "email:x", "soundex"):
        with pytest.raises(ValueError, match=r"normaliser|phone"):
            normalizer(spec)


def test_golden_vectors() -> None:
    for vec in json.loads(VECTORS.read_text()):
        norm = normalizer(vec["normalizer"])
        key = column_key(bytes.fromhex(vec["root"]), norm, vec["label"])
        assert key.hex() == vec["column_key"]
        got = blind_index(key, norm(vec["value"]), vec["length"])
        assert got.hex() == vec["index"], vec


def test_blind_indexer_matches_the_golden_vectors() -> None:
    import pickle

    for vec in json.loads(VECTORS.read_text()):
        norm = normalizer(vec["normalizer"])
        key = column_key(bytes.fromhex(vec["root"]), norm, vec["label"])
        indexer = BlindIndexer(HmacSha256(key), norm, vec["length"])
        assert indexer(vec["value"]).hex() == vec["index"], vec
        assert key.hex() not in repr(indexer)
        with pytest.raises(TypeError):
            pickle.dumps(indexer)


def test_vault_blind_indexer_is_blind_index(vault: Vault) -> None:
    phone, email = normalizer("phone:44"), normalizer("email")
    for label, norm, value in (
        ("customers.phone", phone, "020 7946 0018"),
        ("customers.email", email, " Ada@Example.com"),
        ("leads.phone", phone, "020 7946 0018"),
    ):
        for length in (8, 16):
            got = vault.blind_indexer(label, norm, length)(value)
            assert got == vault.blind_index(label, norm, value, length)
            assert len(got) == length
    # one key per column and normaliser: another label gives another index
    assert vault.blind_index("customers.phone", phone, "020 7946 0018", 16) != vault.blind_index(
        "leads.phone", phone, "020 7946 0018", 16
    )


def _add(session: Session, n: int, **kw: str) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        c = Customer(
            name=f"c{i}", phone=kw.get("phone", f"+1 555 01{i:02d}"), email=kw.get("email")
        )
        session.add(c)
        session.flush()
        ids.append(c.id)
    return ids


def test_search_by_phone_and_email(app: sa.Engine) -> None:
    with Session(app) as s:
        ids = _add(s, 20)
        s.add(Customer(name="Ada", phone="+44 20 7946 0018", email="Ada@Example.com"))
        s.commit()
    with Session(app) as s:
        hit = s.scalars(select(Customer).where(Customer.phone == "0044 (20) 7946-0018")).one()
        assert hit.name == "Ada"
        assert (
            s.scalars(select(Customer).where(Customer.email == " ada@example.COM")).one().name
            == "Ada"
        )
        some = s.scalars(
            select(Customer).where(Customer.phone.in_(["+15550103", "+1 555 0107"]))
        ).all()
        assert sorted(c.name for c in some) == ["c3", "c7"]
        p = bindparam("p")
        stmt = select(Customer).where(Customer.phone == p)
        assert s.scalars(stmt, {"p": "+1 (555) 0111"}).one().id == ids[11]
        assert s.scalars(select(func.count()).where(Customer.phone == "+15550105")).one() == 1
        assert s.scalars(select(Customer).where(Customer.phone == "+1 555 9999")).all() == []
    raw = repr(_rows(app, "SELECT phone_bidx FROM customers"))
    assert "555" not in raw


def _rows(engine: sa.Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def test_updates_keep_the_index_current(app: sa.Engine) -> None:
    with Session(app) as s:
        (cid,) = _add(s, 1, phone="+1 555 0100")
        s.commit()
    with Session(app) as s:
        c = s.get(Customer, cid)
        c.phone = "+1 555 0199"  # type: ignore[union-attr]
        s.commit()
    with Session(app) as s:
        assert s.scalars(select(Customer).where(Customer.phone == "+15550100")).all() == []
        assert s.scalars(select(Customer).where(Customer.phone == "+15550199")).one().id == cid
    with Session(app) as s:  # ORM bulk insert fills the index too
        s.execute(insert(Customer), [{"name": "b", "phone": "+1 555 0222"}])
        s.commit()
        assert s.scalars(select(Customer.name).where(Customer.phone == "+15550222")).one() == "b"


def test_collisions_are_post_filtered(app: sa.Engine) -> None:
    """Force every value to the same index: entity selects still return only true matches."""
    with Session(app) as s:
        _add(s, 5)
        s.commit()
    with app.begin() as conn:  # simulate a truncation collision on every row
        if app.dialect.name in ("mysql", "mariadb"):
            sql = (
                "UPDATE customers c JOIN (SELECT phone_bidx b FROM customers ORDER BY id LIMIT 1) x"
                " SET c.phone_bidx = x.b"
            )
        else:
            sql = (
                "UPDATE customers SET phone_bidx = "
                "(SELECT phone_bidx FROM customers ORDER BY id LIMIT 1)"
            )
        conn.execute(sa.text(sql))
    with Session(app) as s:
        first = s.scalars(select(Customer).order_by(Customer.id).limit(1)).one()
        target = first.phone
        hits = s.scalars(select(Customer).where(Customer.phone == target)).all()
        assert [c.phone for c in hits] == [target]  # 4 colliding rows dropped

        class Text(str):
            pass

        # the same number spelled otherwise, and given as a str subclass: normalised, the same
        spaced = " ".join(target)
        for spelling in (spaced, Text(target), Text(spaced)):
            hits = s.scalars(select(Customer).where(Customer.phone == spelling)).all()
            assert [c.phone for c in hits] == [target]
        # Where no post-filter can apply, the index alone decides (documented).
        assert s.scalars(select(func.count()).where(Customer.phone == target)).one() == 5


def test_the_post_filter_normalises_only_for_a_value_not_searched_for() -> None:
    """A row holding the very value searched for matches with no normalisation (a lookup);
    the arguments are normalised once, at the first other value, for every value after it."""
    from ccvault.sqlalchemy._read import Search, _matches

    calls: list[str] = []

    def norm(value: str) -> bytes:
        calls.append(value)
        return value.replace(" ", "").encode()

    search = Search(0, norm, ["+1555", "+1666"], {"+1555", "+1666"})
    assert _matches(["+1555"], [search])
    assert _matches(["+1666"], [search])
    assert calls == []
    assert _matches(["+1 555"], [search])  # another spelling: normalised, matched
    assert sorted(calls) == ["+1 555", "+1555", "+1666"]
    assert not _matches(["+1777"], [search])  # a collision's value: dropped
    assert calls[3:] == ["+1777"]  # the arguments are not normalised again


def test_shred_clears_the_customer_s_blind_indexes(app: sa.Engine, vault: Vault) -> None:
    with Session(app) as s:
        a, b = _add(s, 2, email="x@example.com")
        s.commit()
    vault.shred(a)
    with Session(app) as s:
        assert [
            c.id for c in s.scalars(select(Customer).where(Customer.email == "x@example.com"))
        ] == [b]
    with app.connect() as conn:
        t = Customer.__table__
        row = conn.execute(select(t.c.phone_bidx, t.c.email_bidx).where(t.c.id == a)).one()
    assert tuple(row) == (None, None)


def test_a_shred_that_cannot_sweep_says_what_it_left(
    app: sa.Engine, vault: Vault, kms: object, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A GDPR worker that never imported the searchable models (no engine attached) shreds: the
    values are unreadable at once, the blind indexes it could not reach are named in a warning,
    and a repeated shred where the models are attached sweeps them (issue 10, item 11)."""
    with Session(app) as s:
        (a,) = _add(s, 1, email="left@example.com")
        s.commit()
    worker = Vault(kms, db_url)  # type: ignore[arg-type]
    try:
        with caplog.at_level("WARNING", logger="ccvault"):
            receipt = worker.shred(a)
    finally:
        worker.close()
    (record,) = [r for r in caplog.records if "left blind indexes" in r.getMessage()]
    message = record.getMessage()
    assert "customers.email" in message
    assert "customers.phone" in message
    assert str(a) not in message
    assert "left@example.com" not in message
    assert receipt.subject_ref[:16] in message
    t = Customer.__table__
    with app.connect() as conn:
        row = conn.execute(select(t.c.phone_bidx, t.c.email_bidx).where(t.c.id == a)).one()
    assert None not in tuple(row)  # still there: nothing in that process knew the tables

    caplog.clear()
    with caplog.at_level("WARNING", logger="ccvault"):
        again = vault.shred(a)  # the app process, engine attached: sweeps, same receipt
    assert again == receipt
    assert not [r for r in caplog.records if "left blind indexes" in r.getMessage()]
    with app.connect() as conn:
        row = conn.execute(select(t.c.phone_bidx, t.c.email_bidx).where(t.c.id == a)).one()
    assert tuple(row) == (None, None)


# -- the UTF-8 normalisers (issue 15, performance round 2) -----------------------------------------

SPECS = ("phone", "phone:44", "phone:1", "email", "exact")
# every ASCII character, and the ones a phone number is made of, many times over
_ASCII = "".join(map(chr, range(128)))
_PHONEISH = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f().-/+0123456789"


def _same(spec: str, value: str) -> None:
    """``normalizer(spec).utf8()`` gives the UTF-8 of ``normalizer(spec)``, or the same error."""
    norm = normalizer(spec)
    try:
        expected = norm(value).encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            norm.utf8()(value)
        return
    got = norm.utf8()(value)
    assert type(got) is bytes
    assert got == expected, (spec, value)


@pytest.mark.parametrize("spec", SPECS)
def test_utf8_normalisers_on_every_short_phoneish_string(spec: str) -> None:
    for n in range(4):
        for chars in itertools.product(_PHONEISH + "a", repeat=n):
            _same(spec, "".join(chars))


@pytest.mark.parametrize("spec", SPECS)
def test_utf8_normalisers_on_every_ascii_character(spec: str) -> None:
    for c in _ASCII:
        for value in (c, f"00{c}44 20", f"+{c}1", f"0{c}20 7946", f" {c}A@b.C{c} ", f"{c}0"):
            _same(spec, value)


@pytest.mark.parametrize("spec", SPECS)
def test_utf8_normalisers_on_the_examples(spec: str) -> None:
    for value in (
        "+44 (20) 7946-0018",
        "0044 20 7946 0018",
        "020 7946 0018",
        "(555) 010-0100",
        "  Ada.Lovelace@Example.COM ",
        "Cafe\u0301",
        "\uff10\uff12\uff10 7946 0018",  # fullwidth digits: NFKC
        "+44\u00a020 7946 0018",  # a no-break space
        "+44 20 7946 0018 ext. 5",
        "a\ud800b",  # a lone surrogate: the same UnicodeEncodeError
        "0\ud800",
        "",
        "+",
        "00",
        "0",
    ):
        _same(spec, value)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SPECS),
    st.text(alphabet=st.sampled_from(_PHONEISH + "aZ@é\u00a0\u2009\uff11\u0301"), max_size=12)
    | st.text(max_size=12),
)
def test_utf8_normalisers_on_any_text(spec: str, value: str) -> None:
    _same(spec, value)


def test_the_indexer_hashes_the_utf8_normaliser_s_bytes() -> None:
    """The indexer's MAC (one call, normaliser inside) is the MAC of the str normaliser's
    UTF-8: the golden vectors' definition."""
    key = HmacSha256(b"k" * 32)
    for spec in SPECS:
        norm = normalizer(spec)
        indexer = BlindIndexer(key, norm, 8)
        for value in ("+44 (20) 7946-0018", " Ada@Example.COM", "Cafe\u0301", "0\uff12"):
            assert indexer.index(value) == blind_index(key, norm(value), 8)
            assert indexer(value) == indexer.index(value)


def test_a_mac_function_with_prepare_is_the_mac_of_what_it_prepares() -> None:
    key = HmacSha256(b"k" * 32)
    for length in (4, 8, 32):
        mac_of = key.function(length, lambda s: s.encode() * 2)
        assert mac_of("ab") == key.function(length)(b"abab") == key(b"abab")[:length]


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 63, 64, 65, 100])
def test_hmac_sha256_is_rfc_2104(key_bytes: int) -> None:
    """The keyed state copied per MAC gives the standard HMAC-SHA256, whatever the key's length
    (a key of more than a block is hashed first) or the message's."""
    import hashlib
    import hmac

    key = bytes(range(key_bytes))
    mac = HmacSha256(key)
    for n in (0, 1, 13, 55, 56, 64, 65, 200):
        message = bytes([n]) * n
        expected = hmac.digest(key, message, hashlib.sha256)
        assert mac(message) == expected
        assert mac.function(8)(message) == expected[:8]
        assert mac(message) == expected  # the keyed state is copied, never consumed
