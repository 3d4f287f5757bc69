"""Retention time (DESIGN.md, lifecycle rule 8): the period an event time falls in, when a period
expires, and the period's label and ref that its key-store record carries (rule 7;
docs/format.md, "7. Retention periods").

Pure arithmetic on aware datetimes in each category's IANA zone. It owns the definitions of
period boundaries, expiry, ``period_ref`` and ``period_label``, which are part of the stored
format: changing any of them orphans existing period records. It must not read a clock (every
"now" is an argument), a key store, keys or a vault.

Boundaries: a period starts at the *start of its first day*: local 00:00 — or, on a day whose
00:00 a DST change skips, the first instant of that day (the end of the gap). A day period runs
to the next day's start (23 or 25 hours on DST days), an ISO week from Monday's start to the
next Monday's, a month from the 1st's start to the next 1st's. Expiry is the start of the day
``end's local date + keep_for`` (years and months first, clamped to the month's end, then days).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from .._repr import safe_repr
from ..crypto._encoding import lp
from ._policy import Category, load_zone

__all__ = [
    "PERIOD_REF_DOMAIN",
    "Period",
    "check_event_time",
    "day_start",
    "expires_at",
    "expiring_by",
    "is_expired",
    "next_period",
    "period_iso",
    "period_label",
    "period_of",
    "period_ref",
    "period_ref_message",
    "periods_between",
    "previous_period",
]

PERIOD_REF_DOMAIN = b"ccvault/period/v1"

_UTC = timezone.utc
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Period:
    """One period of a category: ``start`` ≤ t < ``end``, both aware in the category's zone.

    Get one from :func:`period_of` (or :func:`next_period`...). Built directly, ``start`` and
    ``end`` must be the bounds of a period of ``category`` (ValueError otherwise); they are kept
    converted to the category's zone, in which their ISO forms (and so the ref) are written.
    """

    category: Category
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            _require_aware(getattr(self, name), name)
        start, end = _bounds(self.category, self.start)
        if (start, end) != (self.start, self.end):
            raise ValueError(f"not the bounds of a period of category {self.category.name!r}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(_UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(_UTC)

    def __contains__(self, t: object) -> bool:
        return isinstance(t, datetime) and t.tzinfo is not None and self.start <= t < self.end

    @safe_repr
    def __repr__(self) -> str:
        return f"Period({self.category.name!r}, {period_iso(self.start)} .. {period_iso(self.end)})"


def _made(category: Category, start: datetime, end: datetime) -> Period:
    """A Period from bounds this module computed (skips re-checking them)."""
    period = object.__new__(Period)
    object.__setattr__(period, "category", category)
    object.__setattr__(period, "start", start)
    object.__setattr__(period, "end", end)
    return period


def _require_aware(t: object, name: str) -> None:
    if not isinstance(t, datetime):
        raise TypeError(f"{name} must be a datetime")
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} is a naive datetime: give it a time zone (e.g. timezone.utc)")


def _out_of_range() -> ValueError:
    return ValueError("the time is outside the range retention periods can be computed for")


# -- boundaries ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def day_start(tz: str, day: date) -> datetime:
    """The start of ``day`` in zone ``tz``: the first instant whose local date is ``day`` or
    later — 00:00 (the first one when a DST change repeats it), or the end of the DST gap when
    00:00 does not exist. Aware, in ``tz``."""
    zone = load_zone(tz)
    wall = datetime.combine(day, time(0), tzinfo=zone)  # fold=0: the earlier of two 00:00s
    instant = wall.astimezone(_UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return wall
    # 00:00 falls in a gap: fold=0 reads it with the offset before the change (an instant after
    # the gap's start), fold=1 with the offset after (an instant before it). The day starts at
    # the change, found to the second (zone transitions fall on whole seconds).
    after = instant
    before = wall.replace(fold=1).astimezone(_UTC)
    if before > after:
        before, after = after, before
    while after - before > _SECOND:
        middle = before + timedelta(seconds=((after - before) // _SECOND) // 2)
        if middle.astimezone(zone).date() >= day:
            after = middle
        else:
            before = middle
    return after.astimezone(zone)


def _floor(granularity: str, day: date) -> date:
    if granularity == "day":
        return day
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _following(granularity: str, day: date) -> date:
    if granularity == "day":
        return day + timedelta(days=1)
    if granularity == "week":
        return day + timedelta(days=7)
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def _preceding(granularity: str, day: date) -> date:
    if granularity == "day":
        return day - timedelta(days=1)
    if granularity == "week":
        return day - timedelta(days=7)
    return date(day.year - 1, 12, 1) if day.month == 1 else date(day.year, day.month - 1, 1)


def _bounds(category: Category, t: datetime) -> tuple[datetime, datetime]:
    tz, granularity = category.tz, category.granularity
    try:
        first = _floor(granularity, t.astimezone(category.zone).date())
        start = day_start(tz, first)
        while t < start:  # not expected: a day starts no later than any instant dated that day
            first = _preceding(granularity, first)
            start = day_start(tz, first)
        following = _following(granularity, first)
        end = day_start(tz, following)
        while end <= t:  # a clock set back across midnight dates t a day before its period
            first, start = following, end
            following = _following(granularity, first)
            end = day_start(tz, following)
    except (OverflowError, ValueError):
        raise _out_of_range() from None
    return start, end


def period_of(category: Category, t: datetime) -> Period:
    """The period of ``category`` that contains the aware datetime ``t`` (ValueError if naive)."""
    _require_aware(t, "t")
    return _made(category, *_bounds(category, t))


def next_period(period: Period) -> Period:
    """The period that starts where ``period`` ends."""
    return period_of(period.category, period.end)


def previous_period(period: Period) -> Period:
    """The period that ends where ``period`` starts."""
    return period_of(period.category, period.start - _MICROSECOND)


def periods_between(category: Category, start: datetime, end: datetime) -> Iterator[Period]:
    """The periods of ``category`` that overlap [``start``, ``end``), oldest first."""
    _require_aware(end, "end")
    period = period_of(category, start)
    while period.start < end:
        yield period
        period = next_period(period)


# -- expiry --------------------------------------------------------------------------------------


def expires_at(period: Period) -> datetime:
    """When ``period`` expires: the start of the day (local date of its end + ``keep_for``) in
    the category's zone, aware. Its secret is destroyed by the first enforcement at or after it;
    its values read until then."""
    category = period.category
    try:
        return day_start(category.tz, category.duration.add_to(period.end.date()))
    except (OverflowError, ValueError):
        raise _out_of_range() from None


def is_expired(period: Period, now: datetime) -> bool:
    """Whether ``period`` has expired at ``now`` (``now`` ≥ :func:`expires_at`)."""
    _require_aware(now, "now")
    return now >= expires_at(period)


def expiring_by(category: Category, now: datetime) -> Period:
    """The last period of ``category`` expired at ``now``: every period up to and including it
    has expired (expiry never decreases from one period to the next), none after it."""
    _require_aware(now, "now")
    keep = category.duration
    try:
        local = now.astimezone(category.zone).date()
        months = local.year * 12 + local.month - 1 - keep.years * 12 - keep.months
        year, month0 = divmod(months, 12)
        first = date(year, month0 + 1, 1)
        guess = first.replace(day=min(local.day, _month_days(first))) - timedelta(days=keep.days)
    except (OverflowError, ValueError):
        raise _out_of_range() from None
    period = period_of(category, day_start(category.tz, guess))
    while now < expires_at(period):
        period = previous_period(period)
    while now >= expires_at(following := next_period(period)):
        period = following
    return period


def _month_days(first: date) -> int:
    return (_following("month", first) - first).days


def check_event_time(category: Category, t: datetime, now: datetime) -> bool:
    """Check an event time (``retention_from``) given at ``now``: ValueError if ``t``'s period
    starts after the period following ``now``'s (more than one period in the future). Returns
    whether ``t``'s period has already expired at ``now`` (a write into it must be refused
    with :class:`~ccvault.errors.RetentionExpiredError`)."""
    period = period_of(category, t)
    if period.start > next_period(period_of(category, now)).start:
        raise ValueError(
            f"the event time is more than one {category.granularity} period in the future"
        )
    return is_expired(period, now)


# -- label and ref -------------------------------------------------------------------------------


def period_iso(t: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS±HH:MM`` (``±HH:MM:SS`` when the offset has seconds; ``+00:00``
    for UTC, never ``Z``; ``.ffffff`` only if the time has microseconds, which a boundary never
    has): the form of a period's bounds in its ref. ``t`` is written as its own wall time."""
    _require_aware(t, "t")
    offset = t.utcoffset()
    assert offset is not None
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    zone = f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")
    fraction = f".{t.microsecond:06d}" if t.microsecond else ""
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f"{fraction}{zone}"
    )


def period_ref_message(period: Period) -> bytes:
    """The bytes :func:`period_ref` hashes: ``lp("ccvault/period/v1", category name, granularity,
    tz, start, end)``, each UTF-8, the bounds as :func:`period_iso` writes them in the
    category's zone."""
    category = period.category
    return lp(
        PERIOD_REF_DOMAIN,
        category.name.encode(),
        category.granularity.encode(),
        category.tz.encode(),
        period_iso(period.start).encode(),
        period_iso(period.end).encode(),
    )


def period_ref(period: Period) -> bytes:
    """SHA-256 of :func:`period_ref_message` (32 bytes): the ref a period record binds in its
    wrap's associated data (DESIGN.md, lifecycle rule 7)."""
    return hashlib.sha256(period_ref_message(period)).digest()


def period_label(period: Period) -> str:
    """``<category>/<local date of the period's start, YYYY-MM-DD>``: the period record's label."""
    return f"{period.category.name}/{period.start.date().isoformat()}"
