"""Settings from ``CCVAULT_*`` environment variables (pydantic-settings) and KMS URLs.

Every ``CCVAULT_*`` variable in the environment must be one ccvault reads: a field of
:class:`CcvaultSettings`, one of :data:`OTHER_VARIABLES`, or a name under one of
:data:`RESERVED_PREFIXES`. Anything else (a typo such as ``CCVAULT_KMS_ULR``) is a
:class:`~ccvault.errors.ConfigurationError` naming the closest known variable, so a misspelt
setting never silently falls back to its default.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .crypto._subject import SubjectType
from .errors import ConfigurationError
from .kms._protocol import Kms

__all__ = [
    "OTHER_VARIABLES",
    "RESERVED_PREFIXES",
    "CcvaultSettings",
    "check_environment",
    "kms_from_url",
    "settings_table",
]

_PREFIX = "CCVAULT_"

OTHER_VARIABLES = frozenset(
    {
        # kms/_vault_transit.py: Vault/OpenBao credentials (never in a URL)
        "CCVAULT_VAULT_TOKEN",
        "CCVAULT_VAULT_ROLE_ID",
        "CCVAULT_VAULT_SECRET_ID",
    }
)
"""``CCVAULT_*`` variables read outside :class:`CcvaultSettings`."""

RESERVED_PREFIXES = ("CCVAULT_TEST_", "CCVAULT_BENCH_")
"""Prefixes of variables ccvault's own test suite and benchmarks read (``CCVAULT_TEST_PG``…);
the library never reads them, and the unknown-variable check lets them pass."""


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
        description="how long a process keeps unwrapped keys: the shred propagation bound for "
        "other processes and the period between KMS unwraps of an epoch key",
    )
    kms_grace_seconds: float = Field(
        default=300.0, ge=0, description="cached epoch keys keep serving this long in a KMS outage"
    )
    cache_max_entries: int = Field(
        default=100_000, ge=1, description="entries of each key cache (subject refs, keys)"
    )
    epoch_rotation_days: float = Field(
        default=30.0,
        gt=0,
        description="planned epoch lifetime: `ccvault status` reports a rotation overdue after "
        "it, and receipts project the erasure horizon from it",
    )
    backup_retention_days: float = Field(
        default=35.0,
        ge=0,
        description="how long key-store backups are kept: an epoch is destroyed this long after "
        "it was retired (the erasure horizon)",
    )
    per_epoch_roots: bool = Field(
        default=False, description="a new KMS root per epoch (needed for an erasure horizon)"
    )

    @field_validator("subject_type")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            SubjectType.parse(value)  # ValueError: unsupported subject type
        return value

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

    def __repr__(self) -> str:
        return (
            f"CcvaultSettings(kms_url={_redact(self.kms_url)!r}, "
            f"keystore_url={_redact(self.keystore_url)!r}, home={self.home!r})"
        )


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
        name = str(error["loc"][0]) if error["loc"] else "?"
        if name in fields:
            parts.append(f"{_PREFIX}{name.upper()} ({name}): {error['msg']}")
        else:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            parts.append(f"unknown setting {name!r}{hint}")
    return "invalid setting: " + "; ".join(parts)


_USERINFO = re.compile(r"(://|%3A%2F%2F)[^/@?&#,]*@", re.I)
_SECRET_PARAMS = re.compile(r"((?:token|secret|secret_id|password|access_key|key)=)[^&,]*", re.I)


def _redact(url: str | None) -> str | None:
    """The URL(s) with passwords and secret-looking query parameters masked."""
    if url is None:
        return None
    out = []
    for one in url.split(","):
        # Userinfo anywhere (also inside a query value such as endpoint_url=https://id:secret@h)
        # and secret-looking parameters.
        one = _USERINFO.sub(r"\1***@", one)
        out.append(_SECRET_PARAMS.sub(r"\1***", one))
    return ",".join(out)


def kms_from_url(url: str) -> Kms:
    """Build a KMS backend from its URL; comma-separated URLs build a MultiKms (first = primary).

    Credentials never go in the URL: AWS credentials come from the usual boto3 chain, a Vault
    token from ``VAULT_TOKEN`` (or AppRole ids from ``CCVAULT_VAULT_ROLE_ID``/``_SECRET_ID``).
    """
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if len(urls) > 1:
        from .kms._multi import MultiKms

        first, *others = (kms_from_url(u) for u in urls)
        return MultiKms(first, *others)
    if not urls:
        raise ConfigurationError("the KMS URL is empty")
    url = urls[0]
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
    raise ConfigurationError(f"unknown KMS URL scheme {scheme!r}")
