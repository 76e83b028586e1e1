"""OAuth 2.0 requests at the canonical token route: client credentials (RFC 6749 §4.4) and token
exchange (RFC 8693), as `application/x-www-form-urlencoded` bodies of `POST /api/sync/token`.

The route table sends such bodies here (`Route.media_endpoints`) and every other body to
`control.api.tokens.mint_token`. Both end in `limited_mint`: the same rate limit, the same
policy engine, the same `mint` and its audit events. What differs is the protocol around it:
the credential comes from HTTP Basic, the form or the subject token, never a bearer header; the
request is the `scope` parameter (`control.tokens.oauth`); refusals are RFC 6749 §5.2 errors.
Conditions of the service rather than of the request (413, 429, 503) keep the problem+json
answers every route gives, with `Retry-After` where there is one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.api.auth import API_KEY, ID_TOKEN, caller_for_client, verify_presented_id_token
from control.api.deps import get_session, get_state
from control.api.tokens import NO_STORE, limited_mint
from control.errors import ProblemError, Unauthorized
from control.federation.service import VerifiedIdToken, caller_for_id_token
from control.identity.caller import Caller
from control.identity.service import caller_for_key
from control.kit.db import end_unit_of_work
from control.kit.routing import Access, table_entry
from control.state import AppState
from control.tokens.oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_CREDENTIALS,
    ERRORS,
    GRANT_TYPES,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    SUBJECT_TOKEN_TYPES,
    TOKEN_EXCHANGE,
    OAuthError,
    check_targets,
    parse_form,
    token_body,
    token_request,
)
from control.tokens.schemas import TokenRequest
from control.tokens.service import Minted, Refused

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# Sent with every `invalid_client`: HTTP requires a challenge on a 401, and Basic is the scheme
# a client may retry with.
BASIC_CHALLENGE = 'Basic realm="control"'

# Ends the request's unit of work the way the JSON route's does (`deps.get_session`).
_unit_of_work = contextlib.asynccontextmanager(get_session)


@dataclass(frozen=True)
class Presented:
    """The credential an OAuth request presents: its kind (as a route's `Access.accepts` names
    it), the secret, the client id it was presented under, and the error it earns if refused."""

    kind: str
    secret: str
    client_id: str | None
    refused: str

    @property
    def exchanged(self) -> bool:
        return self.client_id is None


async def token_form(request: Request) -> Response:
    state = await get_state(request)
    entry = table_entry(request.scope)
    assert entry is not None
    try:
        params = parse_form(await request.body())
        grant_type = params.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "`grant_type` is required")
        if grant_type == CLIENT_CREDENTIALS:
            presented = _client(request, params)
        elif grant_type == TOKEN_EXCHANGE:
            presented = _subject(request, params)
        else:
            raise OAuthError(
                "unsupported_grant_type", f"`grant_type` is one of: {', '.join(GRANT_TYPES)}"
            )
        if presented.kind not in entry.access.accepts:
            raise OAuthError(presented.refused, "this credential is not accepted here")
        body = token_request(params.get("scope"))
        check_targets(params, state.settings.audience)
        verified = None
        if presented.kind == ID_TOKEN:
            try:
                verified = await verify_presented_id_token(state, presented.secret)
            except Unauthorized as exc:
                raise OAuthError("invalid_grant", exc.detail) from None
        async with _unit_of_work(state) as session:
            outcome = await run_in_threadpool(
                _mint, state, session, entry.access, presented, verified, body
            )
    except OAuthError as exc:
        return oauth_error(exc)
    except ProblemError as exc:
        if exc.code == "too_many_streams":
            return oauth_error(OAuthError("invalid_scope", exc.detail))
        raise
    if isinstance(outcome, Refused):
        # The refusal and its audit event were committed before this answer.
        return oauth_error(OAuthError("invalid_scope", outcome.problem().detail))
    return JSONResponse(
        token_body(outcome.response, exchanged=presented.exchanged), headers=NO_STORE
    )


def oauth_error(error: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _client(request: Request, params: dict[str, str]) -> Presented:
    """The client of a client-credentials request, by exactly one method (RFC 6749 §2.3)."""
    header = request.headers.get("authorization")
    posted_id, posted_secret = params.get("client_id"), params.get("client_secret")
    if header is not None:
        if posted_secret is not None:
            raise OAuthError(
                "invalid_request",
                "authenticate the client one way: HTTP Basic or client_id and client_secret "
                "in the form, not both",
            )
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError(
                "invalid_client",
                "client authentication is HTTP Basic (client_secret_basic) or client_id and "
                "client_secret in the form (client_secret_post)",
            )
        client_id, secret = _basic(credentials.strip())
        if posted_id is not None and posted_id != client_id:
            raise OAuthError("invalid_request", "`client_id` is not the HTTP Basic client id")
        return Presented(API_KEY, secret, client_id, "invalid_client")
    if posted_id is None or posted_secret is None:
        raise OAuthError(
            "invalid_client",
            "client authentication is required: HTTP Basic, or client_id and client_secret",
        )
    return Presented(API_KEY, posted_secret, posted_id, "invalid_client")


def _basic(credentials: str) -> tuple[str, str]:
    """`client_id:client_secret`, each form-urlencoded, in base64 (RFC 6749 §2.3.1)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        client_id, colon, secret = decoded.partition(":")
        client_id = unquote_plus(client_id, errors="strict")
        secret = unquote_plus(secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "the HTTP Basic credentials are malformed") from None
    if not colon or not client_id or not secret:
        raise OAuthError("invalid_client", "the HTTP Basic credentials are malformed")
    return client_id, secret


def _subject(request: Request, params: dict[str, str]) -> Presented:
    """The subject token of a token exchange: the credential, so no client authenticates."""
    if request.headers.get("authorization") is not None or params.keys() & {
        "client_id",
        "client_secret",
    }:
        raise OAuthError(
            "invalid_request",
            "token exchange takes no client authentication: the subject token is the credential",
        )
    if params.keys() & {"actor_token", "actor_token_type"}:
        raise OAuthError("invalid_request", "`actor_token` (delegation) is not supported")
    token, token_type = params.get("subject_token"), params.get("subject_token_type")
    if token is None or token_type is None:
        raise OAuthError("invalid_request", "`subject_token` and `subject_token_type` are required")
    requested = params.get("requested_token_type")
    if requested is not None and requested != JWT_TOKEN_TYPE:
        raise OAuthError("invalid_request", f"`requested_token_type` may only be {JWT_TOKEN_TYPE}")
    if token_type == ID_TOKEN_TYPE:
        return Presented(ID_TOKEN, token, None, "invalid_grant")
    if token_type == ACCESS_TOKEN_TYPE:
        return Presented(API_KEY, token, None, "invalid_grant")
    raise OAuthError(
        "invalid_request", f"`subject_token_type` is one of: {', '.join(SUBJECT_TOKEN_TYPES)}"
    )


def _mint(
    state: AppState,
    session: Session,
    access: Access,
    presented: Presented,
    verified: VerifiedIdToken | None,
    body: TokenRequest,
) -> Minted | Refused:
    """On a worker thread, in the request's unit of work: the caller, the route's role rule,
    then the JSON route's `limited_mint`; commits here, as `commit_on_its_thread` does."""
    try:
        caller = _caller(state, session, presented, verified)
    except Unauthorized as exc:
        detail = "client authentication failed" if presented.refused == "invalid_client" else None
        raise OAuthError(presented.refused, detail or exc.detail) from None
    if not caller.has_any(access.roles):
        needed = " or ".join(sorted(access.roles))
        raise OAuthError(
            "invalid_grant" if presented.exchanged else "unauthorized_client",
            f"minting sync tokens needs the {needed} role",
        )
    outcome = limited_mint(state, session, caller, body)
    end_unit_of_work(session, False)
    return outcome


def _caller(
    state: AppState, session: Session, presented: Presented, verified: VerifiedIdToken | None
) -> Caller:
    if verified is not None:
        return caller_for_id_token(session, verified)
    if presented.client_id is not None:
        return caller_for_client(state, session, presented.client_id, presented.secret)
    return caller_for_key(session, state.credential_pepper, presented.secret)


# --- the spec -----------------------------------------------------------------------------
# The form and its answers, merged into the route's operation beside what the JSON model gives.

_TOKEN_FORM_SCHEMA: dict[str, Any] = {
    "title": "OAuthTokenForm",
    "type": "object",
    "description": (
        "An OAuth 2.0 token request (docs/oauth.md). Each parameter at most once; one without "
        "a value counts as omitted."
    ),
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": list(GRANT_TYPES)},
        "scope": {
            "type": "string",
            "description": (
                "Space-separated `stream:<stream>` (at least one), `query_set:<name>[@<version>]` "
                "and `op:<op>` tokens: the `streams`, `query_sets` and `ops` of a JSON request"
            ),
        },
        "client_id": {
            "type": "string",
            "description": "client_credentials, client_secret_post: a credential's id",
        },
        "client_secret": {
            "type": "string",
            "description": "client_credentials, client_secret_post: that credential's API key",
        },
        "subject_token": {
            "type": "string",
            "description": "token exchange: an upstream ID token, or an API key",
        },
        "subject_token_type": {"type": "string", "enum": list(SUBJECT_TOKEN_TYPES)},
        "requested_token_type": {"type": "string", "enum": [JWT_TOKEN_TYPE]},
        "resource": {"type": "string", "description": "Only the token audience"},
        "audience": {"type": "string", "description": "Only the token audience"},
    },
    "examples": [
        {
            "grant_type": CLIENT_CREDENTIALS,
            "client_id": "cred_01JV6M4C2D9F5H1K7M3N8P4Q6R",
            "client_secret": "ctl_a5mjfdbla27LRe_T2ev9hF5q38nicIVDExPAT7B7SrM",
            "scope": "stream:run:01J9ZK query_set:run_events op:subscribe",
        }
    ],
}


def _error_schema(errors: tuple[str, ...]) -> dict[str, Any]:
    return {
        "schema": {
            "title": "OAuthError",
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "enum": list(errors)},
                "error_description": {"type": "string"},
            },
        }
    }


OPENAPI_EXTRA: dict[str, Any] = {
    # The operation's description, both bodies included, is `mint_token`'s docstring.
    "requestBody": {"content": {FORM_MEDIA_TYPE: {"schema": _TOKEN_FORM_SCHEMA}}},
    "responses": {
        "400": {
            "description": "OAuth error (form requests)",
            "content": {
                "application/json": _error_schema(
                    tuple(error for error in ERRORS if error != "invalid_client")
                )
            },
        },
        "401": {"content": {"application/json": _error_schema(("invalid_client",))}},
    },
}
