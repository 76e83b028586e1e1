"""The token endpoint and introspection."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from fastapi import Request, Response
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.api.auth import ID_TOKEN, presented_bearer, served_directly, verify_presented_id_token
from control.api.deps import get_session
from control.audit.writer import AuditWriteFailed
from control.errors import ProblemError, problem_response
from control.federation.service import caller_for_id_token, looks_like_jwt
from control.identity.caller import Caller
from control.kit.db import end_unit_of_work
from control.kit.routing import table_entry
from control.observability.hooks import introspected
from control.policy.engine import CompiledPolicy
from control.state import AppState
from control.tokens.fastpath import (
    FastMint,
    cached_policy,
    decide_mint,
    grouped_mint_params,
    mint_by_key,
    mint_params,
)
from control.tokens.introspection import Introspected, decide, introspect_by_key, prepare_read
from control.tokens.ratelimit import RateLimiter
from control.tokens.repository import INTROSPECT_READ, MINT_READ, MINT_READ_GROUPED
from control.tokens.schemas import IntrospectRequest, TokenRequest
from control.tokens.service import Minted, Refused, mint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def mint_token(request: Request, body: TokenRequest) -> Response:
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
    # This endpoint authenticates its caller itself (its guard only asks for a bearer
    # credential, `control.api.auth.guard_for`): an API key is looked up in the mint's one read.
    state: AppState = request.app.state.control
    presented = presented_bearer(request)
    entry = table_entry(request.scope)
    roles = entry.access.roles if entry is not None else MINT_ROLES
    if entry is not None and ID_TOKEN in entry.access.accepts and looks_like_jwt(presented):
        return await _mint_for_id_token(state, roles, presented, body)
    return await _mint_for_key(state, roles, presented, body)


# Whoever mints, when the request reached the endpoint outside the route table (never in the
# app; the table's entry says the same).
MINT_ROLES = frozenset({"member"})


async def _mint_for_key(
    state: AppState, roles: frozenset[str], presented: str, body: TokenRequest
) -> Response:
    """The API-key path: one read, the decision and the signature in one call; then the audit
    event's group commit (`control.audit.writer`), awaited before the answer."""

    def read_and_sign() -> FastMint:
        # Read only: the connection ends with a rollback, which on SQLite ends the snapshot.
        with reading(state) as connection:
            return mint_by_key(
                connection,
                pepper=state.credential_pepper,
                presented=presented,
                body=body,
                roles=roles,
                admit=lambda caller: admit(state, caller),
                settings=state.settings,
                keys=state.keyring.snapshot,
                policies=state.policies,
            )

    database, inline = state.async_database(), state.inline_reader()
    fast: FastMint | None = None
    if database is not None or inline is not None:
        # The read without a thread hop, and the rest on the event loop. SQLite: the prebuilt
        # read takes microseconds and never waits for the writer (WAL); PostgreSQL: through
        # the asyncio driver.
        params = mint_params(state.credential_pepper, presented, body)
        if inline is not None:
            rows = inline.all(MINT_READ, params)
        else:
            assert database is not None
            # Grouped: the mints arriving while one is read go together in the next.
            rows = await _read_async(
                database.grouped, MINT_READ_GROUPED, grouped_mint_params(params)
            )
        policy = cached_policy(rows, state.policies)
        if policy is not None or not rows:
            fast = decide_mint(
                rows,
                body=body,
                roles=roles,
                admit=lambda caller: admit(state, caller),
                settings=state.settings,
                keys=state.keyring.snapshot,
                policy_for=lambda _org, _rev: _known(policy),
            )
        # Otherwise the org's policy moved: compiled from a read of its own, below.
    if fast is None and state.request_lock is not None:
        # SQLite's reads take tens of microseconds and never wait for the writer (WAL): on
        # the event loop rather than paying a thread hop.
        fast = read_and_sign()
    if fast is None:
        fast = await run_in_threadpool(read_and_sign)
    try:
        await state.audit_writer.write(fast.event, fast.touch)
    except AuditWriteFailed:
        # Nothing is answered that is not audited: the token is dropped unseen.
        raise ProblemError(
            "unavailable",
            "the request could not be audited, so nothing was issued; retry",
            headers={"Retry-After": "1", **NO_STORE},
            retry_after=1,
        ) from None
    return _answer(fast.outcome.result)


async def _mint_for_id_token(
    state: AppState, roles: frozenset[str], presented: str, body: TokenRequest
) -> Response:
    """An upstream ID token: verified first (on a worker thread, outside the unit of work),
    then its principal (created on first use), the decision and the audit event in one unit
    of work, committed before the answer."""
    verified = await verify_presented_id_token(state, presented)

    def mint_and_commit(session: Session) -> Minted | Refused:
        caller = caller_for_id_token(session, verified)
        caller.require_any(roles)
        outcome = limited_mint(state, session, caller, body)
        end_unit_of_work(session, False)
        return outcome

    async with _unit_of_work(state) as session:
        outcome = await run_in_threadpool(mint_and_commit, session)
    return _answer(outcome)


_unit_of_work = contextlib.asynccontextmanager(get_session)


async def _read_async(
    read: Callable[[Any, dict[str, Any]], Awaitable[list[Any]]],
    statement: Any,
    params: dict[str, Any],
) -> Any:
    """The rows of one read-only statement by `read` (an `AsyncDatabase`'s `all` or
    `grouped`), in a transaction begun after this request arrived (so a change committed before
    it is seen); a pool that cannot hand out a connection in time reads as the database being
    unavailable (503), never a 500."""
    try:
        return await read(statement, params)
    except SQLAlchemyTimeoutError:
        raise ProblemError(
            "unavailable",
            "the database is not answering; retry",
            headers={"Retry-After": "1", **NO_STORE},
            retry_after=1,
        ) from None


def _known(policy: CompiledPolicy | None) -> CompiledPolicy:
    assert policy is not None  # only called with rows, when the policy was found
    return policy


@contextlib.contextmanager
def reading(state: AppState) -> Iterator[Connection]:
    """A connection for one read-only request: straight from the engine (a session would cost
    more than the read), or the units of work's own binding when it is not an engine (a test's
    transaction)."""
    bind = state.sessions.kw.get("bind")
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            yield connection
        return
    with state.sessions() as session:
        yield session.connection()


def _answer(outcome: Minted | Refused) -> Response:
    if isinstance(outcome, Refused):
        # Answered, not raised: the refusal's audit event was committed with it.
        problem = outcome.problem()
        return problem_response(problem.code, problem.detail, NO_STORE, **problem.extras)
    return Response(outcome.body_bytes(), media_type="application/json", headers=NO_STORE)


def admit(state: AppState, caller: Caller) -> None:
    """Whether this replica signs for `caller` now: its keys are fresh, and the caller is within
    its rate limit; raises the answer otherwise."""
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


def limited_mint(
    state: AppState, session: Session, caller: Caller, body: TokenRequest
) -> Minted | Refused:
    """The token route's work once its caller is known, for an ID token and an OAuth form
    (`control.api.oauth`) alike: `admit`, then `mint` in the caller's unit of work."""
    admit(state, caller)
    return mint(
        session,
        caller,
        body,
        settings=state.settings,
        keys=state.keyring.snapshot,
        policies=state.policies,
        actor=caller.principal_id,
    )


async def introspect(request: Request, body: IntrospectRequest) -> Response:
    """Check a sync token as the service sees it now: whether it is active (signature, issuer,
    audience and validity window verify, it belongs to the caller's org and is not revoked) and,
    with `stream`, whether its grants cover that stream for `query_set` and `op` (default
    `subscribe`). An inactive token gets `{"active": false, "reason"}` only; an active one its
    claims, and `allowed` when a stream was named. A stream the org no longer holds is never
    allowed. For verifying every request, prefer local verification with the JWKS and the
    revocation feed. Needs the `service` role.
    """

    # This endpoint authenticates its caller itself (its guard only asks for a bearer
    # credential): the API key is looked up in the same read as the token's revocations.
    state: AppState = request.app.state.control
    presented = presented_bearer(request)
    entry = table_entry(request.scope)
    roles = entry.access.roles if entry is not None else INTROSPECT_ROLES

    def read() -> Introspected:
        with reading(state) as connection:
            return introspect_by_key(
                connection,
                pepper=state.credential_pepper,
                presented=presented,
                roles=roles,
                keys=state.keyring.snapshot,
                settings=state.settings,
                verified=state.introspected_tokens,
                body=body,
            )

    # SQLite: the prebuilt read on the event loop (it takes microseconds and never waits for
    # the writer, WAL); PostgreSQL: through the asyncio driver; otherwise one hop.
    database, inline = state.async_database(), state.inline_reader()
    if database is not None or inline is not None:
        prepared = prepare_read(
            pepper=state.credential_pepper,
            presented=presented,
            keys=state.keyring.snapshot,
            settings=state.settings,
            verified=state.introspected_tokens,
            body=body,
        )
        if inline is not None:
            rows = inline.all(INTROSPECT_READ, prepared.params)
        else:
            assert database is not None
            # Grouped: the introspections arriving while one is read go together in the next.
            rows = await _read_async(database.grouped, INTROSPECT_READ, prepared.params)
        found = decide(rows[0] if rows else None, prepared, roles, body)
    elif state.request_lock is not None:
        found = read()
    else:
        found = await run_in_threadpool(read)
    if found.touch is not None:
        # The key's `last_used_at`, when due (rarely: once per resolution), rides the audit
        # writer's next batch instead of a commit of its own.
        try:
            await state.audit_writer.write(None, found.touch)
        except AuditWriteFailed:
            raise ProblemError(
                "unavailable",
                "the request could not be recorded; retry",
                headers={"Retry-After": "1", **NO_STORE},
                retry_after=1,
            ) from None
    answer = found.answer
    introspected(answer.active, answer.reason, answer.allowed)
    return Response(
        orjson.dumps(answer.model_dump(exclude_none=True)),
        media_type="application/json",
        headers=NO_STORE,
    )


# Who may introspect, when the request reached the endpoint outside the route table.
INTROSPECT_ROLES = frozenset({"service"})


# How the route table serves the two hot routes (`Route.direct`): the same endpoints, without
# FastAPI solving their dependencies for each request.
mint_token_directly = served_directly(mint_token)
introspect_directly = served_directly(introspect)
