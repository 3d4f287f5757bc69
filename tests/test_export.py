"""vault.export_subject / `ccvault export-subject` (GDPR Art. 15/20): one customer's rows in every
table of the data map, decrypted, with the erasure receipt and the scope; read-only; nothing of
any other customer. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import base64
import datetime as dt
import json
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import datamap_models as dm
from ccvault import ConfigurationError, DecryptionError, KeyStoreError, Vault
from ccvault.cli import main
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import SHREDDED, UNREADABLE, Encrypted, SubjectExport
from raw_values import get_raw, set_raw

JOINED = dt.datetime(2024, 3, 1, 9, 30)


def _app_url(db_url: str) -> str:
    return db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url


@dataclass
class Person:
    id: uuid.UUID
    secrets: list[str]  # every text of this customer that must appear in its export only


def _person(s: Session, tag: str, *, ticket: bool = True) -> Person:
    c = dm.DmCustomer(
        name=f"name-{tag}", phone=f"+44 20 7946 {tag}", joined=JOINED, avatar=f"img-{tag}".encode()
    )
    s.add(c)
    s.flush()
    s.add_all(
        [
            dm.DmCall(customer_id=c.id, transcript=f"call one {tag}", meta={"mood": f"calm-{tag}"}),
            dm.DmCall(customer_id=c.id, transcript=f"call two {tag}"),
            dm.DmAddress(customer_id=c.id, street=f"{tag} High Street"),
            dm.DmNote(customer_id=c.id, body=f"note on {tag}"),
        ]
    )
    if ticket:
        s.add(dm.DmTicket(customer_id=c.id, email=f"{tag}@example.org"))
    s.commit()
    avatar = base64.b64encode(f"img-{tag}".encode()).decode()
    return Person(
        c.id,
        [f"name-{tag}", f"7946 {tag}", f"call one {tag}", f"call two {tag}", f"calm-{tag}",
         f"{tag} High Street", f"{tag}@example.org", avatar],
    )  # fmt: skip


@pytest.fixture
def dm_app(vault: Vault, db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(_app_url(db_url))
    dm.Base.metadata.create_all(engine, tables=dm.CREATED)
    dm.register_personal_tables(vault)
    vault.attach(engine)
    yield engine
    vault.detach(engine)
    engine.dispose()


@pytest.fixture
def people(dm_app: sa.Engine) -> tuple[Person, Person]:
    with Session(dm_app) as s:
        return _person(s, "4401"), _person(s, "4402", ticket=False)


def _rows(export: SubjectExport, table: str) -> list[dict[str, Any]]:
    (found,) = [t for t in export.as_dict()["tables"] if t["table"] == table]
    return list(found["rows"])


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _key_store_rows(url: str) -> tuple[int, int]:
    return _count(url, "ccvault_keys"), _count(url, "ccvault_subject_heads")


def test_export_of_a_customer_across_encrypted_and_personal_tables(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person]
) -> None:
    a, b = people
    export = vault.export_subject(a.id, dm_app, models=dm)
    data = export.as_dict()
    text = json.dumps(data)  # JSON as it is
    assert data["format"] == "ccvault-subject-export/v1"
    assert data["subject"] == str(a.id)
    assert data["subject_ref"] == vault.subject_ref(a.id).hex()
    assert data["installation_id"] == vault.installation_id
    (customer,) = _rows(export, "dm_customers")
    assert customer["id"] == str(a.id)
    assert customer["name"] == "name-4401"
    assert customer["phone"] == "+44 20 7946 4401"
    assert customer["segment"] == "retail"
    assert customer["joined"] == "2024-03-01T09:30:00"
    assert base64.b64decode(customer["avatar"]) == b"img-4401"
    assert isinstance(customer["phone_bidx"], str)  # stored bytes, base64
    calls = _rows(export, "dm_calls")
    assert sorted(c["transcript"] for c in calls) == ["call one 4401", "call two 4401"]
    assert {json.dumps(c["meta"]) for c in calls} == {'{"mood": "calm-4401"}', "null"}
    assert [r["street"] for r in _rows(export, "dm_addresses")] == ["4401 High Street"]
    assert [r["email"] for r in _rows(export, "dm_tickets")] == ["4401@example.org"]
    for secret in a.secrets:
        assert secret in text
    for secret in b.secrets:  # nothing of the other customer
        assert secret not in text
    assert str(b.id) not in text
    scope = data["scope"]
    assert scope["searched"] == ["dm_addresses", "dm_calls", "dm_customers", "dm_tickets"]
    assert {n["table"]: n["reason"] for n in scope["not_searched"]} == {
        "dm_archive": "the database has no such table",
        "dm_legacy": "its subject column account is not of the installation's subject type "
        "(uuid): never written through this vault",
    }
    assert scope["unmapped_tables"] == ["dm_notes"]  # outside the map: not read
    assert "note on" not in text
    assert any("backups" in line for line in scope["outside"])
    assert any("logs" in line for line in scope["outside"])
    assert not any(line.startswith("holds: ") for line in scope["not_built_yet"])  # built
    assert any(line.startswith("retention: ") for line in scope["not_built_yet"])
    assert data["holds"] == []  # none placed (docs/erasure.md, "Legal holds")
    assert data["retention"] is None
    assert data["erasure"] == {"shredded": False, "receipt": None}


def test_export_of_a_shredded_customer(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person]
) -> None:
    a, b = people
    receipt = vault.shred(a.id)
    export = vault.export_subject(a.id, dm_app, models=dm)
    (customer,) = _rows(export, "dm_customers")
    assert customer["name"] == customer["phone"] == str(SHREDDED) == "[shredded]"
    assert customer["phone_bidx"] is None  # swept by the shred
    assert customer["segment"] == "retail"  # plaintext columns stay as they are
    assert {c["transcript"] for c in _rows(export, "dm_calls")} == {"[shredded]"}
    assert [r["street"] for r in _rows(export, "dm_addresses")] == ["4401 High Street"]
    assert export.erasure.shredded
    assert export.erasure.receipt == receipt
    data = export.as_dict()
    assert data["erasure"]["receipt"]["receipt_id"] == receipt.receipt_id
    stored = type(receipt).model_validate(data["erasure"]["receipt"])
    assert stored.verify(vault.receipt_public_key, installation_id=vault.installation_id)
    assert vault.erasure_receipt(a.id) == receipt
    assert vault.erasure_receipt(b.id) is None
    assert vault.export_subject(b.id, dm_app, models=dm).erasure.receipt is None


def test_export_of_a_customer_with_no_rows_creates_nothing(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person], db_url: str
) -> None:
    before = _key_store_rows(db_url)
    nobody = uuid.uuid4()
    export = vault.export_subject(nobody, dm_app, models=dm)
    assert all(t.rows == () for t in export.tables)
    assert len(export.tables) == 4
    assert export.erasure.shredded is False
    assert export.erasure.receipt is None
    assert vault.erasure_receipt(nobody) is None
    assert _key_store_rows(db_url) == before  # no head, no key
    assert not vault.is_shredded(nobody)


def test_export_is_read_only_and_works_on_a_read_only_vault(
    kms: LocalKms, vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person], db_url: str
) -> None:
    a, _ = people
    vault.shred(people[1].id)
    before = _key_store_rows(db_url)
    app_before = {t.name: _count(_app_url(db_url), t.name) for t in dm.CREATED}
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    plain = sa.create_engine(_app_url(db_url))  # not attached: the export needs no attach
    sa.event.listen(plain, "before_cursor_execute", record)
    try:
        with Vault(kms, db_url, readonly=True) as ro:
            dm.register_personal_tables(ro)
            for subject in (a.id, people[1].id, uuid.uuid4()):
                mine = ro.export_subject(subject, plain, models=dm)
                theirs = vault.export_subject(subject, dm_app, models=dm)
                assert mine.tables == theirs.tables
                assert mine.erasure == theirs.erasure
    finally:
        plain.dispose()
    assert statements
    assert not [
        s for s in statements if s.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
    ]
    assert not [s for s in statements if "FOR UPDATE" in s.upper()]
    assert _key_store_rows(db_url) == before
    assert {t.name: _count(_app_url(db_url), t.name) for t in dm.CREATED} == app_before


def test_export_refuses_a_subject_of_another_type_and_a_bad_bind(
    vault: Vault, dm_app: sa.Engine, db_url: str
) -> None:
    before = _key_store_rows(db_url)
    for wrong in (12345, "not-a-uuid", None, b"\x00" * 16):
        with pytest.raises(TypeError, match="subject"):
            vault.export_subject(wrong, dm_app, models=dm)
    with pytest.raises(ConfigurationError, match="synchronous"):
        vault.export_subject(uuid.uuid4(), str(dm_app.url), models=dm)
    assert _key_store_rows(db_url) == before


def test_export_through_a_connection_and_without_models(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person]
) -> None:
    a, _ = people
    with dm_app.connect() as conn:
        export = vault.export_subject(str(a.id), conn)  # the subject as text, coerced
    assert [r["name"] for r in _rows(export, "dm_customers")] == ["name-4401"]
    # every encrypted table this process defined: the other models are not in this database
    assert export.scope.searched == ("dm_addresses", "dm_calls", "dm_customers", "dm_tickets")
    reasons = {n.table: n.reason for n in export.scope.not_searched}
    assert reasons["dm_archive"] == "the database has no such table"
    assert reasons["dm_str_calls"].startswith("its subject column customer is not of")
    assert set(reasons) | set(export.scope.searched) >= {t.table for t in vault.data_map().tables}


def test_a_value_moved_from_another_customer_never_reads_as_this_ones(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person], db_url: str
) -> None:
    a, b = people
    table = dm.DmCustomer.__table__
    set_raw(dm_app, table, "name", a.id, get_raw(dm_app, table, "name", b.id))
    with pytest.raises(DecryptionError) as caught:
        vault.export_subject(a.id, dm_app, models=dm)
    assert "name-4402" not in str(caught.value)
    tolerant = sa.create_engine(_app_url(db_url))
    vault.attach(tolerant, on_error="sentinel")  # the attachment's on_error applies
    try:
        export = vault.export_subject(a.id, tolerant, models=dm)
    finally:
        vault.detach(tolerant)
        tolerant.dispose()
    (customer,) = _rows(export, "dm_customers")
    assert customer["name"] == str(UNREADABLE)
    assert customer["phone"] == "+44 20 7946 4401"
    assert "name-4402" not in json.dumps(export.as_dict())


def test_a_tampered_stored_receipt_is_refused(
    vault: Vault, dm_app: sa.Engine, people: tuple[Person, Person], db_url: str
) -> None:
    a, _ = people
    receipt = vault.shred(a.id)
    forged = receipt.model_copy(update={"subject_was_known": False}).model_dump_json()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE ccvault_subject_heads SET receipt = :r WHERE ref = :ref").bindparams(
                sa.bindparam("ref", type_=sa.LargeBinary())
            ),
            {"r": forged, "ref": vault.subject_ref(a.id)},
        )
    engine.dispose()
    with pytest.raises(KeyStoreError, match="does not verify") as caught:
        vault.erasure_receipt(a.id)
    assert str(a.id) not in str(caught.value)
    with pytest.raises(KeyStoreError):
        vault.export_subject(a.id, dm_app, models=dm)


# -- str subjects: the database's comparison is only a prefilter -----------------------------------


class StrBase(DeclarativeBase):
    pass


class StrCall(StrBase):
    __tablename__ = "dm_str_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(64), index=True)  # the server's collation
    transcript: Mapped[str] = mapped_column(Encrypted(String(200), subject="customer"))


class StrNote(StrBase):
    __tablename__ = "dm_str_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(String(200))


def test_str_subjects_are_exported_exactly_whatever_the_collation(
    kms: LocalKms, tmp_path: Path, db_url: str
) -> None:
    """On MariaDB 'alice' = 'Alice' = 'alice ' in the default collation: the export of 'alice'
    holds alice's rows only, and those stored in NFD of 'Zoë' belong to 'Zoë'."""
    zoe_nfd = unicodedata.normalize("NFD", "Zoë")
    engine = sa.create_engine(_app_url(db_url))
    StrBase.metadata.create_all(engine)
    with Vault(kms, f"sqlite:///{tmp_path / 'str-keys.db'}", subject_type="str") as v:
        v.register_personal_table(StrNote, "customer")
        v.attach(engine)
        try:
            with Session(engine) as s:
                for who in ("alice", "Alice", "alice ", zoe_nfd):
                    s.add(StrCall(customer=who, transcript=f"said by [{who}]"))
                    s.add(StrNote(customer=who, body=f"note on [{who}]"))
                s.commit()
            with engine.connect() as conn:
                alike = conn.execute(
                    sa.select(sa.func.count()).where(StrCall.customer == "alice")
                ).scalar_one()
            # the database's own comparison: exact on SQLite and PostgreSQL, not on MariaDB
            assert alike == (3 if engine.dialect.name in ("mysql", "mariadb") else 1)
            export = v.export_subject("alice", engine, models=StrBase)
            assert [r["transcript"] for r in _rows(export, "dm_str_calls")] == ["said by [alice]"]
            assert [r["body"] for r in _rows(export, "dm_str_notes")] == ["note on [alice]"]
            text = json.dumps(export.as_dict())
            assert "[Alice]" not in text
            assert "[alice ]" not in text
            zoe = v.export_subject("Zoë", engine, models=StrBase)
            assert [r["customer"] for r in _rows(zoe, "dm_str_calls")] == [zoe_nfd]
            assert [r["body"] for r in _rows(zoe, "dm_str_notes")] == [f"note on [{zoe_nfd}]"]
            with pytest.raises(TypeError):
                v.export_subject("", engine, models=StrBase)
        finally:
            v.detach(engine)
            StrBase.metadata.drop_all(engine)
            engine.dispose()


# -- ccvault export-subject -----------------------------------------------------------------------


def test_cli_export_subject(
    vault: Vault,
    dm_app: sa.Engine,
    people: tuple[Person, Person],
    vault_settings: None,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = people
    url = dm_app.url.render_as_string(hide_password=False)
    before = _key_store_rows(db_url)
    assert (
        main(["export-subject", "--models", "datamap_models", "--database-url", url, str(a.id)])
        == 0
    )
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data == vault.export_subject(a.id, dm_app, models=dm).as_dict() | {
        "exported_at": data["exported_at"]
    }
    assert [r["street"] for r in _rows_of(data, "dm_addresses")] == ["4401 High Street"]
    for secret in b.secrets:
        assert secret not in out
    vault.shred(a.id)
    assert (
        main(["export-subject", "--models", "datamap_models", "--database-url", url, str(a.id)])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["erasure"]["shredded"] is True
    assert {r["transcript"] for r in _rows_of(data, "dm_calls")} == {"[shredded]"}
    assert _key_store_rows(db_url)[0] == before[0]  # the export created no key


def _rows_of(data: dict[str, Any], table: str) -> list[dict[str, Any]]:
    (found,) = [t for t in data["tables"] if t["table"] == table]
    return list(found["rows"])


def test_cli_export_subject_errors(
    dm_app: sa.Engine, vault_settings: None, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = dm_app.url.render_as_string(hide_password=False)
    args = ["export-subject", "--models", "datamap_models", "--database-url"]
    assert main([*args, url, "secret-customer-7"]) == 1
    err = capsys.readouterr().err
    assert "subject type is uuid" in err
    assert "secret-customer-7" not in err
    assert main(["export-subject", "--models", "no_such_module_x", "--database-url", url, "x"]) == 1
    assert "cannot import the models" in capsys.readouterr().err
    assert main([*args, "nonsense://app:s3cr3t-pw@h/x", str(uuid.uuid4())]) == 1
    err = capsys.readouterr().err
    assert "--database-url" in err
    assert "s3cr3t-pw" not in err
    with pytest.raises(SystemExit):
        main(["export-subject", "--models", "datamap_models", "--database-url", url])  # no ID
