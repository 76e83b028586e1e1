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
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

log = logging.getLogger("control.settings")

# Values that show up in docs and copy-pasted examples; never acceptable as a real secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "placeholder", "dev", "test"}
)

SECRET_BYTES = 32
# 32 random bytes hold about 28 distinct values; fewer than this is a pattern, not a key
# (all zeros, one repeated byte, a short phrase repeated to length).
MIN_DISTINCT_SECRET_BYTES = 8

ENV_PREFIX = "CONTROL_"


class SettingsError(ValueError):
    """The configuration cannot run the service.

    Each problem is one line naming the setting and saying why, never with the setting's
    value: these lines are printed to terminals and service logs, and a value may be a secret
    (or part of one, pasted into the wrong variable).
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = problems


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def decode_secret(name: str, value: str, *, prod: bool = False) -> bytes:
    """Decode a base64url secret of exactly 32 bytes, with a message naming the setting.

    In prod the bytes must also look random: a key of one repeated byte, or of a handful of
    byte values, decodes to the right length but protects nothing."""
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise SettingsError(f"{name} is a placeholder; set 32 random bytes, base64url-encoded")
    try:
        raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    except (binascii.Error, ValueError):
        # `from None`: the decoder's own message is not needed to say what is wrong.
        raise SettingsError(f"{name} is not valid base64url") from None
    if len(raw) != SECRET_BYTES:
        raise SettingsError(f"{name} must decode to {SECRET_BYTES} bytes, got {len(raw)}")
    if prod and len(set(raw)) < MIN_DISTINCT_SECRET_BYTES:
        raise SettingsError(
            f"{name} is not random key material (fewer than {MIN_DISTINCT_SECRET_BYTES} "
            "distinct byte values); set 32 random bytes, base64url-encoded, "
            "when CONTROL_ENV=prod"
        )
    return raw


def new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

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
    # The two above hold for the whole fleet: replicas announce themselves this often and share
    # them among the live ones (docs/operations.md).
    replica_heartbeat_seconds: float = Field(2.0, gt=0)

    # Upstream identity providers (ID tokens at the token endpoint).
    upstream_jwks_max_age_seconds: float = Field(300.0, ge=0)
    upstream_jwks_min_refetch_seconds: float = Field(30.0, ge=0)
    # Which network targets an issuer's discovery document and JWKS may live at. Loopback,
    # private and link-local addresses are refused (prod) unless this allows them; in dev,
    # loopback is allowed so a local identity provider works out of the box.
    federation_allow_private_networks: bool = False

    # The admin console (`/console`, docs/console.md). A signed-in session ends after the idle
    # timeout without a request, and after the absolute timeout however busy it is: a cookie
    # left on a shared laptop stops working on its own. Sign-in attempts per client address are
    # limited (a burst of this many, refilled over a minute), so keys cannot be guessed there.
    console_idle_timeout_seconds: int = Field(30 * 60, ge=60)
    console_absolute_timeout_seconds: int = Field(12 * 3600, ge=60)
    console_sign_in_attempts_per_minute: int = Field(10, ge=1)

    # Data that grows, and the token route's audit group commit (docs/operations.md): audit
    # events older than the retention are pruned in batches of `prune_batch` rows, every
    # `prune_interval_seconds` (0 disables the job); a batch of audit events commits at most
    # `audit_batch_max` events and waits at most `audit_batch_wait_ms` for more (0: only what
    # queued during the previous commit).
    audit_retention_days: int = Field(90, ge=1)
    prune_interval_seconds: float = Field(300.0, ge=0)
    prune_batch: int = Field(1000, ge=1, le=100_000)
    audit_batch_max: int = Field(256, ge=1, le=10_000)
    audit_batch_wait_ms: float = Field(0.0, ge=0, le=100)

    # SpacetimeDB: where revocations are pushed (docs/spacetimedb.md). The base URL of the
    # SpacetimeDB host and the names of the databases running the module, comma-separated;
    # either unset means no push (the outbox still records every revocation).
    spacetimedb_url: str | None = None
    spacetimedb_databases: str | None = None
    # How long one reducer call may take before it counts as failed and is retried.
    spacetimedb_timeout_seconds: float = Field(5.0, gt=0, le=300)
    # The query-set catalog of the module those databases run (the shape of
    # `module/src/catalog.json`): only query sets it serves can be defined. Unset, the reference
    # module's catalog shipped in the package.
    query_set_catalog: Path | None = None

    @field_validator("spacetimedb_url")
    @classmethod
    def _spacetimedb_url(cls, value: str | None) -> str | None:
        # No userinfo: the URL is shown to operators (`GET /api/admin/spacetimedb`).
        if value is not None and not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?\Z", value):
            raise ValueError("must be an http(s) URL without credentials, query or fragment")
        return value.rstrip("/") if value else None

    @field_validator("spacetimedb_databases")
    @classmethod
    def _spacetimedb_databases(cls, value: str | None) -> str | None:
        names = [name.strip() for name in (value or "").split(",") if name.strip()]
        if any(re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z", name) is None for name in names):
            raise ValueError("must be comma-separated database names ([A-Za-z0-9_-], 1 to 64)")
        if len(set(names)) != len(names):
            raise ValueError("names a database twice")
        return ",".join(names) or None

    def spacetimedb_targets(self) -> tuple[str, ...]:
        """The databases revocations are pushed into: none unless both settings are set."""
        if not self.spacetimedb_url or not self.spacetimedb_databases:
            return ()
        return tuple(self.spacetimedb_databases.split(","))

    max_body_bytes: int = Field(64 * 1024, ge=1024)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line (docs/operations.md)
    metrics_enabled: bool = True
    # `/metrics` wants this bearer token when set; unset, it serves loopback clients (dev only).
    metrics_token: SecretStr | None = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # Every problem at once, so an operator fixes the configuration in one pass.
        problems: list[str] = []
        if self.issuer.endswith("/"):
            # SpacetimeDB derives Identity from the exact `iss`; a trailing slash is another issuer.
            problems.append("CONTROL_ISSUER must not end with '/'")
        if not (
            self.token_ttl_min_seconds
            <= self.token_ttl_default_seconds
            <= self.token_ttl_max_seconds
        ):
            problems.append(
                "CONTROL_TOKEN_TTL_MIN_SECONDS <= CONTROL_TOKEN_TTL_DEFAULT_SECONDS <= "
                "CONTROL_TOKEN_TTL_MAX_SECONDS must hold"
            )
        if self.env == "prod":
            if not self.issuer.startswith("https://"):
                problems.append("CONTROL_ISSUER must be an https URL when CONTROL_ENV=prod")
            if self.spacetimedb_url is not None and not self.spacetimedb_url.startswith("https://"):
                # The deliverer sends the control plane's own token there.
                problems.append(
                    "CONTROL_SPACETIMEDB_URL must be an https URL when CONTROL_ENV=prod"
                )
            for name in ("key_encryption_key", "credential_pepper"):
                if getattr(self, name) is None and getattr(self, f"{name}_file") is None:
                    problems.append(
                        f"{env_name(name)} (or {env_name(name)}_FILE) is required "
                        "when CONTROL_ENV=prod"
                    )
                    continue
                # Prod refuses to start on key material it would later fail to open, or that
                # would protect nothing; checked here so every problem is reported together.
                try:
                    self._secret(name)
                except SettingsError as exc:
                    problems.extend(exc.problems)
        if problems:
            raise SettingsError(*problems)
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
        setting = env_name(name)
        prod = self.env == "prod"
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return decode_secret(setting, value.get_secret_value(), prod=prod)
        path: Path | None = getattr(self, f"{name}_file")
        if path is not None:
            try:
                text = path.read_text()
            except OSError as exc:
                # `strerror` only: the full message repeats the path, which is a setting's value.
                raise SettingsError(f"{setting}_FILE cannot be read: {exc.strerror}") from None
            return decode_secret(f"{setting}_FILE", text, prod=prod)
        if self.env != "dev":  # pragma: no cover - refused by the validator already
            raise SettingsError(f"{setting} is required")
        return decode_secret(f"{setting} (from CONTROL_DEV_SECRETS_FILE)", self._dev_secret(name))

    def _dev_secret(self, name: str) -> str:
        path = self.dev_secrets_file
        stored: dict[str, str] = {}
        if path.exists():
            try:
                loaded: Any = json.loads(path.read_text())
            except (OSError, ValueError):
                loaded = None
            # Never overwritten when unreadable: it may hold the key the signing keys need.
            if not isinstance(loaded, dict) or not all(
                isinstance(value, str) for value in loaded.values()
            ):
                raise SettingsError(
                    "CONTROL_DEV_SECRETS_FILE cannot be read as a JSON object of secrets"
                )
            stored = loaded
        if name not in stored:
            log.warning(
                "CONTROL_%s is not set: generated one into %s (dev mode only)", name.upper(), path
            )
            stored[name] = new_secret()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle, indent=2)
        return stored[name]


def load_settings(**overrides: Any) -> Settings:
    """`Settings()`, with every way it can fail turned into a `SettingsError` of value-free
    lines: pydantic's own messages carry the offending input (and, from a model validator, a
    repr of every field), which may be a secret."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(*validation_problems(exc)) from None
    except SourceError as exc:
        # A value the environment or `.env` source could not parse; its cause quotes it.
        field = str(exc).partition('field "')[2].partition('"')[0]
        where = env_name(field) if field else "the settings"
        raise SettingsError(f"{where}: cannot be parsed") from None
    except OSError as exc:
        raise SettingsError(f"the settings cannot be read: {exc.strerror}") from None


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per error: the environment variable and pydantic's message, never the input."""
    problems: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SettingsError):
            problems.extend(cause.problems)
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        problems.append(f"{_setting_of(error['loc'])}: {message}")
    return problems


def _setting_of(loc: Sequence[int | str]) -> str:
    if loc and isinstance(loc[0], str) and loc[0] in Settings.model_fields:
        return env_name(loc[0])
    return "settings"
