from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control.kit.schemas import ResponseBody

_ISSUER = "https://control.example.com"
_ACTIVE_KID = "4wBU0qT85oWOI5iUr8UTX_bStfDKS8Bsqgqs4bBoZFA"
_PENDING_KID = "qS1fEfcX50KGIRptOOPa7luw1Q8B0m6ivMKPWPIazxk"
_NEXT_KID = "QjMLdlH-e56y9w4VZi0vAvcrxA9jVTV5yFqu-tsL6TY"


def _jwk(kid: str, x: str, y: str) -> dict[str, Any]:
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256", "x": x, "y": y}


_ACTIVE_JWK = _jwk(
    _ACTIVE_KID,
    "5u7ZS9Xe3qkbaBq_t3qzziUvl_DM9mhbMei9lAFxF9Y",
    "9sPeclU4c-HXH2fgfGMp5D3KA8bkXpZmv-Iw34fSpYM",
)
_PENDING_JWK = _jwk(
    _PENDING_KID,
    "tkrLGXoJ9Jq643Mj379OI5o0xZjjsifJwfqHYJI7veQ",
    "3iOTDraECuhX7mrg8stTIRoZ3yCWPiBDfBbdcBOnNek",
)
_NEXT_JWK = _jwk(
    _NEXT_KID,
    "_5furSbe1OuATX21rsyOEtUSPiIs0sf1vqOMywCqaFA",
    "HnwOlRM9bX3DbCCHjsSSQlQel5iDrw3TTk6sZCfqPOg",
)
_CLAIMS: list[Any] = [
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti",
    "token_use", "org_id", "sid", "scope", "grants", "policy_rev",
]  # fmt: skip
_ACTIVE: dict[str, Any] = {
    "kid": _ACTIVE_KID,
    "alg": "ES256",
    "state": "active",
    "created_at": "2026-04-04T09:00:00.152468Z",
    "activated_at": "2026-04-04T09:10:00.004127Z",
    "retiring_at": None,
    "retired_at": None,
    "public_jwk": _ACTIVE_JWK,
}
_PENDING: dict[str, Any] = {
    "kid": _PENDING_KID,
    "alg": "ES256",
    "state": "pending",
    "created_at": "2026-05-03T09:10:00.118204Z",
    "activated_at": None,
    "retiring_at": None,
    "retired_at": None,
    "public_jwk": _PENDING_JWK,
}


class OpenIDConfiguration(BaseModel):
    """OIDC discovery (what SpacetimeDB reads to find the keys), and RFC 8414 authorization
    server metadata for OAuth clients of the token endpoint (docs/oauth.md)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "issuer": _ISSUER,
                    "jwks_uri": f"{_ISSUER}/.well-known/jwks.json",
                    "token_endpoint": f"{_ISSUER}/api/sync/token",
                    "introspection_endpoint": f"{_ISSUER}/api/sync/introspect",
                    "revocation_feed_endpoint": f"{_ISSUER}/api/sync/revocations",
                    "id_token_signing_alg_values_supported": ["ES256"],
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "grant_types_supported": [
                        "client_credentials",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_basic",
                        "client_secret_post",
                    ],
                    "scopes_supported": [
                        "stream:",
                        "query_set:",
                        "op:subscribe",
                        "op:append",
                        "op:checkpoint",
                    ],
                    "claims_supported": _CLAIMS,
                }
            ]
        },
    )

    issuer: str = Field(
        description="The issuer URL: the `iss` of every sync token, from which SpacetimeDB "
        "derives identities"
    )
    jwks_uri: str = Field(description="Where the public signing keys are (the JWKS)")
    token_endpoint: str = Field(description="The token endpoint, `POST /api/sync/token`")
    introspection_endpoint: str = Field(
        description="The introspection endpoint, `POST /api/sync/introspect`"
    )
    revocation_feed_endpoint: str = Field(
        description="The revocation feed, `GET /api/sync/revocations`"
    )
    id_token_signing_alg_values_supported: list[str] = Field(
        description="The algorithms sync tokens are signed with"
    )
    response_types_supported: list[str] = Field(
        description="Required by OIDC discovery; the service has no authorization endpoint"
    )
    subject_types_supported: list[str] = Field(
        description="`public`: a principal's `sub` is the same for every audience"
    )
    grant_types_supported: list[str] = Field(
        description="The OAuth 2.0 grant types the token endpoint takes as form requests"
    )
    token_endpoint_auth_methods_supported: list[str] = Field(
        description="How an OAuth client authenticates at the token endpoint: HTTP Basic, or "
        "`client_id` and `client_secret` in the form"
    )
    scopes_supported: list[str] = Field(
        description="The scope grammar: `stream:` and `query_set:` prefix a stream or query "
        "set; the `op:` tokens are listed whole"
    )
    claims_supported: list[str] = Field(description="The claims a sync token may carry")


class JWK(BaseModel):
    """A public signing key (RFC 7517); the key material's members depend on `kty`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_ACTIVE_JWK]})

    kty: str = Field(description="The key type: `EC` for ES256 keys (with `crv`, `x`, `y`)")
    kid: str = Field(description="The key id, which a token's header names")
    use: str = Field(description="`sig`: a signing key")
    alg: str = Field(description="The algorithm it signs with: `ES256`")


class JWKS(BaseModel):
    """The published public signing keys (RFC 7517 JWK Set)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"keys": [_ACTIVE_JWK, _PENDING_JWK]}]}
    )

    keys: list[JWK] = Field(
        description="The active key, the pending key that will sign next, and retiring keys "
        "until their last tokens expire"
    )


class KeyInfo(ResponseBody):
    """A signing key and where it is in its life."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ACTIVE]})

    kid: str = Field(description="The key id, as the JWKS and a token's header name it")
    alg: str = Field(description="The signing algorithm: `ES256`")
    state: str = Field(
        description="`pending` (published, not signing yet), `active` (signing; exactly one), "
        "`retiring` (published, no longer signing, until its last token expires) or `retired` "
        "(gone from the JWKS)"
    )
    created_at: datetime = Field(description="When it was made and, unless retired, published")
    activated_at: datetime | None = Field(description="When it started signing, or null")
    retiring_at: datetime | None = Field(description="When it stopped signing, or null")
    retired_at: datetime | None = Field(description="When it left the JWKS, or null")
    public_jwk: dict[str, Any] = Field(description="The public half only.")


class KeyList(BaseModel):
    """Every signing key, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ACTIVE, _PENDING], "next_cursor": None}]}
    )

    items: list[KeyInfo] = Field(description="The keys, oldest first")
    next_cursor: str | None = Field(default=None, description="Always null: one page holds all")


class RotationResult(BaseModel):
    """The keys after a rotation."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "active": _PENDING_KID,
                    "retiring": _ACTIVE_KID,
                    "pending": _NEXT_KID,
                    "items": [
                        {
                            **_ACTIVE,
                            "state": "retiring",
                            "retiring_at": "2026-05-04T09:31:00.021975Z",
                        },
                        {
                            **_PENDING,
                            "state": "active",
                            "activated_at": "2026-05-04T09:31:00.021975Z",
                        },
                        {
                            "kid": _NEXT_KID,
                            "alg": "ES256",
                            "state": "pending",
                            "created_at": "2026-05-04T09:31:00.021975Z",
                            "activated_at": None,
                            "retiring_at": None,
                            "retired_at": None,
                            "public_jwk": _NEXT_JWK,
                        },
                    ],
                }
            ]
        }
    )

    active: str = Field(description="The key that signs from now on: the pending key until now")
    retiring: str = Field(
        description="The key that signed until now, published until its last token expires "
        "(empty if there was none)"
    )
    pending: str = Field(
        description="The newly published key, which the next rotation makes active"
    )
    items: list[KeyInfo] = Field(description="Every signing key after the rotation, oldest first")
