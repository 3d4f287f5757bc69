"""Retention by key expiry: policies and retention time (DESIGN.md, lifecycle rules 7 and 8;
docs/retention.md).

This package is the pure part: categories and policies (:class:`Category`,
:class:`RetentionPolicy`, :func:`load_policy`), the period arithmetic (:func:`period_of`,
:func:`expires_at`, :func:`period_ref`, :func:`period_label`...) and what recording a new
policy changes (:func:`plan_changes`, :func:`in_force`, :class:`CategoryChange`). It must not
touch a database, keys or a vault, nor read a clock: the key store, enforcement and holds
build on it. It imports only ``errors``, ``_repr`` and ``crypto._encoding`` from ccvault.
"""

from __future__ import annotations

from ._change import (
    CHANGE_KINDS,
    DELAYED_CHANGES,
    CategoryChange,
    ChangeKind,
    brought_forward,
    fits_periods,
    in_force,
    never_shorter,
    plan_changes,
)
from ._load import load_policy
from ._policy import (
    MAX_KEEP_FOR_YEARS,
    POLICY_FORMAT,
    CalendarDuration,
    Category,
    Granularity,
    RetentionPolicy,
    parse_duration,
)
from ._time import (
    PERIOD_REF_DOMAIN,
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

__all__ = [
    "CHANGE_KINDS",
    "DELAYED_CHANGES",
    "MAX_KEEP_FOR_YEARS",
    "PERIOD_REF_DOMAIN",
    "POLICY_FORMAT",
    "CalendarDuration",
    "Category",
    "CategoryChange",
    "ChangeKind",
    "Granularity",
    "Period",
    "RetentionPolicy",
    "brought_forward",
    "check_event_time",
    "day_start",
    "expires_at",
    "expiring_by",
    "fits_periods",
    "in_force",
    "is_expired",
    "load_policy",
    "never_shorter",
    "next_period",
    "parse_duration",
    "period_iso",
    "period_label",
    "period_of",
    "period_ref",
    "period_ref_message",
    "periods_between",
    "plan_changes",
    "previous_period",
]
