"""Vault.from_settings (CCVAULT_* and the embedded default) and the `ccvault` command."""

from __future__ import annotations

import os
import sqlite3
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
    with pytest.raises(ConfigurationError, match=r"CCVAULT_CACHE_TTL_SECONDS.*greater than 0"):
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
    # The shortest retention accepted (issue 11, item 7: 0 let destroy-epochs destroy an epoch
    # other processes still wrote under); the rotation below is dated back past it.
    monkeypatch.setenv("CCVAULT_BACKUP_RETENTION_DAYS", "1")

    def run(*argv: str) -> dict[str, object]:
        assert main(list(argv)) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    # No admin command creates an installation: on an empty store each says so, creates nothing.
    for command in ("status", "rotate-epoch", "destroy-epochs", "add-kms-wraps"):
        assert main([command]) == 1
        assert "no ccvault installation at sqlite:///" in capsys.readouterr().err
        assert not (tmp_path / "k.db").exists()
    assert main(["destroy-epochs", "--dry-run"]) == 1
    assert "no ccvault installation" in capsys.readouterr().err
    Vault.from_settings().close()  # the application's first start creates the installation
    status = run("status")
    epochs = status["epochs"]
    assert isinstance(epochs, list)
    assert [(e["seq"], e["state"]) for e in epochs] == [(1, "active")]
    assert epochs[0]["kms"][0]["kms_id"] == first.kms_id
    # K_ref, the receipt key and the head-MAC key
    assert run("rotate-epoch") == {
        "epoch_seq": 2,
        "rewrapped": 3,
        "resumed": False,
        "quarantined": [],
    }
    # retired less than a day ago: not yet
    assert run("destroy-epochs") == {"destroyed_epochs": [], "held_by_quarantined_keys": []}
    with sqlite3.connect(tmp_path / "k.db") as db:  # the rotation was two days ago
        db.execute("UPDATE ccvault_epochs SET retired_at = retired_at - 2 * 86400 WHERE seq = 1")
    db.close()
    assert run("destroy-epochs") == {"destroyed_epochs": [1], "held_by_quarantined_keys": []}
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


# -- issue 10: configuration that silently does the wrong thing --------------------------------


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CCVAULT_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("given", ["CCVAULT_KMS_URL", "CCVAULT_KEYSTORE_URL"])
def test_one_url_without_the_other_is_refused(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A production key store is never wrapped by a throwaway ./.ccvault/master.key."""
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    LocalKms.generate(tmp_path / "m.key")
    values = {
        "CCVAULT_KMS_URL": f"local://{tmp_path / 'm.key'}",
        "CCVAULT_KEYSTORE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
    }
    monkeypatch.setenv(given, values[given])
    missing = next(name for name in values if name != given)
    with pytest.raises(ConfigurationError, match=f"{given} is set but {missing} is not"):
        Vault.from_settings()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.key"]  # no .ccvault, no prod.db


def test_unknown_ccvault_variables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("CCVAULT_KMS_ULR", "local:///secret-looking-value")
    with pytest.raises(ConfigurationError) as caught:
        Vault.from_settings()
    message = str(caught.value)
    assert "CCVAULT_KMS_ULR (did you mean CCVAULT_KMS_URL?)" in message
    assert "secret-looking-value" not in message
    monkeypatch.setenv("ccvault_cache_ttl", "5")  # read case-insensitively, so checked so too
    with pytest.raises(ConfigurationError) as caught:
        CcvaultSettings()
    assert (
        "variables CCVAULT_KMS_ULR (did you mean CCVAULT_KMS_URL?), "
        "ccvault_cache_ttl (did you mean CCVAULT_CACHE_TTL_SECONDS?)" in str(caught.value)
    )


def test_known_and_reserved_variables_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    for name in ("CCVAULT_VAULT_ROLE_ID", "CCVAULT_VAULT_SECRET_ID", "CCVAULT_VAULT_TOKEN"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("CCVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1/test")
    monkeypatch.setenv("CCVAULT_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1/test")
    monkeypatch.setenv("CCVAULT_CACHE_TTL_SECONDS", "7")
    assert CcvaultSettings().cache_ttl_seconds == 7


def test_every_ccvault_variable_in_the_repository_is_known() -> None:
    """The unknown-variable check knows every name the code reads; the test suite's and the
    benchmarks' own variables use the reserved prefixes."""
    import re

    from ccvault._settings import OTHER_VARIABLES, RESERVED_PREFIXES

    root = Path(__file__).parents[1]
    fields = {f"CCVAULT_{name.upper()}" for name in CcvaultSettings.model_fields}
    found: dict[str, set[str]] = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            for name in re.findall(r"\bCCVAULT_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
                found.setdefault(name, set()).add(folder)
    unknown = {
        name: where
        for name, where in found.items()
        if name not in fields | OTHER_VARIABLES
        and not name.startswith(RESERVED_PREFIXES)
        and name != "CCVAULT_KMS_ULR"  # the typo this module tests
    }
    assert unknown == {}


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a failure: exit status 1 and exactly one line on stderr."""
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CCVAULT_CACHE_TTL_SECONDS": "abc"}, "CCVAULT_CACHE_TTL_SECONDS (cache_ttl_seconds): "),
        ({"CCVAULT_PER_EPOCH_ROOTS": "maybe"}, "CCVAULT_PER_EPOCH_ROOTS"),
        ({"CCVAULT_SUBJECT_TYPE": "bogus"}, "CCVAULT_SUBJECT_TYPE (subject_type): Value error"),
        ({"CCVAULT_KMS_URL": "local:relative/master.key"}, "malformed local KMS URL"),
        ({"CCVAULT_KMS_URL": "local://{tmp}"}, "is a directory"),
        ({"CCVAULT_KMS_URL": "local://{tmp}/absent.key"}, "does not exist"),
        ({"CCVAULT_KEYSTORE_URL": "not a database URL"}, "no SQLAlchemy URL"),
        ({"CCVAULT_KEYSTORE_URL": "nosuchdb://h/x"}, "unknown database or driver"),
    ],
)
@pytest.mark.parametrize("command", ["status", "rotate-epoch"])
def test_cli_configuration_errors_are_one_line(
    env: dict[str, str],
    expected: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    LocalKms.generate(tmp_path / "m.key")
    store = f"sqlite:///{tmp_path / 'k.db'}"
    Vault(LocalKms.from_file(tmp_path / "m.key"), store).close()  # an installation to look at
    settings = {"CCVAULT_KMS_URL": f"local://{tmp_path / 'm.key'}", "CCVAULT_KEYSTORE_URL": store}
    settings.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    line = _cli_error([command], capsys)
    assert line.startswith(f"ccvault {command}: ConfigurationError: ")
    assert expected in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:hunter2@127.0.0.1:1/custdb",
        "mysql+pymysql://app:hunter2@127.0.0.1:1/custdb",
    ],
)
def test_unreachable_key_store_says_where_and_why(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "cannot create the key store tables" after seconds of retries: the host, port,
    database and the driver's own error, at once, never the password."""
    from ccvault import KeyStoreError

    kms = LocalKms.generate(tmp_path / "m.key")
    for readonly in (False, True):
        with pytest.raises(KeyStoreError) as caught:
            Vault(kms, url, readonly=readonly)
        message = str(caught.value)
        assert (
            "cannot connect to the key store (host 127.0.0.1, port 1, database custdb;" in message
        )
        assert "app:***@127.0.0.1:1/custdb" in message
        assert "OperationalError: " in message
        assert "hunter2" not in message
        assert "cannot create the key store tables" not in message
    _clean_env(monkeypatch)
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'm.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", url)
    for command in ("status", "rotate-epoch"):
        line = _cli_error([command], capsys)
        assert line.startswith(f"ccvault {command}: KeyStoreError: cannot connect")
        assert "hunter2" not in line


@pytest.mark.parametrize(
    ("kms", "store", "expected"),
    [
        # an existing installation, and a directory given as the master-key path
        ("{tmp}", "sqlite:///{tmp}/k.db", "is a directory"),
        # an unreachable server: the store is checked first, its password never printed
        ("{tmp}/m.key", "postgresql+psycopg://app:hunter2@127.0.0.1:1/custdb", "port 1"),
    ],
)
def test_cli_failure_prints_no_traceback_in_a_real_process(
    kms: str, store: str, expected: str, tmp_path: Path
) -> None:
    Vault(LocalKms.generate(tmp_path / "m.key"), f"sqlite:///{tmp_path}/k.db").close()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CCVAULT_")}
    env["CCVAULT_KMS_URL"] = "local://" + kms.format(tmp=tmp_path)
    env["CCVAULT_KEYSTORE_URL"] = store.format(tmp=tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "ccvault", "rotate-epoch"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("url", "module", "hint"),
    [
        ("postgresql+psycopg://h/x", "psycopg", "pip install 'ccvault[postgres]'"),
        ("mysql+pymysql://h/x", "pymysql", "pip install 'ccvault[mysql]'"),
        ("postgresql+psycopg2://h/x", "psycopg2", "install psycopg2"),
    ],
)
def test_a_missing_database_driver_names_the_extra(
    url: str, module: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(ConfigurationError) as caught:
        Vault(LocalKms.ephemeral(), url)
    assert str(caught.value).endswith(f"which is not installed: {hint}")
    assert f"needs the {module!r} driver" in str(caught.value)


def test_demo_ignores_ccvault_settings_and_runs_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo never touches a configured production store (nor trips on a typo there)."""
    prod = tmp_path / "prod.db"
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'prod.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{prod}")
    monkeypatch.setenv("CCVAULT_KMS_ULR", "typo")
    monkeypatch.setenv("CCVAULT_SUBJECT_TYPE", "int")
    for _ in range(2):
        assert main(["demo", "--customers", "20"]) == 0
        out = capsys.readouterr().out
        assert "note: the demo ignores CCVAULT_* settings" in out
        assert "signature valid: True" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing beside the temp dirs
    keep = tmp_path / "demo"
    assert main(["demo", "--customers", "20", "--keep", str(keep)]) == 0
    capsys.readouterr()
    assert main(["demo", "--customers", "20", "--keep", str(keep)]) == 2  # said clearly
    assert "already holds a demo" in capsys.readouterr().err
    assert not prod.exists()


def test_embedded_default_home_that_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_env(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("CCVAULT_HOME", str(tmp_path / "file"))
    line = _cli_error(["rotate-epoch"], capsys)
    assert line.startswith("ccvault rotate-epoch: ConfigurationError: cannot use ")
    assert "as the ccvault home (CCVAULT_HOME)" in line


# -- issue 10: admin commands an operator can trust ---------------------------------------------


def _configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: str) -> LocalKms:
    _clean_env(monkeypatch)
    kms = LocalKms.generate(tmp_path / "m.key")
    monkeypatch.setenv("CCVAULT_KMS_URL", f"local://{tmp_path / 'm.key'}")
    monkeypatch.setenv("CCVAULT_KEYSTORE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    for name, value in extra.items():
        monkeypatch.setenv(f"CCVAULT_{name.upper()}", value)
    return kms


def test_cli_rotation_reports_progress_and_survives_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from ccvault.keystore._sql import SqlKeyStore

    _configure(tmp_path, monkeypatch)
    with Vault.from_settings() as app:
        app.warm([uuid.uuid4() for _ in range(1100)])  # 1103 with K_ref, receipt and head keys
    real = SqlKeyStore.rewrap
    calls = []

    def ctrl_c_in_the_second_batch(self: SqlKeyStore, *args: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(SqlKeyStore, "rewrap", ctrl_c_in_the_second_batch)
    try:
        status = main(["rotate-epoch"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command with a traceback")
    assert status == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "ccvault rotate-epoch: re-wrapped 500/1103 keys",
        "ccvault rotate-epoch: interrupted after re-wrapping 500 of 1103 keys; every batch "
        "re-wrapped so far is committed and the other keys still open under their older epoch; "
        "run `ccvault rotate-epoch` again: it finishes the re-wrapping and starts no new epoch",
    ]
    monkeypatch.setattr(SqlKeyStore, "rewrap", real)
    assert main(["rotate-epoch"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "epoch_seq": 2,
        "rewrapped": 603,
        "resumed": True,
        "quarantined": [],
    }
    assert captured.err.splitlines() == [
        "ccvault rotate-epoch: re-wrapped 500/603 keys",
        "ccvault rotate-epoch: re-wrapped 603/603 keys",
    ]
    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(e["seq"], e["live_keys"]) for e in status["epochs"]] == [(1, 0), (2, 1103)]
    assert status["rotation_overdue"] is False


def test_cli_status_and_dry_run_show_what_is_due_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    from datetime import datetime, timedelta, timezone

    from ccvault.testing import FrozenClock

    kms = _configure(tmp_path, monkeypatch, per_epoch_roots="true", backup_retention_days="1")
    clock = FrozenClock()  # November 2023: the active epoch is long overdue for rotation now
    t0 = clock()
    with Vault(
        kms,
        f"sqlite:///{tmp_path / 'k.db'}",
        per_epoch_roots=True,
        clock=clock,
        backup_retention=timedelta(days=1),
    ) as vault:
        vault.encrypt(uuid.uuid4(), b"x", context="a.b")
        vault.rotate_epoch()
        clock.advance(2 * 86_400)
        assert vault.destroy_epochs() == [1]
        vault.rotate_epoch()
        roots = {e.seq: e.roots for e in vault.epochs()}

    def when(days: float) -> str:
        return datetime.fromtimestamp(t0 + days * 86_400, tz=timezone.utc).isoformat()

    def run(*argv: str) -> dict[str, object]:
        assert main(list(argv)) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result

    key_file = (tmp_path / "m.key").read_bytes()
    status = run("status")
    assert status["active_epoch"] == 3
    assert status["rotation_due_at"] == when(32)
    assert status["rotation_overdue"] is True
    epochs = status["epochs"]
    assert isinstance(epochs, list)
    assert [(e["seq"], e["state"], e["live_keys"], e["destroyable_at"]) for e in epochs] == [
        (1, "destroyed", 0, None),
        (2, "retired", 0, when(3)),
        (3, "active", 4, None),
    ]
    assert epochs[0]["kms"] == [
        {"kms_id": kms.kms_id, "root_id": roots[1][0][1], "root_destruction": "destroyed"}
    ]
    assert epochs[1]["kms"] == [{"kms_id": kms.kms_id, "root_id": roots[2][0][1]}]
    assert run("destroy-epochs", "--dry-run") == {
        "dry_run": True,
        "would_destroy_epochs": [2],
        "held_by_quarantined_keys": [],
        "keys_to_rewrap_first": 0,
        "roots_to_destroy": [{"epoch": 2, "kms_id": kms.kms_id, "root_id": roots[2][0][1]}],
    }
    assert run("status") == status  # the dry run changed nothing
    assert (tmp_path / "m.key").read_bytes() == key_file  # no root created or destroyed
    assert run("destroy-epochs") == {"destroyed_epochs": [2], "held_by_quarantined_keys": []}
    assert (tmp_path / "m.key").read_bytes() != key_file


def test_cli_status_on_an_empty_database_creates_nothing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlalchemy as sa

    _configure(tmp_path, monkeypatch, keystore_url=db_url)
    key_file = (tmp_path / "m.key").read_bytes()
    for argv in (["status"], ["destroy-epochs", "--dry-run"]):
        line = _cli_error(argv, capsys)
        assert line.startswith(
            f"ccvault {argv[0]}: ConfigurationError: no ccvault installation at "
        )
    assert (tmp_path / "m.key").read_bytes() == key_file
    if db_url.startswith("sqlite"):
        assert not (tmp_path / "keys.db").exists()
    else:
        eng = sa.create_engine(db_url)
        try:
            assert sa.inspect(eng).get_table_names() == []
        finally:
            eng.dispose()
