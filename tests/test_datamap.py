"""vault.data_map / `ccvault data-map`: every table and column holding customer data, per vault
registrations of plaintext tables, and the warnings (foreign keys from outside the map, subject
columns without an index, also warned by attach())."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import String

import datamap_models as dm
from ccvault import ConfigurationError, Vault
from ccvault.cli import main
from ccvault.kms import LocalKms
from ccvault.sqlalchemy import DataMap, Encrypted


@pytest.fixture
def registered(svault: Vault) -> Vault:
    dm.register_personal_tables(svault)
    return svault


def _columns(found: DataMap, table: str) -> dict[str, dict[str, Any]]:
    (entry,) = [t for t in found.as_dict()["tables"] if t["table"] == table]
    return {c["name"]: c for c in entry["columns"]}


def test_the_map_lists_every_table_column_and_warning(registered: Vault) -> None:
    found = registered.data_map(dm)
    data = found.as_dict()
    assert data["format"] == "ccvault-data-map/v1"
    assert data["subject_type"] == "uuid"
    assert json.loads(json.dumps(data)) == data  # JSON as it is
    tables = {t["table"]: t for t in data["tables"]}
    assert list(tables) == sorted(tables)
    assert set(tables) == {
        "dm_addresses",
        "dm_archive",
        "dm_calls",
        "dm_customers",
        "dm_legacy",
        "dm_tickets",
    }  # not dm_notes: no encrypted column, not registered
    assert {
        n: (t["kind"], t["subject_column"], t["subject_indexed"]) for n, t in tables.items()
    } == {
        "dm_addresses": ("personal", "customer_id", True),
        "dm_archive": ("encrypted", "id", True),
        "dm_calls": ("encrypted", "customer_id", True),
        "dm_customers": ("encrypted", "id", True),
        "dm_legacy": ("encrypted", "account", False),
        "dm_tickets": ("encrypted", "customer_id", False),
    }
    customers = _columns(found, "dm_customers")
    assert customers["id"] == {
        "name": "id",
        "role": "subject",
        "context": None,
        "searchable": None,
        "on_null_subject": None,
        "retention": None,
    }
    assert customers["name"] == {
        "name": "name",
        "role": "encrypted",
        "context": "dm_customers.name",
        "searchable": None,
        "on_null_subject": "error",
        "retention": None,
    }
    assert customers["phone"]["searchable"] == {
        "normalizer": "phone:44",
        "blind_index_column": "phone_bidx",
        "index_bytes": 8,
    }
    assert customers["phone_bidx"]["role"] == "blind_index"
    assert customers["phone_bidx"]["context"] == "dm_customers.phone"
    assert {n: c["role"] for n, c in customers.items() if c["role"] == "plaintext"} == {
        "segment": "plaintext",
        "joined": "plaintext",
        "avatar": "plaintext",
    }
    assert {n: c["role"] for n, c in _columns(found, "dm_addresses").items()} == {
        "id": "plaintext",
        "customer_id": "subject",
        "street": "plaintext",
    }
    warnings = {(w["kind"], w["table"], w["column"]): w for w in data["warnings"]}
    assert set(warnings) == {
        ("unmapped_foreign_key", "dm_notes", "customer_id"),
        ("unindexed_subject", "dm_tickets", "customer_id"),
        ("subject_type", "dm_legacy", "account"),
    }
    fk = warnings[("unmapped_foreign_key", "dm_notes", "customer_id")]
    assert fk["references"] == "dm_customers.id"
    assert "register_personal_table" in fk["message"]
    assert (
        "scans the whole table"
        in warnings[("unindexed_subject", "dm_tickets", "customer_id")]["message"]
    )


def test_the_markdown_form(registered: Vault) -> None:
    text = registered.data_map(dm).as_markdown()
    assert text.startswith("# Data map\n")
    assert "## dm_customers (encrypted)" in text
    assert "## dm_addresses (personal)" in text
    assert "Subject column: `customer_id` (**not indexed**)." in text
    assert (
        "| `phone` | encrypted | `dm_customers.phone` | `phone:44` in `phone_bidx` (8 bytes) |"
        in text
    )
    assert "| `phone_bidx` | blind index | `dm_customers.phone` |" in text
    assert "* **unmapped_foreign_key** `dm_notes.customer_id`" in text
    assert "* **unindexed_subject** `dm_tickets.customer_id`" in text
    assert "dm_notes (" not in text  # a warning, never a section


def test_a_registered_table_closes_the_foreign_key_warning(svault: Vault) -> None:
    svault.register_personal_table(dm.DmNote, dm.DmNote.customer_id)  # a mapped attribute
    kinds = {(w.kind, w.table) for w in svault.data_map(dm).warnings}
    assert ("unmapped_foreign_key", "dm_notes") not in kinds
    assert ("unmapped_foreign_key", "dm_addresses") in kinds  # this vault did not register it


def test_registrations_are_kept_per_vault(kms: LocalKms, tmp_path: Path, registered: Vault) -> None:
    with Vault(kms, f"sqlite:///{tmp_path / 'other.db'}") as other:
        assert "dm_addresses" not in {t.table for t in other.data_map(dm).tables}
    assert "dm_addresses" in {t.table for t in registered.data_map(dm).tables}


def test_the_map_without_models_has_every_encrypted_table_of_the_process(
    registered: Vault,
) -> None:
    names = {t.table for t in registered.data_map().tables}
    assert {"dm_customers", "dm_calls", "dm_addresses"} <= names


def test_register_refuses_what_cannot_be_a_personal_table(svault: Vault) -> None:
    with pytest.raises(ConfigurationError, match="no column 'nope'"):
        svault.register_personal_table(dm.DmNote, "nope")
    with pytest.raises(ConfigurationError, match="not a column of table 'dm_notes'"):
        svault.register_personal_table(dm.DmNote, dm.DmAddress.__table__.c.customer_id)
    with pytest.raises(ConfigurationError, match="subject type is 'uuid'"):
        svault.register_personal_table(dm.DmNote, "body")  # a String column, uuid subjects
    with pytest.raises(ConfigurationError, match="has encrypted columns"):
        svault.register_personal_table(dm.DmCall, "customer_id")
    with pytest.raises(TypeError, match="Table or a mapped class"):
        svault.register_personal_table("dm_notes", "customer_id")
    with pytest.raises(TypeError, match="subject_column"):
        svault.register_personal_table(dm.DmNote, 3)
    table = dm.DmNote.__table__
    svault.register_personal_table(table, table.c.customer_id)
    svault.register_personal_table(dm.DmNote, "customer_id")  # the same again: nothing changes
    with pytest.raises(ConfigurationError, match="registered with the subject column"):
        svault.register_personal_table(dm.DmNote, "agent_id")
    assert [t.table for t in svault.data_map(dm).tables].count("dm_notes") == 1


def test_a_read_only_vault_registers_and_maps(kms: LocalKms, sqlite_url: str) -> None:
    Vault(kms, sqlite_url).close()
    with Vault(kms, sqlite_url, readonly=True) as ro:
        dm.register_personal_tables(ro)
        assert "dm_addresses" in {t.table for t in ro.data_map(dm).tables}


# -- attach() warns about searchable tables whose subject column has no index --------------------


def _searchable_table(name: str, *, indexed: bool) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Uuid, index=indexed),
        sa.Column("email", Encrypted(String(100), subject="owner", searchable="email")),
    )


@pytest.fixture
def app_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


def test_attach_warns_once_per_table_whose_subject_column_has_no_index(
    svault: Vault, app_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    suffix = uuid.uuid4().hex[:8]
    bare = _searchable_table(f"dm_bare_{suffix}", indexed=False)
    indexed = _searchable_table(f"dm_indexed_{suffix}", indexed=True)
    with caplog.at_level(logging.WARNING, logger="ccvault"):
        svault.attach(app_engine)
        svault.detach(app_engine)
        svault.attach(app_engine)  # and again: one warning per table and process
    mine = [r.getMessage() for r in caplog.records if suffix in r.getMessage()]
    assert mine == [
        f"{bare.name} has blind indexes but its subject column owner has no index: a shred's "
        "blind-index sweep scans the whole table. Index the subject column "
        "(docs/sqlalchemy.md, 'Subject export and data map')"
    ]
    assert indexed.name not in caplog.text
    svault.detach(app_engine)


# -- ccvault data-map ---------------------------------------------------------------------------


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch, key_path: Path, svault: Vault, sqlite_url: str
) -> None:
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{key_path}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", sqlite_url)


def test_cli_data_map_json_and_markdown(settings: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data-map", "--models", "datamap_models"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {t["table"]: t["kind"] for t in data["tables"]}
    assert kinds["dm_addresses"] == "personal"  # registered by the module's hook
    assert kinds["dm_customers"] == "encrypted"
    assert "sqla_models" not in json.dumps(data)
    assert "interactions" not in kinds
    assert main(["data-map", "--models", "datamap_models", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Data map\n")
    assert "## dm_addresses (personal)" in out


def test_cli_data_map_errors(
    settings: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data-map", "--models", "no_such_module_x"]) == 1
    assert "cannot import the models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data-map", "--models", "datamap_models", "--format", "yaml"])
    with pytest.raises(SystemExit):
        main(["data-map"])  # --models is required
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'typo.db'}")
    assert main(["data-map", "--models", "datamap_models"]) == 1
    assert "no ccvault installation" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()  # read-only: nothing created
