"""Architecture: lower layers never import higher ones; third-party SDKs stay in their module."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import ccvault.vault
from ccvault import Vault
from ccvault.kms import LocalKms

SRC = Path(__file__).parents[1] / "src" / "ccvault"

# Layer of each top-level module or package; a module may import only its own layer or lower.
LAYERS = {
    "errors": 0,
    "_secret": 0,
    "_sentinels": 0,
    "_repr": 0,
    "_fs": 0,
    "_failpoints": 0,
    "crypto": 1,
    "kms": 2,
    "keystore": 2,
    "audit": 2,
    "retention": 2,
    "keyring": 3,
    "_settings": 3,
    "_install": 3,
    "erasure": 4,
    "vault": 5,
    "sqlalchemy": 6,
    "cli": 6,
    "testing": 6,
    "__init__": 6,
    "__main__": 6,
}

# Inside the key ring, the parts build on each other one way: epochs <- heads, leases, blind
# indexes, rotation <- the ring <- values (decrypt, decrypt_many) <- the package's re-exports;
# the invalidation channel needs the options only, and the ring uses it.
KEYRING_ORDER = {
    "_options": 0,
    "_hooks": 0,
    "_channel": 1,
    "_epochs": 1,
    "_heads": 2,
    "_leases": 2,
    "_periods": 2,
    "_blind": 2,
    "_rotation": 2,
    "_ring": 3,
    "_values": 4,
    "__init__": 5,
}

# Inside the key store, the SQL store's parts build on each other one way: the plumbing <- epochs
# (and the rotation's rows), the invalidation channel <- key rows <- subject heads and the shred's
# body <- shreds with the journal <- retention rows <- SqlKeyStore, which composes them <- the
# package's re-exports.
KEYSTORE_ORDER = {
    "_records": 0,
    "_schema": 0,
    "_cache": 0,
    "_listen": 0,
    "_protocol": 1,
    "_sql_base": 2,
    "_sql_journal": 2,
    "_sql_epochs": 3,
    "_sql_channel": 3,
    "_sql_keys": 4,
    "_sql_subjects": 5,
    "_sql_erasure": 6,
    "_sql_periods": 7,
    "_sql": 8,
    "__init__": 9,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _ccvault_imports(path: Path, nodes: Iterable[ast.AST] | None = None) -> set[str]:
    """The top-level ccvault units ``path`` imports (in ``nodes``, or anywhere in the file)."""
    found: set[str] = set()
    pkg = path.relative_to(SRC).parent.parts
    for node in ast.walk(ast.parse(path.read_text())) if nodes is None else nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg)
                mod = (node.module or "").split(".") if node.module else []
                parts = base + mod
                if not parts:  # "from . import x" at the top package
                    parts = [alias.name for alias in node.names][:1]
                found.add(parts[0])
            elif node.module and node.module.startswith("ccvault."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ccvault."):
                    found.add(alias.name.split(".")[1])
    return found


# The one sanctioned upward reference: Vault.attach()/Vault.subject() are the documented entry
# points of the SQLAlchemy integration and import it lazily, inside those methods.
ALLOWED_UPWARD = {("vault.py", "sqlalchemy")}


def test_lower_layers_never_import_higher_ones() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__" and path.parent != SRC:
            continue
        for imported in _ccvault_imports(path):
            if imported == unit or imported not in LAYERS:
                continue
            if (str(path.relative_to(SRC)), imported) in ALLOWED_UPWARD:
                continue
            if LAYERS[imported] > LAYERS[unit]:
                problems.append(f"{path.relative_to(SRC)} imports {imported}")
    assert problems == []


def test_hazmat_only_in_the_crypto_core() -> None:
    users = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if any(
            isinstance(n, ast.ImportFrom | ast.Import)
            and any(
                (getattr(n, "module", None) or a.name).split(".")[0] == "cryptography"
                for a in n.names
            )
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert users == ["crypto/_primitives.py"]


def test_retention_builds_on_errors_repr_and_the_length_prefix_only() -> None:
    """The retention package is pure (policies and time arithmetic): of ccvault it imports only
    the errors, safe_repr and lp(); of third-party code only pydantic (and PyYAML, lazily)."""
    allowed = {"ccvault.errors", "ccvault._repr", "ccvault.crypto._encoding"}
    problems = []
    for path in (SRC / "retention").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level == 1:
                    continue  # the package's own modules
                name = "ccvault." + (node.module or "")
            elif isinstance(node, ast.ImportFrom):
                name = node.module or ""
            elif isinstance(node, ast.Import):
                name = node.names[0].name
            else:
                continue
            top = name.split(".")[0]
            ours = name in allowed if top == "ccvault" else None
            third = top in ("pydantic", "yaml", "tomli") or top in sys.stdlib_module_names
            if ours is False or (ours is None and not third):
                problems.append(f"retention/{path.name} imports {name}")
    assert problems == []


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in SRC.rglob("*.py")}
    assert units <= set(LAYERS), units - set(LAYERS)


def _package_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "order"), [("keyring", KEYRING_ORDER), ("keystore", KEYSTORE_ORDER)]
)
def test_the_parts_of_a_package_build_on_each_other_one_way(
    package: str, order: dict[str, int]
) -> None:
    problems = []
    for path in (SRC / package).glob("*.py"):
        own = order[path.stem]
        for imported in _package_imports(path):
            if order[imported] >= own and imported != path.stem:
                problems.append(f"{package}/{path.name} imports {imported}")
    assert problems == []


# -- the core never needs the SQLAlchemy integration ------------------------------------------


def _module_level(tree: ast.Module) -> Iterator[ast.AST]:
    """The nodes that run at import: top-level statements and what they contain, except
    function bodies (run later) and ``if TYPE_CHECKING:`` blocks (never run)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def test_the_core_never_imports_the_sqlalchemy_integration_at_module_level() -> None:
    """``vault.attach()``, ``detach()``, ``scrub()`` and ``subject()`` import it lazily: the core
    (every unit below the integration's layer) works without it being imported."""
    problems = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        if LAYERS.get(unit, 0) >= LAYERS["sqlalchemy"]:
            continue
        tree = ast.parse(path.read_text())
        if "sqlalchemy" in _ccvault_imports(path, _module_level(tree)):
            problems.append(str(path.relative_to(SRC)))
    assert problems == []


# -- no module touches another module's privates ------------------------------------------------

# SQLAlchemy internals the integration reads, each for a reason no public API serves. Any other
# `_name` read off an object that is not `self`/`cls` fails the test below.
THIRD_PARTY_PRIVATES = {
    # Insert/Update parameters given to .values(): the write hook encrypts them in place
    "_values": "Insert/Update .values() parameters, encrypted by the write hook",
    "_multi_values": "insert().values([...]) rows, encrypted by the write hook",
    "_ordered_values": "update().ordered_values() parameters (SQLAlchemy 2.0)",
    "_post_values_clause": "INSERT ... ON CONFLICT clauses, refused over encrypted columns",
    "_select_names": "INSERT ... FROM SELECT: its columns cannot be encrypted row by row",
    "_clone": "a statement copied before its encrypted .values() replace the clear ones",
    # Select clauses: refused when they compute on ciphertext, or planned as post-filters
    "_where_criteria": "WHERE clauses: blind-index searches and the subject of an UPDATE",
    "_having_criteria": "HAVING clauses over encrypted columns are refused",
    "_order_by_clauses": "ORDER BY over encrypted columns is refused",
    "_group_by_clauses": "GROUP BY over encrypted columns is refused",
    "_distinct": "DISTINCT over encrypted columns is refused",
    "_distinct_on": "DISTINCT ON over encrypted columns is refused",
    "_all_selected_columns": "the columns a Select returns, to find the encrypted ones",
    "_pre_columns_clause": "a Select's prefix columns (SQLAlchemy 2.1)",
    "_limit_clause": "LIMIT: a post-filtered search cannot be limited in SQL",
    "_offset_clause": "OFFSET: a post-filtered search cannot be offset in SQL",
    "_tq_label": "a column's label in a table-qualified select",
    "_deannotate": "an ORM-annotated column compared with its table column",
    "_columns": "Table._columns: every column, including those added after the table",
    # Results: the decrypting fetch strategy stands in for the cursor's
    "_result_columns": "a compiled statement's result columns, to find the encrypted ones",
    "_soft_close": "closes a result whose rows the decrypting strategy buffered",
    "_NO_CURSOR_DQL": "the fetch strategy of a result with no cursor left",
    "_DEFAULT_FETCH": "the default fetch strategy, replaced by the decrypting one",
    "_is_server_side": "server-side cursors are buffered before decryption",
    "_echo": "whether the engine logs rows: logged rows are masked",
    "_log_debug": "the row logger, wrapped so that logged rows never show plaintext",
    "_mapping": "Row._mapping (public API despite the underscore)",
    "_fields": "Row._fields (public API despite the underscore): logged rows are masked by key",
    "_expanded_parameters": "the parameters of an expanded IN (...) blind-index search",
    "_rowbuffer": "the rows a buffered fetch strategy holds, decrypted as they are fetched",
    # Mapping: a companion column added automatically is given to the mapper deferred
    "_init_properties": "the properties a Mapper is given, read as it maps the table's columns",
    # The standard library
    "_exit": "os._exit (public API despite the underscore): the crash tests' failpoints",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _class_privates(tree: ast.Module) -> set[str]:
    """The `_`-prefixed names the classes of a module define: methods, class attributes,
    ``__slots__`` entries and ``self._x = ...`` assignments."""
    names: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    names.add(node.attr)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and _private(target.id):
                        names.add(target.id)
                    if isinstance(target, ast.Name) and target.id == "__slots__":
                        names |= {
                            e.value
                            for e in ast.walk(node.value)
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        }
    return {n for n in names if _private(n)}


def _private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, name) of each `_name` read or written on an object other than ``self``/``cls``:
    ``obj._name``, ``getattr(obj, "_name")`` (and setattr, hasattr), and names imported with
    ``from ccvault... import _name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.lineno, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            yield node.lineno, node.args[1].value
        elif isinstance(node, ast.ImportFrom) and (node.level or "ccvault" in (node.module or "")):
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, alias.name


def test_no_module_touches_the_privates_of_another_modules_classes() -> None:
    """The privacy boundary is the module (as in pyca/cryptography): a module uses the public
    names of ccvault classes defined elsewhere, never their `_`-prefixed attributes or methods.
    Third-party internals are allowed only as listed, with their reason; ccvault's own marker
    attributes on SQLAlchemy objects are named ``_ccvault_*``. (A name defined both by a class
    of this module and by one elsewhere counts as this module's: the check is by name.)"""
    trees = {path: ast.parse(path.read_text()) for path in SRC.rglob("*.py")}
    defined = {path: _class_privates(tree) for path, tree in trees.items()}
    modules = {path.stem for path in trees}  # `from .crypto import _format`: a module, not a name
    problems = []
    for path, tree in trees.items():
        where = path.relative_to(SRC)
        for line, name in _private_uses(tree):
            if name.startswith("_ccvault_") or name in defined[path] or name in modules:
                continue
            owners = sorted(str(p.relative_to(SRC)) for p in defined if name in defined[p])
            if owners:
                problems.append(f"{where}:{line} uses {name} of {', '.join(owners)}")
            elif name not in THIRD_PARTY_PRIVATES:
                problems.append(f"{where}:{line} uses {name}: not in THIRD_PARTY_PRIVATES")
    assert problems == []


def test_the_private_check_finds_what_it_must() -> None:
    """The checker itself: a cross-module private use, a getattr by name and a private import
    are found; self, a module's own classes and listed library internals are not."""
    mine = ast.parse("class A:\n    def _own(self):\n        return self._x\n")
    other = ast.parse(
        "from ccvault.vault import _hidden\n"
        "def f(v, stmt):\n"
        "    return v._read_keys_batch(), getattr(v, '_ring'), stmt._values\n"
    )
    assert _class_privates(mine) == {"_own"}
    assert sorted(name for _, name in _private_uses(other)) == [
        "_hidden",
        "_read_keys_batch",
        "_ring",
        "_values",
    ]
    assert "_values" in THIRD_PARTY_PRIVATES
    assert "_read_keys_batch" not in THIRD_PARTY_PRIVATES


# -- the facade keeps its public names --------------------------------------------------------

VAULT_PUBLIC = {
    # methods
    "aclose", "active_epoch_seq", "add_kms_wraps", "attach", "blind_index", "blind_indexer",
    "close", "decrypt", "destroy_epochs", "detach", "encrypt", "epochs", "from_settings",
    "is_shredded", "open_async", "quarantined_keys", "rotate_epoch", "run", "scrub", "shred",
    "shred_many",
    "subject", "subject_ref", "subject_refs", "upgrade_store", "verify_heads", "warm",
    # the data map and subject export (issue 13), and the stored receipt read without a shred
    "data_map", "erasure_receipt", "export_subject", "register_personal_table",
    # batched single-value reads (issue 13) and writes (issue 15, item 5)
    "decrypt_many", "encrypt_many",
    # the erasure ledger wired in (issue 13): status, check, reconciliation
    "complete_erasures", "erasure_status", "ledger_unverified", "reconcile_erasures",
    "verify_erasures",
    # legal holds and retention (issue 14)
    "enforce_retention", "hold", "holds", "release", "retention_policy", "purge_expired",
    "move_into_periods",
    # the retention policy recorded in the key store (issue 14 item 1; lifecycle rule 8)
    "policy_grace", "recorded_retention_policy", "set_retention_policy",
    # read-only properties
    "per_epoch_roots", "readonly", "receipt_public_key", "installation_id", "subject_type",
    "propagation_bound", "propagation_interval", "ledger_check_interval",
    # the settings, assignable as they were
    "cache_ttl", "kms_grace_period", "epoch_rotation_period",
    "backup_retention", "nonce_budget",
}  # fmt: skip

VAULT_MODULE_PUBLIC = {
    "FENCE_BREAKS", "NO_SUBJECT", "VAULTWIDE_NONCE_BUDGET", "DevelopmentDefaultWarning",
    "EpochInfo", "HeadCheck", "Progress", "RotationReport", "StoreUpgrade", "Vault",
}  # fmt: skip


def test_the_vault_keeps_every_public_name_and_adds_none(tmp_path: Path) -> None:
    with Vault(LocalKms.ephemeral(), f"sqlite:///{tmp_path / 'keys.db'}") as vault:
        names = {n for n in dir(vault) if not n.startswith("_")}
        assert names == VAULT_PUBLIC
        vault.cache_ttl = 30.0  # the settings stay assignable
        assert vault.cache_ttl == 30.0
    assert set(ccvault.vault.__all__) == VAULT_MODULE_PUBLIC
    assert all(hasattr(ccvault.vault, name) for name in VAULT_MODULE_PUBLIC)


def test_the_vault_makes_its_long_lived_keys_in_their_order(tmp_path: Path) -> None:
    """The facade loads the long-lived keys in the order the undivided vault did (subject-ref,
    receipt-signing, head-MAC): on a damaged store (the receipt key's row altered, the head-MAC
    key's row deleted) the vault refuses to open before it writes a new head-MAC key, which
    would stand in the way of restoring the original row."""
    import sqlalchemy as sa

    from ccvault import DecryptionError

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    kms = LocalKms.ephemeral()
    Vault(kms, url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ccvault_keys WHERE kind = 'head'"))
        conn.execute(
            sa.text("UPDATE ccvault_keys SET commitment = zeroblob(32) WHERE kind = 'receipt'")
        )
    with pytest.raises(DecryptionError):
        Vault(kms, url)
    with engine.connect() as conn:
        heads = conn.execute(sa.text("SELECT count(*) FROM ccvault_keys WHERE kind = 'head'"))
        assert heads.scalar_one() == 0
    engine.dispose()
