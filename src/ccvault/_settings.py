"""Settings from ``CCVAULT_*`` environment variables (pydantic-settings) and KMS URLs."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError
from .kms._protocol import Kms

__all__ = ["CcvaultSettings", "kms_from_url"]


class CcvaultSettings(BaseSettings):
    """Every setting, read from ``CCVAULT_<NAME>`` (e.g. ``CCVAULT_KMS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="CCVAULT_", frozen=True, extra="forbid")

    kms_url: str | None = Field(
        default=None,
        description="local:///path/to/master.key (aws-kms:// and vault:// arrive with their "
        "backends); unset: the embedded development default under `home`",
    )
    keystore_url: str | None = Field(
        default=None, description="any SQLAlchemy URL; unset: sqlite under `home`"
    )
    home: str = Field(default=".ccvault", description="folder of the embedded default")
    subject_type: str | None = Field(
        default=None, description="str, int, uuid or tuple[...]; unset: what the store records"
    )
    cache_ttl_seconds: float = Field(default=60.0, gt=0)
    cache_max_entries: int = Field(default=100_000, ge=1)
    epoch_rotation_days: float = Field(default=30.0, gt=0)
    backup_retention_days: float = Field(default=35.0, ge=0)
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


def _redact(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url


def kms_from_url(url: str) -> Kms:
    """Build a KMS backend from its URL. Credentials never go in the URL."""
    parts = urlsplit(url)
    if parts.scheme == "local":
        from .kms._local import LocalKms

        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError("a local KMS URL looks like local:///absolute/path/master.key")
        return LocalKms.from_file(parts.path, create=False)
    if parts.scheme in ("aws-kms", "vault"):
        raise ConfigurationError(
            f"the {parts.scheme}:// KMS backend is not available in this release of ccvault"
        )
    raise ConfigurationError(f"unknown KMS URL scheme {parts.scheme!r}")
