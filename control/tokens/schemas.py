from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from control.grants import Op
from control.kit.schemas import RequestBody
from control.policy.schemas import (
    ADA_ID,
    DENIAL_REASON_DESCRIPTION,
    OPS_DESCRIPTION,
    ORG_ID,
    QUERY_SETS_DESCRIPTION,
    STREAM_ID,
    STREAMS_DESCRIPTION,
    QuerySetText,
    StreamText,
)

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._~-]{1,128}$")]

# A token as `POST /api/sync/token` returns it for the examples' request: its claims are those
# of the examples below (signed by a key that signs nothing else).
EXAMPLE_JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6IjR3QlUwcVQ4NW9XT0k1aVVyOFVUWF9iU3RmREtTOEJzcWdxczRiQm9aRkEi"
    "LCJ0eXAiOiJKV1QifQ.eyJpc3MiOiJodHRwczovL2NvbnRyb2wuZXhhbXBsZS5jb20iLCJzdWIiOiJwcm5fMDFK"
    "VjZNM0E3UjJLOVc0UDFYOFo1QzNEMEUiLCJhdWQiOiJzcGFjZXRpbWVkYiIsImlhdCI6MTc3Nzg4NzAwMCwibmJm"
    "IjoxNzc3ODg3MDAwLCJleHAiOjE3Nzc4ODczMDAsImp0aSI6IjZkNl9lOXNVQ09lZTVrTFh0MGMzZmciLCJ0b2tl"
    "bl91c2UiOiJzeW5jIiwib3JnX2lkIjoib3JnXzAxSlY2TTJROFg0VDBSN0M1TjNCOUQxRjZIIiwic2NvcGUiOiJz"
    "eW5jLnN1YnNjcmliZSIsImdyYW50cyI6W3sic3RyZWFtIjoicnVuOjAxSjlaSyIsInF1ZXJ5X3NldHMiOlsicnVu"
    "X2V2ZW50c0AxIl0sIm9wcyI6WyJzdWJzY3JpYmUiXX1dLCJwb2xpY3lfcmV2Ijo3LCJzaWQiOiJsYXB0b3AtNyJ9"
    ".YlJObN-VusUtRmAQ2gcOWN7QoVp8wbEYsyEs9OBp73kWyx6EU-0S48-1sHwnQa16Pmylz3K7J227y9KAbd3ahA"
)
EXAMPLE_JTI = "6d6_e9sUCOee5kLXt0c3fg"
EXAMPLE_KID = "4wBU0qT85oWOI5iUr8UTX_bStfDKS8Bsqgqs4bBoZFA"
EXAMPLE_GRANT: dict[str, Any] = {
    "stream": STREAM_ID,
    "query_sets": ["run_events@1"],
    "ops": ["subscribe"],
}


class TokenRequest(RequestBody):
    """What a sync token should carry. The org's grant rules decide what it does carry."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"streams": [STREAM_ID]},
                {
                    "streams": [STREAM_ID, "run:*"],
                    "query_sets": ["run_events"],
                    "ops": ["subscribe"],
                    "ttl_seconds": 300,
                    "device_id": "laptop-7",
                    "allow_partial": True,
                },
            ]
        }
    )

    streams: list[StreamText] = Field(
        min_length=1, max_length=1024, description=STREAMS_DESCRIPTION
    )
    query_sets: list[QuerySetText] | None = Field(
        default=None, max_length=64, description=QUERY_SETS_DESCRIPTION
    )
    ops: list[Op] | None = Field(default=None, max_length=3, description=OPS_DESCRIPTION)
    # Strict: a JSON number and a JSON boolean. `"300"` or `"true"` is a client bug to report,
    # not a value to guess at.
    ttl_seconds: StrictInt | None = Field(
        default=None,
        description="The token's lifetime in seconds, within the service's bounds (60 to 900 "
        "unless configured; outside them is 422). Omitted: the service's default (300 unless "
        "configured). A rule's `max_ttl_seconds` may shorten it; `expires_in` says what was "
        "given",
    )
    device_id: DeviceId | None = Field(
        default=None,
        description="Your label for the device or session the token is for, carried as its "
        "`sid` claim. A `device` principal may name only its own id, and no principal may name "
        "another principal's id",
    )
    allow_partial: StrictBool = Field(
        default=False,
        description="false: any stream not granted fails the whole request (403 "
        "`stream_not_granted`, listing each stream and why). true: the token carries the "
        "streams granted and `denied` lists the rest; a request granted nothing still fails",
    )


class GrantOut(BaseModel):
    """One grant of a token: a stream and what may be done on it."""

    stream: str = Field(
        description="A stream id, or `<kind>:*` for every stream of the kind in the token's org"
    )
    query_sets: list[str] = Field(description="The query sets granted on it, as `name@version`")
    ops: list[str] = Field(description="The ops granted on it: `subscribe`, `append`, `checkpoint`")


class Denial(BaseModel):
    """A requested stream the token does not carry, and why."""

    stream: str = Field(description="The stream id or `<kind>:*` selector, as requested")
    reason: str = Field(description=DENIAL_REASON_DESCRIPTION)


class TokenResponse(BaseModel):
    """A minted sync token, with its claims spelled out so a client need not decode it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": EXAMPLE_JWT,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "expires_at": "2026-05-04T09:35:00Z",
                    "refresh_after": "2026-05-04T09:34:02Z",
                    "issuer": "https://control.example.com",
                    "audience": "spacetimedb",
                    "subject": ADA_ID,
                    "identity": "c200aade296800769f7d3ff116a7cec370e37387a1543c1ba032cc7f62756264",
                    "org_id": ORG_ID,
                    "kid": EXAMPLE_KID,
                    "jti": EXAMPLE_JTI,
                    "grants": [EXAMPLE_GRANT],
                    "denied": [{"stream": "run:*", "reason": "kind_wide_not_permitted"}],
                    "policy_rev": 7,
                }
            ]
        }
    )

    token: str = Field(
        description="The sync token: an ES256 JWT. Present it as the bearer credential to "
        "SpacetimeDB and to runtime services"
    )
    token_type: str = Field("Bearer", description="Always `Bearer`")
    expires_in: int = Field(
        description="Its lifetime in seconds: the requested or default TTL, shortened by the "
        "`max_ttl_seconds` of the rules behind its grants"
    )
    expires_at: datetime = Field(description="When it expires (its `exp` claim)")
    refresh_after: datetime = Field(
        description="When to fetch the next token: at about 80 % of its lifetime, spread a "
        "little so that clients do not all refresh at once"
    )
    issuer: str = Field(description="Its `iss` claim: this service's issuer URL")
    audience: str = Field(description="Its `aud` claim: the SpacetimeDB database it is for")
    subject: str = Field(description="Its `sub` claim: the caller's principal id")
    identity: str = Field(
        description="The SpacetimeDB Identity it connects as, derived from `iss` and `sub` "
        "(64 hex characters starting `c200`)"
    )
    org_id: str = Field(description="Its `org_id` claim: the caller's org")
    kid: str = Field(description="The id of the key that signed it, published in the JWKS")
    jti: str = Field(
        description="Its `jti` claim: its unique id, by which this one token can be revoked"
    )
    grants: list[GrantOut] = Field(
        description="Its `grants` claim: one per granted stream or selector"
    )
    denied: list[Denial] = Field(
        description="The requested streams it does not carry, and why; empty unless the "
        "request set `allow_partial`"
    )
    policy_rev: int = Field(
        description="Its `policy_rev` claim: the org's policy revision the decision used"
    )


TokenText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class IntrospectRequest(RequestBody):
    """A sync token to check, and optionally what it should allow."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"token": EXAMPLE_JWT, "stream": STREAM_ID, "op": "subscribe"},
                {"token": EXAMPLE_JWT},
            ]
        }
    )

    token: TokenText = Field(description="The sync token, as the client presented it")
    stream: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        default=None,
        description="A stream id: answer also whether the token's grants cover it. A stream "
        "the org does not hold (never registered, or deleted) is never covered",
    )
    query_set: Annotated[str, StringConstraints(max_length=80)] | None = Field(
        default=None,
        description="With `stream`: a query set the grant must include, `name` (any version) "
        "or `name@version` (exactly that one)",
    )
    op: Op | None = Field(
        default=None,
        description="With `stream`: the op the grant must include; default `subscribe`",
    )


class IntrospectResponse(BaseModel):
    """Whether a token is active now; fields other than `active` and `reason` appear only for
    an active token."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "active": True,
                    "sub": ADA_ID,
                    "org_id": ORG_ID,
                    "exp": 1777887300,
                    "iat": 1777887000,
                    "jti": EXAMPLE_JTI,
                    "grants": [EXAMPLE_GRANT],
                    "policy_rev": 7,
                    "allowed": True,
                },
                {"active": False, "reason": "revoked"},
            ]
        }
    )

    active: bool = Field(
        description="Whether the token verifies (signature, issuer, audience, validity window), "
        "belongs to the caller's org and is not revoked"
    )
    reason: str | None = Field(
        default=None,
        description="When inactive, why: `expired`, `not_yet_valid`, `invalid_signature`, "
        "`unknown_key`, `wrong_issuer`, `wrong_audience`, `wrong_token_use`, `malformed`, "
        "`revoked` or `wrong_org` (another org's token). When `allowed` is false, why not: "
        "`stream_not_granted`, `query_set_not_granted`, `op_not_granted` or `stream_not_found`",
    )
    sub: str | None = Field(default=None, description="The token's subject: a principal id")
    org_id: str | None = Field(default=None, description="The token's org")
    exp: int | None = Field(default=None, description="When it expires, in seconds since the epoch")
    iat: int | None = Field(
        default=None, description="When it was issued, in seconds since the epoch"
    )
    jti: str | None = Field(default=None, description="Its unique id")
    grants: list[dict[str, Any]] | None = Field(
        default=None,
        description="Its `grants` claim: `{stream, query_sets, ops}` per granted stream",
    )
    policy_rev: int | None = Field(
        default=None, description="The org's policy revision its grants were decided under"
    )
    allowed: bool | None = Field(
        default=None,
        description="Present when a stream was named: whether the token's grants cover it, "
        "with the `query_set` and `op` asked about",
    )
