"""Settings from ``CCVAULT_*`` environment variables (pydantic-settings) and KMS URLs.

Every ``CCVAULT_*`` variable in the environment must be one ccvault reads: a field of
:class:`CcvaultSettings`, one of :data:`OTHER_VARIABLES`, or a name under one of
:data:`RESERVED_PREFIXES`. Anything else (a typo such as ``CCVAULT_KMS_ULR``) is a
:class:`~ccvault.errors.ConfigurationError` naming the closest known variable, so a misspelt
setting never silently falls back to its default.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._repr import safe_repr
from .crypto._subject import SubjectType
from .errors import ConfigurationError
from .keystore._sql import mask_url
from .kms._aws import URL_PARAMS as AWS_URL_PARAMS
from .kms._protocol import Kms
from .kms._vault_transit import URL_PARAMS as VAULT_URL_PARAMS
from .retention import RetentionPolicy, load_policy

__all__ = [
    "DEFAULT_POLICY_GRACE",
    "MAX_NONCE_BUDGET",
    "MAX_PERIOD",
    "MIN_BACKUP_RETENTION",
    "MIN_NONCE_BUDGET",
    "OTHER_VARIABLES",
    "RESERVED_PREFIXES",
    "CcvaultSettings",
    "check_environment",
    "check_vault_options",
    "kms_from_url",
    "mask_ledger_url",
    "settings_table",
]

_PREFIX = "CCVAULT_"

OTHER_VARIABLES = frozenset(
    {
        # kms/_vault_transit.py: Vault/OpenBao credentials (never in a URL)
        "CCVAULT_VAULT_TOKEN",
        "CCVAULT_VAULT_ROLE_ID",
        "CCVAULT_VAULT_SECRET_ID",
        # _failpoints.py: the crash tests' hook, never a setting (never set it in production)
        "CCVAULT_FAILPOINT",
    }
)
"""``CCVAULT_*`` variables read outside :class:`CcvaultSettings`."""

RESERVED_PREFIXES = ("CCVAULT_TEST_", "CCVAULT_BENCH_")
"""Prefixes of variables ccvault's own test suite and benchmarks read (``CCVAULT_TEST_PG``…);
the library never reads them, and the unknown-variable check lets them pass."""

MIN_BACKUP_RETENTION: Final = timedelta(days=1)
"""The shortest backup retention accepted, and the least time ``destroy_epochs()`` lets pass after
an epoch is retired whatever the settings say: processes that have not seen the rotation yet
(their cached active epoch is up to ``cache_ttl`` old, or more while stalled) may still be
writing keys under it."""

MAX_PERIOD: Final = timedelta(days=36_500)
"""The longest epoch rotation period and backup retention accepted (100 years): dates computed
from them stay within what ``datetime`` can represent."""

MIN_NONCE_BUDGET: Final = 4096
"""The smallest nonce budget of a vault-wide key version: one block of uses a process reserves."""

MAX_NONCE_BUDGET: Final = 2**32
"""The largest nonce budget of a vault-wide key version: NIST SP 800-38D's limit for random
96-bit nonces under one AES-GCM key."""

DEFAULT_POLICY_GRACE: Final = timedelta(days=7)
"""How long a recorded retention-policy change that may expire data earlier waits before it
takes effect, unless configured (DESIGN.md, lifecycle rule 8)."""

_DAY: Final = 86_400.0


class CcvaultSettings(BaseSettings):
    """Every setting, read from ``CCVAULT_<NAME>`` (e.g. ``CCVAULT_KMS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="CCVAULT_", frozen=True, extra="forbid")

    kms_url: str | None = Field(
        default=None,
        description="local:///path/to/master.key, aws-kms://<arn-or-alias>?region=..., "
        "vault://<mount>/<key>?addr=https://... (token from VAULT_TOKEN); several URLs separated "
        "by commas make a MultiKms, the first one primary; unset together with keystore_url: the "
        "embedded development default under `home` (one without the other is an error)",
    )
    keystore_url: str | None = Field(
        default=None,
        description="any SQLAlchemy URL; unset together with kms_url: SQLite under `home`",
    )
    home: str = Field(
        default=".ccvault",
        description="folder of the embedded development default (master.key and keys.db)",
    )
    subject_type: str | None = Field(
        default=None, description="str, int, uuid or tuple[...]; unset: what the store records"
    )
    cache_ttl_seconds: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="how long a process keeps unwrapped keys: the period between KMS unwraps "
        "of an epoch key, and how long a process cut off from the key store keeps serving "
        "cached keys (finite, > 0)",
    )
    propagation_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="how often a process polls the key store's invalidation channel when it "
        "uses cached keys: a shred elsewhere reaches it within this bound; a new installation "
        "records it, and a process configured with more than the recorded bound refuses to "
        "open (finite, > 0)",
    )
    listen_url: str | None = Field(
        default=None,
        description="PostgreSQL key store: the URL of the LISTEN connection that makes the "
        "poll immediate after a shred (a direct DSN when the key store's URL goes through "
        "PgBouncer in transaction mode); `off`: poll only; unset: the key store's URL",
    )
    kms_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="cached epoch keys keep serving this long in a KMS outage (finite, ≥ 0)",
    )
    cache_max_entries: int = Field(
        default=100_000, ge=1, description="entries of each key cache (subject refs, keys)"
    )
    epoch_rotation_days: float = Field(
        default=30.0,
        gt=0,
        le=MAX_PERIOD.days,
        allow_inf_nan=False,
        description="planned epoch lifetime: `ccvault status` reports a rotation overdue after "
        "it, and receipts project the erasure horizon from it (> 0, at most 36500)",
    )
    backup_retention_days: float = Field(
        default=35.0,
        ge=MIN_BACKUP_RETENTION.days,
        le=MAX_PERIOD.days,
        allow_inf_nan=False,
        description="how long key-store backups are kept: an epoch is destroyed this long after "
        "it was retired (the erasure horizon); at least 1 day and at least cache_ttl_seconds + "
        "kms_grace_seconds (processes still write under a just-retired epoch), at most 36500",
    )
    per_epoch_roots: bool = Field(
        default=False, description="a new KMS root per epoch (needed for an erasure horizon)"
    )
    ledger_url: str | None = Field(
        default=None,
        description="where the signed erasure journal is kept, apart from the key store: any "
        "SQLAlchemy URL (tables ccvault_ledger_*), file:///path/ledger.jsonl (one host) or "
        "s3://bucket/prefix?region=... (credentials from the boto3 chain). Every shred appends "
        "its receipt there before anything is destroyed, and a vault replays it into a restored "
        "key store at open; an empty key store becomes a new installation only with "
        'create=True (docs/operations.md, "Configuring the erasure ledger")',
    )
    ledger_mode: Literal["strict", "best-effort"] = Field(
        default="strict",
        description="strict: a shred whose ledger entry cannot be written destroys nothing "
        "(LedgerUnavailableError); best-effort: it destroys, its entry waits in the key store's "
        "outbox until the next shred, open or reconcile appends it, and the erasure cannot "
        "complete until then",
    )
    ledger_check_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="with a ledger: how often a process compares the ledger's head with what "
        "its key store applied (one ledger round trip, inside the invalidation poll). A key "
        "store restored from a backup under a process that was idle while others shredded is "
        "noticed and replayed within it; until then that process may serve the subjects shredded "
        'since the backup (docs/erasure.md, "A process that was idle across the shreds") '
        "(finite, > 0)",
    )

    retention_policy: str | None = Field(
        default=None,
        description="path of the retention policy file (*.toml, or *.yaml/*.yml with the yaml "
        "extra): categories with keep_for, granularity and tz (docs/retention.md); checked "
        "when set (the file must exist and load); unset: no retention policy",
    )

    @field_validator("retention_policy")
    @classmethod
    def _policy_loads(cls, value: str | None) -> str | None:
        if value is not None:
            # A ConfigurationError (not a ValueError) leaves pydantic as it is.
            try:
                load_policy(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"CCVAULT_RETENTION_POLICY: {exc}") from None
        return value

    retention_policy_grace_days: float = Field(
        default=DEFAULT_POLICY_GRACE.total_seconds() / _DAY,
        ge=0,
        le=MAX_PERIOD.days,
        allow_inf_nan=False,
        description="how long a change of the retention policy recorded with `ccvault "
        "retention set-policy` that may expire data earlier (a shorter keep_for, a category "
        "dropped, a category with periods back in the policy) waits before it takes effect; "
        "the recording prints what it would then expire, and a typo can be fixed meanwhile "
        "(0: at once; at most 36500)",
    )

    def load_retention_policy(self) -> RetentionPolicy | None:
        """The policy ``retention_policy`` names, loaded (None when unset)."""
        return None if self.retention_policy is None else load_policy(self.retention_policy)

    @field_validator("subject_type")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            SubjectType.parse(value)  # ValueError: unsupported subject type
        return value

    @model_validator(mode="after")
    def _retention_covers_caches(self) -> CcvaultSettings:
        # A ConfigurationError (not a ValueError) leaves pydantic as it is: it names the variables.
        _check_retention(
            self.backup_retention_days * _DAY,
            self.cache_ttl_seconds + self.kms_grace_seconds,
            retention_name="CCVAULT_BACKUP_RETENTION_DAYS",
            caches_name="CCVAULT_CACHE_TTL_SECONDS + CCVAULT_KMS_GRACE_SECONDS",
        )
        return self

    def __init__(self, **values: Any) -> None:
        """Read the environment (``values`` take precedence). Unknown ``CCVAULT_*`` variables
        and values that do not parse are a :class:`ConfigurationError` naming the variable."""
        check_environment(os.environ)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # Input values are left out: a URL in a setting may carry a password.
            raise ConfigurationError(_describe(exc)) from None

    def __str__(self) -> str:
        return self.__repr__()

    @safe_repr
    def __repr__(self) -> str:
        keystore = None if self.keystore_url is None else mask_url(self.keystore_url)
        ledger = None if self.ledger_url is None else mask_ledger_url(self.ledger_url)
        return (
            f"CcvaultSettings(kms_url={_redact(self.kms_url)!r}, "
            f"keystore_url={keystore!r}, ledger_url={ledger!r}, home={self.home!r}, "
            f"listen_url={_listen_repr(self.listen_url)!r})"
        )


def _listen_repr(url: str | None) -> str | None:
    if url is None or url.strip().lower() == "off":
        return url
    return mask_url(url)


def settings_table() -> str:
    """Every setting as a Markdown table (docs/operations.md holds it; a test keeps it in sync)."""
    rows = [
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in CcvaultSettings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default!r}`"
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `CCVAULT_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows)


def _known_variables() -> set[str]:
    return {_PREFIX + name.upper() for name in CcvaultSettings.model_fields} | OTHER_VARIABLES


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigurationError` naming every ``CCVAULT_*`` variable in ``environ`` that
    ccvault does not read, each with the closest known name."""
    known = _known_variables()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(_PREFIX)
        and name.upper() not in known
        and not name.upper().startswith(RESERVED_PREFIXES)
    )
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    several = len(unknown) > 1
    reserved = " and ".join(p + "*" for p in RESERVED_PREFIXES)
    raise ConfigurationError(
        f"unknown environment variable{'s' if several else ''} {', '.join(described)}: "
        f"ccvault reads no such setting; fix or unset {'them' if several else 'it'} "
        f"({reserved} are left to ccvault's own tests)"
    )


def _describe(exc: ValidationError) -> str:
    """A settings validation error as one line, by ``CCVAULT_*`` name, without input values."""
    fields = CcvaultSettings.model_fields
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        if not name:
            parts.append(str(error["msg"]))
        elif name in fields:
            parts.append(f"{_PREFIX}{name.upper()} ({name}): {error['msg']}")
        else:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            parts.append(f"unknown setting {name!r}{hint}")
    return "invalid setting: " + "; ".join(parts)


# -- constraints shared by the settings and the Vault constructor -----------------------------


def _check_retention(
    retention: float, caches: float, *, retention_name: str, caches_name: str
) -> None:
    """``retention`` (seconds) must cover the one-day floor and ``caches`` (cache TTL + KMS grace,
    seconds): a process may keep writing keys under an epoch that long after it was retired."""
    floor = max(MIN_BACKUP_RETENTION.total_seconds(), caches)
    if retention < floor:
        raise ConfigurationError(
            f"{retention_name} is {_span(retention)}, shorter than "
            + (
                f"{caches_name} ({_span(caches)})"
                if caches > MIN_BACKUP_RETENTION.total_seconds()
                else f"the minimum of {_span(floor)}"
            )
            + ": destroy_epochs() could destroy an epoch that processes which have not seen the "
            "rotation yet still write new keys under, and their customers' data would become "
            "unreadable"
        )


def _span(seconds: float) -> str:
    return f"{seconds / _DAY:g} days" if seconds >= _DAY else f"{seconds:g} s"


def _real(name: str, value: object, *, minimum: float, inclusive: bool) -> float:
    """``value`` as a finite float not below ``minimum``, or a ConfigurationError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds")
    number = float(value)  # OverflowError is impossible: an int this large fails the next test
    if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        bound = f"{'at least' if inclusive else 'greater than'} {minimum:g}"
        raise ConfigurationError(f"{name} must be a finite number {bound}")
    return number


def _whole(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigurationError(f"{name} must be at least {minimum}{upper}")
    return value


def _period(name: str, value: object, *, minimum: timedelta) -> timedelta:
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a datetime.timedelta")
    if value < minimum or value <= timedelta(0) or value > MAX_PERIOD:
        least = f"at least {_span(minimum.total_seconds())}" if minimum else "positive"
        raise ConfigurationError(f"{name} must be {least} and at most {MAX_PERIOD.days} days")
    return value


def check_vault_options(
    *,
    cache_ttl: object,
    kms_grace_period: object,
    cache_max_entries: object,
    epoch_rotation_period: object,
    backup_retention: object,
    nonce_budget: object,
    propagation_interval: object = 1.0,
    ledger_check_interval: object = 60.0,
    policy_grace: object = DEFAULT_POLICY_GRACE,
) -> tuple[float, float]:
    """Check the :class:`~ccvault.Vault` constructor's tuning arguments (a ConfigurationError
    naming the argument); returns (cache_ttl, kms_grace_period) as floats.

    Every number must be finite; ``backup_retention`` at least :data:`MIN_BACKUP_RETENTION` and
    at least ``cache_ttl + kms_grace_period``; periods at most :data:`MAX_PERIOD`; the nonce
    budget between :data:`MIN_NONCE_BUDGET` and :data:`MAX_NONCE_BUDGET`; ``policy_grace`` a
    timedelta from zero to :data:`MAX_PERIOD`.
    """
    ttl = _real("cache_ttl", cache_ttl, minimum=0.0, inclusive=False)
    _real("propagation_interval", propagation_interval, minimum=0.0, inclusive=False)
    _real("ledger_check_interval", ledger_check_interval, minimum=0.0, inclusive=False)
    grace = _real("kms_grace_period", kms_grace_period, minimum=0.0, inclusive=True)
    _whole("cache_max_entries", cache_max_entries, minimum=1)
    _whole("nonce_budget", nonce_budget, minimum=MIN_NONCE_BUDGET, maximum=MAX_NONCE_BUDGET)
    _period("epoch_rotation_period", epoch_rotation_period, minimum=timedelta(0))
    retention = _period("backup_retention", backup_retention, minimum=MIN_BACKUP_RETENTION)
    if not isinstance(policy_grace, timedelta):
        raise ConfigurationError("policy_grace must be a datetime.timedelta")
    if not timedelta(0) <= policy_grace <= MAX_PERIOD:
        raise ConfigurationError(
            f"policy_grace must be zero or more, at most {MAX_PERIOD.days} days"
        )
    _check_retention(
        retention.total_seconds(),
        ttl + grace,
        retention_name="backup_retention",
        caches_name="cache_ttl + kms_grace_period",
    )
    return ttl, grace


# -- URLs as reprs and messages show them ------------------------------------------------------

_MASK = "***"
# Where one KMS URL of a comma-separated list starts: only before a scheme ccvault knows, so that
# a comma inside a password never cuts a URL in two (and shows its second half).
_NEXT_KMS_URL = re.compile(r",\s*(?=(?:local|aws-kms|vault)://)", re.I)
# Query parameters whose values a KMS URL shows (the rest is masked): the backends' own.
_SHOWN_PARAMS = AWS_URL_PARAMS | VAULT_URL_PARAMS
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}")


def split_kms_urls(url: str) -> list[str]:
    """The URLs of a comma-separated ``CCVAULT_KMS_URL``, stripped, empty ones left out."""
    return [u.strip() for u in _NEXT_KMS_URL.split(url) if u.strip()]


def _redact(url: str | None) -> str | None:
    """A KMS URL (or several, comma-separated) as reprs and messages may show it.

    Everything between the first ``://`` and the last ``@`` is masked (userinfo anywhere: in the
    authority, or inside a parameter such as ``endpoint_url=https://id:secret@host``, whatever
    characters the secret holds); query parameters show their values only when ccvault knows the
    name as a non-secret one; other names show masked values, and a piece that is not
    ``name=value`` is masked whole.
    """
    if url is None:
        return None
    return ",".join(_redact_one(one) for one in _NEXT_KMS_URL.split(url))


def _redact_one(url: str) -> str:
    start = url.find("://")
    at = url.rfind("@")
    if start >= 0 and at > start:
        masked, rest = url[start + 3 : at], url[at + 1 :]
        if any(c in masked for c in "?&="):
            # The "@" may sit inside a parameter's value (a secret of its own, or the userinfo
            # of a URL in a parameter): what follows it up to the next parameter is masked too.
            _, amp, others = rest.partition("&")
            url = f"{url[: start + 3]}{_MASK}" + (f"?{others}" if amp else "")
        else:
            url = f"{url[: start + 3]}{_MASK}@{rest}"
    base, question, query = url.partition("?")
    if not question:
        return base
    shown = []
    for piece in query.split("&"):
        name, equals, _ = piece.partition("=")
        if equals and name in _SHOWN_PARAMS:
            shown.append(piece)
        elif equals and _PARAM_NAME.fullmatch(name):
            shown.append(f"{name}={_MASK}")
        elif piece:
            shown.append(_MASK)
    return f"{base}?{'&'.join(shown)}"


def mask_ledger_url(url: str) -> str:
    """A ledger URL as reprs and messages may show it: an ``s3://`` or ``file://`` URL masked as
    a KMS URL is (userinfo hidden, only known non-secret parameters shown), any other as a
    key-store URL (parsed by SQLAlchemy, password and secret-looking parameters hidden)."""
    scheme = url.split(":", 1)[0].strip().lower() if "://" in url else ""
    if scheme in ("s3", "file"):
        return _redact_one(url.strip())
    return mask_url(url)


def kms_from_url(url: str) -> Kms:
    """Build a KMS backend from its URL; comma-separated URLs build a MultiKms (first = primary).

    Credentials never go in the URL: AWS credentials come from the usual boto3 chain, a Vault
    token from ``VAULT_TOKEN`` (or AppRole ids from ``CCVAULT_VAULT_ROLE_ID``/``_SECRET_ID``).
    """
    urls = split_kms_urls(url)
    if len(urls) > 1:
        from .kms._multi import MultiKms

        first, *others = (kms_from_url(u) for u in urls)
        return MultiKms(first, *others)
    if not urls:
        raise ConfigurationError("the KMS URL is empty")
    try:
        return _one_kms(urls[0])
    except ValueError:
        pass  # urllib's message may quote part of the URL: neither kept nor chained
    raise ConfigurationError(f"the KMS URL {_redact(urls[0])!r} does not parse as a URL")


def _one_kms(url: str) -> Kms:
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme == "local":
        from .kms._local import LocalKms

        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(
                f"malformed local KMS URL {_redact(url)!r}: "
                "it looks like local:///absolute/path/master.key"
            )
        return LocalKms.from_file(parts.path, create=False)
    if scheme == "aws-kms":
        from .kms._aws import AwsKms

        return AwsKms.from_url(url)
    if scheme == "vault":
        from .kms._vault_transit import VaultTransitKms

        return VaultTransitKms.from_url(url)
    if not _SCHEME.fullmatch(scheme):
        raise ConfigurationError(
            "the KMS URL has no scheme: local:///…, aws-kms://… or vault://… (see docs/kms.md)"
        )
    raise ConfigurationError(f"unknown KMS URL scheme {scheme!r}")
