from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from control.deps import SessionDep, StateDep
from control.errors import ProblemError, problem_response
from control.federation.auth import ClientCallerDep
from control.identity.auth import ViewDep
from control.identity.models import Principal
from control.policy.engine import Subject, decide_current
from control.tokens.ratelimit import RateLimiter
from control.tokens.schemas import (
    ExplainDecision,
    ExplainRequest,
    ExplainResponse,
    TokenRequest,
    TokenResponse,
)
from control.tokens.service import StreamsNotGranted, check_stream_cap, mint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def mint_token(
    body: TokenRequest,
    state: StateDep,
    session: SessionDep,
    caller: ClientCallerDep,
    response: Response,
) -> TokenResponse | JSONResponse:
    wait = state.mint_limiter.acquire(caller.principal_id)
    if wait is not None:
        retry = RateLimiter.retry_after(wait)
        raise ProblemError(
            "rate_limited",
            "too many token requests for this principal",
            headers={"Retry-After": str(retry), **NO_STORE},
            retry_after=retry,
        )
    try:
        minted = mint(state, session, caller, body, actor=caller.principal_id)
    except StreamsNotGranted as exc:
        # Returned, not raised: the unit of work commits, so the denial's audit event stays.
        return problem_response(exc.code, exc.detail, NO_STORE, **exc.extras)
    response.headers.update(NO_STORE)
    return minted.response


def explain(body: ExplainRequest, view: ViewDep, state: StateDep) -> ExplainResponse:
    check_stream_cap(body.streams, state.settings)
    principal = view.get(Principal, body.principal_id, "principal")
    subject = Subject(principal.id, principal.kind, frozenset(principal.roles))
    policy_rev, decisions = decide_current(
        view, state.policies, subject, body.streams, body.query_sets, body.ops
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
