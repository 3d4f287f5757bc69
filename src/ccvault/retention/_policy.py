"""Retention policies: categories (name, ``keep_for``, granularity, time zone) and the policy
that groups them, as frozen pydantic models, with the calendar duration ``keep_for`` is written
in and the policy's digest (DESIGN.md, lifecycle rule 8; docs/retention.md, "The model").

Owns validation and canonical forms only. It must not read files (``_load`` does), compute
periods (``_time`` does), touch keys, a key store or a vault, or put a value it refuses into an
error message: messages name the field, never what it held.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from typing import Any, Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_KEEP_FOR_YEARS",
    "POLICY_FORMAT",
    "CalendarDuration",
    "Category",
    "Granularity",
    "RetentionPolicy",
    "parse_duration",
]

POLICY_FORMAT: Final = "ccvault-retention-policy/v1"
"""The ``format`` of a policy's canonical JSON (what :meth:`RetentionPolicy.digest` hashes)."""

MAX_KEEP_FOR_YEARS: Final = 100
"""The longest ``keep_for`` accepted: added to 2000-01-01 it must not pass 2100-01-01."""

Granularity = Literal["day", "week", "month"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# ISO 8601 calendar durations without a time part: years, months and days in that order (each
# optional, at least one), or weeks alone. Digits only (no sign, no fraction, no exponent), at
# most six (100 years is 36525 days).
_DURATION = re.compile(r"P(?:(?P<y>[0-9]{1,6})Y)?(?:(?P<m>[0-9]{1,6})M)?(?:(?P<d>[0-9]{1,6})D)?")
_WEEKS = re.compile(r"P(?P<w>[0-9]{1,6})W")
_DURATION_HELP = (
    "must be a positive ISO 8601 calendar duration such as P90D, P6M, P7Y, P1Y6M or P2W "
    "(years, months, days or weeks; no time part, no fractions, no sign)"
)


class CalendarDuration(NamedTuple):
    """A ``keep_for``: whole years, months and days, normalised (``months`` < 12; weeks counted
    as 7 days; days never folded into months, whose length varies)."""

    years: int
    months: int
    days: int

    def iso(self) -> str:
        """The canonical ISO 8601 form: ``P1Y6M``, ``P14D`` (for ``P2W``), ``P1Y`` (for
        ``P12M``)."""
        parts = [(self.years, "Y"), (self.months, "M"), (self.days, "D")]
        return "P" + "".join(f"{n}{unit}" for n, unit in parts if n)

    def add_to(self, day: date) -> date:
        """``day`` + this duration on the calendar: years and months first (as months), clamped to
        the last day of the month reached (Jan 31 + P1M = Feb 28, or 29 in a leap year; Feb 29 +
        P1Y = Feb 28), then the days. Raises OverflowError past year 9999."""
        total = day.year * 12 + (day.month - 1) + self.years * 12 + self.months
        year, month0 = divmod(total, 12)
        if not 1 <= year <= 9999:
            raise OverflowError("date out of range")
        month = month0 + 1
        moved = date(year, month, min(day.day, _month_length(year, month)))
        return date.fromordinal(moved.toordinal() + self.days)  # OverflowError/ValueError past 9999


def _month_length(year: int, month: int) -> int:
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return (following - date(year, month, 1)).days


def parse_duration(text: str) -> CalendarDuration:
    """Parse an ISO 8601 calendar duration (``P90D``, ``P6M``, ``P7Y``, ``P1Y6M``, ``P2W``).

    Refused with a ValueError that does not quote the text: a time part (``PT1H``), fractions
    (``P1.5M``), signs (``P-1D``), an empty duration (``P``), a zero one (``P0D``), lowercase
    designators, weeks combined with other units, and more than :data:`MAX_KEEP_FOR_YEARS` years.
    """
    if not isinstance(text, str):
        raise TypeError("a duration is a str such as 'P90D'")
    if (weeks := _WEEKS.fullmatch(text)) is not None:
        years, months, days = 0, 0, int(weeks["w"]) * 7
    elif (found := _DURATION.fullmatch(text)) is not None and text != "P":
        years, months, days = (int(found[k] or 0) for k in ("y", "m", "d"))
    else:
        raise ValueError(_DURATION_HELP)
    if years == months == days == 0:
        raise ValueError("must be positive: a duration of zero keeps nothing")
    extra_years, months = divmod(months, 12)
    duration = CalendarDuration(years + extra_years, months, days)
    limit = date(2000 + MAX_KEEP_FOR_YEARS, 1, 1)
    try:
        too_long = duration.years > MAX_KEEP_FOR_YEARS or duration.add_to(date(2000, 1, 1)) > limit
    except (OverflowError, ValueError):
        too_long = True
    if too_long:
        raise ValueError(f"must be at most {MAX_KEEP_FOR_YEARS} years")
    return duration


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # "localtime" is whatever the host is set to, "Factory" a placeholder: neither names a zone
    # that every host computes the same periods in.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "Factory"}


def is_zone_name(name: object) -> bool:
    """Whether ``name`` is an IANA zone name as :class:`Category` takes one (spelt as the tz
    database does; not ``localtime`` nor ``Factory``)."""
    return isinstance(name, str) and name in _zone_names()


@functools.lru_cache(maxsize=256)
def load_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name`` (as validated by :class:`Category`)."""
    return zoneinfo.ZoneInfo(name)


class Category(BaseModel):
    """A retention category: values in it are grouped into periods of ``granularity`` computed in
    ``tz``, and each period's secret is destroyed at the first enforcement at or after the
    period's end + ``keep_for`` (docs/retention.md, "The model").

    ``name`` becomes part of every period's key label (``<name>/<period start date>``) and of its
    ref; ``keep_for`` is kept in its canonical form (``P2W`` reads back as ``P14D``, ``P18M`` as
    ``P1Y6M``); ``tz`` is an IANA zone name spelt exactly as the tz database does
    (``Europe/Paris``; ``UTC`` by default). Granularity and tz must never change once a category
    has a period (its periods' labels and refs depend on them).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(
        description="letters, digits, '_', '-' and '.', starting with a letter or digit; at most 64"
    )
    keep_for: str = Field(description="ISO 8601 calendar duration: P90D, P6M, P7Y, P1Y6M, P2W")
    granularity: Granularity = Field(description="day, week (ISO, from Monday 00:00) or month")
    tz: str = Field(default="UTC", description="IANA time zone the periods are computed in")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "must be 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("keep_for")
    @classmethod
    def _keep_for(cls, value: str) -> str:
        return parse_duration(value).iso()

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        if value not in _zone_names():
            raise ValueError(
                "must be an IANA time zone name spelt as the tz database does, e.g. "
                "'Europe/Paris' or 'UTC'"
            )
        try:
            load_zone(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("names a time zone this system cannot load") from None
        return value

    @property
    def duration(self) -> CalendarDuration:
        """``keep_for`` parsed."""
        return parse_duration(self.keep_for)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``tz`` as a :class:`zoneinfo.ZoneInfo`."""
        return load_zone(self.tz)

    def canonical(self) -> dict[str, str]:
        """The category as the policy's canonical JSON holds it."""
        return {
            "name": self.name,
            "keep_for": self.keep_for,
            "granularity": self.granularity,
            "tz": self.tz,
        }


class RetentionPolicy(BaseModel):
    """The retention categories an installation uses, sorted by name (names are unique).

    Build it in Python (``RetentionPolicy(categories=(Category(...), ...))``), from the nested
    form of a policy file (:meth:`from_dict`), or with :func:`~ccvault.retention.load_policy`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    categories: tuple[Category, ...] = ()

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: tuple[Category, ...]) -> tuple[Category, ...]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("category names must be unique")
        return tuple(sorted(value, key=lambda c: c.name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetentionPolicy:
        """The policy from the nested form of a policy file::

            {"categories": {"transcripts": {"keep_for": "P90D", "granularity": "month",
                                            "tz": "Europe/Paris"}}}

        Raises :class:`~ccvault.errors.ConfigurationError` naming the key path of each problem
        (``categories.transcripts.keep_for``), unknown keys included, never the values.
        """
        from ._load import policy_from_data

        return policy_from_data(data)

    def category(self, name: str) -> Category:
        """The category called ``name``; KeyError when the policy has none."""
        for category in self.categories:
            if category.name == name:
                return category
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """The category names, sorted."""
        return tuple(c.name for c in self.categories)

    def canonical_json(self) -> bytes:
        """UTF-8 JSON, keys sorted, no spaces, categories sorted by name, ``keep_for`` canonical:
        ``{"categories":[{"granularity":…,"keep_for":…,"name":…,"tz":…}],"format":"ccvault-retention-policy/v1"}``."""
        doc = {"format": POLICY_FORMAT, "categories": [c.canonical() for c in self.categories]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def digest(self) -> str:
        """SHA-256 of :meth:`canonical_json`, hex: the same for every spelling of the same policy
        (order of categories, ``P2W`` or ``P14D``, TOML or YAML)."""
        return hashlib.sha256(self.canonical_json()).hexdigest()
