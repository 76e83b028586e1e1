"""Authentication at the token endpoint: an API key, or an upstream OIDC ID token."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials

from control.deps import SessionDep, StateDep
from control.errors import Forbidden
from control.federation.service import authenticate_id_token, looks_like_jwt
from control.identity.auth import Caller, authenticate, bearer_scheme
from control.kit.routing import Access


def authenticate_client(
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    if credentials is not None and looks_like_jwt(credentials.credentials):
        return authenticate_id_token(session, state.upstream, credentials.credentials)
    return authenticate(state, session, credentials)


ClientCallerDep = Annotated[Caller, Depends(authenticate_client)]


def require_client(access: Access) -> Callable[[Caller], Coroutine[Any, Any, None]]:
    async def guard(caller: ClientCallerDep) -> None:
        if not caller.has_any(access.roles):
            raise Forbidden(f"this route needs the {' or '.join(sorted(access.roles))} role")

    return guard
