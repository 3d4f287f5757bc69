"""Every ``__repr__`` in ccvault works on a half-initialised object (issue 11, item 14).

``traceback.TracebackException(..., capture_locals=True)`` — what error trackers do — calls
``repr`` on every local of every frame, ``self`` in an ``__init__`` that raised among them
(unguarded before Python 3.13). A repr reading an attribute not set yet made the report itself
raise instead of showing the error.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import ccvault
from ccvault import (
    ConfigurationError,
    DecryptionError,
    SubjectShreddedError,
    Vault,
)
from ccvault.kms import LocalKms
from leaks import raised
from raw_values import get_raw, set_raw, tampered
from sqla_models import Customer

SOURCE = Path(ccvault.__file__).resolve().parent


def _reported(exc: BaseException) -> str:
    """The report an error tracker builds: every frame's locals shown with repr."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__, capture_locals=True)
    return "".join(report.format())


def _own_reprs() -> Iterator[type]:
    """Every class of ccvault that defines a ``__repr__`` written in ccvault."""
    for info in pkgutil.walk_packages(ccvault.__path__, "ccvault."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or "__repr__" not in cls.__dict__:
                continue
            method = inspect.unwrap(cls.__dict__["__repr__"])
            code = getattr(method, "__code__", None)
            if code is not None and Path(code.co_filename).resolve().is_relative_to(SOURCE):
                yield cls


def _blank(cls: type) -> Any:
    """An instance of ``cls`` that neither its ``__new__`` nor its ``__init__`` set up: made
    by the first built-in type it derives from (``object``, ``str``, ``bytes``...)."""
    builtin = next(base for base in cls.__mro__ if base.__module__ == "builtins")
    return builtin.__new__(cls)  # type: ignore[call-overload]


def test_every_repr_works_on_an_object_whose_init_never_ran() -> None:
    classes = sorted(set(_own_reprs()), key=lambda c: f"{c.__module__}.{c.__qualname__}")
    names = {c.__qualname__ for c in classes}
    assert {"Vault", "SqlKeyStore", "LocalKms", "AwsKms", "VaultTransitKms", "MultiKms"} <= names
    assert {"Encrypted", "BlindIndex", "TtlCache", "SecretKey", "CcvaultSettings"} <= names
    for cls in classes:
        shown = repr(_blank(cls))
        assert isinstance(shown, str), cls


def _bad_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.key"
    path.write_text("not a key file")
    path.chmod(0o600)
    return path


def _constructors(tmp_path: Path) -> dict[str, Callable[[], object]]:
    """Constructors that raise part-way through ``__init__``."""
    from ccvault._settings import CcvaultSettings
    from ccvault.crypto._blind import BlindIndexer
    from ccvault.keystore import SqlKeyStore
    from ccvault.keystore._cache import TtlCache
    from ccvault.kms import AwsKms, MultiKms, VaultTransitKms
    from ccvault.sqlalchemy import BlindIndex, Encrypted
    from ccvault.testing import FrozenClock

    kms = LocalKms.ephemeral()
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    Vault(kms, store, subject_type="str").close()
    return {
        "Vault, no KMS": lambda: Vault(object(), store),  # type: ignore[arg-type]
        "Vault, in-memory store": lambda: Vault(kms, "sqlite://"),
        "Vault, unsafe setting": lambda: Vault(kms, store, cache_ttl=float("inf")),
        "Vault, other subject type": lambda: Vault(kms, store, subject_type="int"),
        "Vault, read-only empty store": lambda: Vault(
            kms, f"sqlite:///{tmp_path / 'empty.db'}", readonly=True
        ),
        "SqlKeyStore, in memory": lambda: SqlKeyStore("sqlite://"),
        "SqlKeyStore, no engine": lambda: SqlKeyStore(object()),  # type: ignore[arg-type]
        "LocalKms, bad file": lambda: LocalKms.from_file(_bad_key_file(tmp_path)),
        "AwsKms, bad key id": lambda: AwsKms("not-an-arn"),
        "VaultTransitKms, plain HTTP": lambda: VaultTransitKms(
            "http://example.com", "k", token="t"
        ),
        "VaultTransitKms, no credentials": lambda: VaultTransitKms("https://example.com", "k"),
        "MultiKms, empty": lambda: MultiKms([]),
        "TtlCache, bad sizes": lambda: TtlCache(-1, -1),
        "Encrypted, no subject": lambda: Encrypted(sa.String(3), subject=None),  # type: ignore[arg-type]
        "Encrypted, bad on_error": lambda: Encrypted(sa.String(3), subject="id", on_error="x"),  # type: ignore[arg-type]
        "BlindIndex, bad normalizer": lambda: BlindIndex("nope", context="c"),
        "BlindIndexer, bad arguments": lambda: BlindIndexer(b"k", "nope", 3),  # type: ignore[arg-type]
        "CcvaultSettings, bad URL": lambda: CcvaultSettings(
            kms_url="x://", keystore_url="sqlite://", home=None
        ),
        "FrozenClock, not a number": lambda: FrozenClock("x"),  # type: ignore[arg-type]
    }


# refused before an object exists
BUILT_NOTHING = {"LocalKms, bad file", "BlindIndex, bad normalizer"}


def test_errors_raised_by_constructors_can_be_reported_with_locals(tmp_path: Path) -> None:
    for what, build in _constructors(tmp_path).items():
        exc = raised(build)
        report = _reported(exc)  # raised AttributeError from a repr before
        assert f"{type(exc).__name__}: " in report, what
        if what not in BUILT_NOTHING:  # the half-built object, shown as such
            assert "(incomplete)>" in report, what


def _read_errors(app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str) -> Iterator[Any]:
    """Errors raised on the read path: a corrupt value, a strict read of a shredded row, a read
    through a detached engine, a refused statement."""
    with Session(app) as s:
        customers = [Customer(name=f"n{i}", phone=f"+1 555 010{i}") for i in range(4)]
        s.add_all(customers)
        s.commit()
        ids = [c.id for c in customers]
    t = Customer.__table__
    good = get_raw(app, t, "name", ids[2])
    set_raw(app, t, "name", ids[2], tampered(good))
    with Session(app) as s:
        yield raised(lambda: s.scalars(sa.select(Customer)).all())
    with app.connect() as conn:
        yield raised(lambda: list(conn.execute(sa.select(t))))
    set_raw(app, t, "name", ids[2], good)
    vault.shred(ids[1])
    strict = sa.create_engine(app.url)
    with Vault(kms, db_url) as other:
        other.attach(strict, strict=True)
        with Session(strict) as s:
            yield raised(lambda: s.scalars(sa.select(Customer)).all())
        other.detach(strict)
        with Session(strict) as s:
            yield raised(lambda: s.scalars(sa.select(Customer)).all())
    strict.dispose()
    with Session(app) as s:
        yield raised(lambda: s.scalars(sa.select(Customer).order_by(Customer.name)).all())


def test_errors_raised_by_reads_can_be_reported_with_locals(
    app: sa.Engine, vault: Vault, kms: LocalKms, db_url: str
) -> None:
    kinds = []
    for exc in _read_errors(app, vault, kms, db_url):
        kinds.append(type(exc))
        assert "Traceback" in _reported(exc)
    assert kinds[:3] == [DecryptionError, DecryptionError, SubjectShreddedError]
    assert kinds[3] is ConfigurationError
    assert kinds[4].__name__ == "StatementRefused"


def test_a_half_built_vault_reports_as_incomplete() -> None:
    exc = raised(lambda: Vault(LocalKms.ephemeral(), "sqlite://"))
    assert isinstance(exc, ConfigurationError)
    assert "self = <Vault (incomplete)>" in _reported(exc)
