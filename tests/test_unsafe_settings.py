"""Settings that lose data or break guarantees are refused (issue 11, item 7).

Non-finite numbers (``inf`` made ``shred()`` commit and then crash before evicting its caches),
periods that overflow dates (``1e12`` days), a backup retention shorter than a day or than the
cache TTL plus the KMS grace period (``backup_retention=0`` let ``destroy_epochs()`` destroy an
epoch that other processes still wrote new keys under), and ``destroy_epochs()`` never destroys an
epoch retired less than that long ago, whatever the attributes say.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ccvault import CcvaultSettings, ConfigurationError, Vault
from ccvault._settings import MIN_BACKUP_RETENTION, MIN_NONCE_BUDGET, settings_table
from ccvault.keyring import USE_BLOCK
from ccvault.kms import LocalKms
from ccvault.testing import FrozenClock

DAY = 86_400.0
CTX = "calls.notes"


# -- CCVAULT_* settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CCVAULT_CACHE_TTL_SECONDS", "inf", "finite number"),
        ("CCVAULT_CACHE_TTL_SECONDS", "nan", "finite number"),
        ("CCVAULT_CACHE_TTL_SECONDS", "-inf", "finite number"),
        ("CCVAULT_KMS_GRACE_SECONDS", "inf", "finite number"),
        ("CCVAULT_KMS_GRACE_SECONDS", "nan", "finite number"),
        ("CCVAULT_EPOCH_ROTATION_DAYS", "inf", "finite number"),
        ("CCVAULT_EPOCH_ROTATION_DAYS", "1e12", "less than or equal to 36500"),
        ("CCVAULT_BACKUP_RETENTION_DAYS", "inf", "finite number"),
        ("CCVAULT_BACKUP_RETENTION_DAYS", "1e12", "less than or equal to 36500"),
        ("CCVAULT_BACKUP_RETENTION_DAYS", "0", "greater than or equal to 1"),
        ("CCVAULT_BACKUP_RETENTION_DAYS", "0.5", "greater than or equal to 1"),
    ],
)
def test_unsafe_settings_are_refused_by_name(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        CcvaultSettings()
    assert f"{variable} ({variable[len('CCVAULT_') :].lower()}): " in str(caught.value)
    assert says in str(caught.value)


def test_retention_must_cover_the_cache_ttl_and_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCVAULT_CACHE_TTL_SECONDS", str(2 * DAY))
    monkeypatch.setenv("CCVAULT_BACKUP_RETENTION_DAYS", "2")
    with pytest.raises(ConfigurationError) as caught:
        CcvaultSettings()
    message = str(caught.value)
    assert "CCVAULT_BACKUP_RETENTION_DAYS is 2 days, shorter than" in message
    assert "CCVAULT_CACHE_TTL_SECONDS + CCVAULT_KMS_GRACE_SECONDS (2.00347 days)" in message
    monkeypatch.setenv("CCVAULT_BACKUP_RETENTION_DAYS", "2.01")
    assert CcvaultSettings().backup_retention_days == 2.01
    monkeypatch.setenv("CCVAULT_BACKUP_RETENTION_DAYS", "1")
    monkeypatch.delenv("CCVAULT_CACHE_TTL_SECONDS")
    assert CcvaultSettings().backup_retention_days == 1.0  # the floor, with the default caches


def test_from_settings_with_an_overflowing_period_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timedelta(days=1e12) raised OverflowError inside from_settings."""
    LocalKms.generate(tmp_path / "m.key")
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'm.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    for variable in ("CCVAULT_EPOCH_ROTATION_DAYS", "CCVAULT_BACKUP_RETENTION_DAYS"):
        monkeypatch.setenv(variable, "1e12")
        with pytest.raises(ConfigurationError, match=variable):
            Vault.from_settings()
        monkeypatch.delenv(variable)
    assert not (tmp_path / "k.db").exists()


def test_the_settings_table_states_the_constraints() -> None:
    table = settings_table()
    assert "at least 1 day and at least cache_ttl_seconds + kms_grace_seconds" in table
    assert "(finite, > 0)" in table


# -- Vault(...) arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"cache_ttl": math.inf}, "cache_ttl must be a finite number greater than 0"),
        ({"cache_ttl": math.nan}, "cache_ttl must be a finite number"),
        ({"cache_ttl": 0}, "cache_ttl must be a finite number greater than 0"),
        ({"cache_ttl": -1.0}, "cache_ttl must be"),
        ({"cache_ttl": "60"}, "cache_ttl must be a number of seconds"),
        ({"cache_ttl": True}, "cache_ttl must be a number of seconds"),
        ({"kms_grace_period": math.inf}, "kms_grace_period must be a finite number at least 0"),
        ({"kms_grace_period": math.nan}, "kms_grace_period must be a finite number"),
        ({"kms_grace_period": -1}, "kms_grace_period must be a finite number at least 0"),
        ({"cache_max_entries": math.inf}, "cache_max_entries must be an int"),
        ({"cache_max_entries": 1.5}, "cache_max_entries must be an int"),
        ({"cache_max_entries": 0}, "cache_max_entries must be at least 1"),
        ({"nonce_budget": math.inf}, "nonce_budget must be an int"),
        ({"nonce_budget": 100}, "nonce_budget must be at least 4096 and at most 4294967296"),
        ({"nonce_budget": 2**40}, "nonce_budget must be at least 4096"),
        ({"epoch_rotation_period": 30}, "epoch_rotation_period must be a datetime.timedelta"),
        ({"epoch_rotation_period": timedelta(0)}, "epoch_rotation_period must be positive"),
        ({"epoch_rotation_period": timedelta.max}, "at most 36500 days"),
        ({"backup_retention": timedelta(0)}, "backup_retention must be at least 1 days"),
        ({"backup_retention": timedelta(hours=23)}, "backup_retention must be at least 1 days"),
        ({"backup_retention": timedelta.max}, "backup_retention must be at least"),
        ({"backup_retention": timedelta(days=36_501)}, "at most 36500 days"),
        (
            {"cache_ttl": 2 * DAY, "backup_retention": timedelta(days=2)},
            "backup_retention is 2 days, shorter than cache_ttl + kms_grace_period (2.00347 days)",
        ),
        (
            {"kms_grace_period": 3 * DAY, "backup_retention": timedelta(days=2)},
            "shorter than cache_ttl + kms_grace_period",
        ),
    ],
)
def test_unsafe_vault_arguments_are_refused_before_anything_is_created(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with pytest.raises(ConfigurationError) as caught:
        Vault(LocalKms.ephemeral(), url, **options)
    assert says in str(caught.value)
    assert not (tmp_path / "keys.db").exists()


def test_the_floor_and_a_long_cache_are_accepted(sqlite_url: str) -> None:
    kms = LocalKms.ephemeral()
    with Vault(kms, sqlite_url, backup_retention=MIN_BACKUP_RETENTION) as vault:
        assert vault.backup_retention == timedelta(days=1)
    with Vault(kms, sqlite_url, cache_ttl=2 * DAY, backup_retention=timedelta(days=3)) as vault:
        assert vault.cache_ttl == 2 * DAY


def test_the_smallest_nonce_budget_is_one_block_of_uses() -> None:
    assert MIN_NONCE_BUDGET == USE_BLOCK


# -- destroy_epochs() keeps a just-retired epoch, whatever the attributes say ----------------------


def test_destroy_epochs_never_destroys_an_epoch_retired_less_than_a_day_ago(db_url: str) -> None:
    """The attributes are public: lowering backup_retention after construction (or a vault
    built around the checks) must not let a just-retired epoch go."""
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with Vault(kms, db_url, per_epoch_roots=True, clock=clock) as vault:
        vault.backup_retention = timedelta(0)
        vault.rotate_epoch()
        clock.advance(DAY - 1)
        assert vault.destroy_epochs(dry_run=True) == []
        assert vault.destroy_epochs() == []
        clock.advance(1)
        assert vault.destroy_epochs() == [1]


def test_destroy_epochs_waits_for_this_process_cache_and_grace(db_url: str) -> None:
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with Vault(kms, db_url, per_epoch_roots=True, clock=clock) as vault:
        vault.backup_retention = timedelta(days=1)
        vault.cache_ttl = 3 * DAY
        vault.rotate_epoch()
        clock.advance(2 * DAY)
        assert vault.destroy_epochs() == []
        clock.advance(DAY + vault.kms_grace_period)
        assert vault.destroy_epochs() == [1]
        vault.rotate_epoch()
        vault.cache_ttl = math.inf  # nothing is ever old enough
        clock.advance(365 * DAY)
        assert vault.destroy_epochs() == []


def test_a_process_still_writing_under_the_retired_epoch_keeps_its_data(db_url: str) -> None:
    """The issue's scenario: with backup_retention=0 the admin destroyed epoch 1 at once, while a
    process that had not seen the rotation yet kept wrapping new customers' keys under it."""
    kms, clock = LocalKms.ephemeral(), FrozenClock()
    with (
        Vault(kms, db_url, clock=clock) as app,
        Vault(kms, db_url, clock=clock) as admin,
    ):
        admin.backup_retention = timedelta(0)  # what the settings used to accept
        admin.rotate_epoch()
        assert admin.destroy_epochs() == []  # the epoch was retired just now
        new_customer = uuid.uuid4()
        blob = app.encrypt(new_customer, b"written after the rotation", context=CTX)
        clock.advance(DAY)
        assert admin.destroy_epochs() == [1]  # the late key is re-wrapped first
    with Vault(kms, db_url) as fresh:
        assert fresh.decrypt(blob, context=CTX, subject=new_customer) == (
            b"written after the rotation"
        )
