"""Ledger sinks against the real thing: SQLite files, PostgreSQL, MariaDB, JSONL files and S3 on
moto's server over HTTP. Conditional appends, gap-free sequences under concurrent appenders
(threads; two processes for SQL and JSONL), torn JSONL writes, unreachable sinks, URLs."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault import ConfigurationError, LedgerIntegrityError, LedgerUnavailableError
from ccvault._secret import SecretKey
from ccvault.erasure import (
    Journal,
    JsonlLedger,
    LedgerSink,
    S3Ledger,
    SqlLedger,
    ledger_from_url,
    verify_ledger,
)
from ledgers import (
    INSTALLATION,
    SQL_SINKS,
    Raw,
    ledger_url,
    new_seed,
    one_host_ledger_url,
    public_of,
    receipt,
    s3_bucket,
    s3_env,
    sql_ledger_url,
)
from ledgers import s3_url as make_s3_url

__all__ = ["ledger_url", "one_host_ledger_url", "sql_ledger_url"]  # fixtures, for pytest

SPAWN = mp.get_context("spawn")
ROOT = Path(__file__).resolve().parent.parent


def _open(url: str) -> LedgerSink:
    return ledger_from_url(url)


# -- the protocol, on every sink ------------------------------------------------------------------


def test_every_sink_appends_only_after_the_entry_before(ledger_url: str) -> None:
    sink = _open(ledger_url)
    assert isinstance(sink, LedgerSink)
    assert sink.head(INSTALLATION) is None
    assert list(sink.read(INSTALLATION)) == []
    assert sink.append(INSTALLATION, 1, [b'{"seq":1}']) == 0  # no entry 0 yet
    assert sink.append(INSTALLATION, 0, [b'{"seq":0}', b'{"seq":1}']) == 2
    assert sink.append(INSTALLATION, 0, [b'{"seq":0}']) == 0  # taken
    assert sink.append(INSTALLATION, 1, [b'{"seq":1}']) == 0  # taken
    assert sink.append(INSTALLATION, 3, [b'{"seq":3}']) == 0  # would leave a gap
    assert sink.append(INSTALLATION, 2, [b'{"seq":2}']) == 1
    items = list(sink.read(INSTALLATION))
    assert [i.data for i in items] == [b'{"seq":0}', b'{"seq":1}', b'{"seq":2}']
    assert [i.data for i in sink.read(INSTALLATION, after=0, limit=1)] == [b'{"seq":1}']
    head = sink.head(INSTALLATION)
    assert head is not None
    assert head.data == b'{"seq":2}'
    if ledger_url.startswith(("file:", "s3:")):
        assert sink.torn(INSTALLATION, repair=True) == []
    with pytest.raises(ValueError, match="1 to 500"):
        sink.append(INSTALLATION, 3, [b"{}"] * 501)
    with pytest.raises(ValueError, match="1 to 500"):
        sink.append(INSTALLATION, 3, [])
    sink.close()


def test_sql_sinks_keep_one_sequence_per_installation(sql_ledger_url: str) -> None:
    """(The file and S3 sinks hold one installation per file or prefix.)"""
    sink = _open(sql_ledger_url)
    assert sink.append("a" * 32, 0, [b"a0"]) == 1
    assert sink.append("b" * 32, 0, [b"b0", b"b1"]) == 2
    assert [i.data for i in sink.read("a" * 32)] == [b"a0"]
    assert [i.seq for i in sink.read("b" * 32)] == [0, 1]
    sink.close()


def _appender(url: str, seed_hex: str, count: int, results: Any, name: str) -> None:
    """In a child process (or thread): open a journal of its own and append ``count`` records."""
    try:
        seed = SecretKey(bytes.fromhex(seed_hex))
        journal = Journal(ledger_from_url(url), INSTALLATION, seed)
        base = int(name[1:]) * 1000
        seqs = [journal.append(receipt(seed, base + i)).seq for i in range(count)]
        results.put((name, seqs, None))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((name, [], f"{type(exc).__name__}: {exc}"))


def _check_gap_free(
    url: str, seed: SecretKey, got: list[tuple[str, list[int], str | None]], total: int
) -> None:
    assert [error for _, _, error in got if error] == []
    seqs = sorted(s for _, ss, _ in got for s in ss)
    assert seqs == list(range(1, total + 1))  # each appender got its own seqs, none twice
    journal = Journal(ledger_from_url(url), INSTALLATION, seed)
    report = journal.verify()
    assert report.problems == ()
    assert report.head_seq == total
    assert [e.seq for e in journal.entries()] == list(range(total + 1))


def _race(url: str, runner: Any, results: Any, count: int, names: list[str]) -> None:
    """Start an appender per name at once (threads or processes), the genesis entry included in
    the race; then every seq is taken once, with no gap, and the chain verifies."""
    seed = new_seed()
    runners = [
        runner(target=_appender, args=(url, seed.reveal().hex(), count, results, name))
        for name in names
    ]
    for r in runners:
        r.start()
    got = [results.get(timeout=180) for _ in runners]
    for r in runners:
        r.join(30)
        assert getattr(r, "exitcode", 0) == 0
    _check_gap_free(url, seed, got, count * len(names))


def test_gap_free_under_concurrent_appenders_in_threads(ledger_url: str) -> None:
    import queue

    _race(ledger_url, threading.Thread, queue.Queue(), 12, ["t1", "t2", "t3", "t4"])


@pytest.mark.slow
def test_gap_free_under_two_appending_processes(one_host_ledger_url: str) -> None:
    """SQL and JSONL; S3 is raced by threads above (each with its own client)."""
    _race(one_host_ledger_url, SPAWN.Process, SPAWN.Queue(), 40, ["p1", "p2"])


# -- SQL -------------------------------------------------------------------------------------------


def test_a_sql_head_row_behind_its_entries_is_an_integrity_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed = new_seed()
    Journal(SqlLedger(url), INSTALLATION, seed).append_many([receipt(seed, n) for n in range(3)])
    raw = Raw(url)
    raw.set_head(1)  # a restored heads table: entries 2 and 3 lie beyond it
    with pytest.raises(LedgerIntegrityError, match="after the head it records"):
        Journal(SqlLedger(url), INSTALLATION, seed).append(receipt(seed, 9))
    raw.close()


def test_the_sql_sink_reports_a_head_row_whose_entry_is_gone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed = new_seed()
    Journal(SqlLedger(url), INSTALLATION, seed).append_many([receipt(seed, n) for n in range(3)])
    raw = Raw(url)
    raw.cut_from(2)  # the head row still says 3
    with pytest.raises(LedgerIntegrityError, match="missing seq 3") as caught:
        Journal(SqlLedger(url), INSTALLATION, seed)
    assert caught.value.seq == 3
    report = verify_ledger(SqlLedger(url), INSTALLATION, public_of(seed))
    assert report.seqs("truncated") == [2, 3]
    raw.close()


def test_sql_prefix_and_in_memory_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        SqlLedger(f"sqlite:///{tmp_path / 'l.db'}", prefix="Bad-Prefix")
    with pytest.raises(ConfigurationError, match="in-memory"):
        SqlLedger("sqlite://")
    with pytest.raises(ConfigurationError, match="in-memory"):
        SqlLedger("sqlite:///:memory:")
    with pytest.raises(ConfigurationError, match="ledger URL"):
        ledger_from_url("nosuchdb+driver://x/y")


def test_a_sql_ledger_binds_to_an_engine(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    sink = SqlLedger(engine)
    assert sink.append(INSTALLATION, 0, [b"x"]) == 1
    sink.close()
    engine.dispose()


# -- JSONL ---------------------------------------------------------------------------------------

_CRASH_MID_LINE = """
import os, sys
from ccvault._secret import SecretKey
from ccvault.erasure import Journal, JsonlLedger
from ccvault.erasure import _ledger_file

sys.path.insert(0, {tests!r})
from ledgers import INSTALLATION, receipt

real_open = open

class CutShort:
    def __init__(self, f):
        self._f = f
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __iter__(self):
        return iter(self._f)
    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        os.fsync(self._f.fileno())
        os._exit(137)

seed = SecretKey(bytes.fromhex({seed!r}))
journal = Journal(JsonlLedger({path!r}), INSTALLATION, seed)
journal.append_many([receipt(seed, n) for n in range(3)])
_ledger_file.open = lambda *a, **k: CutShort(real_open(*a, **k))
journal.append(receipt(seed, 99))
print("the crash did not happen")
"""


def _crash_mid_line(path: Path, seed: SecretKey) -> None:
    code = _CRASH_MID_LINE.format(
        tests=str(ROOT / "tests"), seed=seed.reveal().hex(), path=str(path)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 137, result.stderr.decode()


def test_a_crash_mid_line_is_a_torn_write_reported_and_repaired_not_tampering(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, seed = tmp_path / "ledger.jsonl", new_seed()
    _crash_mid_line(path, seed)
    assert not path.read_bytes().endswith(b"\n")  # the half line is there
    public = public_of(seed)
    unrepaired = verify_ledger(JsonlLedger(path), INSTALLATION, public)  # an auditor's look
    assert [(p.kind, p.seq) for p in unrepaired.problems] == [("torn", 4)]
    assert "not repaired" in unrepaired.problems[0].detail
    assert not unrepaired.ok
    journal = Journal(JsonlLedger(path), INSTALLATION, seed)
    assert journal.head().seq == 3  # the torn line was never an entry
    with caplog.at_level(logging.WARNING, logger="ccvault"):
        report = journal.verify()
    assert [(p.kind, p.seq) for p in report.problems] == [("torn", 4)]
    assert report.ok
    assert report.head_seq == 3
    assert report.seqs("tampered") == []
    assert "repaired" in report.problems[0].detail
    assert "not tampering" in caplog.text
    assert path.read_bytes().endswith(b"\n")
    assert journal.append(receipt(seed, 4)).seq == 4
    assert journal.verify().problems == ()


def test_an_append_repairs_a_torn_tail_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, seed = tmp_path / "ledger.jsonl", new_seed()
    journal = Journal(JsonlLedger(path), INSTALLATION, seed)
    journal.append(receipt(seed, 1))
    Raw(f"file://{path}").append_raw(b'{"format":"ccvault-journal-entry/v1","seq":2,"reco')
    with caplog.at_level(logging.WARNING, logger="ccvault"):
        entry = Journal(JsonlLedger(path), INSTALLATION, seed).append(receipt(seed, 2))
    assert entry.seq == 2
    assert "incomplete last line" in caplog.text
    assert Journal(JsonlLedger(path), INSTALLATION, seed).verify().problems == ()


def test_jsonl_url_and_unusable_paths(tmp_path: Path) -> None:
    for bad in ("file://relative/ledger.jsonl", "file://host/x.jsonl", "file:///x.jsonl?a=1"):
        with pytest.raises(ConfigurationError, match="file:///absolute"):
            ledger_from_url(bad)
    missing = tmp_path / "no" / "such" / "dir" / "ledger.jsonl"
    with pytest.raises(LedgerUnavailableError, match="could not be opened") as caught:
        ledger_from_url(f"file://{missing}")
    assert caught.value.location == f"file://{missing}"
    with pytest.raises(LedgerUnavailableError):
        JsonlLedger(tmp_path)  # a directory


# -- S3 ------------------------------------------------------------------------------------------


def test_moto_honours_if_none_match_on_put_object(moto_server: Any) -> None:
    """What the S3 sink relies on: a second conditional put of a key fails with 412; and with the
    fixture's patch (tests/aws_server.py), of racing puts exactly one wins."""
    from botocore.exceptions import ClientError

    client = moto_server.client(service="s3")
    bucket = s3_bucket(moto_server)
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"
    clients = [moto_server.client(service="s3") for _ in range(8)]
    for round_ in range(10):
        winners: list[int] = []
        barrier = threading.Barrier(8)

        def put(
            i: int,
            key: str = f"race-{round_}",
            barrier: threading.Barrier = barrier,
            winners: list[int] = winners,
        ) -> None:
            c = clients[i]
            barrier.wait(30)
            try:
                c.put_object(Bucket=bucket, Key=key, Body=str(i).encode(), IfNoneMatch="*")
                winners.append(i)
            except ClientError:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(winners) == 1


def test_s3_ledger_on_an_object_lock_bucket_in_compliance_mode(
    moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket settings docs/erasure.md gives: entries are written, and no version of one
    can be deleted while its retention lasts."""
    from botocore.exceptions import ClientError

    s3_env(monkeypatch)
    client = moto_server.client(service="s3")
    bucket = s3_bucket(moto_server, object_lock=True)
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": 7}},
        },
    )
    seed = new_seed()
    url = make_s3_url(moto_server, bucket)
    journal = Journal(ledger_from_url(url), INSTALLATION, seed)
    journal.append(receipt(seed, 1))
    key = "ccvault/ledger/entries/00000000000000000001"
    version = client.head_object(Bucket=bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as caught:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert journal.verify().problems == ()


def test_s3_head_is_found_with_few_requests(
    moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env(monkeypatch)
    url = make_s3_url(moto_server, s3_bucket(moto_server))
    sink = ledger_from_url(url)
    assert isinstance(sink, S3Ledger)
    for start in range(0, 300, 100):
        sink.append(INSTALLATION, start, [b"{}"] * 100)
    fresh = ledger_from_url(url)  # no hint: gallops from 0
    calls: list[str] = []
    fresh._client.meta.events.register(
        "before-send.s3.*", lambda event_name, **_: calls.append(event_name)
    )
    head = fresh.head(INSTALLATION)
    assert head is not None
    assert head.seq == 299
    assert len(calls) <= 2 * 9 + 3  # gallop + binary search over 300, one listing, one read


def test_s3_urls_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    s3_env(monkeypatch)
    for bad, match in (
        ("s3://", "looks like s3://"),
        ("s3://key:secret@bucket/p", "no credentials"),
        ("s3://bucket/p?aws_secret_access_key=x", "credentials never go"),
        ("s3://bucket/p?colour=red", "unknown S3 ledger URL parameter"),
        ("s3://bucket/p?region=a&region=b", "given twice"),
        ("s3://bucket/p?max_attempts=many", "not a number"),
        ("s3://bucket/p?endpoint_url=http://s3.example.com", "https"),
        ("s3://ab/p", "bucket name"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            ledger_from_url(bad)
    sink = ledger_from_url("s3://my-bucket/a/b/?region=eu-west-1")
    assert sink.location == "s3://my-bucket/a/b"


# -- unreachable sinks -----------------------------------------------------------------------------


def _closed_port() -> int:
    from aws_server import closed_port

    return closed_port()


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_an_unreachable_sql_server_is_ledger_unavailable_with_the_password_masked(
    scheme: str,
) -> None:
    url = f"{scheme}://ledger:pa55-w0rd@127.0.0.1:{_closed_port()}/ledger"
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger_from_url(url)
    text = str(caught.value)
    assert "pa55-w0rd" not in text
    assert "***" in text
    assert "127.0.0.1" in text
    assert caught.value.location is not None
    assert "pa55-w0rd" not in caught.value.location


def test_an_unreachable_sqlite_file_is_ledger_unavailable(tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailableError, match="could not be reached"):
        ledger_from_url(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")


def test_an_unreachable_s3_endpoint_is_ledger_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    s3_env(monkeypatch)
    url = (
        f"s3://bucket-x/p?region=us-east-1&endpoint_url=http://127.0.0.1:{_closed_port()}"
        "&max_attempts=1&connect_timeout=0.5&read_timeout=0.5"
    )
    with pytest.raises(LedgerUnavailableError, match=r"s3://bucket-x/p could not be reached"):
        Journal(ledger_from_url(url), INSTALLATION, new_seed())


def test_a_missing_bucket_is_ledger_unavailable(
    moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env(monkeypatch)
    url = make_s3_url(moto_server, f"absent-{uuid.uuid4().hex[:8]}")
    with pytest.raises(LedgerUnavailableError, match=r"NoSuchBucket|404"):
        Journal(ledger_from_url(url), INSTALLATION, new_seed())


def test_a_sql_database_lost_after_opening_is_ledger_unavailable(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    seed = new_seed()
    sink = SqlLedger(f"sqlite:///{tmp_path / 'd' / 'ledger.db'}")
    journal = Journal(sink, INSTALLATION, seed)
    sink.engine.dispose()
    (tmp_path / "d").rename(tmp_path / "gone")
    with pytest.raises(LedgerUnavailableError, match="could not be written"):
        journal.append(receipt(seed, 1))
    (tmp_path / "gone").rename(tmp_path / "d")
    assert journal.append(receipt(seed, 1)).seq == 1


def test_settings_carry_the_ledger_url_masked() -> None:
    from ccvault import CcvaultSettings

    settings = CcvaultSettings(
        ledger_url="postgresql+psycopg://app:hunter2@db/ledger", ledger_mode="best-effort"
    )
    assert "hunter2" not in repr(settings)
    assert "ledger_url='postgresql+psycopg://app:***@db/ledger'" in repr(settings)
    assert CcvaultSettings().ledger_mode == "strict"
    with pytest.raises(ConfigurationError, match="CCVAULT_LEDGER_MODE"):
        CcvaultSettings(ledger_mode="lenient")
    s3 = CcvaultSettings(ledger_url="s3://b/p?region=eu-west-1&secret=x")
    assert "secret=***" in repr(s3)
    assert "region=eu-west-1" in repr(s3)


def test_sinks_have_reprs_without_secrets(tmp_path: Path) -> None:
    assert (
        repr(JsonlLedger(tmp_path / "l.jsonl")) == f"JsonlLedger('file://{tmp_path / 'l.jsonl'}')"
    )
    sink = SqlLedger(f"sqlite:///{tmp_path / 'l.db'}")
    assert repr(sink) == f"SqlLedger('sqlite:///{tmp_path / 'l.db'}')"
    assert SQL_SINKS
