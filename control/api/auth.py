"""Authentication: the one place a request's credential becomes a `Caller`.

A route's access declaration (`control.kit.routing.Access`) says which roles may call it and
whether an upstream OIDC ID token from a trusted issuer is accepted beside an API key (the token
endpoint only). `guard_for(access)` is the dependency the route table attaches; endpoints that
need the caller take `CallerDep`, which FastAPI resolves once per request, so the credential is
looked up once however many dependencies ask for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.api.deps import SessionDep, StateDep
from control.errors import Unauthorized
from control.federation.service import (
    VerifiedIdToken,
    caller_for_id_token,
    looks_like_jwt,
    verify_id_token,
)
from control.identity.caller import Caller
from control.identity.service import caller_for_key
from control.kit.routing import Access, BodyReader, DirectEndpoint, media_type, table_entry
from control.state import AppState
from control.views import OrgView

bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`ctl_…`).")

# The credential kinds a route's `Access.accepts` may name.
API_KEY, ID_TOKEN = "api_key", "id_token"
# Named beside `API_KEY` by a route whose endpoint looks its API key up itself, in the same read
# as the rest of its work (introspection): its guard only asks for a bearer credential.
KEY_IN_ENDPOINT = "key_in_endpoint"

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def caller_for_api_key(
    state: StateDep, session: SessionDep, credentials: BearerCredentials
) -> Caller:
    if credentials is None:
        raise Unauthorized("an `Authorization: Bearer` credential is required")
    return caller_for_key(session, state.credential_pepper, credentials.credentials)


async def verified_id_token(
    request: Request, state: StateDep, credentials: BearerCredentials
) -> VerifiedIdToken | None:
    """A presented ID token, verified before the unit of work opens (`verify_id_token` says
    why); None for any other credential, or on a route that does not take ID tokens, without a
    thread hop."""
    entry = table_entry(request.scope)
    if entry is None or ID_TOKEN not in entry.access.accepts:
        return None
    if credentials is None or not looks_like_jwt(credentials.credentials):
        return None
    return await run_in_threadpool(
        verify_id_token, state.sessions, state.upstream, credentials.credentials, state.settings
    )


def authenticate(
    state: StateDep,
    # Before `session`: dependencies resolve in this order, and the session's SQLite request
    # lock must not be held while an identity provider answers.
    id_token: Annotated[VerifiedIdToken | None, Depends(verified_id_token)],
    session: SessionDep,
    credentials: BearerCredentials,
) -> Caller:
    """The caller of this request: the principal of its ID token (on routes that take them) or
    of its API key."""
    if id_token is not None:
        return caller_for_id_token(session, id_token)
    return caller_for_api_key(state, session, credentials)


CallerDep = Annotated[Caller, Depends(authenticate)]


# OAuth requests at the token route (`control.api.oauth`) present their credentials in the form,
# not as a bearer header; these make the same callers from them.


def caller_for_client(state: AppState, session: Session, client_id: str, secret: str) -> Caller:
    """An OAuth client (RFC 6749 §2.3.1): its id is a credential's id, its secret that
    credential's API key. A key presented under another credential's id is refused like a
    wrong key: the id names the credential, it is not a hint."""
    caller = caller_for_key(session, state.credential_pepper, secret)
    if caller.credential_id != client_id:
        raise Unauthorized("the credential is invalid", reason="invalid_credential")
    return caller


async def verify_presented_id_token(state: AppState, token: str) -> VerifiedIdToken:
    """An ID token presented in a form, verified as `verified_id_token` does a bearer one:
    on a worker thread, before the request's unit of work opens."""
    return await run_in_threadpool(
        verify_id_token, state.sessions, state.upstream, token, state.settings
    )


def guard_for(access: Access) -> Callable[..., Coroutine[Any, Any, None]]:
    """The dependency the route table attaches to a protected route.

    A route that takes ID tokens (the token route) or says `KEY_IN_ENDPOINT` (introspection)
    authenticates in its endpoint (`control.api.tokens`), which reads the caller in the same
    statement as the rest of its work and checks `access.roles` itself; its guard only asks for
    a bearer credential.
    """
    if ID_TOKEN in access.accepts or KEY_IN_ENDPOINT in access.accepts:
        return bearer_required

    async def guard(caller: CallerDep) -> None:
        caller.require_any(access.roles)

    return guard


async def bearer_required(request: Request, credentials: BearerCredentials) -> None:
    """The guard of a route whose endpoint authenticates: a bearer credential is required, and
    when the body is one the route will refuse (422), the credential is judged here first (401,
    403), as every other route's guard does before its body is read."""
    if credentials is None:
        raise Unauthorized("an `Authorization: Bearer` credential is required")
    entry = table_entry(request.scope)
    # FastAPI reads a body as JSON only under a JSON media type; any other is refused.
    json_body = media_type(request).endswith("json")
    if entry is None or (json_body and _body_valid(entry.request_model, await request.body())):
        return
    await judge_credential(request, credentials.credentials, entry.access)


def served_directly(
    endpoint: Callable[[Request, Any], Awaitable[Response]],
) -> DirectEndpoint:
    """`endpoint`, of a route whose guard is `bearer_required`, as the route serves it without
    FastAPI's dependency solving (`Route.direct`), answering as FastAPI and the guard would, in
    their order: a body that does not parse as JSON is refused first (FastAPI reads the body
    before any guard runs); then a request without a bearer credential (401); then, for a body
    the route will refuse, the credential is judged (401, 403) before the 422; then `endpoint`
    with the model."""

    async def serve(request: Request, read_body: BodyReader) -> Response:
        parsed = await read_body(request)
        presented = presented_bearer(request)
        if parsed.errors:
            entry = table_entry(request.scope)
            if entry is not None:
                await judge_credential(request, presented, entry.access)
            raise parsed.refusal()
        return await endpoint(request, parsed.value)

    return serve


def presented_bearer(request: Request) -> str:
    """The request's bearer credential, as `bearer_scheme` reads it; 401 without one."""
    scheme, presented = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("an `Authorization: Bearer` credential is required")
    return presented


async def judge_credential(request: Request, presented: str, access: Access) -> None:
    """Refuse `presented` as the route's guard would (401, 403), for a route about to refuse
    the request's body: a caller without access learns nothing of what the body should be."""
    state: AppState = request.app.state.control
    if ID_TOKEN in access.accepts and looks_like_jwt(presented):
        await verify_presented_id_token(state, presented)
        return
    await run_in_threadpool(_judge_key, state, presented, access)


def _body_valid(model: type[BaseModel] | None, body: bytes) -> bool:
    if model is None:
        return True
    try:
        model.model_validate_json(body)
    except ValidationError:
        return False
    return True


def _judge_key(state: AppState, presented: str, access: Access) -> None:
    with state.sessions() as session:  # read only: closing rolls back the key's `last_used_at`
        caller = caller_for_key(session, state.credential_pepper, presented)
    caller.require_any(access.roles)


async def org_view(session: SessionDep, caller: CallerDep) -> OrgView:
    """The caller's view of org-owned rows (see `control.views`)."""
    return OrgView(session, caller.org_id)


ViewDep = Annotated[OrgView, Depends(org_view)]
