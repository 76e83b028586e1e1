"""Streams, query sets, grant rules and explain."""

from __future__ import annotations

from fastapi import Response

from control.api.auth import CallerDep, ViewDep
from control.api.deps import StateDep
from control.errors import NotFound
from control.grants import is_query_set_name
from control.kit.pagination import Page, PageDep
from control.policy import service
from control.policy.engine import current_policy_rev
from control.policy.explain import explain as explain_decisions
from control.policy.models import GrantRule, QuerySet, Stream
from control.policy.schemas import (
    ExplainRequest,
    ExplainResponse,
    GrantRuleCreate,
    GrantRuleOut,
    QuerySetCreate,
    QuerySetOut,
    QuerySetUpdate,
    StreamCreate,
    StreamOut,
)
from control.spacetime.catalog import catalog_for


def register_stream(body: StreamCreate, view: ViewDep, caller: CallerDep) -> StreamOut:
    """Register a stream in the caller's org, so grant rules can give it out. Its id is
    `<kind>:<key>`; ids are one namespace across orgs, so an id in use, or once used by another
    org, is 409 `conflict`. `owner_id` defaults to the caller: a service registering a user's
    stream must name the user as `owner_id`, or `owner` rules will not give the user that stream.
    Audited. Needs the `service` or `admin` role.
    """
    return StreamOut.model_validate(service.register_stream(view, caller, body))


def list_streams(view: ViewDep, page: PageDep) -> Page[StreamOut]:
    """The org's registered streams, a page at a time, in id order. Needs the `admin` role."""
    rows, cursor = view.page(Stream, page, Stream.id)
    return Page(items=[StreamOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_stream(stream_id: str, view: ViewDep) -> StreamOut:
    """One stream of the caller's org, by id (`run:01J9ZK`). Another org's stream is 404, like a
    missing one. Needs the `admin` role.
    """
    return StreamOut.model_validate(view.get(Stream, stream_id, "stream"))


def delete_stream(stream_id: str, view: ViewDep, caller: CallerDep) -> Response:
    """Delete a stream and end every grant on it: the tokens of every principal the org's
    rules could have given it to are revoked. The id stays retired, so no other org can ever
    register it. Audited; moves the org's `policy_rev`. Needs the `admin` role.
    """
    service.delete_stream(view, caller, view.get(Stream, stream_id, "stream"))
    return Response(status_code=204)


def query_set_out(row: QuerySet) -> QuerySetOut:
    return QuerySetOut(
        name=row.name,
        version=row.version,
        ref=f"{row.name}@{row.version}",
        stream_kinds=list(row.stream_kinds),
        queries=list(row.queries),
        description=row.description,
        org_id=row.org_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _query_set(view: ViewDep, name: str) -> QuerySet:
    # A name outside the grammar names no query set (and may not be bindable, e.g. NUL).
    row = view.find_by(QuerySet, QuerySet.name == name) if is_query_set_name(name) else None
    if row is None:
        raise NotFound("query set")
    return row


def create_query_set(
    body: QuerySetCreate, view: ViewDep, caller: CallerDep, state: StateDep
) -> QuerySetOut:
    """Define a query set: a named list of subscription queries for the stream kinds it applies to.
    It starts at version 1, and grants name it `name@version`. A name in use is 409 `conflict`; a
    query outside the grammar is 422, naming the query. Audited; moves the org's `policy_rev`.
    Needs the `admin` role.
    """
    return query_set_out(service.create_query_set(view, caller, body, catalog_for(state.settings)))


def list_query_sets(view: ViewDep, page: PageDep) -> Page[QuerySetOut]:
    """The org's query sets at their current versions, a page at a time, in name order. Needs the
    `admin` role.
    """
    rows, cursor = view.page(QuerySet, page, QuerySet.name)
    return Page(items=[query_set_out(row) for row in rows], next_cursor=cursor)


def get_query_set(name: str, view: ViewDep) -> QuerySetOut:
    """One query set of the caller's org, by name, at its current version. Needs the `admin`
    role.
    """
    return query_set_out(_query_set(view, name))


def update_query_set(
    name: str, body: QuerySetUpdate, view: ViewDep, caller: CallerDep, state: StateDep
) -> QuerySetOut:
    """Replace a query set's stream kinds, queries and description. Its version goes up by one; when
    the queries or kinds changed, the tokens of everyone a rule granted it to are revoked, and
    their next tokens name the new version. Dropping a stream kind a grant rule uses this query
    set for is 409 `conflict`: change the rule first. Audited; moves the org's `policy_rev`. Needs
    the `admin` role.
    """
    row = _query_set(view, name)
    return query_set_out(
        service.update_query_set(view, caller, row, body, catalog_for(state.settings))
    )


def delete_query_set(name: str, view: ViewDep, caller: CallerDep) -> Response:
    """Delete a query set. 409 `conflict` while a grant rule names it: change or delete the rule
    first. Audited; moves the org's `policy_rev`. Needs the `admin` role.
    """
    service.delete_query_set(view, caller, _query_set(view, name))
    return Response(status_code=204)


def rule_out(row: GrantRule, policy_rev: int) -> GrantRuleOut:
    return GrantRuleOut(
        id=row.id,
        org_id=row.org_id,
        effect=row.effect,
        subjects=service.rule_subjects(row),
        streams=service.rule_streams(row),
        query_sets=list(row.query_sets),
        ops=list(row.ops),
        max_ttl_seconds=row.max_ttl_seconds,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        policy_rev=policy_rev,
    )


def create_rule(body: GrantRuleCreate, view: ViewDep, caller: CallerDep) -> GrantRuleOut:
    """Add a grant rule: who it applies to (`subjects`), which streams (`streams`), and what it
    grants or, for a deny rule, takes away (`query_sets`, `ops`). Per stream, allow rules add up
    and deny wins. Principals and query sets it names must exist, the query sets must apply to its
    stream kind, and an allow rule needs an op; otherwise 422, naming each problem. A deny rule
    revokes the tokens of the principals it applies to at once. Audited; the answer carries the
    org's new `policy_rev`. Needs the `admin` role.
    """
    rule, rev = service.create_rule(view, caller, body)
    return rule_out(rule, rev)


def list_rules(view: ViewDep, page: PageDep) -> Page[GrantRuleOut]:
    """The org's grant rules, a page at a time, each with the org's current `policy_rev`. Needs the
    `admin` role.
    """
    rows, cursor = view.page(GrantRule, page, GrantRule.id)
    rev = current_policy_rev(view)
    return Page(items=[rule_out(row, rev) for row in rows], next_cursor=cursor)


def get_rule(rule_id: str, view: ViewDep) -> GrantRuleOut:
    """One grant rule of the caller's org, by id, with the org's current `policy_rev`. Needs the
    `admin` role.
    """
    return rule_out(view.get(GrantRule, rule_id, "grant rule"), current_policy_rev(view))


def update_rule(
    rule_id: str, body: GrantRuleCreate, view: ViewDep, caller: CallerDep
) -> GrantRuleOut:
    """Replace a grant rule's whole content, checked as on create. An edit that may give anyone less
    than before (a list shrank, another kind or relation, a lower TTL cap, any change to a deny
    rule) revokes the tokens of everyone the rule applied to before or applies to now. Audited;
    the answer carries the org's new `policy_rev`. Needs the `admin` role.
    """
    rule, rev = service.update_rule(view, caller, view.get(GrantRule, rule_id, "grant rule"), body)
    return rule_out(rule, rev)


def delete_rule(rule_id: str, view: ViewDep, caller: CallerDep) -> Response:
    """Delete a grant rule. Deleting an allow rule revokes the tokens of the principals it applied
    to. Audited; moves the org's `policy_rev`. Needs the `admin` role.
    """
    service.delete_rule(view, caller, view.get(GrantRule, rule_id, "grant rule"))
    return Response(status_code=204)


def explain(body: ExplainRequest, view: ViewDep, state: StateDep) -> ExplainResponse:
    """Dry-run the policy engine: what a token request by `principal_id` for these streams (and
    `query_sets`, `ops`) would be granted now, without minting. For each stream: allowed or not,
    the query sets and ops it would get or the reason it would not, and the ids of the rules behind
    the decision. It runs the same engine under the same `policy_rev` as minting. A principal not
    in the org is 404. Needs the `admin` role.
    """
    return explain_decisions(view, state.policies, body, state.settings.max_streams_per_token)
