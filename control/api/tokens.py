"""The token endpoint and introspection."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from control.api.auth import CallerDep, ViewDep
from control.api.deps import SessionDep, StateDep
from control.errors import ProblemError, problem_response
from control.identity.caller import Caller
from control.observability.hooks import introspected
from control.state import AppState
from control.tokens.introspection import introspect as introspect_token
from control.tokens.ratelimit import RateLimiter
from control.tokens.schemas import (
    IntrospectRequest,
    TokenRequest,
    TokenResponse,
)
from control.tokens.service import Minted, Refused, mint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def mint_token(
    body: TokenRequest,
    state: StateDep,
    session: SessionDep,
    caller: CallerDep,
    response: Response,
) -> TokenResponse | JSONResponse:
    """Exchange the caller's credential for a sync token: an ES256 JWT whose `grants` say, per
    stream, which query sets (`name@version`) and ops the org's grant rules give the caller.
    Present it to SpacetimeDB and to runtime services. Needs the `member` role, with an API key
    or an ID token of a trusted issuer as the bearer credential (an ID token's first use creates
    its `user` principal).

    Name streams by id, or `<kind>:*` for every stream of a kind in the org. Without `query_sets`
    every query set the rules allow is granted; without `ops`, `subscribe`. A stream not granted
    fails the whole request with 403 `stream_not_granted`, listing each stream and why, unless
    `allow_partial` is true and something was granted: then `denied` lists the rest. Fetch the
    next token at `refresh_after`. Every mint and refusal is audited before the answer leaves;
    asking too often is 429 `rate_limited` with `Retry-After`.

    The same route takes an OAuth 2.0 form (`application/x-www-form-urlencoded`):
    `client_credentials` (client_secret_basic or client_secret_post; the client id is a credential
    id, the secret its API key) or token exchange (RFC 8693; the subject token an upstream ID
    token or an API key), with the request in `scope`. A form's answer adds `access_token`,
    `scope` and, for an exchange, `issued_token_type` to the fields below, and its refusals are
    OAuth errors (400, 401 `invalid_client`).
    """
    outcome = limited_mint(state, session, caller, body)
    if isinstance(outcome, Refused):
        # Answered, not raised: the unit of work commits, and the refusal's audit event with it.
        problem = outcome.problem()
        return problem_response(problem.code, problem.detail, NO_STORE, **problem.extras)
    response.headers.update(NO_STORE)
    return outcome.response


def limited_mint(
    state: AppState, session: Session, caller: Caller, body: TokenRequest
) -> Minted | Refused:
    """The token route's work once its caller is known, for a JSON body and an OAuth form
    (`control.api.oauth`) alike: the principal's rate limit, then `mint`."""
    if state.keys_refreshing and state.keyring.is_stale():
        # Fail closed: a replica that cannot reload its keys may have missed a rotation, and
        # would sign with a key the others have retired.
        raise ProblemError(
            "signing_unavailable",
            "this replica cannot refresh its signing keys just now; retry (another replica may "
            "answer)",
            headers={"Retry-After": "1", **NO_STORE},
            retry_after=1,
        )
    wait = state.mint_limiter.acquire(caller.principal_id)
    if wait is not None:
        retry = RateLimiter.retry_after(wait)
        raise ProblemError(
            "rate_limited",
            "too many token requests for this principal",
            headers={"Retry-After": str(retry), **NO_STORE},
            retry_after=retry,
        )
    return mint(
        session,
        caller,
        body,
        settings=state.settings,
        keys=state.keyring.snapshot,
        policies=state.policies,
        actor=caller.principal_id,
    )


def introspect(body: IntrospectRequest, state: StateDep, view: ViewDep) -> JSONResponse:
    """Check a sync token as the service sees it now: whether it is active (signature, issuer,
    audience and validity window verify, it belongs to the caller's org and is not revoked) and,
    with `stream`, whether its grants cover that stream for `query_set` and `op` (default
    `subscribe`). An inactive token gets `{"active": false, "reason"}` only; an active one its
    claims, and `allowed` when a stream was named. A stream the org no longer holds is never
    allowed. For verifying every request, prefer local verification with the JWKS and the
    revocation feed. Needs the `service` role.
    """
    answer = introspect_token(view, state.keyring.snapshot, state.settings, body)
    introspected(answer.active, answer.reason, answer.allowed)
    return JSONResponse(answer.model_dump(exclude_none=True), headers=NO_STORE)
