from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints

from control.grants import Op
from control.kit.schemas import RequestBody
from control.policy.schemas import QuerySetText, StreamText

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._~-]{1,128}$")]


class TokenRequest(RequestBody):
    streams: list[StreamText] = Field(min_length=1, max_length=1024)
    query_sets: list[QuerySetText] | None = Field(default=None, max_length=64)
    ops: list[Op] | None = Field(default=None, max_length=3)
    # Strict: a JSON number and a JSON boolean. `"300"` or `"true"` is a client bug to report,
    # not a value to guess at.
    ttl_seconds: StrictInt | None = None
    device_id: DeviceId | None = None
    allow_partial: StrictBool = False


class GrantOut(BaseModel):
    stream: str
    query_sets: list[str]
    ops: list[str]


class Denial(BaseModel):
    stream: str
    reason: str


class TokenResponse(BaseModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int
    expires_at: datetime
    refresh_after: datetime
    issuer: str
    audience: str
    subject: str
    identity: str
    org_id: str
    kid: str
    jti: str
    grants: list[GrantOut]
    denied: list[Denial]
    policy_rev: int


TokenText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class IntrospectRequest(RequestBody):
    token: TokenText
    stream: Annotated[str, StringConstraints(max_length=200)] | None = None
    query_set: Annotated[str, StringConstraints(max_length=80)] | None = None
    op: Op | None = None


class IntrospectResponse(BaseModel):
    active: bool
    reason: str | None = Field(default=None, description="why inactive, or why not allowed")
    sub: str | None = None
    org_id: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    grants: list[dict[str, Any]] | None = None
    policy_rev: int | None = None
    allowed: bool | None = Field(default=None, description="present when a stream was named")
