"""Service settings, read from `CONTROL_*` environment variables (and a `.env` file).

In `dev` a missing secret is generated once into a local file so the first run needs nothing;
in `prod` the service refuses to start without real secrets and an `https` issuer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("control.settings")

# Values that show up in docs and copy-pasted examples; never acceptable as a real secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "placeholder", "dev", "test"}
)

SECRET_BYTES = 32


class SettingsError(ValueError):
    """The configuration cannot run the service; the message says which setting and why."""


def decode_secret(name: str, value: str) -> bytes:
    """Decode a base64url secret of exactly 32 bytes, with a message naming the setting."""
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise SettingsError(f"{name} is a placeholder; set 32 random bytes, base64url-encoded")
    try:
        raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SettingsError(f"{name} is not valid base64url") from exc
    if len(raw) != SECRET_BYTES:
        raise SettingsError(f"{name} must decode to {SECRET_BYTES} bytes, got {len(raw)}")
    return raw


def new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTROL_", env_file=".env", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    database_url: str = "sqlite:///./control.db"
    issuer: str = "http://127.0.0.1:8080"
    audience: str = "spacetimedb"

    key_encryption_key: SecretStr | None = None
    key_encryption_key_file: Path | None = None
    credential_pepper: SecretStr | None = None
    credential_pepper_file: Path | None = None
    # Where dev mode keeps the secrets it generated on first run.
    dev_secrets_file: Path = Path("./control.secrets.json")

    signing_alg: Literal["ES256", "RS256"] = "ES256"
    key_publish_lead_seconds: int = Field(600, ge=0)
    key_rotation_interval_seconds: int = Field(30 * 24 * 3600, ge=0)  # 0 disables
    key_refresh_seconds: float = Field(2.0, gt=0)
    jwks_max_age_seconds: int = Field(300, ge=0)

    token_ttl_default_seconds: int = 300
    token_ttl_min_seconds: int = 60
    token_ttl_max_seconds: int = 900
    token_leeway_seconds: int = Field(30, ge=0)
    max_streams_per_token: int = Field(64, ge=1)

    mint_rate_per_second: float = Field(10.0, ge=0)  # 0 disables
    mint_burst: int = Field(30, ge=1)

    # Upstream identity providers (ID tokens at the token endpoint).
    upstream_jwks_max_age_seconds: float = Field(300.0, ge=0)
    upstream_jwks_min_refetch_seconds: float = Field(30.0, ge=0)

    max_body_bytes: int = Field(64 * 1024, ge=1024)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.issuer.endswith("/"):
            # SpacetimeDB derives Identity from the exact `iss`; a trailing slash is another issuer.
            raise SettingsError("CONTROL_ISSUER must not end with '/'")
        if not (
            self.token_ttl_min_seconds
            <= self.token_ttl_default_seconds
            <= self.token_ttl_max_seconds
        ):
            raise SettingsError("token TTL bounds must satisfy min <= default <= max")
        if self.env == "prod":
            if not self.issuer.startswith("https://"):
                raise SettingsError("CONTROL_ISSUER must be an https URL when CONTROL_ENV=prod")
            for name in ("key_encryption_key", "credential_pepper"):
                if getattr(self, name) is None and getattr(self, f"{name}_file") is None:
                    raise SettingsError(
                        f"CONTROL_{name.upper()} (or CONTROL_{name.upper()}_FILE) is required "
                        "when CONTROL_ENV=prod"
                    )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the driver this project ships (psycopg 3 for PostgreSQL)."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def key_encryption_key_bytes(self) -> bytes:
        return self._secret("key_encryption_key")

    def credential_pepper_bytes(self) -> bytes:
        return self._secret("credential_pepper")

    def _secret(self, name: str) -> bytes:
        env_name = f"CONTROL_{name.upper()}"
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return decode_secret(env_name, value.get_secret_value())
        path: Path | None = getattr(self, f"{name}_file")
        if path is not None:
            try:
                return decode_secret(f"{env_name}_FILE ({path})", path.read_text())
            except OSError as exc:
                raise SettingsError(f"{env_name}_FILE cannot be read: {exc}") from exc
        if self.env != "dev":  # pragma: no cover - refused by the validator already
            raise SettingsError(f"{env_name} is required")
        return decode_secret(f"{env_name} (from {self.dev_secrets_file})", self._dev_secret(name))

    def _dev_secret(self, name: str) -> str:
        path = self.dev_secrets_file
        stored: dict[str, str] = {}
        if path.exists():
            stored = json.loads(path.read_text())
        if name not in stored:
            log.warning(
                "CONTROL_%s is not set: generated one into %s (dev mode only)", name.upper(), path
            )
            stored[name] = new_secret()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle, indent=2)
        return stored[name]
