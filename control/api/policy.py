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


def register_stream(body: StreamCreate, view: ViewDep, caller: CallerDep) -> StreamOut:
    return StreamOut.model_validate(service.register_stream(view, caller, body))


def list_streams(view: ViewDep, page: PageDep) -> Page[StreamOut]:
    rows, cursor = view.page(Stream, page, Stream.id)
    return Page(items=[StreamOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_stream(stream_id: str, view: ViewDep) -> StreamOut:
    return StreamOut.model_validate(view.get(Stream, stream_id, "stream"))


def delete_stream(stream_id: str, view: ViewDep, caller: CallerDep) -> Response:
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


def create_query_set(body: QuerySetCreate, view: ViewDep, caller: CallerDep) -> QuerySetOut:
    return query_set_out(service.create_query_set(view, caller, body))


def list_query_sets(view: ViewDep, page: PageDep) -> Page[QuerySetOut]:
    rows, cursor = view.page(QuerySet, page, QuerySet.name)
    return Page(items=[query_set_out(row) for row in rows], next_cursor=cursor)


def get_query_set(name: str, view: ViewDep) -> QuerySetOut:
    return query_set_out(_query_set(view, name))


def update_query_set(
    name: str, body: QuerySetUpdate, view: ViewDep, caller: CallerDep
) -> QuerySetOut:
    return query_set_out(service.update_query_set(view, caller, _query_set(view, name), body))


def delete_query_set(name: str, view: ViewDep, caller: CallerDep) -> Response:
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
    rule, rev = service.create_rule(view, caller, body)
    return rule_out(rule, rev)


def list_rules(view: ViewDep, page: PageDep) -> Page[GrantRuleOut]:
    rows, cursor = view.page(GrantRule, page, GrantRule.id)
    rev = current_policy_rev(view)
    return Page(items=[rule_out(row, rev) for row in rows], next_cursor=cursor)


def get_rule(rule_id: str, view: ViewDep) -> GrantRuleOut:
    return rule_out(view.get(GrantRule, rule_id, "grant rule"), current_policy_rev(view))


def update_rule(
    rule_id: str, body: GrantRuleCreate, view: ViewDep, caller: CallerDep
) -> GrantRuleOut:
    rule, rev = service.update_rule(view, caller, view.get(GrantRule, rule_id, "grant rule"), body)
    return rule_out(rule, rev)


def delete_rule(rule_id: str, view: ViewDep, caller: CallerDep) -> Response:
    service.delete_rule(view, caller, view.get(GrantRule, rule_id, "grant rule"))
    return Response(status_code=204)


def explain(body: ExplainRequest, view: ViewDep, state: StateDep) -> ExplainResponse:
    return explain_decisions(view, state.policies, body, state.settings.max_streams_per_token)
