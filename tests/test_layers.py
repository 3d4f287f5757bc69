"""Architecture: lower layers never import higher ones; third-party SDKs stay in their module."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "ccvault"

# Layer of each top-level module or package; a module may import only its own layer or lower.
LAYERS = {
    "errors": 0,
    "_secret": 0,
    "_sentinels": 0,
    "_repr": 0,
    "crypto": 1,
    "kms": 2,
    "keystore": 2,
    "audit": 2,
    "vault": 3,
    "_settings": 3,
    "sqlalchemy": 4,
    "cli": 4,
    "testing": 4,
    "__init__": 4,
    "__main__": 4,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _ccvault_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    pkg = path.relative_to(SRC).parent.parts
    for node in ast.walk(tree):
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


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in SRC.rglob("*.py")}
    assert units <= set(LAYERS), units - set(LAYERS)
