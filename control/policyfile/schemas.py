from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control.federation.schemas import ISSUER_EXAMPLE, TrustedIssuerBody
from control.kit.schemas import RequestBody
from control.policy.schemas import ADA_ID, GrantRuleCreate, QuerySetCreate, StreamCreate

_DOCUMENT: dict[str, Any] = {
    "version": 1,
    "query_sets": [
        {
            "name": "run_events",
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
            "description": "A run's events and checkpoints",
        }
    ],
    "streams": [{"id": "run:01J9ZK", "owner_id": ADA_ID, "labels": {"project": "atlas"}}],
    "grant_rules": [
        {
            "effect": "allow",
            "subjects": {"principal_ids": [], "roles": ["member"], "kinds": []},
            "streams": {"kind": "run", "relation": "owner", "ids": []},
            "query_sets": ["run_events"],
            "ops": ["subscribe"],
            "max_ttl_seconds": 600,
            "description": "Members read their own runs",
        }
    ],
    "trusted_issuers": [ISSUER_EXAMPLE],
}


class PolicyDocument(RequestBody):
    """An org's grant policy as one document. Query sets are matched by `name`, streams by
    `id`, trusted issuers by `issuer`, and grant rules by their whole content (a rule has no
    name: a changed rule is one rule deleted and another created)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DOCUMENT]})

    version: Literal[1] = Field(1, description="The document format's version.")
    query_sets: list[QuerySetCreate] = Field(
        default_factory=list,
        max_length=1000,
        description="The org's query sets. Applying bumps the version of each whose content "
        "differs, and deletes those not listed.",
    )
    streams: list[StreamCreate] = Field(
        default_factory=list,
        max_length=10_000,
        description="Registered streams. A stream without `owner_id` has no owner. Applying "
        "deletes the org's streams not listed, ending every grant on them.",
    )
    grant_rules: list[GrantRuleCreate] = Field(
        default_factory=list,
        max_length=1000,
        description="The org's grant rules. Applying deletes those not listed and creates "
        "those the org lacks.",
    )
    trusted_issuers: list[TrustedIssuerBody] = Field(
        default_factory=list,
        max_length=100,
        description="The org's trusted identity providers. Applying stops trusting those not "
        "listed.",
    )


class PolicyApply(RequestBody):
    """A policy document to apply to the caller's org."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"document": _DOCUMENT, "dry_run": True}]}
    )

    document: PolicyDocument = Field(
        description="The whole policy the org should have: what it leaves out is deleted"
    )
    dry_run: bool = Field(
        False, description="Report what would change and what it would revoke; change nothing."
    )


class PolicyChange(BaseModel):
    """One change applying made (or would make)."""

    op: Literal["create", "update", "delete"] = Field(description="What happened to it")
    kind: Literal["query_set", "stream", "grant_rule", "trusted_issuer"] = Field(
        description="What it is"
    )
    key: str = Field(description="The query set's name, stream's id, rule's id or issuer.")
    detail: str | None = Field(
        default=None,
        description="More about the change, for people: a rule's summary, or a query set's "
        "version before the update",
    )


class PolicyApplied(BaseModel):
    """What applying a policy document changed, or with `dry_run` would change."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dry_run": True,
                    "changes": [
                        {
                            "op": "create",
                            "kind": "grant_rule",
                            "key": "rule_01JV6M5E1F4H7K0M3P6R9T2W5X",
                            "detail": "deny run (org) append",
                        },
                        {
                            "op": "update",
                            "kind": "query_set",
                            "key": "run_events",
                            "detail": "version 1",
                        },
                        {"op": "delete", "kind": "stream", "key": "run:01J9ZJ", "detail": None},
                    ],
                    "revoked_subjects": [ADA_ID],
                    "policy_rev": 10,
                }
            ]
        }
    )

    dry_run: bool = Field(description="Whether this was a dry run, which changed nothing")
    changes: list[PolicyChange] = Field(
        description="Every change, in the order made; empty when the org already matched"
    )
    revoked_subjects: list[str] = Field(
        description="Principals whose tokens the change revokes (or would revoke)."
    )
    policy_rev: int = Field(
        description="The org's policy revision after applying (for a dry run, what it would be)"
    )
