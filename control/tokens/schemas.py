from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints

from control.grants import QUERY_SET_REF_PATTERN, STREAM_ID_PATTERN, Op
from control.kit.schemas import EntityId, RequestBody

# The grammar in the schema, so the spec tells clients exactly what is accepted.
StreamText = Annotated[str, StringConstraints(pattern=rf"^{STREAM_ID_PATTERN}$")]
QuerySetText = Annotated[str, StringConstraints(pattern=rf"^{QUERY_SET_REF_PATTERN}$")]
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


class ExplainRequest(RequestBody):
    principal_id: EntityId
    streams: list[StreamText] = Field(min_length=1, max_length=1024)
    query_sets: list[QuerySetText] | None = Field(default=None, max_length=64)
    ops: list[Op] | None = Field(default=None, max_length=3)


class ExplainDecision(BaseModel):
    stream: str
    allowed: bool
    query_sets: list[str]
    ops: list[str]
    reason: str | None
    rule_ids: list[str]


class ExplainResponse(BaseModel):
    policy_rev: int
    decisions: list[ExplainDecision]
