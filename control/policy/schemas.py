from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, StringConstraints

from control.grants import (
    QUERY_SET_NAME_PATTERN,
    QUERY_SET_REF_PATTERN,
    STREAM_ID_PATTERN,
    STREAM_KIND_PATTERN,
    Op,
)
from control.kit.schemas import (
    Description,
    EntityId,
    PrincipalKind,
    RequestBody,
    ResponseBody,
    RoleName,
)

# The grammar in the schema, so the spec tells clients exactly what is accepted.
StreamIdText = Annotated[str, StringConstraints(pattern=rf"^{STREAM_ID_PATTERN}$")]
StreamText = StreamIdText
# A query set named in a request: `name` or `name@version`.
QuerySetText = Annotated[str, StringConstraints(pattern=rf"^{QUERY_SET_REF_PATTERN}$")]
StreamKind = Annotated[str, StringConstraints(pattern=rf"^{STREAM_KIND_PATTERN}$")]
QuerySetName = Annotated[str, StringConstraints(pattern=rf"^{QUERY_SET_NAME_PATTERN}$")]
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,64}$")]
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]


class StreamCreate(RequestBody):
    id: StreamIdText
    owner_id: EntityId | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=32)


class StreamOut(ResponseBody):
    id: str
    kind: str
    org_id: str
    owner_id: str | None
    labels: dict[str, str]
    created_at: datetime


class QuerySetCreate(RequestBody):
    name: QuerySetName
    stream_kinds: list[StreamKind] = Field(min_length=1, max_length=32)
    queries: list[QueryText] = Field(min_length=1, max_length=32)
    description: Description | None = None


class QuerySetUpdate(RequestBody):
    stream_kinds: list[StreamKind] = Field(min_length=1, max_length=32)
    queries: list[QueryText] = Field(min_length=1, max_length=32)
    description: Description | None = None


class QuerySetOut(BaseModel):
    name: str
    version: int
    ref: str = Field(description="`name@version`, as grants name it")
    stream_kinds: list[str]
    queries: list[str]
    description: str | None
    org_id: str
    created_at: datetime
    updated_at: datetime


class RuleSubjects(RequestBody):
    principal_ids: list[EntityId] = Field(default_factory=list, max_length=256)
    roles: list[RoleName] = Field(default_factory=list, max_length=32)
    kinds: list[PrincipalKind] = Field(default_factory=list, max_length=3)


class RuleStreams(RequestBody):
    kind: StreamKind
    relation: Literal["owner", "org", "ids"]
    ids: list[StreamIdText] = Field(default_factory=list, max_length=1000)


class GrantRuleCreate(RequestBody):
    effect: Literal["allow", "deny"]
    subjects: RuleSubjects
    streams: RuleStreams
    query_sets: list[QuerySetName] = Field(default_factory=list, max_length=32)
    ops: list[Op] = Field(default_factory=list, max_length=3)
    max_ttl_seconds: StrictInt | None = Field(default=None, ge=60, le=900)  # JSON numbers only
    description: Description | None = None


class GrantRuleOut(BaseModel):
    id: str
    org_id: str
    effect: str
    subjects: RuleSubjects
    streams: RuleStreams
    query_sets: list[str]
    ops: list[str]
    max_ttl_seconds: int | None
    description: str | None
    created_at: datetime
    updated_at: datetime
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
