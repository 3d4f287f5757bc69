"""Vault.from_settings (CCVAULT_* and the embedded default) and the `ccvault` command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ccvault import CcvaultSettings, ConfigurationError, DevelopmentDefaultWarning, Vault
from ccvault._settings import kms_from_url
from ccvault.cli import main
from ccvault.kms import AwsKms, LocalKms, MultiKms, VaultTransitKms


def test_embedded_default_warns_and_lives_in_dot_ccvault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CCVAULT_KMS_URL", "CCVAULT_KEYSTORE_URL", "CCVAULT_HOME"):
        monkeypatch.delenv(var, raising=False)
    with pytest.warns(DevelopmentDefaultWarning, match="development"):
        vault = Vault.from_settings()
    with vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context="c.x")
    key = tmp_path / ".ccvault" / "master.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert (tmp_path / ".ccvault" / "keys.db").exists()
    with pytest.warns(DevelopmentDefaultWarning), Vault.from_settings() as again:
        assert again.decrypt(blob, context="c.x") == b"x"


def test_settings_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "m.key"
    LocalKms.generate(key)
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{key}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    monkeypatch.setenv("CCVAULT_SUBJECT_TYPE", "int")
    monkeypatch.setenv("CCVAULT_CACHE_TTL_SECONDS", "5")
    with Vault.from_settings() as vault:  # no warning: a KMS URL is configured
        assert vault.subject_type.spec == "int"
        assert vault.cache_ttl == 5
        assert vault.decrypt(vault.encrypt("42", b"v", context="a.b"), context="a.b", subject=42)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "local://host/path",
        "local://",
        "",
        "aws-kms://",
        "aws-kms://alias/x?region=eu-west-1&secret_access_key=zzz",
        "vault://transit",
        "vault://transit/k?addr=https://v:8200&token=s.abc",
    ],
)
def test_bad_kms_urls(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    with pytest.raises(ConfigurationError) as caught:
        Vault.from_settings(CcvaultSettings(kms_url=url, keystore_url=f"sqlite:///{tmp_path}/k.db"))
    assert "zzz" not in str(caught.value)
    assert "s.abc" not in str(caught.value)


def test_kms_urls_build_each_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "s.not-a-real-token")
    aws = kms_from_url("aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd?region=eu-west-1")
    assert isinstance(aws, AwsKms)
    assert "1234abcd" in aws.kms_id
    vault = kms_from_url("vault://transit/ccvault?addr=https://vault.internal:8200")
    assert isinstance(vault, VaultTransitKms)
    assert "s.not-a-real-token" not in repr(vault)
    first, second = (LocalKms.generate(tmp_path / n) for n in ("a.key", "b.key"))
    multi = kms_from_url(f"local://{tmp_path / 'a.key'}, local://{tmp_path / 'b.key'}")
    assert isinstance(multi, MultiKms)
    assert [m.kms_id for m in multi.members] == [first.kms_id, second.kms_id]
    for leaky, secret in (
        ("vault://transit/k?addr=https://v:8200&token=s.abc", "s.abc"),
        ("vault://hvs.CAES123@transit/k", "hvs.CAES123"),
        ("aws-kms://alias/x?endpoint_url=https://AKIAX:wJalr@kms.internal", "wJalr"),
        ("local:///k.key,vault://transit/k?secret_id=abc-123", "abc-123"),
    ):
        assert secret not in repr(CcvaultSettings(kms_url=leaky))


def test_settings_validation_and_repr() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        CcvaultSettings(cache_ttl_seconds=0)
    s = CcvaultSettings(keystore_url="postgresql+psycopg://app:hunter2@db/x")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "hunter2" not in f"{s}"


def test_cli_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--customers", "50", "--keep", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "[shredded]" in out
    assert "signature valid: True" in out
    assert "98 readable, 2 shredded" in out


def test_cli_entry_point_and_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ccvault", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("ccvault ")
    assert main([]) == 2


def test_core_works_without_the_asyncio_extra(tmp_path: Path) -> None:
    """`pip install ccvault` has no greenlet: importing and using the vault must not need it."""
    code = (
        "import sys, uuid; sys.modules['greenlet'] = None\n"
        "from ccvault import Vault\n"
        "from ccvault.kms import LocalKms\n"
        "import ccvault.sqlalchemy\n"
        f"v = Vault(LocalKms.ephemeral(), 'sqlite:///{tmp_path}/k.db')\n"
        "u = uuid.uuid4()\n"
        "assert v.decrypt(v.encrypt(u, b'x', context='a.b'), context='a.b', subject=u) == b'x'\n"
        "assert 'sqlalchemy.ext.asyncio' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_admin_commands_run_on_the_configured_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    first = LocalKms.generate(tmp_path / "a.key")
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'a.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    monkeypatch.setenv("CCVAULT_PER_EPOCH_ROOTS", "true")
    monkeypatch.setenv("CCVAULT_BACKUP_RETENTION_DAYS", "0")

    def run(*argv: str) -> dict[str, object]:
        assert main(list(argv)) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    status = run("status")
    epochs = status["epochs"]
    assert isinstance(epochs, list)
    assert [(e["seq"], e["state"]) for e in epochs] == [(1, "active")]
    assert epochs[0]["kms"][0]["kms_id"] == first.kms_id
    assert run("rotate-epoch") == {"epoch_seq": 2, "rewrapped": 2}  # K_ref and receipt key
    assert run("destroy-epochs") == {"destroyed_epochs": [1]}
    states = [(e["seq"], e["state"]) for e in run("status")["epochs"]]  # type: ignore[union-attr]
    assert states == [(1, "destroyed"), (2, "active")]
    # add-kms-wraps needs a MultiKms: a clear error and exit status 1, no traceback.
    assert main(["add-kms-wraps"]) == 1
    assert "ConfigurationError" in capsys.readouterr().err
    LocalKms.generate(tmp_path / "b.key")
    monkeypatch.setenv(
        "CCVAULT_KMS_URL", f"local://{tmp_path / 'a.key'},local://{tmp_path / 'b.key'}"
    )
    assert run("add-kms-wraps") == {"wraps_added": 1}  # the one live epoch
