from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control.kit.schemas import ResponseBody


class OpenIDConfiguration(BaseModel):
    model_config = ConfigDict(extra="allow")

    issuer: str
    jwks_uri: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_feed_endpoint: str
    id_token_signing_alg_values_supported: list[str]
    response_types_supported: list[str]
    subject_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    claims_supported: list[str]


class JWK(BaseModel):
    model_config = ConfigDict(extra="allow")

    kty: str
    kid: str
    use: str
    alg: str


class JWKS(BaseModel):
    keys: list[JWK]


class KeyInfo(ResponseBody):
    kid: str
    alg: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    retiring_at: datetime | None
    retired_at: datetime | None
    public_jwk: dict[str, Any] = Field(description="The public half only.")


class KeyList(BaseModel):
    items: list[KeyInfo]
    next_cursor: str | None = None


class RotationResult(BaseModel):
    active: str
    retiring: str
    pending: str
    items: list[KeyInfo]
