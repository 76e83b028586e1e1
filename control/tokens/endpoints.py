from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.deps import SessionDep, StateDep
from control.errors import ProblemError, problem_response
from control.federation.auth import ClientCallerDep
from control.identity.auth import Caller, ViewDep
from control.identity.models import Principal
from control.kit.db import end_unit_of_work
from control.policy.engine import Subject, decide_current
from control.state import AppState
from control.tokens.ratelimit import RateLimiter
from control.tokens.schemas import (
    ExplainDecision,
    ExplainRequest,
    ExplainResponse,
    TokenRequest,
    TokenResponse,
)
from control.tokens.service import StreamsNotGranted, mint, validate_request_shape

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def mint_token(
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
    outcome = await run_in_threadpool(_mint_and_commit, state, session, caller, body)
    if isinstance(outcome, TokenResponse):
        response.headers.update(NO_STORE)
    return outcome


def _mint_and_commit(
    state: AppState, session: Session, caller: Caller, body: TokenRequest
) -> TokenResponse | JSONResponse:
    """The whole mint on one worker thread: decide, sign, record and commit.

    A thread hop costs about as much as the mint's own database work (`bench/ceiling.py`), so
    the unit of work ends here, on the thread that did the work, instead of in one more hop
    after the endpoint returns (`get_session` then has nothing left to end). An exception still
    reaches `get_session`, which rolls the unit back.
    """
    try:
        minted = mint(state, session, caller, body, actor=caller.principal_id)
    except StreamsNotGranted as exc:
        # Answered, not raised: the unit of work commits, so the denial's audit event stays.
        end_unit_of_work(session, failed=False)
        return problem_response(exc.code, exc.detail, NO_STORE, **exc.extras)
    end_unit_of_work(session, failed=False)
    return minted.response


def explain(body: ExplainRequest, view: ViewDep, state: StateDep) -> ExplainResponse:
    validate_request_shape(body.streams, body.query_sets, state.settings)
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
