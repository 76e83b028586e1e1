from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from control.grants import (
    QUERY_SET_NAME_PATTERN,
    QUERY_SET_REF_PATTERN,
    STREAM_ID_PATTERN,
    STREAM_KIND_PATTERN,
    STREAM_SELECTOR_PATTERN,
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
from control.policy.engine import DENIAL_REASONS

# The grammar in the schema, so the spec tells clients exactly what is accepted. A stream that
# exists (registered, or named by an `ids` rule) is a stream id; what a token may be granted is a
# stream id or a kind-wide selector `<kind>:*`.
StreamIdText = Annotated[str, StringConstraints(pattern=rf"^{STREAM_ID_PATTERN}$")]
StreamText = Annotated[str, StringConstraints(pattern=rf"^{STREAM_SELECTOR_PATTERN}$")]
STREAMS_DESCRIPTION = (
    "Stream ids, or `<kind>:*` for every stream of that kind in the org, present and future "
    "(a kind-wide grant; it counts as one stream against the per-token cap). More streams "
    "than the service's per-token cap (64 unless configured) is 422 `too_many_streams`"
)
QUERY_SETS_DESCRIPTION = (
    "Query sets to ask for, each `name` (at its current version) or `name@version` (only that "
    "version, granted while it is current). Omitted: every query set the rules allow for each "
    "stream. On a stream, each named query set that applies to its kind must be allowed, and "
    "those of other kinds are left out; a stream none of them applies to is denied "
    "`query_set_not_allowed`, and a name the org does not define `query_set_not_found`"
)
OPS_DESCRIPTION = (
    "Ops to ask for on every stream: `subscribe` (scope `sync.subscribe`), `append` "
    "(`sync.append`), `checkpoint` (`sync.checkpoint.write`). Omitted: `subscribe` only. A "
    "stream on which one of them is not allowed is denied `op_not_allowed`"
)
DENIAL_REASON_DESCRIPTION = "Why not granted: " + ", ".join(f"`{r}`" for r in DENIAL_REASONS)
# A query set named in a request: `name` or `name@version`.
QuerySetText = Annotated[str, StringConstraints(pattern=rf"^{QUERY_SET_REF_PATTERN}$")]
StreamKind = Annotated[str, StringConstraints(pattern=rf"^{STREAM_KIND_PATTERN}$")]
QuerySetName = Annotated[str, StringConstraints(pattern=rf"^{QUERY_SET_NAME_PATTERN}$")]
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,64}$")]
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]

# The examples tell one story: the org below, its user `ada`, the service `runtime` that
# registers her runs, the query set `run_events` and a rule giving members their own runs.
ORG_ID = "org_01JV6M2Q8X4T0R7C5N3B9D1F6H"
ADA_ID = "prn_01JV6M3A7R2K9W4P1X8Z5C3D0E"
RULE_ID = "rule_01JV6M5D8E3G6J9K2M5N8P1Q4S"
DENY_RULE_ID = "rule_01JV6M5E1F4H7K0M3P6R9T2W5X"
STREAM_ID = "run:01J9ZK"
AT = "2026-05-04T09:12:41.538204Z"

STREAM_ID_DESCRIPTION = (
    "`<kind>:<key>`: the kind `^[a-z][a-z0-9_]{0,31}$`, the key `^[A-Za-z0-9._~-]{1,128}$`. "
    "Stream ids are one namespace across all orgs"
)
OWNER_DESCRIPTION = (
    "The principal of the org that owns the stream: `owner` grant rules give a stream to its "
    "owner. Omitted at `POST /api/streams`: the caller that registers it, so a service "
    "registering a user's stream must name the user here for an `owner` rule to give the user "
    "that stream. Omitted in a policy document: no owner"
)
LABELS_DESCRIPTION = "Free-form labels for your own bookkeeping (up to 32); no rule reads them"
QUERY_SET_NAME_DESCRIPTION = "The query set's name, unique in the org: `^[a-z][a-z0-9_]{0,63}$`"
STREAM_KINDS_DESCRIPTION = (
    "The stream kinds this query set applies to: a grant rule may give it only for streams "
    "of these kinds"
)
QUERIES_DESCRIPTION = (
    "The subscription queries a client with this query set subscribes to, each "
    "`SELECT * FROM <table or view>`, optionally with a `WHERE` of `column <op> literal` terms "
    "joined by `AND` (SpacetimeDB's subscription SQL); no `;`, no comments"
)
QUERY_SET_DESCRIPTION = "What the query set is for, for people reading the policy"
RULE_DESCRIPTION = "What the rule is for, for people reading the policy"
CREATED = "When it was created (RFC 3339, UTC)"
UPDATED = "When it last changed (RFC 3339, UTC)"
ORG = "The org it belongs to"


class StreamCreate(RequestBody):
    """A stream to register: a named sequence of events that grant rules can give out."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": STREAM_ID, "owner_id": ADA_ID, "labels": {"project": "atlas"}},
                {"id": "worker:w-7"},
            ]
        }
    )

    id: StreamIdText = Field(description=STREAM_ID_DESCRIPTION)
    owner_id: EntityId | None = Field(default=None, description=OWNER_DESCRIPTION)
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=32, description=LABELS_DESCRIPTION
    )


class StreamOut(ResponseBody):
    """A registered stream."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": STREAM_ID,
                    "kind": "run",
                    "org_id": ORG_ID,
                    "owner_id": ADA_ID,
                    "labels": {"project": "atlas"},
                    "created_at": AT,
                }
            ]
        }
    )

    id: str = Field(description="The stream id, `<kind>:<key>`")
    kind: str = Field(description="The stream's kind: its id before the `:`")
    org_id: str = Field(description=ORG)
    owner_id: str | None = Field(
        description="The principal that owns it (what `owner` rules match), or null for none"
    )
    labels: dict[str, str] = Field(description=LABELS_DESCRIPTION)
    created_at: datetime = Field(description="When it was registered (RFC 3339, UTC)")


_QUERY_SET: dict[str, Any] = {
    "name": "run_events",
    "stream_kinds": ["run"],
    "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
    "description": "A run's events and checkpoints",
}


class QuerySetCreate(RequestBody):
    """A query set to define: a named list of subscription queries for some stream kinds."""

    model_config = ConfigDict(json_schema_extra={"examples": [_QUERY_SET]})

    name: QuerySetName = Field(description=QUERY_SET_NAME_DESCRIPTION)
    stream_kinds: list[StreamKind] = Field(
        min_length=1, max_length=32, description=STREAM_KINDS_DESCRIPTION
    )
    queries: list[QueryText] = Field(min_length=1, max_length=32, description=QUERIES_DESCRIPTION)
    description: Description | None = Field(default=None, description=QUERY_SET_DESCRIPTION)


class QuerySetUpdate(RequestBody):
    """A query set's new content. Every replacement bumps its version; changing the queries or
    kinds also revokes the tokens granted the old version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "stream_kinds": ["run"],
                    "queries": ["SELECT * FROM run_event_view WHERE level >= 2"],
                    "description": "A run's events from level 2 up",
                }
            ]
        }
    )

    stream_kinds: list[StreamKind] = Field(
        min_length=1, max_length=32, description=STREAM_KINDS_DESCRIPTION
    )
    queries: list[QueryText] = Field(min_length=1, max_length=32, description=QUERIES_DESCRIPTION)
    description: Description | None = Field(default=None, description=QUERY_SET_DESCRIPTION)


class QuerySetOut(BaseModel):
    """A query set at its current version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_QUERY_SET,
                    "version": 1,
                    "ref": "run_events@1",
                    "org_id": ORG_ID,
                    "created_at": AT,
                    "updated_at": AT,
                }
            ]
        }
    )

    name: str = Field(description=QUERY_SET_NAME_DESCRIPTION)
    version: int = Field(
        description="Starts at 1 and goes up by one with every `PUT`; grants name it"
    )
    ref: str = Field(description="`name@version`, as grants name it")
    stream_kinds: list[str] = Field(description=STREAM_KINDS_DESCRIPTION)
    queries: list[str] = Field(description=QUERIES_DESCRIPTION)
    description: str | None = Field(description=QUERY_SET_DESCRIPTION)
    org_id: str = Field(description=ORG)
    created_at: datetime = Field(description=CREATED)
    updated_at: datetime = Field(description=UPDATED)


class RuleSubjects(RequestBody):
    """Who a rule applies to: a principal matching any of the ids, roles or kinds. Name at
    least one."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"roles": ["member"]}, {"principal_ids": [ADA_ID]}]}
    )

    principal_ids: list[EntityId] = Field(
        default_factory=list,
        max_length=256,
        description="Principals of the org, by id (`prn_…`)",
    )
    roles: list[RoleName] = Field(
        default_factory=list,
        max_length=32,
        description="Principals holding any of these roles, built-in (`member`, `service`) or "
        "the org's own (`support`)",
    )
    kinds: list[PrincipalKind] = Field(
        default_factory=list,
        max_length=3,
        description="Principals of any of these kinds: `user`, `device`, `service`",
    )


class RuleStreams(RequestBody):
    """Which streams a rule applies to: streams of one kind, related to the principal by
    `relation`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "run", "relation": "owner"},
                {"kind": "run", "relation": "ids", "ids": [STREAM_ID]},
            ]
        }
    )

    kind: StreamKind = Field(description="The stream kind the rule applies to, e.g. `run`")
    relation: Literal["owner", "org", "ids"] = Field(
        description="Which streams of the kind: `owner`, the streams the principal owns "
        "(`owner_id`); `org`, every stream of the kind in the org (and with no deny rule in "
        "the way, a kind-wide `<kind>:*` grant); `ids`, the streams listed in `ids`"
    )
    ids: list[StreamIdText] = Field(
        default_factory=list,
        max_length=1000,
        description="With relation `ids`: the streams, all of the rule's `kind` (at least one; "
        "they need not be registered yet, but only registered streams are granted). Empty for "
        "the other relations",
    )


_RULE: dict[str, Any] = {
    "effect": "allow",
    "subjects": {"roles": ["member"]},
    "streams": {"kind": "run", "relation": "owner"},
    "query_sets": ["run_events"],
    "ops": ["subscribe"],
    "max_ttl_seconds": 600,
    "description": "Members read their own runs",
}


class GrantRuleCreate(RequestBody):
    """A grant rule: who gets what on which streams. Per requested stream, the allow rules
    that match give the union of their query sets and ops; deny wins: a matching deny rule
    removes its query sets and ops, and one naming neither denies the stream outright."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _RULE,
                {
                    "effect": "deny",
                    "subjects": {"kinds": ["device"]},
                    "streams": {"kind": "run", "relation": "org"},
                    "ops": ["append"],
                    "description": "Devices never append to runs",
                },
            ]
        }
    )

    effect: Literal["allow", "deny"] = Field(
        description="`allow` grants the rule's query sets and ops; `deny` takes them away "
        "whatever allow rules say, or, naming neither, denies the stream outright"
    )
    subjects: RuleSubjects = Field(description="Who the rule applies to")
    streams: RuleStreams = Field(description="Which streams the rule applies to")
    query_sets: list[QuerySetName] = Field(
        default_factory=list,
        max_length=32,
        description="Query sets by name, defined in the org for the rule's stream kind: an "
        "allow rule grants them (at their current version), a deny rule takes them away",
    )
    ops: list[Op] = Field(
        default_factory=list,
        max_length=3,
        description="`subscribe`, `append`, `checkpoint`: an allow rule grants them (at least "
        "one), a deny rule takes them away",
    )
    max_ttl_seconds: StrictInt | None = Field(  # JSON numbers only
        default=None,
        ge=60,
        le=900,
        description="Allow rules only: caps the lifetime of a token this rule contributes a "
        "grant to. Null: no cap beyond the service's",
    )
    description: Description | None = Field(default=None, description=RULE_DESCRIPTION)


class GrantRuleOut(BaseModel):
    """A grant rule, as stored (lists sorted and without duplicates)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_RULE,
                    "id": RULE_ID,
                    "org_id": ORG_ID,
                    "subjects": {"principal_ids": [], "roles": ["member"], "kinds": []},
                    "streams": {"kind": "run", "relation": "owner", "ids": []},
                    "created_at": AT,
                    "updated_at": AT,
                    "policy_rev": 7,
                }
            ]
        }
    )

    id: str = Field(description="The rule's id (`rule_…`)")
    org_id: str = Field(description=ORG)
    effect: str = Field(description="`allow` or `deny`")
    subjects: RuleSubjects = Field(description="Who the rule applies to")
    streams: RuleStreams = Field(description="Which streams the rule applies to")
    query_sets: list[str] = Field(description="Query sets the rule grants or takes away, by name")
    ops: list[str] = Field(description="Ops the rule grants or takes away")
    max_ttl_seconds: int | None = Field(
        description="The cap on the lifetime of tokens the rule contributes to, or null"
    )
    description: str | None = Field(description=RULE_DESCRIPTION)
    created_at: datetime = Field(description=CREATED)
    updated_at: datetime = Field(description=UPDATED)
    policy_rev: int = Field(
        description="The org's policy revision now (after this change, for a write)"
    )


class ExplainRequest(RequestBody):
    """A token request to decide for a principal, without minting."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"principal_id": ADA_ID, "streams": [STREAM_ID, "run:*"]},
                {
                    "principal_id": ADA_ID,
                    "streams": [STREAM_ID],
                    "query_sets": ["run_events@1"],
                    "ops": ["subscribe", "append"],
                },
            ]
        }
    )

    principal_id: EntityId = Field(
        description="The principal of the org to decide for, as if it asked for a token"
    )
    streams: list[StreamText] = Field(
        min_length=1, max_length=1024, description=STREAMS_DESCRIPTION
    )
    query_sets: list[QuerySetText] | None = Field(
        default=None, max_length=64, description=QUERY_SETS_DESCRIPTION
    )
    ops: list[Op] | None = Field(default=None, max_length=3, description=OPS_DESCRIPTION)


class ExplainDecision(BaseModel):
    """The decision on one requested stream."""

    stream: str = Field(description="The stream id or `<kind>:*` selector, as requested")
    allowed: bool = Field(description="Whether a token would carry a grant on it")
    query_sets: list[str] = Field(
        description="The query sets it would be granted, as `name@version`; empty when denied"
    )
    ops: list[str] = Field(description="The ops it would be granted; empty when denied")
    reason: str | None = Field(description=DENIAL_REASON_DESCRIPTION + "; null when allowed")
    rule_ids: list[str] = Field(
        description="The rules behind the decision: those that grant it, or those in its way"
    )


class ExplainResponse(BaseModel):
    """What a mint would decide, stream by stream."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "policy_rev": 7,
                    "decisions": [
                        {
                            "stream": STREAM_ID,
                            "allowed": True,
                            "query_sets": ["run_events@1"],
                            "ops": ["subscribe"],
                            "reason": None,
                            "rule_ids": [RULE_ID],
                        },
                        {
                            "stream": "run:*",
                            "allowed": False,
                            "query_sets": [],
                            "ops": [],
                            "reason": "kind_wide_not_permitted",
                            "rule_ids": [RULE_ID],
                        },
                    ],
                }
            ]
        }
    )

    policy_rev: int = Field(description="The org's policy revision the decisions used")
    decisions: list[ExplainDecision] = Field(
        description="One per requested stream, in request order (a repeated stream once)"
    )
