"""Retention time (DESIGN.md, lifecycle rule 8; docs/retention.md): periods of each granularity in
their category's zone, DST days, ISO weeks, month ends, leap days, expiry at the microsecond,
the period ref and label of rule 7, and the frozen vector. No database, no keys, no clock."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccvault.retention import (
    Category,
    Period,
    check_event_time,
    day_start,
    expires_at,
    expiring_by,
    is_expired,
    next_period,
    period_iso,
    period_label,
    period_of,
    period_ref,
    period_ref_message,
    periods_between,
    previous_period,
)

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
US = timedelta(microseconds=1)
VECTORS = Path(__file__).parent / "vectors" / "retention_periods_v1.json"


def cat(granularity: str, keep_for: str = "P90D", tz: str = "UTC", name: str = "c") -> Category:
    return Category(name=name, keep_for=keep_for, granularity=granularity, tz=tz)  # type: ignore[arg-type]


def hours(period: Period) -> float:
    """The period's real length (aware datetimes in one zone subtract as wall times)."""
    return (period.end_utc - period.start_utc) / timedelta(hours=1)


# -- day, week, month ------------------------------------------------------------------------------


def test_a_day_in_utc() -> None:
    p = period_of(cat("day"), datetime(2026, 5, 17, 13, 45, tzinfo=UTC))
    assert (p.start, p.end) == (
        datetime(2026, 5, 17, tzinfo=UTC),
        datetime(2026, 5, 18, tzinfo=UTC),
    )
    assert hours(p) == 24
    assert period_label(p) == "c/2026-05-17"


@pytest.mark.parametrize(
    ("tz", "day", "length", "start", "end"),
    [
        (
            "Europe/Paris",
            date(2026, 3, 29),
            23,
            "2026-03-29T00:00:00+01:00",
            "2026-03-30T00:00:00+02:00",
        ),
        (
            "Europe/Paris",
            date(2026, 10, 25),
            25,
            "2026-10-25T00:00:00+02:00",
            "2026-10-26T00:00:00+01:00",
        ),
        (
            "America/New_York",
            date(2026, 3, 8),
            23,
            "2026-03-08T00:00:00-05:00",
            "2026-03-09T00:00:00-04:00",
        ),
        (
            "America/New_York",
            date(2026, 11, 1),
            25,
            "2026-11-01T00:00:00-04:00",
            "2026-11-02T00:00:00-05:00",
        ),
        (
            "Europe/Paris",
            date(2026, 3, 30),
            24,
            "2026-03-30T00:00:00+02:00",
            "2026-03-31T00:00:00+02:00",
        ),
    ],
)
def test_dst_days_last_23_or_25_hours(
    tz: str, day: date, length: int, start: str, end: str
) -> None:
    zone = ZoneInfo(tz)
    category = cat("day", tz=tz)
    for t in (
        datetime.combine(day, datetime.min.time(), tzinfo=zone),  # its first instant
        datetime(day.year, day.month, day.day, 12, tzinfo=zone),
        datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=zone),  # its last
    ):
        p = period_of(category, t)
        assert (period_iso(p.start), period_iso(p.end), hours(p)) == (start, end, length)
        assert t in p


def test_the_repeated_hour_belongs_to_its_day() -> None:
    category = cat("day", tz="America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)  # 01:30 EDT
    second = first.replace(fold=1)  # 01:30 EST, an hour later
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    assert period_of(category, first) == period_of(category, second)


def test_a_day_whose_midnight_a_dst_change_skips_starts_at_the_end_of_the_gap() -> None:
    """Brazil moved its clocks from 00:00 to 01:00 on 4 November 2018: that day started at 01:00."""
    category = cat("day", tz="America/Sao_Paulo")
    p = period_of(category, datetime(2018, 11, 4, 12, tzinfo=UTC))
    assert period_iso(p.start) == "2018-11-04T01:00:00-02:00"
    assert period_iso(p.end) == "2018-11-05T00:00:00-02:00"
    assert hours(p) == 23
    assert previous_period(p).end == p.start
    assert period_label(p) == "c/2018-11-04"


def test_a_day_the_calendar_skips_has_no_period() -> None:
    """Samoa skipped 30 December 2011: the 29th's period ends where the 31st's starts."""
    category = cat("day", tz="Pacific/Apia")
    p = period_of(category, datetime(2011, 12, 29, 12, tzinfo=ZoneInfo("Pacific/Apia")))
    following = next_period(p)
    assert p.end == following.start
    assert period_label(following) == "c/2011-12-31"
    assert day_start("Pacific/Apia", date(2011, 12, 30)) == following.start


def test_iso_weeks_start_on_monday_and_cross_the_new_year() -> None:
    """2026 has an ISO week 53 (Monday 28 December 2026 to Sunday 3 January 2027)."""
    assert date(2026, 12, 28).isocalendar()[:2] == (2026, 53)
    category = cat("week")
    week53 = period_of(category, datetime(2027, 1, 3, 23, 59, 59, 999999, tzinfo=UTC))
    assert (week53.start, week53.end) == (
        datetime(2026, 12, 28, tzinfo=UTC),
        datetime(2027, 1, 4, tzinfo=UTC),
    )
    assert period_of(category, datetime(2026, 12, 31, tzinfo=UTC)) == week53
    week1 = next_period(week53)
    assert week1.start.date().isocalendar()[:2] == (2027, 1)
    assert period_label(week53) == "c/2026-12-28"
    for t in (datetime(2026, 12, 27, 23, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC)):
        assert t not in week53


def test_a_week_across_a_dst_change_in_paris_lasts_167_hours() -> None:
    p = period_of(cat("week", tz="Europe/Paris"), datetime(2026, 3, 26, tzinfo=UTC))
    assert period_iso(p.start) == "2026-03-23T00:00:00+01:00"
    assert period_iso(p.end) == "2026-03-30T00:00:00+02:00"
    assert p.start.weekday() == 0
    assert hours(p) == 7 * 24 - 1


@pytest.mark.parametrize(
    ("t", "start", "end"),
    [
        (
            datetime(2026, 3, 15, tzinfo=UTC),
            "2026-03-01T00:00:00+01:00",
            "2026-04-01T00:00:00+02:00",
        ),
        # 23:30 UTC on 28 February is 00:30 on 1 March in Paris
        (
            datetime(2026, 2, 28, 23, 30, tzinfo=UTC),
            "2026-03-01T00:00:00+01:00",
            "2026-04-01T00:00:00+02:00",
        ),
        (
            datetime(2026, 2, 28, 22, 59, tzinfo=UTC),
            "2026-02-01T00:00:00+01:00",
            "2026-03-01T00:00:00+01:00",
        ),
        (
            datetime(2028, 2, 29, 12, tzinfo=UTC),
            "2028-02-01T00:00:00+01:00",
            "2028-03-01T00:00:00+01:00",
        ),
        (
            datetime(2026, 12, 31, 23, tzinfo=UTC),
            "2027-01-01T00:00:00+01:00",
            "2027-02-01T00:00:00+01:00",
        ),
    ],
)
def test_calendar_months_in_a_non_utc_zone(t: datetime, start: str, end: str) -> None:
    p = period_of(cat("month", tz="Europe/Paris"), t)
    assert (period_iso(p.start), period_iso(p.end)) == (start, end)
    assert t in p


def test_the_start_and_end_are_kept_in_the_zone_and_in_utc() -> None:
    p = period_of(cat("month", tz="Europe/Paris"), datetime(2026, 3, 15, tzinfo=UTC))
    assert p.start.tzinfo == PARIS
    assert p.end.tzinfo == PARIS
    assert p.start_utc == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert p.end_utc == datetime(2026, 3, 31, 22, tzinfo=UTC)
    assert p.start_utc.tzinfo is UTC


# -- expiry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_for", "day", "expiry"),
    [
        ("P1M", date(2026, 1, 30), date(2026, 2, 28)),  # ends Jan 31: + P1M clamps to Feb 28
        ("P1M", date(2028, 1, 30), date(2028, 2, 29)),  # ... to Feb 29 in a leap year
        ("P1M", date(2026, 1, 31), date(2026, 3, 1)),  # ends Feb 1
        ("P1Y", date(2028, 2, 28), date(2029, 2, 28)),  # ends Feb 29: + P1Y clamps to Feb 28
        ("P4Y", date(2028, 2, 28), date(2032, 2, 29)),  # ... and + P4Y keeps Feb 29
        ("P12M", date(2028, 2, 28), date(2029, 2, 28)),  # P12M is P1Y
        ("P1Y6M", date(2026, 8, 30), date(2028, 2, 29)),  # Aug 31 + 18 months
        ("P1M1D", date(2026, 1, 30), date(2026, 3, 1)),  # months first, then days
        ("P90D", date(2026, 3, 31), date(2026, 6, 30)),
        ("P2W", date(2026, 12, 31), date(2027, 1, 15)),
    ],
)
def test_expiry_is_calendar_arithmetic_on_the_end_date(
    keep_for: str, day: date, expiry: date
) -> None:
    p = period_of(cat("day", keep_for=keep_for), datetime.combine(day, datetime.min.time(), UTC))
    assert expires_at(p) == datetime.combine(expiry, datetime.min.time(), UTC)


def test_month_granularity_expiry_in_paris() -> None:
    """March 2026 ends at 1 April 00:00 (+02:00); + P90D is 30 June 00:00 (+02:00)."""
    p = period_of(cat("month", tz="Europe/Paris"), datetime(2026, 3, 15, tzinfo=UTC))
    assert period_iso(expires_at(p)) == "2026-06-30T00:00:00+02:00"
    winter = period_of(cat("month", "P6M", tz="Europe/Paris"), datetime(2026, 7, 2, tzinfo=UTC))
    assert period_iso(expires_at(winter)) == "2027-02-01T00:00:00+01:00"  # across a DST change


def test_expiry_across_a_dst_change_is_local_midnight() -> None:
    """A day kept one day past its end expires at the next local midnight, however many hours
    the DST change makes that: 28 March 2026 in Paris ends at 29 March 00:00 (+01:00) and
    expires at 30 March 00:00 (+02:00), 23 hours later."""
    p = period_of(cat("day", "P1D", tz="Europe/Paris"), datetime(2026, 3, 28, 12, tzinfo=PARIS))
    expiry = expires_at(p)
    assert period_iso(expiry) == "2026-03-30T00:00:00+02:00"
    assert expiry.astimezone(UTC) - p.end_utc == timedelta(hours=23)
    autumn = period_of(
        cat("day", "P1D", tz="America/New_York"), datetime(2026, 10, 31, tzinfo=NEW_YORK)
    )
    assert period_iso(expires_at(autumn)) == "2026-11-02T00:00:00-05:00"
    assert expires_at(autumn).astimezone(UTC) - autumn.end_utc == timedelta(hours=25)


def test_expiry_is_never_dst_gap_time() -> None:
    """An expiry falling on a day whose midnight is skipped is that day's first instant."""
    category = cat("day", "P1D", tz="America/Sao_Paulo")
    p = period_of(category, datetime(2018, 11, 2, 12, tzinfo=UTC))  # ends Nov 3, + 1 day
    assert period_iso(expires_at(p)) == "2018-11-04T01:00:00-02:00"


@pytest.mark.parametrize(
    "category",
    [
        cat("day", "P30D", tz="Europe/Paris"),
        cat("week", "P2W", tz="America/New_York"),
        cat("month", "P6M", tz="Asia/Kolkata"),
        cat("month", "P1Y", tz="Australia/Lord_Howe"),
        cat("day", "P1M"),
    ],
    ids=lambda c: f"{c.granularity}-{c.tz}",
)
def test_expired_exactly_at_expires_at_not_a_microsecond_before(category: Category) -> None:
    p = period_of(category, datetime(2026, 1, 31, 12, tzinfo=UTC))
    at = expires_at(p)
    assert not is_expired(p, at - US)
    assert is_expired(p, at)
    assert is_expired(p, at.astimezone(UTC))
    assert not is_expired(p, (at - US).astimezone(ZoneInfo("Pacific/Kiritimati")))
    assert at > p.end


# -- enforcement helpers ---------------------------------------------------------------------------


def test_expiring_by_is_the_last_expired_period() -> None:
    category = cat("month", "P90D", tz="Europe/Paris")
    march = period_of(category, datetime(2026, 3, 15, tzinfo=UTC))
    at = expires_at(march)  # 30 June 2026 00:00 +02:00
    assert expiring_by(category, at) == march
    assert expiring_by(category, at - US) == previous_period(march)
    assert expiring_by(category, at + timedelta(days=30) - US) == march
    assert expiring_by(category, at + timedelta(days=30)) == next_period(march)  # 30 July


def test_expiring_by_takes_every_period_sharing_an_expiry() -> None:
    """The days of 27 to 30 January all expire on 28 February (they end on the 28th to the 31st;
    month-end clamping): the last of them is the one named."""
    category = cat("day", "P1M")
    now = datetime(2026, 2, 28, tzinfo=UTC)
    last = expiring_by(category, now)
    assert period_label(last) == "c/2026-01-30"
    around = periods_between(category, last.start - timedelta(days=4), last.end)
    expiries = [expires_at(p).date() for p in around]
    assert expiries == [date(2026, 2, 27)] + [date(2026, 2, 28)] * 4
    assert not is_expired(next_period(last), now)


def test_check_event_time() -> None:
    category = cat("month", "P90D", tz="Europe/Paris")
    now = datetime(2026, 3, 15, tzinfo=UTC)
    assert check_event_time(category, now, now) is False
    assert check_event_time(category, datetime(2026, 4, 30, 21, tzinfo=UTC), now) is False  # next
    with pytest.raises(ValueError, match="more than one month period in the future"):
        check_event_time(category, datetime(2026, 4, 30, 22, tzinfo=UTC), now)  # May in Paris
    assert check_event_time(category, datetime(2025, 12, 1, tzinfo=UTC), now) is False
    assert check_event_time(category, datetime(2025, 11, 30, tzinfo=UTC), now) is True


def test_periods_between_tile_the_range() -> None:
    category = cat("week", tz="Europe/Paris")
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    found = list(periods_between(category, start, end))
    assert found[0].start <= start < found[0].end
    assert found[-1].start < end <= found[-1].end
    assert all(a.end == b.start for a, b in itertools.pairwise(found))
    assert len(found) == 6


# -- naive datetimes and hand-built periods --------------------------------------------------------


def test_naive_datetimes_are_refused() -> None:
    category = cat("day")
    naive = datetime(2026, 3, 1)
    aware = datetime(2026, 3, 1, tzinfo=UTC)
    p = period_of(category, aware)
    for call in (
        lambda: period_of(category, naive),
        lambda: is_expired(p, naive),
        lambda: expiring_by(category, naive),
        lambda: check_event_time(category, naive, aware),
        lambda: check_event_time(category, aware, naive),
        lambda: list(periods_between(category, aware, naive)),
        lambda: Period(category, naive, naive + timedelta(days=1)),
    ):
        with pytest.raises(ValueError, match="naive"):
            call()
    with pytest.raises(TypeError):
        period_of(category, date(2026, 3, 1))  # type: ignore[arg-type]
    assert naive not in p


def test_a_period_built_by_hand_must_have_a_periods_bounds() -> None:
    category = cat("day", tz="Europe/Paris")
    p = period_of(category, datetime(2026, 3, 1, 12, tzinfo=UTC))
    same = Period(category, p.start.astimezone(UTC), p.end_utc)  # the instants, in another zone
    assert same == p
    assert same.start.tzinfo == PARIS
    assert period_ref(same) == period_ref(p)
    with pytest.raises(ValueError, match="not the bounds of a period"):
        Period(category, p.start, p.end + timedelta(hours=1))
    with pytest.raises(ValueError, match="not the bounds of a period"):
        Period(category, p.start + US, p.end)


def test_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="outside the range"):
        period_of(cat("month"), datetime.max.replace(tzinfo=UTC))
    with pytest.raises(ValueError, match="outside the range"):
        expires_at(period_of(cat("day", "P100Y"), datetime(9950, 1, 1, tzinfo=UTC)))


def test_repr_names_the_category_and_bounds() -> None:
    p = period_of(
        cat("month", tz="Europe/Paris", name="transcripts"), datetime(2026, 3, 2, tzinfo=UTC)
    )
    assert (
        repr(p) == "Period('transcripts', 2026-03-01T00:00:00+01:00 .. 2026-04-01T00:00:00+02:00)"
    )


# -- ref and label ---------------------------------------------------------------------------------


def _lp(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def test_period_ref_is_the_documented_hash() -> None:
    """docs/format.md, "7. Retention periods": SHA-256(lp("ccvault/period/v1", name,
    granularity, tz, start, end)), strings in UTF-8, bounds in the zone's ISO form."""
    category = cat("month", tz="Europe/Paris", name="transcripts")
    p = period_of(category, datetime(2026, 3, 15, tzinfo=UTC))
    message = _lp(
        b"ccvault/period/v1",
        b"transcripts",
        b"month",
        b"Europe/Paris",
        b"2026-03-01T00:00:00+01:00",
        b"2026-04-01T00:00:00+02:00",
    )
    assert period_ref_message(p) == message
    assert period_ref(p) == hashlib.sha256(message).digest()
    assert period_label(p) == "transcripts/2026-03-01"


def test_every_part_of_a_period_changes_its_ref() -> None:
    t = datetime(2026, 3, 15, tzinfo=UTC)
    refs = {
        period_ref(period_of(c, t))
        for c in (
            cat("month", tz="Europe/Paris", name="a"),
            cat("month", tz="Europe/Paris", name="b"),
            cat("month", tz="Europe/Berlin", name="a"),  # same offsets, another zone
            cat("month", tz="UTC", name="a"),
            cat("day", tz="Europe/Paris", name="a"),
            cat("week", tz="Europe/Paris", name="a"),
        )
    }
    refs.add(
        period_ref(period_of(cat("month", tz="Europe/Paris", name="a"), t + timedelta(days=31)))
    )
    assert len(refs) == 7
    # keep_for is not part of the ref: a period's record survives a change of keep_for
    assert period_ref(period_of(cat("month", "P1Y", name="a"), t)) == period_ref(
        period_of(cat("month", "P1D", name="a"), t)
    )


def test_period_iso_writes_offsets_exactly() -> None:
    paris_1900 = datetime(1900, 1, 1, tzinfo=PARIS)  # Paris Mean Time, +00:09:21
    assert period_iso(paris_1900) == "1900-01-01T00:00:00+00:09:21" == paris_1900.isoformat()
    assert period_iso(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
    kolkata = datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert period_iso(kolkata) == "2026-01-01T00:00:00+05:30"
    st_johns = datetime(2026, 1, 1, tzinfo=ZoneInfo("America/St_Johns"))
    assert period_iso(st_johns) == "2026-01-01T00:00:00-03:30"
    assert (
        period_iso(datetime(33, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0033-01-02T03:04:05.000006+00:00"
    )


# -- the frozen vector -----------------------------------------------------------------------------


def test_the_frozen_period_vectors() -> None:
    """tests/vectors/retention_periods_v1.json (make_vectors.py periods): bounds, label, ref and
    expiry of each period as first computed. Past dates only, so that a tz database update
    leaves them alone."""
    doc = json.loads(VECTORS.read_text())
    assert len(doc["periods"]) >= 8
    for case in doc["periods"]:
        category = Category(**case["category"])
        p = period_of(category, datetime.fromisoformat(case["t"]))
        assert period_iso(p.start) == case["start"]
        assert period_iso(p.end) == case["end"]
        assert period_iso(p.start_utc) == case["start_utc"]
        assert period_iso(p.end_utc) == case["end_utc"]
        assert period_label(p) == case["label"]
        assert period_ref_message(p).hex() == case["ref_message"]
        assert period_ref(p).hex() == case["ref"]
        assert hashlib.sha256(bytes.fromhex(case["ref_message"])).hexdigest() == case["ref"]
        assert period_iso(expires_at(p)) == case["expires_at"]


# -- properties ------------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Sao_Paulo",  # midnight DST gaps until 2019
    "America/Santiago",  # midnight transitions
    "Asia/Beirut",  # falls back at midnight
    "America/Havana",  # midnight transitions
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kathmandu",  # +05:45
    "Pacific/Apia",  # skipped a whole day
    "Africa/Casablanca",  # DST suspended each Ramadan
    "Pacific/Chatham",  # +12:45 / +13:45
]

categories = st.builds(
    cat,
    granularity=st.sampled_from(["day", "week", "month"]),
    keep_for=st.sampled_from(["P1D", "P30D", "P90D", "P1M", "P6M", "P1Y", "P1Y6M", "P2W", "P7Y"]),
    tz=st.sampled_from(ZONES),
)
instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(category=categories, t=instants)
def test_the_period_of_t_contains_t(category: Category, t: datetime) -> None:
    p = period_of(category, t)
    assert p.start <= t < p.end
    assert t in p
    assert period_of(category, p.start) == p
    assert period_of(category, p.end - US) == p
    assert p.start.tzinfo == category.zone
    assert period_label(p) == f"c/{p.start.date().isoformat()}"
    if category.granularity == "week":
        assert p.start.weekday() == 0
    elif category.granularity == "month":
        assert p.start.day == 1 or p.start.astimezone(category.zone).hour != 0  # a skipped 1st
    assert Period(category, p.start, p.end) == p


@settings(max_examples=300, deadline=None)
@given(category=categories, t=instants)
def test_consecutive_periods_tile_time(category: Category, t: datetime) -> None:
    p = period_of(category, t)
    following = next_period(p)
    assert following.start == p.end  # no gap, no overlap
    assert previous_period(following) == p
    assert period_of(category, p.end) == following
    assert period_of(category, p.start - US) == previous_period(p)
    assert previous_period(p).end == p.start
    assert period_label(following) > period_label(p)  # ISO dates sort as the periods do


@settings(max_examples=300, deadline=None)
@given(category=categories, t1=instants, t2=instants)
def test_expiry_never_decreases_with_t(category: Category, t1: datetime, t2: datetime) -> None:
    early, late = sorted((t1, t2))
    p, q = period_of(category, early), period_of(category, late)
    assert expires_at(p) <= expires_at(q)
    assert expires_at(p) > p.end
    assert not is_expired(p, expires_at(p) - US)
    assert is_expired(p, expires_at(p))


@settings(max_examples=200, deadline=None)
@given(category=categories, now=instants)
def test_expiring_by_splits_expired_from_live(category: Category, now: datetime) -> None:
    last = expiring_by(category, now)
    assert is_expired(last, now)
    assert not is_expired(next_period(last), now)
