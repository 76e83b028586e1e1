"""Explain: the policy engine's dry run for a principal, the decision a mint would make."""

from __future__ import annotations

from control.identity.models import Principal
from control.policy.engine import PolicyCache, Subject, check_stream_cap, decide_current
from control.policy.schemas import ExplainDecision, ExplainRequest, ExplainResponse
from control.views import OrgView


def explain(
    view: OrgView, policies: PolicyCache, body: ExplainRequest, stream_cap: int
) -> ExplainResponse:
    check_stream_cap(body.streams, stream_cap)
    principal = view.get(Principal, body.principal_id, "principal")
    subject = Subject(principal.id, principal.kind, frozenset(principal.roles))
    policy_rev, decisions = decide_current(
        view, policies, subject, body.streams, body.query_sets, body.ops
    )
    return ExplainResponse(
        policy_rev=policy_rev,
        decisions=[
            ExplainDecision(
                stream=d.stream,
                allowed=d.allowed,
                query_sets=list(d.query_sets),
                ops=list(d.ops),
                reason=d.reason,
                rule_ids=list(d.rule_ids),
            )
            for d in decisions
        ],
    )
