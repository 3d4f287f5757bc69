"""Settings from ``CCVAULT_*`` environment variables (pydantic-settings) and KMS URLs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError
from .kms._protocol import Kms

__all__ = ["CcvaultSettings", "kms_from_url", "settings_table"]


class CcvaultSettings(BaseSettings):
    """Every setting, read from ``CCVAULT_<NAME>`` (e.g. ``CCVAULT_KMS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="CCVAULT_", frozen=True, extra="forbid")

    kms_url: str | None = Field(
        default=None,
        description="local:///path/to/master.key, aws-kms://<arn-or-alias>?region=..., "
        "vault://<mount>/<key>?addr=https://... (token from VAULT_TOKEN); several URLs separated "
        "by commas make a MultiKms, the first one primary; unset: the embedded development "
        "default under `home`",
    )
    keystore_url: str | None = Field(
        default=None, description="any SQLAlchemy URL; unset: sqlite under `home`"
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
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "local":
        from .kms._local import LocalKms

        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError("a local KMS URL looks like local:///absolute/path/master.key")
        return LocalKms.from_file(parts.path, create=False)
    if scheme == "aws-kms":
        from .kms._aws import AwsKms

        return AwsKms.from_url(url)
    if scheme == "vault":
        from .kms._vault_transit import VaultTransitKms

        return VaultTransitKms.from_url(url)
    raise ConfigurationError(f"unknown KMS URL scheme {scheme!r}")
