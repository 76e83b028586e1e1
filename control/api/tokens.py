"""The token endpoint and introspection."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from control.api.auth import CallerDep, ViewDep
from control.api.deps import SessionDep, StateDep
from control.errors import ProblemError, problem_response
from control.tokens.introspection import introspect as introspect_token
from control.tokens.ratelimit import RateLimiter
from control.tokens.schemas import (
    IntrospectRequest,
    TokenRequest,
    TokenResponse,
)
from control.tokens.service import Refused, mint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def mint_token(
    body: TokenRequest,
    state: StateDep,
    session: SessionDep,
    caller: CallerDep,
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
    outcome = mint(
        session,
        caller,
        body,
        settings=state.settings,
        keys=state.keyring.snapshot,
        policies=state.policies,
        actor=caller.principal_id,
    )
    if isinstance(outcome, Refused):
        # Answered, not raised: the unit of work commits, and the refusal's audit event with it.
        problem = outcome.problem()
        return problem_response(problem.code, problem.detail, NO_STORE, **problem.extras)
    response.headers.update(NO_STORE)
    return outcome.response


def introspect(body: IntrospectRequest, state: StateDep, view: ViewDep) -> JSONResponse:
    answer = introspect_token(view, state.keyring.snapshot, state.settings, body)
    return JSONResponse(answer.model_dump(exclude_none=True), headers=NO_STORE)
