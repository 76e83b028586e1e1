"""Authentication at the token endpoint: an API key, or an upstream OIDC ID token."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from control.deps import SessionDep, StateDep
from control.errors import Forbidden
from control.federation.service import (
    VerifiedIdToken,
    caller_for_id_token,
    looks_like_jwt,
    verify_id_token,
)
from control.identity.auth import Caller, authenticate, bearer_scheme
from control.kit.routing import Access

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def verified_id_token(
    state: StateDep, credentials: BearerCredentials
) -> VerifiedIdToken | None:
    """A presented ID token, verified before the unit of work opens (`verify_id_token` says
    why); None for any other credential, without a thread hop."""
    if credentials is None or not looks_like_jwt(credentials.credentials):
        return None
    return await run_in_threadpool(
        verify_id_token, state.sessions, state.upstream, credentials.credentials, state.settings
    )


def authenticate_client(
    state: StateDep,
    # Before `session`: dependencies resolve in this order, and the session's SQLite request
    # lock must not be held while an identity provider answers.
    id_token: Annotated[VerifiedIdToken | None, Depends(verified_id_token)],
    session: SessionDep,
    credentials: BearerCredentials,
) -> Caller:
    if id_token is not None:
        return caller_for_id_token(session, id_token)
    return authenticate(state, session, credentials)


ClientCallerDep = Annotated[Caller, Depends(authenticate_client)]


def require_client(access: Access) -> Callable[[Caller], Coroutine[Any, Any, None]]:
    async def guard(caller: ClientCallerDep) -> None:
        if not caller.has_any(access.roles):
            raise Forbidden(f"this route needs the {' or '.join(sorted(access.roles))} role")

    return guard
