"""Streams, query sets and grant rules: validated, audited, and bumping `policy_rev`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from control.audit.service import Auditor
from control.errors import Conflict, InvalidRequest
from control.grants import GrammarError, parse_stream_id
from control.identity.caller import Caller
from control.identity.models import Principal
from control.identity.orgs import bump_policy_rev
from control.kit.db import utcnow
from control.kit.ids import new_id
from control.observability.hooks import auto_revoked
from control.policy.models import GrantRule, QuerySet, RetiredStreamId, Stream
from control.policy.queries import queried_table, query_problem
from control.policy.schemas import (
    GrantRuleCreate,
    QuerySetCreate,
    QuerySetUpdate,
    RuleStreams,
    RuleSubjects,
    StreamCreate,
)
from control.revocations.service import revoke
from control.spacetime.catalog import Catalog
from control.views import OrgView


def _audit(view: OrgView, caller: Caller, action: str, target: str, **detail: Any) -> None:
    Auditor(view.session, caller.principal_id, view.org_id).record(action, target, detail)


# --- streams ------------------------------------------------------------------------------


def register_stream(view: OrgView, caller: Caller, body: StreamCreate) -> Stream:
    try:
        stream_id = parse_stream_id(body.id)
    except GrammarError as exc:
        raise InvalidRequest(str(exc), errors=[{"loc": ["body", "id"], "type": exc.code}]) from None
    # The owner defaults to the caller, when the caller is a principal of the org (the command
    # line, applying a policy file, is not: its streams without an owner have none).
    owner_id = body.owner_id
    if owner_id is None and view.find(Principal, caller.principal_id) is not None:
        owner_id = caller.principal_id
    if owner_id is not None and view.find(Principal, owner_id) is None:
        raise InvalidRequest(f"owner {owner_id} is not a principal of this org")
    retired = view.session.get(RetiredStreamId, str(stream_id))
    if view.session.get(Stream, str(stream_id)) is not None or (
        retired is not None and retired.org_id != view.org_id
    ):
        # Stream ids are global, so this may be another org's stream, live or deleted; say
        # only that the id is taken, never whose it is.
        raise Conflict(f"stream {stream_id} is already registered")
    stream = Stream(
        id=str(stream_id),
        kind=stream_id.kind,
        org_id=view.org_id,
        owner_id=owner_id,
        labels=dict(body.labels),
    )
    view.session.add(stream)
    try:
        with view.session.begin_nested():
            view.session.flush()
    except IntegrityError:
        raise Conflict(f"stream {stream_id} is already registered") from None
    _audit(
        view, caller, "stream.register", stream.id, owner_id=owner_id, after=_stream_summary(stream)
    )
    return stream


def _stream_summary(stream: Stream) -> dict[str, Any]:
    return {"kind": stream.kind, "owner_id": stream.owner_id, "labels": dict(stream.labels or {})}


def delete_stream(view: OrgView, caller: Caller, stream: Stream) -> None:
    """Delete a stream and end every grant on it, as a narrowing of policy does: whoever the
    org's rules could have granted it to has its tokens revoked (the feed carries each), and
    the id stays retired so no other org can ever be granted it."""
    before = _stream_summary(stream)
    holders = _possible_holders(view, stream)
    view.session.delete(stream)
    retired = view.session.get(RetiredStreamId, stream.id)
    if retired is None:
        view.session.add(RetiredStreamId(id=stream.id, org_id=view.org_id, deleted_at=utcnow()))
    else:
        retired.deleted_at = utcnow()
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    _revoke_principals(view, holders, f"stream {stream.id} deleted")
    _audit(
        view,
        caller,
        "stream.delete",
        stream.id,
        owner_id=stream.owner_id,
        before=before,
        policy_rev=rev,
        revoked_subjects=len(holders),
    )


def update_stream(
    view: OrgView, caller: Caller, stream: Stream, owner_id: str | None, labels: dict[str, str]
) -> None:
    """Change a stream's owner or labels. A new owner is a narrowing for the old one under
    owner rules: whoever could hold the stream before and cannot now has its tokens revoked."""
    if owner_id is not None and view.find(Principal, owner_id) is None:
        raise InvalidRequest(f"owner {owner_id} is not a principal of this org")
    before = _stream_summary(stream)
    holders_before = _possible_holders(view, stream)
    stream.owner_id = owner_id
    stream.labels = dict(labels)
    view.session.flush()
    lost = holders_before - _possible_holders(view, stream)
    rev = bump_policy_rev(view.session, view.org_id) if lost else None
    _revoke_principals(view, lost, f"stream {stream.id} changed owner")
    _audit(
        view,
        caller,
        "stream.update",
        stream.id,
        before=before,
        after=_stream_summary(stream),
        policy_rev=rev,
        revoked_subjects=len(lost),
    )


def _possible_holders(view: OrgView, stream: Stream) -> set[str]:
    """Every principal an allow rule of the org could have granted `stream` to."""
    holders: set[str] = set()
    for rule in view.all(GrantRule, GrantRule.stream_kind == stream.kind):
        if rule.effect != "allow":
            continue
        if rule.stream_relation == "ids" and stream.id not in rule.stream_ids:
            continue
        subjects = _subject_principals(view, rule)
        if rule.stream_relation == "owner":
            subjects &= {stream.owner_id} if stream.owner_id else set()
        holders |= subjects
    return holders


# --- query sets ---------------------------------------------------------------------------


def _validate_queries(queries: list[str]) -> None:
    errors: list[dict[str, Any]] = []
    for index, query in enumerate(queries):
        problem = query_problem(query)
        if problem is not None:
            errors.append(
                {"loc": ["body", "queries", str(index)], "message": f"query {index} {problem}"}
            )
    if errors:
        raise InvalidRequest("; ".join(e["message"] for e in errors), errors=errors)


def _require_served(
    catalog: Catalog, name: str, version: int, kinds: list[str], queries: list[str]
) -> None:
    """422 unless the module's query-set catalog serves this definition at this version: a
    query set the module does not serve would be granted and mean nothing."""
    selected = {queried_table(query) for query in queries}
    problem = catalog.definition_problem(name, version, kinds, selected)
    if problem is not None:
        raise InvalidRequest(
            problem, errors=[{"loc": ["body"], "type": "query_set_not_served", "message": problem}]
        )


def _query_set_summary(row: QuerySet) -> dict[str, Any]:
    return {"version": row.version, "stream_kinds": row.stream_kinds, "queries": row.queries}


def create_query_set(
    view: OrgView, caller: Caller, body: QuerySetCreate, catalog: Catalog
) -> QuerySet:
    _validate_queries(body.queries)
    if view.find_by(QuerySet, QuerySet.name == body.name) is not None:
        raise Conflict(f"query set {body.name} already exists")
    _require_served(catalog, body.name, 1, body.stream_kinds, body.queries)
    now = utcnow()
    row = QuerySet(
        id=new_id("qs"),
        org_id=view.org_id,
        name=body.name,
        version=1,
        stream_kinds=sorted(set(body.stream_kinds)),
        queries=list(body.queries),
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    view.session.add(row)
    try:
        with view.session.begin_nested():
            view.session.flush()
    except IntegrityError:
        raise Conflict(f"query set {body.name} already exists") from None
    rev = bump_policy_rev(view.session, view.org_id)
    _audit(
        view, caller, "query_set.create", row.name, after=_query_set_summary(row), policy_rev=rev
    )
    return row


def update_query_set(
    view: OrgView, caller: Caller, row: QuerySet, body: QuerySetUpdate, catalog: Catalog
) -> QuerySet:
    _validate_queries(body.queries)
    # Every replacement is a new version, and the catalog must serve that version.
    _require_served(catalog, row.name, row.version + 1, body.stream_kinds, body.queries)
    before = _query_set_summary(row)
    kinds = sorted(set(body.stream_kinds))
    dropped_kinds = set(row.stream_kinds) - set(kinds)
    for rule in view.all(GrantRule, GrantRule.stream_kind.in_(dropped_kinds)):
        if row.name in rule.query_sets:
            raise Conflict(
                f"grant rule {rule.id} uses {row.name} for {rule.stream_kind} streams; "
                "change the rule first"
            )
    changed = kinds != row.stream_kinds or list(body.queries) != row.queries
    row.stream_kinds = kinds
    row.queries = list(body.queries)
    row.description = body.description
    row.version += 1
    row.updated_at = utcnow()
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    if changed:
        # Tokens name `name@version`; what the old version opened is no longer what the policy
        # grants, so the tokens of everyone a rule granted it to end now, as on a narrowing.
        holders: set[str] = set()
        for rule in view.all(GrantRule):
            if rule.effect == "allow" and row.name in rule.query_sets:
                holders |= _subject_principals(view, rule)
        _revoke_principals(view, holders, f"query set {row.name} changed")
    _audit(
        view,
        caller,
        "query_set.update",
        row.name,
        before=before,
        after=_query_set_summary(row),
        policy_rev=rev,
    )
    return row


def delete_query_set(view: OrgView, caller: Caller, row: QuerySet) -> None:
    for rule in view.all(GrantRule):
        if row.name in rule.query_sets:
            raise Conflict(f"grant rule {rule.id} uses query set {row.name}; delete it first")
    view.session.delete(row)
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    _audit(
        view, caller, "query_set.delete", row.name, before=_query_set_summary(row), policy_rev=rev
    )


# --- grant rules --------------------------------------------------------------------------


def _validate_rule(view: OrgView, body: GrantRuleCreate) -> None:
    problems: list[dict[str, Any]] = []

    def problem(loc: list[str], message: str) -> None:
        problems.append({"loc": ["body", *loc], "message": message})

    subjects = body.subjects
    if not (subjects.principal_ids or subjects.roles or subjects.kinds):
        problem(["subjects"], "name at least one principal id, role or kind")
    for principal_id in subjects.principal_ids:
        if view.find(Principal, principal_id) is None:
            problem(["subjects", "principal_ids"], f"unknown principal {principal_id}")
    streams = body.streams
    if streams.relation == "ids":
        if not streams.ids:
            problem(["streams", "ids"], "relation `ids` needs at least one stream id")
        for stream_id in streams.ids:
            try:
                parsed = parse_stream_id(stream_id)
            except GrammarError as exc:
                problem(["streams", "ids"], str(exc))
                continue
            if parsed.kind != streams.kind:
                problem(["streams", "ids"], f"{stream_id} is not a {streams.kind} stream")
    elif streams.ids:
        problem(["streams", "ids"], f"relation `{streams.relation}` takes no ids")
    for name in body.query_sets:
        query_set = view.find_by(QuerySet, QuerySet.name == name)
        if query_set is None:
            problem(["query_sets"], f"unknown query set {name}")
        elif streams.kind not in query_set.stream_kinds:
            problem(["query_sets"], f"query set {name} does not apply to {streams.kind} streams")
    if body.effect == "allow" and not body.ops:
        problem(["ops"], "an allow rule grants at least one op")
    if body.effect == "deny" and body.max_ttl_seconds is not None:
        problem(["max_ttl_seconds"], "a deny rule has no TTL")
    if problems:
        raise InvalidRequest("; ".join(p["message"] for p in problems), errors=problems)


def rule_summary(rule: GrantRule) -> dict[str, Any]:
    return {
        "effect": rule.effect,
        "subjects": {
            "principal_ids": rule.subject_principal_ids,
            "roles": rule.subject_roles,
            "kinds": rule.subject_kinds,
        },
        "streams": {
            "kind": rule.stream_kind,
            "relation": rule.stream_relation,
            "ids": rule.stream_ids,
        },
        "query_sets": rule.query_sets,
        "ops": rule.ops,
        "max_ttl_seconds": rule.max_ttl_seconds,
    }


def rule_subjects(rule: GrantRule) -> RuleSubjects:
    return RuleSubjects(
        principal_ids=rule.subject_principal_ids,
        roles=rule.subject_roles,
        kinds=rule.subject_kinds,
    )


def rule_streams(rule: GrantRule) -> RuleStreams:
    return RuleStreams.model_validate(
        {"kind": rule.stream_kind, "relation": rule.stream_relation, "ids": rule.stream_ids}
    )


def summary_of(body: GrantRuleCreate) -> dict[str, Any]:
    """What `rule_summary` would say of a rule made from `body`: its content, normalized."""
    rule = GrantRule()
    _apply(rule, body)
    return rule_summary(rule)


def _apply(rule: GrantRule, body: GrantRuleCreate) -> None:
    rule.effect = body.effect
    rule.subject_principal_ids = sorted(set(body.subjects.principal_ids))
    rule.subject_roles = sorted(set(body.subjects.roles))
    rule.subject_kinds = sorted(set(body.subjects.kinds))
    rule.stream_kind = body.streams.kind
    rule.stream_relation = body.streams.relation
    rule.stream_ids = sorted(set(body.streams.ids))
    rule.query_sets = sorted(set(body.query_sets))
    rule.ops = [str(op) for op in sorted(set(body.ops))]
    rule.max_ttl_seconds = body.max_ttl_seconds
    rule.description = body.description


def create_rule(view: OrgView, caller: Caller, body: GrantRuleCreate) -> tuple[GrantRule, int]:
    _validate_rule(view, body)
    now = utcnow()
    rule = GrantRule(id=new_id("rule"), org_id=view.org_id, created_at=now, updated_at=now)
    _apply(rule, body)
    view.session.add(rule)
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    if rule.effect == "deny":
        _revoke_subjects(view, rule, "deny rule added")
    _audit(view, caller, "grant_rule.create", rule.id, after=rule_summary(rule), policy_rev=rev)
    return rule, rev


def update_rule(
    view: OrgView, caller: Caller, rule: GrantRule, body: GrantRuleCreate
) -> tuple[GrantRule, int]:
    _validate_rule(view, body)
    before = rule_summary(rule)
    old_subjects = _subject_principals(view, rule)
    _apply(rule, body)
    rule.updated_at = utcnow()
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    if _narrows(before, rule_summary(rule)):
        # Whoever the old rule covered may now hold more than policy allows: their tokens die.
        _revoke_subjects(view, rule, "grant rule narrowed", also=old_subjects)
    _audit(
        view,
        caller,
        "grant_rule.update",
        rule.id,
        before=before,
        after=rule_summary(rule),
        policy_rev=rev,
    )
    return rule, rev


def delete_rule(view: OrgView, caller: Caller, rule: GrantRule) -> int:
    before = rule_summary(rule)
    subjects = _subject_principals(view, rule)
    view.session.delete(rule)
    view.session.flush()
    rev = bump_policy_rev(view.session, view.org_id)
    if rule.effect == "allow":
        _revoke_principals(view, subjects, "grant rule deleted")
    _audit(view, caller, "grant_rule.delete", rule.id, before=before, policy_rev=rev)
    return rev


def _narrows(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a rule edit may take away something a token already holds. Deny rules and
    effect flips always count; an allow rule narrows unless every set only grew."""
    if before["effect"] != "allow" or after["effect"] != "allow":
        return before != after

    def grew(old: list[str], new: list[str]) -> bool:
        return set(old) <= set(new)

    old_streams, new_streams = before["streams"], after["streams"]
    if (old_streams["kind"], old_streams["relation"]) != (
        new_streams["kind"],
        new_streams["relation"],
    ):
        return True
    old_ttl, new_ttl = before["max_ttl_seconds"], after["max_ttl_seconds"]
    return not (
        all(grew(before["subjects"][k], after["subjects"][k]) for k in before["subjects"])
        and grew(old_streams["ids"], new_streams["ids"])
        and grew(before["query_sets"], after["query_sets"])
        and grew(before["ops"], after["ops"])
        and (new_ttl is None or (old_ttl is not None and new_ttl >= old_ttl))
    )


def _subject_principals(view: OrgView, rule: GrantRule) -> set[str]:
    """The principals of the org a rule's subjects name, by id, role or kind."""
    matched = set(rule.subject_principal_ids)
    if rule.subject_roles or rule.subject_kinds:
        roles, kinds = set(rule.subject_roles), set(rule.subject_kinds)
        for principal in view.all(Principal):
            if principal.kind in kinds or roles & set(principal.roles):
                matched.add(principal.id)
    return matched


def _revoke_subjects(
    view: OrgView, rule: GrantRule, reason: str, also: set[str] | None = None
) -> None:
    _revoke_principals(view, _subject_principals(view, rule) | (also or set()), reason)


def _revoke_principals(view: OrgView, principal_ids: set[str], reason: str) -> None:
    auto_revoked(view.session, "policy", len(principal_ids))
    for principal_id in sorted(principal_ids):
        revoke(view.session, org_id=view.org_id, kind="subject", value=principal_id, reason=reason)
