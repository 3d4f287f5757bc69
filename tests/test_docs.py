"""The docs stay true: README examples run as pasted, cross-references resolve, and the settings
table matches the settings model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ccvault._settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _headings(page: Path) -> list[str]:
    return [h.strip() for h in re.findall(r"^#+\s+(.*)$", page.read_text(), re.M)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _words(text: str) -> str:
    return " ".join(text.split()).lower()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(target)
            continue
        anchors = [_slug(h) for h in _headings(linked)] if linked.suffix == ".md" else []
        if anchor and anchor not in anchors:
            broken.append(target)
    for path in re.findall(r"\bdocs/[\w\-]+\.md\b", text):
        if not (ROOT / path).exists():
            broken.append(path)
    assert broken == []


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "src").rglob("*.py"))], ids=str)
def test_named_sections_exist(page: Path) -> None:
    """`see "Grace period" in kms.md` and `docs/kms.md, "Who may do what"` name real headings."""
    text = page.read_text()
    refs = re.findall(r"([\w\-]+\.md)\)?,?\s+[\"“']([^\"”']{3,80})[\"”']", text)
    refs += [(m[1], m[0]) for m in re.findall(r"\"([^\"]{3,80})\"\s+in\s+\[?([\w\-]+\.md)", text)]
    missing = []
    for name, section in refs:
        target = ROOT / "docs" / name
        if name == "README.md":
            target = ROOT / name
        if not target.exists():
            missing.append(f"{name} (no such page)")
            continue
        # the heading itself, or the heading without a trailing "(recipe)"-like remark
        titles = {_words(re.sub(r"\s*\([^)]*\)$", "", h)) for h in _headings(target)}
        if _words(section) not in titles | {_words(h) for h in _headings(target)}:
            missing.append(f"{name}: {section!r}")
    assert missing == []


def test_settings_table_is_generated_from_the_model() -> None:
    """docs/operations.md holds settings_table() between its markers: regenerate it with
    ``python -c "from ccvault._settings import settings_table; print(settings_table())"``."""
    text = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert found is not None
    assert found.group(1) == settings_table()


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks(ROOT / "README.md"))))
def test_readme_examples_run_as_pasted(index: int, tmp_path: Path) -> None:
    code = _python_blocks(ROOT / "README.md")[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCVAULT_")}
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
