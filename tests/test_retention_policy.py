"""Retention policies (DESIGN.md, lifecycle rule 8; docs/retention.md, "The policy file"):
categories as frozen models, ISO 8601 calendar durations, the digest, and loading from TOML,
YAML and dicts, where every problem is a ConfigurationError naming the key path and the line,
never the file's content. Also CCVAULT_RETENTION_POLICY. No database."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ccvault._settings import CcvaultSettings
from ccvault.errors import CcvaultError, ConfigurationError, RetentionExpiredError
from ccvault.retention import (
    MAX_KEEP_FOR_YEARS,
    CalendarDuration,
    Category,
    RetentionPolicy,
    load_policy,
    parse_duration,
)

VECTORS = Path(__file__).parent / "vectors" / "retention_periods_v1.json"

GOOD_TOML = """\
# retention for the contact center
[categories.transcripts]
keep_for = "P90D"
granularity = "month"
tz = "Europe/Paris"

[categories.chats]
keep_for = "P2W"
granularity = "week"
"""

GOOD_YAML = """\
categories:
  transcripts:
    keep_for: P90D
    granularity: month
    tz: Europe/Paris
  chats:
    keep_for: P14D
    granularity: week
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, name: str, text: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_policy(write(tmp_path, name, text))
    return str(info.value)


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed", "canonical"),
    [
        ("P90D", (0, 0, 90), "P90D"),
        ("P6M", (0, 6, 0), "P6M"),
        ("P7Y", (7, 0, 0), "P7Y"),
        ("P1Y6M", (1, 6, 0), "P1Y6M"),
        ("P18M", (1, 6, 0), "P1Y6M"),
        ("P12M", (1, 0, 0), "P1Y"),
        ("P2W", (0, 0, 14), "P14D"),
        ("P1Y2M3D", (1, 2, 3), "P1Y2M3D"),
        ("P0Y1D", (0, 0, 1), "P1D"),
        ("P45D", (0, 0, 45), "P45D"),  # days never fold into months
        ("P100Y", (100, 0, 0), "P100Y"),
        ("P1200M", (100, 0, 0), "P100Y"),
        ("P36525D", (0, 0, 36525), "P36525D"),
    ],
)
def test_calendar_durations(text: str, parsed: tuple[int, int, int], canonical: str) -> None:
    duration = parse_duration(text)
    assert duration == CalendarDuration(*parsed)
    assert duration.iso() == canonical
    assert Category(name="c", keep_for=text, granularity="day").keep_for == canonical


FIXED_MESSAGES = {
    "must be a positive ISO 8601 calendar duration such as P90D, P6M, P7Y, P1Y6M or P2W (years, "
    "months, days or weeks; no time part, no fractions, no sign)",
    "must be positive: a duration of zero keeps nothing",
    "must be at most 100 years",
}


@pytest.mark.parametrize(
    "text",
    [
        "P",
        "PT1H",
        "P1DT1H",
        "PT0S",
        "P-1D",
        "P+1D",
        "P1.5M",
        "P1,5M",
        "1M",
        "90D",
        "",
        " P1D",
        "P1D ",
        "p1d",
        "P1d",
        "P0D",
        "P0Y0M0D",
        "P0W",
        "P1W2D",
        "P1M1Y",
        "P1DT",
        "P1E3D",
        "P\u0661D",  # a digit of another script
        "P1234567D",
        "P101Y",
        "P1201M",
        "P36526D",
        "P5218W",
        "P" + "9" * 5000 + "D",
    ],
)
def test_bad_durations_are_refused_without_echo(text: str) -> None:
    with pytest.raises(ValueError, match=r"^must be") as info:
        parse_duration(text)
    assert str(info.value) in FIXED_MESSAGES  # never the text
    with pytest.raises(ValidationError):
        Category(name="c", keep_for=text, granularity="day")


def test_the_longest_keep_for() -> None:
    assert MAX_KEEP_FOR_YEARS == 100
    with pytest.raises(ValueError, match="at most 100 years"):
        parse_duration("P100Y1D")


def test_a_duration_is_a_string() -> None:
    with pytest.raises(TypeError):
        parse_duration(90)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Category(name="c", keep_for=90, granularity="day")  # type: ignore[arg-type]


# -- categories ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["transcripts", "a", "call-recordings_v2.eu", "9x", "A" * 64])
def test_good_names(name: str) -> None:
    assert Category(name=name, keep_for="P1D", granularity="day").name == name


@pytest.mark.parametrize(
    "name",
    ["", "A" * 65, "a/b", "a b", "-x", ".x", "_x", "é", "x\n", "x\x00", "transcripts/2026-03-01"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Category(name=name, keep_for="P1D", granularity="day")


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_good_zones(tz: str) -> None:
    assert Category(name="c", keep_for="P1D", granularity="day", tz=tz).zone.key == tz


@pytest.mark.parametrize(
    "tz", ["", "Europe/Pariss", "europe/paris", "localtime", "Factory", "../etc/passwd", "+01:00"]
)
def test_bad_zones(tz: str) -> None:
    with pytest.raises(ValidationError):
        Category(name="c", keep_for="P1D", granularity="day", tz=tz)


def test_category_defaults_and_strictness() -> None:
    category = Category(name="c", keep_for="P1D", granularity="week")
    assert category.tz == "UTC"
    assert category.duration == CalendarDuration(0, 0, 1)
    with pytest.raises(ValidationError):
        category.keep_for = "P2D"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Category(name="c", keep_for="P1D", granularity="week", keepfor="P1D")  # type: ignore[call-arg]
    for granularity in ("fortnight", "Day", "year", "days"):
        with pytest.raises(ValidationError):
            Category(name="c", keep_for="P1D", granularity=granularity)  # type: ignore[arg-type]


def test_retention_expired_error_is_a_ccvault_error() -> None:
    assert issubclass(RetentionExpiredError, CcvaultError)


# -- policies and the digest -----------------------------------------------------------------------

TRANSCRIPTS = Category(name="transcripts", keep_for="P90D", granularity="month", tz="Europe/Paris")
CHATS = Category(name="chats", keep_for="P14D", granularity="week")


def test_policy_sorts_and_finds_categories() -> None:
    policy = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))
    assert policy.names == ("chats", "transcripts")
    assert policy.category("transcripts") is TRANSCRIPTS
    with pytest.raises(KeyError):
        policy.category("recordings")
    assert RetentionPolicy(categories=[CHATS]).categories == (CHATS,)  # a list is taken
    assert RetentionPolicy().categories == ()


def test_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        RetentionPolicy(categories=(CHATS, CHATS.model_copy(update={"keep_for": "P1D"})))


def test_the_digest_is_stable_and_order_and_spelling_independent(tmp_path: Path) -> None:
    a = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))
    b = RetentionPolicy(categories=(CHATS, TRANSCRIPTS))
    c = RetentionPolicy(
        categories=(
            Category(name="chats", keep_for="P2W", granularity="week", tz="UTC"),
            Category(name="transcripts", keep_for="P90D", granularity="month", tz="Europe/Paris"),
        )
    )
    assert a == b == c
    assert a.digest() == b.digest() == c.digest()
    assert len(bytes.fromhex(a.digest())) == 32
    assert load_policy(write(tmp_path, "p.toml", GOOD_TOML)).digest() == a.digest()
    assert load_policy(write(tmp_path, "p.yaml", GOOD_YAML)).digest() == a.digest()
    assert a.canonical_json() == (
        b'{"categories":[{"granularity":"week","keep_for":"P14D","name":"chats","tz":"UTC"},'
        b'{"granularity":"month","keep_for":"P90D","name":"transcripts","tz":"Europe/Paris"}],'
        b'"format":"ccvault-retention-policy/v1"}'
    )


@pytest.mark.parametrize(
    "change",
    [
        {"name": "transcript"},
        {"keep_for": "P91D"},
        {"keep_for": "P3M"},
        {"granularity": "day"},
        {"tz": "Europe/Berlin"},
    ],
)
def test_every_field_changes_the_digest(change: dict[str, str]) -> None:
    base = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))
    changed = RetentionPolicy(categories=(Category(**{**TRANSCRIPTS.canonical(), **change}), CHATS))
    assert changed.digest() != base.digest()
    assert RetentionPolicy(categories=(CHATS,)).digest() != base.digest()


def test_the_frozen_policy_digest() -> None:
    """tests/vectors/retention_periods_v1.json: a policy's canonical JSON and digest."""
    doc = json.loads(VECTORS.read_text())["policy"]
    policy = RetentionPolicy(categories=tuple(Category(**c) for c in doc["categories"]))
    assert policy.canonical_json().decode() == doc["canonical_json"]
    assert policy.digest() == doc["digest"]


# -- from_dict -------------------------------------------------------------------------------------


def test_from_dict() -> None:
    policy = RetentionPolicy.from_dict(
        {
            "categories": {
                "transcripts": {"keep_for": "P90D", "granularity": "month", "tz": "Europe/Paris"}
            }
        }
    )
    assert policy.categories == (TRANSCRIPTS,)
    assert RetentionPolicy.from_dict({"categories": {}}).categories == ()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({}, "categories: missing"),
        ([], "the policy: must be a table"),
        ({"categories": []}, "categories: must be a table of categories"),
        ({"categories": {}, "categorys": {}}, "categorys: unknown key (did you mean categories?)"),
        ({"categories": {"x": "P1D"}}, "categories.x: must be a table"),
        ({"categories": {"x": {"keep_for": "P1D"}}}, "categories.x.granularity: missing"),
        (
            {"categories": {"x": {"keepfor": "P1D", "granularity": "day"}}},
            "categories.x.keepfor: unknown key (did you mean keep_for?)",
        ),
        (
            {"categories": {"x": {"name": "y", "keep_for": "P1D", "granularity": "day"}}},
            "categories.x.name: unknown key",
        ),
        (
            {"categories": {"x": {"keep_for": "P1.5M", "granularity": "day"}}},
            "categories.x.keep_for: must be",
        ),
        (
            {"categories": {"a/b": {"keep_for": "P1D", "granularity": "day"}}},
            'categories."a/b": the category name',
        ),
        (
            {"categories": {"x": {"keep_for": "P1D", "granularity": "hour"}}},
            "categories.x.granularity: ",
        ),
        (
            {"categories": {"x": {"keep_for": "P1D", "granularity": "day", "tz": 1}}},
            "categories.x.tz: ",
        ),
        (
            {"categories": {"x.y": {"keep_for": "P1D", "granularity": "d"}}},
            'categories."x.y".granularity',
        ),
        (
            {"categories": {1: {"keep_for": "P1D", "granularity": "day"}}},
            "categories.1: a category name",
        ),
    ],
)
def test_from_dict_names_the_key_path(data: object, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetentionPolicy.from_dict(data)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        RetentionPolicy.from_dict(
            {
                "categories": {
                    "a": {"keep_for": "P", "granularity": "day"},
                    "b": {"keep_for": "P1D", "granularity": "day", "tz": "Mars/Olympus"},
                }
            }
        )
    assert "categories.a.keep_for" in str(info.value)
    assert "categories.b.tz" in str(info.value)


# -- files -----------------------------------------------------------------------------------------


def test_toml_and_yaml_files_load(tmp_path: Path) -> None:
    expected = RetentionPolicy(categories=(TRANSCRIPTS, CHATS))
    assert load_policy(write(tmp_path, "p.toml", GOOD_TOML)) == expected
    assert load_policy(str(write(tmp_path, "p.yaml", GOOD_YAML))) == expected
    assert load_policy(write(tmp_path, "p.yml", GOOD_YAML)) == expected
    assert load_policy(write(tmp_path, "p.TOML", "\ufeff" + GOOD_TOML)) == expected  # BOM, case


def test_the_documented_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/retention.md, "The policy file": the TOML and YAML examples load (to the same
    categories where they overlap) and the Python example runs beside the TOML file."""
    import re

    page = (Path(__file__).parents[1] / "docs" / "retention.md").read_text()
    page = page[page.index("\n## The policy file\n") :]
    page = page[: page.index("\n## ", 1)]  # that section's examples
    blocks = {
        kind: re.findall(rf"^```{kind}\n(.*?)^```", page, re.M | re.S)
        for kind in ("toml", "yaml", "python")
    }
    assert [len(found) for found in blocks.values()] == [1, 1, 1]
    toml = load_policy(write(tmp_path, "retention.toml", blocks["toml"][0]))
    yaml = load_policy(write(tmp_path, "retention.yaml", blocks["yaml"][0]))
    assert toml.names == ("chats", "recordings", "transcripts")
    assert set(yaml.categories) <= set(toml.categories)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks["python"][0], "docs/retention.md", "exec"), {})


def test_a_typo_in_a_key_is_named_with_its_line(tmp_path: Path) -> None:
    text = GOOD_TOML.replace('keep_for = "P2W"', 'keepfor = "P2W"')
    message = refused(tmp_path, "p.toml", text)
    assert "categories.chats.keepfor (line 8): unknown key (did you mean keep_for?)" in message
    assert "categories.chats.keep_for (line 7): missing" in message
    assert str(tmp_path / "p.toml") in message


def test_a_bad_value_is_named_with_its_line_never_shown(tmp_path: Path) -> None:
    text = GOOD_TOML.replace('"P90D"', '"P9.87654M"').replace('"Europe/Paris"', '"Secret/Zone42"')
    message = refused(tmp_path, "p.toml", text)
    assert "categories.transcripts.keep_for (line 3): must be a positive ISO 8601" in message
    assert "categories.transcripts.tz (line 5): must be an IANA time zone name" in message
    assert "9.87654" not in message
    assert "Secret" not in message


def test_toml_syntax_errors_give_line_and_column_not_content(tmp_path: Path) -> None:
    message = refused(tmp_path, "p.toml", "[categories.x]\nkeep_for = P90D\n")
    assert message.endswith("not valid TOML at line 2, column 12: Invalid value")
    message = refused(tmp_path, "p.toml", '[categories.x]\nkeep_for = "P1D"\n[categories.x]\n')
    assert "line 3" in message
    assert "Cannot declare categories.x twice" in message
    message = refused(tmp_path, "p.toml", '[categories.x]\nkeep_for = "P1D" §secret\n')
    assert "line 2" in message
    assert "§" not in message
    assert "secret" not in message
    message = refused(tmp_path, "p.toml", '[categories.x]\nkeep_for = "P1D\n')
    assert "line 2" in message
    assert "P1D" not in message


def test_toml_lines_follow_quoted_and_dotted_keys(tmp_path: Path) -> None:
    text = (
        "[categories]\n"
        'a.keep_for = "P1D"\n'
        'a.granularity = "hour"\n'
        '[categories."call.v2"]\n'
        'keep_for = "P"\n'
        'granularity = "day"\n'
    )
    message = refused(tmp_path, "p.toml", text)
    assert "categories.a.granularity (line 3)" in message
    assert 'categories."call.v2".keep_for (line 5)' in message


def test_toml_lines_are_left_out_when_unsure(tmp_path: Path) -> None:
    """A multi-line string could hold lines that look like keys: no lines at all, rather than a
    wrong one."""
    text = '[categories.x]\nkeep_for = "P"\ngranularity = "day"\n'
    assert "categories.x.keep_for (line 2)" in refused(tmp_path, "p.toml", text)
    assert "(line" not in refused(tmp_path, "p.toml", text + '# """\n')
    text = 'note = """\n[categories.x]\n"""\n[categories.x]\nkeep_for = "P"\ngranularity = "day"\n'
    message = refused(tmp_path, "p.toml", text)
    assert "categories.x.keep_for: must be" in message
    assert "note: unknown key" in message


def test_yaml_errors_name_key_path_and_line(tmp_path: Path) -> None:
    text = GOOD_YAML.replace("keep_for: P14D", "keepfor: P14D").replace("month", "monthly")
    message = refused(tmp_path, "p.yaml", text)
    assert "categories.transcripts.granularity (line 4): Input should be" in message
    assert "categories.chats.keepfor (line 7): unknown key (did you mean keep_for?)" in message
    assert "categories.chats.keep_for (line 6): missing" in message
    assert "monthly" not in message


def test_yaml_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = GOOD_YAML + "    granularity: day\n"
    message = refused(tmp_path, "p.yaml", text)
    assert "categories.chats.granularity (line 8): defined again at line 9" in message


def test_yaml_syntax_errors_give_the_line_not_content(tmp_path: Path) -> None:
    message = refused(tmp_path, "p.yaml", 'categories:\n  x:\n    keep_for: "P1D\n')
    assert "not valid YAML at line" in message
    assert "P1D" not in message
    message = refused(tmp_path, "p.yaml", "categories:\n  x:\n\tkeep_for: secret\n")
    assert "not valid YAML at line 3" in message
    assert "secret" not in message
    message = refused(tmp_path, "p.yaml", "categories: *nowhere\n")
    assert "not valid YAML at line 1" in message
    assert "nowhere" not in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the policy: must be a table"),
        ("- a\n- b\n", "the policy: must be a table"),
        ("categories: 3\n", "categories (line 1): must be a table of categories"),
        ("categories:\n  x: [1, 2]\n", "categories.x (line 2): must be a table"),
        (
            "categories:\n  x:\n    keep_for: 90\n    granularity: day\n",
            "categories.x.keep_for (line 3)",
        ),
        (
            "categories:\n  x:\n    keep_for: 2026-01-01\n    granularity: day\n",
            "categories.x.keep_for (line 3)",
        ),
        (
            "categories:\n  x:\n    <<: {keep_for: P1D}\n    granularity: day\n",
            'categories.x."<<" (line 3): unknown key',
        ),
        ("categories:\n  [a]: {}\n", "keys must be names"),
        ("categories: {}\nversion: 1\n", "version (line 2): unknown key"),
    ],
)
def test_yaml_shapes(tmp_path: Path, text: str, says: str) -> None:
    assert says in refused(tmp_path, "p.yaml", text)


def test_yaml_keys_stay_names(tmp_path: Path) -> None:
    """YAML 1.1 would read the key `on` as True and `2024` as an int: a category name is the
    key as written."""
    body = "    keep_for: P1D\n    granularity: day\n"
    text = f"categories:\n  on:\n{body}  2024:\n{body}"
    assert load_policy(write(tmp_path, "p.yaml", text)).names == ("2024", "on")


def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    message = refused(tmp_path, "p.yaml", GOOD_YAML)
    assert "pip install 'ccvault[yaml]'" in message
    assert load_policy(write(tmp_path, "p.toml", GOOD_TOML)).names == ("chats", "transcripts")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_policy(tmp_path / "missing.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_policy(tmp_path / "dir.toml")
    with pytest.raises(ConfigurationError, match="unknown format"):
        load_policy(write(tmp_path, "p.json", "{}"))
    with pytest.raises(ConfigurationError, match="not a valid path"):
        load_policy("bad\x00.toml")
    (tmp_path / "latin1.toml").write_bytes(b'[categories.x]\n# caf\xe9\nkeep_for = "P1D"\n')
    with pytest.raises(ConfigurationError, match=r"not UTF-8 \(line 2\)"):
        load_policy(tmp_path / "latin1.toml")
    (tmp_path / "big.toml").write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigurationError, match="larger than 1024 KiB"):
        load_policy(tmp_path / "big.toml")


# -- CCVAULT_RETENTION_POLICY ----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("CCVAULT_") and not name.upper().startswith("CCVAULT_TEST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_setting_is_optional(clean_env: pytest.MonkeyPatch) -> None:
    settings = CcvaultSettings()
    assert settings.retention_policy is None
    assert settings.load_retention_policy() is None


def test_the_setting_loads_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "retention.toml", GOOD_TOML)
    clean_env.setenv("CCVAULT_RETENTION_POLICY", str(path))
    settings = CcvaultSettings()
    assert settings.retention_policy == str(path)
    policy = settings.load_retention_policy()
    assert policy is not None
    assert policy.names == ("chats", "transcripts")


def test_a_bad_policy_file_is_refused_with_the_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("CCVAULT_RETENTION_POLICY", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigurationError, match=r"^CCVAULT_RETENTION_POLICY: .*cannot be read"):
        CcvaultSettings()
    bad = write(tmp_path, "bad.toml", GOOD_TOML.replace("keep_for", "keepfor"))
    clean_env.setenv("CCVAULT_RETENTION_POLICY", str(bad))
    with pytest.raises(ConfigurationError, match=r"categories\.transcripts\.keepfor"):
        CcvaultSettings()
