"""Export an org's policy as a document, and make the org match a document.

Applying goes through the same services as the admin API, so every change is validated,
audited, bumps `policy_rev` and revokes what a narrowing revokes, exactly as one API call
would. The whole apply is one transaction; a dry run is that transaction rolled back, reporting
what it did.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from control.federation import service as federation
from control.federation.models import TrustedIssuer
from control.federation.schemas import TrustedIssuerBody
from control.identity.caller import Caller
from control.policy import service as policy
from control.policy.engine import current_policy_rev
from control.policy.models import GrantRule, QuerySet, Stream
from control.policy.schemas import GrantRuleCreate, QuerySetCreate, QuerySetUpdate, StreamCreate
from control.policyfile.schemas import PolicyApplied, PolicyChange, PolicyDocument
from control.revocations.models import Revocation
from control.settings import Settings
from control.spacetime.catalog import Catalog, catalog_for
from control.views import OrgView


def export(view: OrgView) -> PolicyDocument:
    """The org's policy, in a stable order (so a document in version control diffs cleanly)."""
    query_sets = sorted(view.all(QuerySet), key=lambda row: row.name)
    streams = sorted(view.all(Stream), key=lambda row: row.id)
    rules = sorted(view.all(GrantRule), key=lambda row: _canonical(policy.rule_summary(row)))
    issuers = sorted(view.all(TrustedIssuer), key=lambda row: row.issuer)
    return PolicyDocument(
        query_sets=[
            QuerySetCreate(
                name=row.name,
                stream_kinds=list(row.stream_kinds),
                queries=list(row.queries),
                description=row.description,
            )
            for row in query_sets
        ],
        streams=[
            StreamCreate(id=row.id, owner_id=row.owner_id, labels=dict(row.labels or {}))
            for row in streams
        ],
        grant_rules=[_rule_body(row) for row in rules],
        trusted_issuers=[_issuer_body(row) for row in issuers],
    )


def apply(
    view: OrgView, caller: Caller, document: PolicyDocument, settings: Settings, *, dry_run: bool
) -> PolicyApplied:
    """Make the org's policy match `document`. Raises the services' problems (422, 403, 409)
    on the first change that cannot be made; nothing is changed then."""
    session = view.session
    first_new_cursor = int(
        view.execute(
            select(func.coalesce(func.max(Revocation.cursor), 0)).where(
                Revocation.org_id == view.org_id
            )
        ).scalar()
        or 0
    )
    savepoint = session.begin_nested()
    try:
        changes = _apply(view, caller, document, settings)
        revoked = sorted(
            {
                row.value
                for row in view.all(
                    Revocation, Revocation.cursor > first_new_cursor, Revocation.kind == "subject"
                )
            }
        )
        rev = current_policy_rev(view)
    except BaseException:
        savepoint.rollback()
        raise
    if dry_run:
        savepoint.rollback()
    else:
        savepoint.commit()
    return PolicyApplied(dry_run=dry_run, changes=changes, revoked_subjects=revoked, policy_rev=rev)


Changes = list[PolicyChange]


def _changed(changes: Changes, op: str, kind: str, key: str, detail: str | None = None) -> None:
    changes.append(
        PolicyChange.model_validate({"op": op, "kind": kind, "key": key, "detail": detail})
    )


def _apply(view: OrgView, caller: Caller, document: PolicyDocument, settings: Settings) -> Changes:
    changes: Changes = []
    # Rules go first (a query set they use may then change kinds or go) and come last (they
    # may name query sets the document creates).
    wanted = {_canonical(policy.summary_of(body)): body for body in document.grant_rules}
    kept = _rules_out(view, caller, wanted, changes)
    existing_sets = _query_sets_in(view, caller, document, catalog_for(settings), changes)
    for key, body in wanted.items():
        if key not in kept:
            rule, _ = policy.create_rule(view, caller, body)
            _changed(changes, "create", "grant_rule", rule.id, _describe(rule))
    wanted_names = {body.name for body in document.query_sets}
    for name, query_set in existing_sets.items():
        if name not in wanted_names:
            policy.delete_query_set(view, caller, query_set)
            _changed(changes, "delete", "query_set", name)
    _streams(view, caller, document, changes)
    _issuers(view, caller, document, settings, changes)
    return changes


def _rules_out(
    view: OrgView, caller: Caller, wanted: dict[str, GrantRuleCreate], changes: Changes
) -> set[str]:
    """Delete the rules the document does not hold; the content keys of those kept."""
    kept: set[str] = set()
    for rule in view.all(GrantRule):
        key = _canonical(policy.rule_summary(rule))
        body = wanted.get(key)
        if body is None or key in kept:
            policy.delete_rule(view, caller, rule)
            _changed(changes, "delete", "grant_rule", rule.id, _describe(rule))
            continue
        kept.add(key)
        if (body.description or None) != (rule.description or None):
            policy.update_rule(view, caller, rule, body)  # the same content: not a narrowing
            _changed(changes, "update", "grant_rule", rule.id, "description")
    return kept


def _query_sets_in(
    view: OrgView, caller: Caller, document: PolicyDocument, catalog: Catalog, changes: Changes
) -> dict[str, QuerySet]:
    """Create and update the document's query sets; the org's query sets before."""
    existing = {row.name: row for row in view.all(QuerySet)}
    for body in document.query_sets:
        row = existing.get(body.name)
        if row is None:
            policy.create_query_set(view, caller, body, catalog)
            _changed(changes, "create", "query_set", body.name)
        elif (sorted(set(body.stream_kinds)), list(body.queries), body.description) != (
            row.stream_kinds,
            row.queries,
            row.description,
        ):
            update = QuerySetUpdate(
                stream_kinds=body.stream_kinds, queries=body.queries, description=body.description
            )
            policy.update_query_set(view, caller, row, update, catalog)
            _changed(changes, "update", "query_set", body.name, f"version {row.version}")
    return existing


def _streams(view: OrgView, caller: Caller, document: PolicyDocument, changes: Changes) -> None:
    wanted = {body.id: body for body in document.streams}
    existing = {row.id: row for row in view.all(Stream)}
    for stream_id, body in wanted.items():
        stream = existing.get(stream_id)
        if stream is None:
            created = policy.register_stream(view, caller, body)
            if body.owner_id is None and created.owner_id is not None:
                # A stream the document gives no owner has none: the document, not who
                # applied it, is the policy.
                policy.update_stream(view, caller, created, None, dict(body.labels))
            _changed(changes, "create", "stream", stream_id)
        elif (body.owner_id, dict(body.labels)) != (stream.owner_id, dict(stream.labels or {})):
            policy.update_stream(view, caller, stream, body.owner_id, dict(body.labels))
            _changed(changes, "update", "stream", stream_id)
    for stream_id, stream in existing.items():
        if stream_id not in wanted:
            policy.delete_stream(view, caller, stream)
            _changed(changes, "delete", "stream", stream_id)


def _issuers(
    view: OrgView,
    caller: Caller,
    document: PolicyDocument,
    settings: Settings,
    changes: Changes,
) -> None:
    wanted = {body.issuer: body for body in document.trusted_issuers}
    existing = {row.issuer: row for row in view.all(TrustedIssuer)}
    for issuer, row in existing.items():
        if issuer not in wanted:
            federation.delete_trusted_issuer(view, caller, row)
            _changed(changes, "delete", "trusted_issuer", issuer)
    for issuer, body in wanted.items():
        current = existing.get(issuer)
        if current is None:
            federation.create_trusted_issuer(view, caller, body, settings)
            _changed(changes, "create", "trusted_issuer", issuer)
        elif _issuer_fields(body) != _issuer_fields(_issuer_body(current)):
            federation.update_trusted_issuer(view, caller, current, body, settings)
            _changed(changes, "update", "trusted_issuer", issuer)


def parse_document(text: str) -> PolicyDocument:
    """A document from YAML or JSON text (JSON is YAML); a `ValueError` says what is wrong."""
    import yaml  # the server extra's dependency; imported here so the SDK never needs it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the document is not valid YAML or JSON: {exc}") from None
    return PolicyDocument.model_validate(data if data is not None else {})


def _canonical(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, separators=(",", ":"))


def _rule_body(rule: GrantRule) -> GrantRuleCreate:
    return GrantRuleCreate.model_validate(
        {
            "effect": rule.effect,
            "subjects": policy.rule_subjects(rule).model_dump(),
            "streams": policy.rule_streams(rule).model_dump(),
            "query_sets": list(rule.query_sets),
            "ops": list(rule.ops),
            "max_ttl_seconds": rule.max_ttl_seconds,
            "description": rule.description,
        }
    )


def _describe(rule: GrantRule) -> str:
    streams = rule.stream_relation + (f" {','.join(rule.stream_ids)}" if rule.stream_ids else "")
    return f"{rule.effect} {rule.stream_kind} ({streams}) {','.join(rule.ops) or '-'}"


def _issuer_body(row: TrustedIssuer) -> TrustedIssuerBody:
    return TrustedIssuerBody.model_validate(
        {
            "issuer": row.issuer,
            "audiences": list(row.audiences),
            "default_roles": list(row.default_roles),
            "role_claim": row.role_claim,
            "role_map": dict(row.role_map),
            "algorithms": list(row.algorithms),
        }
    )


def _issuer_fields(body: TrustedIssuerBody) -> tuple[Any, ...]:
    return (
        sorted(set(body.audiences)),
        sorted(set(body.default_roles)),
        body.role_claim,
        {key: sorted(set(roles)) for key, roles in body.role_map.items()},
        sorted(set(body.algorithms)),
    )
