"""``vault.move_into_periods`` (issue 14, item 8): a column that gains ``retention=`` keeps
reading its suite-1 values; the job moves them into the period of their row's
``retention_from``, resumably, in ``FOR UPDATE SKIP LOCKED`` batches that several workers share;
values of an already expired period are never re-encrypted (``stale``; NULL with
``expire_stale``)."""

from __future__ import annotations

import importlib
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ccvault import ConfigurationError, Vault
from ccvault.crypto import _format as fmt
from ccvault.kms import LocalKms
from ccvault.retention import Category, RetentionPolicy
from ccvault.sqlalchemy._types import encrypted_tables
from ccvault.testing import FrozenClock

UTC = timezone.utc
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(
    categories=(Category(name="transcripts", keep_for="P90D", granularity="month"),)
)


MODELS = """
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccvault.sqlalchemy import Encrypted


class Old(DeclarativeBase):
    pass


class New(DeclarativeBase):
    pass


class CallBefore(Old):
    \"\"\"The table as it was: no retention.\"\"\"

    __tablename__ = "move_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    transcript: Mapped[str | None] = mapped_column(Encrypted(sa.Text, subject="customer_id"))
    summary: Mapped[str | None] = mapped_column(Encrypted(sa.Text, subject="customer_id"))


class Call(New):
    \"\"\"The same table once its columns gained retention=.\"\"\"

    __tablename__ = "move_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    transcript: Mapped[str | None] = mapped_column(
        Encrypted(
            sa.Text, subject="customer_id", retention="transcripts", retention_from="started_at"
        )
    )
    summary: Mapped[str | None] = mapped_column(
        Encrypted(
            sa.Text, subject="customer_id", retention="transcripts", retention_from="started_at"
        )
    )
"""
# Models are made per test, in a module of their own, and forgotten afterwards: attach() checks
# every table with encrypted columns the process knows against the attaching vault's policy.


@pytest.fixture
def models(tmp_path: Path) -> Iterator[ModuleType]:
    name = f"move_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        for model in (module.CallBefore, module.Call):
            encrypted_tables.discard(model.__table__)


class Env:
    def __init__(self, kms: LocalKms, db_url: str, models: ModuleType) -> None:
        self.models = models
        self.Old, self.CallBefore, self.Call = models.Old, models.CallBefore, models.Call
        self.clock = FrozenClock(T0.timestamp())
        self.vault = Vault(
            kms, db_url, subject_type="uuid", clock=self.clock, retention_policy=POLICY
        )
        url = db_url.replace("keys.db", "app.db") if db_url.startswith("sqlite") else db_url
        self.before = sa.create_engine(url)
        self.after = sa.create_engine(url)
        self.Old.metadata.drop_all(self.before)
        self.Old.metadata.create_all(self.before)
        self.vault.attach(self.before)
        self.vault.attach(self.after)

    def close(self) -> None:
        self.Old.metadata.drop_all(self.before)
        for engine in (self.before, self.after):
            self.vault.detach(engine)
            engine.dispose()
        self.vault.close()

    def raw(self, row_id: int) -> dict[str, Any]:
        t = self.CallBefore.__table__
        cols = [
            sa.type_coerce(t.c[n], sa.LargeBinary()).label(n) for n in ("transcript", "summary")
        ]
        with self.before.connect() as conn:
            return dict(conn.execute(sa.select(*cols).where(t.c.id == row_id)).one()._mapping)


@pytest.fixture
def env(kms: LocalKms, db_url: str, models: ModuleType) -> Iterator[Env]:
    e = Env(kms, db_url, models)
    yield e
    e.close()


def suite(blob: bytes | None) -> int | None:
    return None if blob is None else blob[1]


def test_existing_values_move_into_their_period_and_read_the_same(env: Env) -> None:
    alice, bob, carol = (uuid.uuid4() for _ in range(3))
    with Session(env.before) as s, s.begin():
        s.add_all(
            [
                env.CallBefore(id=1, customer_id=alice, started_at=T0 - timedelta(days=5),
                           transcript="alice said", summary="short"),
                env.CallBefore(id=2, customer_id=bob, started_at=None, transcript="bob said",
                           summary=None),
                env.CallBefore(id=3, customer_id=carol, started_at=T0 - timedelta(days=400),
                           transcript="carol, long ago", summary="old"),
                env.CallBefore(id=4, customer_id=alice, started_at=T0 - timedelta(days=1),
                           transcript="alice again", summary="again"),
            ]
        )  # fmt: skip
    # the column gained retention=: suite-1 values still read
    with Session(env.after) as s:
        assert s.get(env.Call, 1).transcript == "alice said"  # type: ignore[union-attr]
    (dry,) = env.vault.move_into_periods(env.after, env.Call, dry_run=True)
    assert (dry.moved, dry.stale, dry.nulled) == (5, 2, 0)
    assert suite(env.raw(1)["transcript"]) == 1  # nothing written
    seen: list[tuple[str, int, int]] = []
    (report,) = env.vault.move_into_periods(
        env.after, env.Call, batch=2, progress=lambda *a: seen.append(a)
    )
    assert (report.moved, report.stale, report.nulled, report.changed) == (5, 2, 0, 0)
    assert (report.shredded, report.unreadable) == (0, 0)
    assert seen
    for row_id in (1, 2, 4):
        for column, blob in env.raw(row_id).items():
            assert suite(blob) in (2, None), (row_id, column)
    # the expired one stays suite 1, never re-encrypted under a new secret
    assert suite(env.raw(3)["transcript"]) == 1
    header = fmt.parse(env.raw(2)["transcript"])[0]  # NULL retention_from: now's period
    assert (
        header.period_id == env.vault._ring.periods.for_write(POLICY.categories[0], None).period_id
    )
    with Session(env.after) as s:
        got = {c.id: (c.transcript, c.summary) for c in s.scalars(sa.select(env.Call))}
    assert got == {
        1: ("alice said", "short"),
        2: ("bob said", None),
        3: ("carol, long ago", "old"),
        4: ("alice again", "again"),
    }
    # resumable: nothing more to move
    (again,) = env.vault.move_into_periods(env.after, env.Call)
    assert (again.moved, again.stale) == (0, 2)
    # expire_stale: the stale values go, never into a new period
    (stale,) = env.vault.move_into_periods(env.after, env.Call, expire_stale=True)
    assert (stale.moved, stale.stale, stale.nulled) == (0, 2, 2)
    assert env.raw(3) == {"transcript": None, "summary": None}


def test_shredded_and_unreadable_values_are_counted_and_left(env: Env) -> None:
    gone, fine = uuid.uuid4(), uuid.uuid4()
    with Session(env.before) as s, s.begin():
        s.add_all(
            [
                env.CallBefore(id=1, customer_id=gone, started_at=T0, transcript="x"),
                env.CallBefore(id=2, customer_id=fine, started_at=T0, transcript="y"),
            ]
        )
    env.vault.shred(gone)
    t = env.CallBefore.__table__
    with env.before.begin() as conn:  # a value moved from another customer's row
        moved = conn.execute(
            sa.select(sa.type_coerce(t.c.transcript, sa.LargeBinary())).where(t.c.id == 2)
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE move_calls SET summary = :b WHERE id = 1").bindparams(
                sa.bindparam("b", type_=sa.LargeBinary())
            ),
            {"b": moved},
        )
    (report,) = env.vault.move_into_periods(env.after, env.Call)
    assert (report.moved, report.shredded, report.unreadable) == (1, 1, 1)
    assert suite(env.raw(1)["transcript"]) == 1


def test_several_workers_share_a_table(env: Env, db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers: one worker at a time (tested above)")
    customers = [uuid.uuid4() for _ in range(10)]
    with Session(env.before) as s, s.begin():
        s.add_all(
            env.CallBefore(id=i, customer_id=customers[i % 10], started_at=T0,
                           transcript=f"t{i}")
            for i in range(1, 301)
        )  # fmt: skip
    reports: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        engine = sa.create_engine(env.after.url)
        env.vault.attach(engine)
        try:
            reports.extend(env.vault.move_into_periods(engine, env.Call, batch=25))
        except BaseException as exc:
            errors.append(exc)
        finally:
            env.vault.detach(engine)
            engine.dispose()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.moved for r in reports) == 300
    with Session(env.after) as s:
        assert {c.id: c.transcript for c in s.scalars(sa.select(env.Call))} == {
            i: f"t{i}" for i in range(1, 301)
        }
    assert all(suite(env.raw(i)["transcript"]) == 2 for i in range(1, 301, 37))


def test_bad_arguments(env: Env) -> None:
    with pytest.raises(ConfigurationError, match="retention-bound"):
        env.vault.move_into_periods(env.before, env.CallBefore)
    with pytest.raises(ConfigurationError, match="batch"):
        env.vault.move_into_periods(env.after, env.Call, batch=0)
    with pytest.raises(ConfigurationError, match="Session"):
        env.vault.move_into_periods("sqlite://", env.Call)


def test_the_cli_moves_and_purges(
    env: Env,
    vault_settings: None,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from ccvault.cli import main

    policy = tmp_path / "retention.toml"
    policy.write_text('[categories.transcripts]\nkeep_for = "P90D"\ngranularity = "month"\n')
    monkeypatch.setenv("CCVAULT_RETENTION_POLICY", str(policy))
    recent, old = uuid.uuid4(), uuid.uuid4()
    with Session(env.before) as s, s.begin():
        s.add_all(
            [
                env.CallBefore(id=1, customer_id=recent, started_at=None, transcript="now",
                           summary=None),
                # by the real clock (the CLI's), March 2026 + P90D has expired
                env.CallBefore(id=2, customer_id=old, started_at=T0, transcript="then",
                               summary=None),
            ]
        )  # fmt: skip
    url = env.after.url.render_as_string(hide_password=False)
    args = ["--models", env.models.__name__, "--database-url", url]
    assert main(["retention", "move", *args, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    (dry,) = json.loads(out)
    assert (dry["moved"], dry["stale"], dry["dry_run"]) == (1, 1, True)
    assert suite(env.raw(1)["transcript"]) == 1
    assert main(["retention", "move", *args, "--expire-stale", "--batch", "1"]) == 0
    out, err = capsys.readouterr()
    (done,) = json.loads(out)
    assert (done["moved"], done["stale"], done["nulled"]) == (1, 1, 1)
    assert "ccvault retention move: move_calls:" in err
    assert suite(env.raw(1)["transcript"]) == 2
    assert env.raw(2) == {"transcript": None, "summary": None}
    assert main(["retention", "purge", *args, "--dry-run"]) == 0
    # the module maps move_calls twice (before and after retention=): a report for each
    for purge in json.loads(capsys.readouterr().out):
        assert (purge["table"], purge["deleted"], purge["live"], purge["empty"]) == (
            "move_calls",
            0,
            1,
            1,
        )
    assert main(["retention", "move", "--models", "no_such_module_x", "--database-url", url]) == 1
