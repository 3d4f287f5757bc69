"""Changes between retention policies (DESIGN.md, lifecycle rule 8; docs/retention.md,
"Recording the policy"): what a newly recorded policy does to each category, when each change
takes effect, the policy in force at a given time, whether a category's stored periods fit a
category, and the periods a change brings forward.

The rules: a category added (with no period yet) or a ``keep_for`` that never shortens takes
effect at once; a ``keep_for`` that may shorten, a category dropped, and a category that comes
back into the policy while it has periods (absent, it was never expired) take effect only after
the policy grace — until then what was in force stays in force. A change still waiting is
carried into the next recording unchanged when that recording keeps its target, and replaced
(its grace starting again) when it does not. A category absent from the policy in force is
never expired.

Pure: no database, keys or clock (every time is an argument). Must not decide where a policy
is recorded (the erasure package does) nor read period rows (it is given them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._policy import Category, Granularity, RetentionPolicy, parse_duration
from ._time import day_start, expires_at, period_label, period_of, period_ref

__all__ = [
    "CHANGE_KINDS",
    "DELAYED_CHANGES",
    "CategoryChange",
    "ChangeKind",
    "brought_forward",
    "fits_periods",
    "in_force",
    "never_shorter",
    "plan_changes",
]

ChangeKind = Literal["added", "lengthened", "shortened", "resumed", "dropped"]
CHANGE_KINDS: Final[tuple[ChangeKind, ...]] = (
    "added",
    "lengthened",
    "shortened",
    "resumed",
    "dropped",
)
DELAYED_CHANGES: Final = frozenset({"shortened", "resumed", "dropped"})
"""The kinds of change that take effect only after the policy grace."""

# which keep_for each kind has before and after it: (before set, after set)
_SHAPES: Final[dict[str, tuple[bool, bool]]] = {
    "added": (False, True),
    "lengthened": (True, True),
    "shortened": (True, True),
    "resumed": (False, True),
    "dropped": (True, False),
}


class CategoryChange(BaseModel):
    """What one recording of a policy does to one category.

    ``change``: ``added`` (new, no period in the key store: in effect at once), ``lengthened``
    (its ``keep_for`` never gives an earlier expiry: at once), ``shortened`` (it may: after the
    grace), ``resumed`` (back in the policy while it has periods, which were never expired
    while it was absent: after the grace) or ``dropped`` (out of the policy: it stops expiring
    after the grace, and expires as before until then). ``keep_for_before`` is the ``keep_for``
    in force before the change (None: the category was not in force — never expired),
    ``keep_for`` the one after (None: dropped). ``granularity`` and ``tz`` are the category's
    (a dropped one's as it was). ``effective_at`` (UTC): when the change takes effect — the
    recording's time for an immediate change, that time + the policy grace for a delayed one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    change: ChangeKind
    keep_for_before: str | None = Field(description="canonical ISO 8601; None: not in force")
    keep_for: str | None = Field(description="canonical ISO 8601; None: dropped")
    granularity: Granularity
    tz: str
    effective_at: datetime = Field(description="UTC")

    @field_validator("keep_for_before", "keep_for")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value).iso() != value:
            raise ValueError("must be a keep_for in its canonical form (P14D, not P2W)")
        return value

    @field_validator("effective_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        offset = value.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise ValueError("must be an aware datetime in UTC")
        return value

    @model_validator(mode="after")
    def _shape(self) -> CategoryChange:
        before, after = _SHAPES[self.change]
        if (self.keep_for_before is not None) != before or (self.keep_for is not None) != after:
            raise ValueError(
                f"a {self.change!r} change has "
                + ("a keep_for_before" if before else "no keep_for_before")
                + " and "
                + ("a keep_for" if after else "no keep_for")
            )
        # name, granularity and tz as a category takes them (a ValueError names the field)
        self.category_before() if self.keep_for is None else self.category()
        return self

    @property
    def delayed(self) -> bool:
        """Whether this kind of change waits for the policy grace."""
        return self.change in DELAYED_CHANGES

    def waiting(self, at: datetime) -> bool:
        """Whether, at ``at``, this change has yet to take effect."""
        return self.delayed and at < self.effective_at

    def category(self) -> Category:
        """The category after the change (ValueError for a dropped one)."""
        if self.keep_for is None:
            raise ValueError("a dropped category has no keep_for after the change")
        return Category(
            name=self.name, keep_for=self.keep_for, granularity=self.granularity, tz=self.tz
        )

    def category_before(self) -> Category | None:
        """The category as it was in force before the change (None: it was not)."""
        if self.keep_for_before is None:
            return None
        return Category(
            name=self.name,
            keep_for=self.keep_for_before,
            granularity=self.granularity,
            tz=self.tz,
        )


def never_shorter(keep_for: str, than: str) -> bool:
    """Whether ``keep_for`` gives, for every period, an expiry at or after the one ``than``
    gives: its months (years counted as 12) and its days are each at least ``than``'s. A
    change that mixes more months with fewer days (``P1M`` to ``P30D``) may shorten some
    periods: it is not."""
    new, old = parse_duration(keep_for), parse_duration(than)
    return new.years * 12 + new.months >= old.years * 12 + old.months and new.days >= old.days


def _aware(at: datetime, name: str) -> datetime:
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")
    return at.astimezone(timezone.utc)


def in_force(
    target: RetentionPolicy, changes: Iterable[CategoryChange], at: datetime
) -> RetentionPolicy:
    """The policy in force at ``at`` after a recording of ``target`` with ``changes``: each
    category of ``target`` with its ``keep_for`` — or, while its change waits, the one before
    it (absent when it was not in force) — and each dropped category whose drop waits, as it
    was. A category absent from the result is never expired."""
    at = _aware(at, "at")
    waiting = {c.name: c for c in changes if c.waiting(at)}
    out: list[Category] = []
    for category in target.categories:
        change = waiting.pop(category.name, None)
        if change is None:
            out.append(category)
        elif change.keep_for_before is not None:
            out.append(
                Category(
                    name=category.name,
                    keep_for=change.keep_for_before,
                    granularity=category.granularity,
                    tz=category.tz,
                )
            )
    for change in waiting.values():  # drops not in effect yet
        before = change.category_before()
        if change.change == "dropped" and before is not None:
            out.append(before)
    return RetentionPolicy(categories=tuple(out))


def plan_changes(
    new: RetentionPolicy,
    *,
    at: datetime,
    grace: timedelta,
    before: RetentionPolicy,
    has_periods: Callable[[str], bool],
    previous_target: RetentionPolicy | None = None,
    previous_changes: Sequence[CategoryChange] = (),
) -> tuple[CategoryChange, ...]:
    """The changes of recording ``new`` at ``at``, by category name: against ``before`` (the
    policy in force at ``at``), with ``grace`` before a delayed change takes effect.
    ``has_periods(name)``: whether the key store holds periods of that category (a category not
    in force that has periods comes back ``resumed``; one without, ``added``).
    ``previous_target`` and ``previous_changes``: the last recording's policy and changes; a
    change of it still waiting at ``at`` is carried unchanged when ``new`` keeps its target (the
    same category, or the category still absent for a drop). Unchanged categories have none."""
    at = _aware(at, "at")
    if not isinstance(grace, timedelta) or grace < timedelta(0):
        raise ValueError("grace must be a timedelta of zero or more")
    targets = {c.name: c for c in new.categories}
    before_by = {c.name: c for c in before.categories}
    old_targets = {} if previous_target is None else {c.name: c for c in previous_target.categories}
    carried: dict[str, CategoryChange] = {}
    for change in previous_changes:
        if not change.waiting(at):
            continue
        if change.change == "dropped":
            kept = change.name not in targets and change.name not in old_targets
        else:
            kept = change.name in targets and old_targets.get(change.name) == targets[change.name]
        if kept:
            carried[change.name] = change
    later = at + grace
    out: list[CategoryChange] = []
    for name in sorted(set(targets) | set(before_by)):
        if name in carried:
            out.append(carried[name])
            continue
        target, was = targets.get(name), before_by.get(name)
        if target is None:
            if was is not None:
                out.append(_change(was, "dropped", was.keep_for, None, later))
            continue
        if was is None:
            resumed = has_periods(name)
            kind: ChangeKind = "resumed" if resumed else "added"
            out.append(_change(target, kind, None, target.keep_for, later if resumed else at))
        elif target.keep_for == was.keep_for:
            continue
        elif never_shorter(target.keep_for, was.keep_for):
            out.append(_change(target, "lengthened", was.keep_for, target.keep_for, at))
        else:
            out.append(_change(target, "shortened", was.keep_for, target.keep_for, later))
    return tuple(out)


def _change(
    category: Category,
    kind: ChangeKind,
    before: str | None,
    after: str | None,
    effective_at: datetime,
) -> CategoryChange:
    return CategoryChange(
        name=category.name,
        change=kind,
        keep_for_before=before,
        keep_for=after,
        granularity=category.granularity,
        tz=category.tz,
        effective_at=effective_at,
    )


def _start(label: str, name: str) -> date | None:
    prefix = f"{name}/"
    if not label.startswith(prefix):
        return None
    try:
        return date.fromisoformat(label[len(prefix) :])
    except ValueError:
        return None


def fits_periods(category: Category, periods: Iterable[tuple[str, bytes | None]]) -> bool:
    """Whether ``category`` is the one its stored periods were made with: True when there are
    none, or when one of them — (label, ref) — has the label and the ref that ``category``
    computes for its start (the ref binds the granularity and the zone: DESIGN.md, lifecycle
    rule 7). One is enough: an update of the tz database may have moved the bounds of some."""
    seen = False
    for label, ref in periods:
        seen = True
        start = _start(label, category.name)
        if start is None or ref is None:
            continue
        try:
            period = period_of(category, day_start(category.tz, start))
        except (ValueError, OverflowError):
            continue
        if period_label(period) == label and period_ref(period) == ref:
            return True
    return not seen


def brought_forward(change: CategoryChange, labels: Iterable[str]) -> list[str]:
    """Of the periods ``labels`` (live ones, ``<category>/<start date>``), those the first
    enforcement at or after ``change.effective_at`` destroys because of it: due by then under
    the new ``keep_for`` and not under the one before (or never, for a category that was not in
    force). Empty for a drop and for an immediate change. Labels that name no period of the
    category are left out."""
    if not change.delayed or change.keep_for is None:
        return []
    after, before = change.category(), change.category_before()
    out: list[str] = []
    for label in labels:
        start = _start(label, change.name)
        if start is None:
            continue
        try:
            period = period_of(after, day_start(after.tz, start))
            if period_label(period) != label or expires_at(period) > change.effective_at:
                continue
            if before is not None:
                was = period_of(before, day_start(before.tz, start))
                if expires_at(was) <= change.effective_at:
                    continue  # due by then anyway
        except (ValueError, OverflowError):
            continue
        out.append(label)
    return out
