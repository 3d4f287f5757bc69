"""Loading a retention policy: TOML (``tomllib``), YAML (PyYAML, the optional ``yaml`` extra) or
the nested mapping both parse to (docs/retention.md, "The policy file").

Owns the file formats and turning every problem into one :class:`ConfigurationError` that names
the key path (``categories.transcripts.keep_for``) and, where the parser gives one, the line.
It must never put the file's content into a message: key paths and line numbers only (a parser
message that would quote a character of the file is cut before the quote).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ..errors import ConfigurationError
from ._policy import Category, RetentionPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MAX_POLICY_BYTES", "load_policy", "policy_from_data"]

MAX_POLICY_BYTES: Final = 1 << 20
"""The largest policy file read (1 MiB)."""

_TOML: Final = (".toml",)
_YAML: Final = (".yaml", ".yml")
_CATEGORY_KEYS: Final = tuple(k for k in Category.model_fields if k != "name")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

Path_ = tuple[str, ...]


class _Problems:
    """Problems found so far, each with its key path, and the line of each key where known."""

    def __init__(self, lines: Mapping[Path_, int] | None) -> None:
        self.lines = lines if lines is not None else {}
        self.found: list[str] = []

    def add(self, path: Path_, message: str) -> None:
        where = key_path(path) if path else "the policy"
        line = next(
            (self.lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.lines), None
        )
        self.found.append(f"{where}{f' (line {line})' if line else ''}: {message}")

    def raise_if_any(self, source: str | None) -> None:
        if self.found:
            prefix = f"retention policy {source}: " if source else "retention policy: "
            raise ConfigurationError(prefix + "; ".join(self.found))


def key_path(parts: tuple[object, ...]) -> str:
    """A key path as TOML writes it: ``categories.transcripts.keep_for``; a part that is not a
    bare key is quoted (``categories."call.v2"``), and one longer than 64 characters cut."""
    shown = []
    for part in parts:
        text = str(part)
        if len(text) > 64:
            text = text[:64] + "…"
        shown.append(text if _BARE_KEY.fullmatch(text) else json.dumps(text))
    return ".".join(shown)


def _unknown(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key{hint}; expected {', '.join(known)}"


def policy_from_data(
    data: object, *, source: str | None = None, lines: Mapping[Path_, int] | None = None
) -> RetentionPolicy:
    """The policy from its nested form ``{"categories": {name: {keep_for, granularity, tz}}}``;
    a :class:`ConfigurationError` naming each problem's key path (and line, from ``lines``)."""
    problems = _Problems(lines)
    if not isinstance(data, Mapping):
        problems.add((), "must be a table holding a 'categories' table")
        problems.raise_if_any(source)
        raise AssertionError("unreachable")  # pragma: no cover
    for key in data:
        if key != "categories":
            problems.add((str(key),), _unknown(str(key), ("categories",)))
    categories = data.get("categories")
    built: list[Category | None] = []
    if categories is None:
        problems.add(("categories",), "missing: the policy's table of categories")
    elif not isinstance(categories, Mapping):
        problems.add(("categories",), "must be a table of categories, one per name")
    else:
        built = [_category(name, body, problems) for name, body in categories.items()]
    problems.raise_if_any(source)
    return RetentionPolicy(categories=tuple(c for c in built if c is not None))


def _category(name: object, body: object, problems: _Problems) -> Category | None:
    where: Path_ = ("categories", str(name))
    if not isinstance(name, str):
        problems.add(where, "a category name must be a string")
        return None
    if not isinstance(body, Mapping):
        problems.add(where, f"must be a table with {', '.join(_CATEGORY_KEYS)}")
        return None
    if "name" in body:  # the name is the table's key
        problems.add((*where, "name"), _unknown("name", _CATEGORY_KEYS))
        return None
    try:
        return Category.model_validate({**body, "name": name})
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = tuple(str(part) for part in error["loc"])
            if loc[:1] == ("name",):
                problems.add(where, f"the category name {_message(error['msg'])}")
            elif error["type"] == "extra_forbidden":
                problems.add((*where, *loc), _unknown(loc[-1], _CATEGORY_KEYS))
            elif error["type"] == "missing":
                problems.add((*where, *loc), "missing")
            else:
                problems.add((*where, *loc), _message(error["msg"]))
    return None


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def load_policy(path: str | os.PathLike[str]) -> RetentionPolicy:
    """Read a retention policy from a ``.toml`` file, or a ``.yaml``/``.yml`` one (needs PyYAML:
    ``pip install 'ccvault[yaml]'``).

    Every problem — unreadable file, syntax error, unknown key, bad value — is a
    :class:`ConfigurationError` naming the file, the key path and the line where the parser
    gives one; never the file's content.
    """
    where = os.fspath(path)
    suffix = Path(where).suffix.lower()
    if suffix not in _TOML + _YAML:
        raise ConfigurationError(
            f"retention policy {where}: unknown format; name it *.toml, *.yaml or *.yml"
        )
    text = _read(where)
    if suffix in _TOML:
        return policy_from_data(_parse_toml(text, where), source=where, lines=_toml_lines(text))
    data, lines = _parse_yaml(text, where)
    return policy_from_data(data, source=where, lines=lines)


def _read(where: str) -> str:
    try:
        with open(where, "rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"retention policy {where}: cannot be read ({reason})") from None
    except ValueError:  # a NUL byte or an unencodable character in the path
        raise ConfigurationError(f"retention policy {where!r}: not a valid path") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigurationError(
            f"retention policy {where}: larger than {MAX_POLICY_BYTES // 1024} KiB"
        )
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigurationError(f"retention policy {where}: not UTF-8 (line {line})") from None


# tomllib messages that quote a character of the file: cut before the quote.
_QUOTING_TOML = re.compile(r"^(Found invalid character|Illegal character)\b.*$")
_TOML_POSITION = re.compile(
    r"^(?P<msg>.*?) \((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$", re.S
)


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        msg, line, col = _toml_error(exc)
    at = f"line {line}, column {col}" if line else "the end of the file"
    raise ConfigurationError(f"retention policy {where}: not valid TOML at {at}: {msg}")


def _toml_error(exc: Exception) -> tuple[str, int | None, int | None]:
    """(message without the file's content, line, column) of a TOMLDecodeError: its attributes
    since Python 3.14, parsed from its text before."""
    msg, line, col = (
        getattr(exc, "msg", None),
        getattr(exc, "lineno", None),
        getattr(exc, "colno", None),
    )
    if not isinstance(msg, str):
        found = _TOML_POSITION.match(str(exc))
        msg = found["msg"] if found else "syntax error"
        if found and found["line"]:
            line, col = int(found["line"]), int(found["col"])
    msg = _QUOTING_TOML.sub(r"\1", msg)
    msg = re.sub(
        r"\(((?:'[^']*'(?:, )?)+),?\)",
        lambda m: key_path(tuple(re.findall(r"'([^']*)'", m[1]))),
        msg,
    )
    return msg, line, col


_TOML_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')"""
_TOML_DOTTED = rf"{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*"
_TOML_TABLE = re.compile(rf"\[\s*({_TOML_DOTTED})\s*\]\s*(?:#.*)?")
_TOML_ASSIGN = re.compile(rf"({_TOML_DOTTED})\s*=")


def _toml_lines(text: str) -> dict[Path_, int]:
    """The line of each table header and key of a TOML document that tomllib parsed, for error
    messages (tomllib gives lines for syntax errors only). Best effort and conservative: a
    document with multi-line strings or arrays of tables gets no lines at all (a line inside
    them could look like a key)."""
    if '"""' in text or "'''" in text or re.search(r"^\s*\[\[", text, re.M):
        return {}
    lines: dict[Path_, int] = {}
    table: Path_ | None = ()
    for number, line in enumerate(text.split("\n"), 1):  # TOML's newlines only
        stripped = line.strip()
        if stripped.startswith("["):
            header = _TOML_TABLE.fullmatch(stripped)
            table = None if header is None else _toml_parts(header[1])  # None: lost track
            if table is not None:
                lines.setdefault(table, number)
        elif table is not None and (assign := _TOML_ASSIGN.match(stripped)) is not None:
            lines.setdefault((*table, *_toml_parts(assign[1])), number)
    return lines


def _toml_parts(dotted: str) -> Path_:
    parts = re.findall(rf"\s*({_TOML_KEY})\s*(?:\.|$)", dotted)
    return tuple(p[1:-1] if p[:1] in ('"', "'") else p for p in parts)


# A quoted token in a PyYAML message is a character or name from the file, except the parser's
# own token names ('<block end>', '<scalar>'...).
_QUOTED_YAML = re.compile(r"\s*'(?!<)[^']*'")


def _parse_yaml(text: str, where: str) -> tuple[object, dict[Path_, int]]:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            f"retention policy {where}: a YAML policy needs PyYAML; install the extra: "
            "pip install 'ccvault[yaml]' (or write the policy in TOML)"
        ) from None
    loader = yaml.SafeLoader(text)
    lines: dict[Path_, int] = {}
    problems = _Problems(lines)
    try:
        node = loader.get_single_node()
        data = None if node is None else _from_node(loader, node, (), lines, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = _QUOTED_YAML.sub("", exc.problem or exc.context or "syntax error")
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigurationError(
            f"retention policy {where}: not valid YAML{at}: {problem}"
        ) from None
    except yaml.YAMLError:
        raise ConfigurationError(f"retention policy {where}: not valid YAML") from None
    finally:
        loader.dispose()
    problems.raise_if_any(where)
    return data, lines


def _from_node(
    loader: Any, node: Any, path: Path_, lines: dict[Path_, int], problems: _Problems
) -> object:
    """The plain data of a composed YAML node. Mapping keys are taken as written (``on`` or
    ``2024`` as a category name stays a string); a duplicate key is a problem (PyYAML would keep
    the last one silently); ``<<`` merge keys are not expanded (an unknown key)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add(path, f"line {key_node.start_mark.line + 1}: keys must be names")
                continue
            key = key_node.value
            child = (*path, key)
            if key in out:
                problems.add(child, f"defined again at line {key_node.start_mark.line + 1}")
                continue
            lines[child] = key_node.start_mark.line + 1
            out[key] = _from_node(loader, value_node, child, lines, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _from_node(loader, item, (*path, str(i)), lines, problems)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
