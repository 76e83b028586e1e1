"""OAuth 2.0 at the token endpoint: the parameters of a form request, the scope grammar, and the
answers, per RFC 6749 (client credentials, §4.4), RFC 8693 (token exchange) and RFC 8707
(`resource`).

A form request is the same request as a JSON `TokenRequest`, spelled differently: its `scope`
becomes a `TokenRequest` here, through the same model and so the same validation, and what is
minted is the same token. Only the spelling of the answer differs (`token_body`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from control.grants import (
    OP_ORDER,
    GrammarError,
    Op,
    is_query_set_name,
    parse_op,
    parse_query_set_ref,
)
from control.tokens.schemas import TokenRequest, TokenResponse

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a name
GRANT_TYPES = (CLIENT_CREDENTIALS, TOKEN_EXCHANGE)
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

# Token type identifiers (RFC 8693 §3). A subject token is an upstream ID token or an API key of
# this service (a bearer access token to it); what is issued is always a JWT.
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
SUBJECT_TOKEN_TYPES = (ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE)

# The scope grammar: `stream:<stream>`, `query_set:<name>[@<version>]`, `op:<op>`.
STREAM_SCOPE, QUERY_SET_SCOPE, OP_SCOPE = "stream:", "query_set:", "op:"
# What discovery advertises: the two open-ended prefixes, and every op token in full.
SCOPES_SUPPORTED = [STREAM_SCOPE, QUERY_SET_SCOPE, *(OP_SCOPE + op for op in OP_ORDER)]

# A token request has fewer than a dozen parameters; more is not a client, and each costs work.
MAX_PARAMETERS = 32

ERRORS = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
)

# RFC 6749 §5.2: error_description is printable ASCII without `"` and `\`.
_NOT_DESCRIBABLE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def describable(value: str, limit: int = 80) -> str:
    """`value` as it may appear in an `error_description`: any other character as `?`, cut to
    `limit` characters. Clients send what they like; the answer stays well-formed."""
    shown = _NOT_DESCRIBABLE.sub("?", value[:limit])
    return shown + ("..." if len(value) > limit else "")


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: 400, or 401 for `invalid_client`."""

    def __init__(self, error: str, description: str) -> None:
        assert error in ERRORS
        super().__init__(description)
        self.error = error
        self.description = describable(description, 300)
        self.status = 401 if error == "invalid_client" else 400

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def parse_form(body: bytes) -> dict[str, str]:
    """The parameters of an `application/x-www-form-urlencoded` body (UTF-8, RFC 6749 App. B).

    RFC 6749 §3.2: a parameter may not appear twice, and one without a value counts as omitted.
    Which of two values was meant is not for the server to guess, so a repeated parameter is
    refused whatever its values, `resource` and `audience` included: a sync token has one
    audience, so their repetition (which RFC 8693 allows) could never be honoured.
    """
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMETERS,
        )
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not UTF-8") from None
    except ValueError:
        raise OAuthError(
            "invalid_request", f"the form has more than {MAX_PARAMETERS} parameters"
        ) from None
    repeated = sorted(name for name, count in Counter(n for n, _ in pairs).items() if count > 1)
    if repeated:
        names = ", ".join(describable(name, 40) for name in repeated[:5])
        raise OAuthError("invalid_request", f"a parameter may appear only once: {names}")
    return {name: value for name, value in pairs if value}


_SCOPE_HELP = "scope tokens are stream:<stream>, query_set:<name>[@<version>] and op:<op>"


def token_request(scope: str | None) -> TokenRequest:
    """The `TokenRequest` a `scope` spells: its `stream:` values become `streams`, its
    `query_set:` values `query_sets`, its `op:` values `ops`. `invalid_scope` otherwise.

    Streams go through `TokenRequest`'s own validation, so a form accepts exactly the streams a
    JSON body does (ids, and whatever selectors the grammar gives them); query sets and ops are
    read with the grant grammar's parsers.
    """
    if not scope:
        raise OAuthError("invalid_scope", "`scope` must name at least one stream: stream:<stream>")
    streams: list[str] = []
    query_sets: list[str] = []
    ops: list[Op] = []
    for token in scope.split(" "):
        if not token:
            raise OAuthError("invalid_scope", "scope tokens are separated by single spaces")
        prefix, colon, value = token.partition(":")
        try:
            if prefix == STREAM_SCOPE[:-1] and colon:
                streams.append(value)
            elif prefix == QUERY_SET_SCOPE[:-1] and colon:
                query_sets.append(_query_set(value))
            elif prefix == OP_SCOPE[:-1] and colon:
                ops.append(parse_op(value))
            else:
                raise OAuthError(
                    "invalid_scope", f"unknown scope token {describable(token)}: {_SCOPE_HELP}"
                )
        except GrammarError as exc:
            raise OAuthError("invalid_scope", f"{describable(token)}: {exc}") from None
    if not streams:
        raise OAuthError("invalid_scope", "`scope` must name at least one stream: stream:<stream>")
    # A scope is a set: a token said twice is said once.
    streams = list(dict.fromkeys(streams))
    try:
        return TokenRequest.model_validate(
            {
                "streams": streams,
                "query_sets": list(dict.fromkeys(query_sets)) or None,
                "ops": list(dict.fromkeys(ops)) or None,
            }
        )
    except ValidationError as exc:
        raise OAuthError("invalid_scope", _scope_problem(exc, streams)) from None


def _query_set(value: str) -> str:
    if "@" in value:
        return str(parse_query_set_ref(value))
    if not is_query_set_name(value):
        raise GrammarError("invalid_query_set", f"{value!r} is not a query-set name or ref")
    return value


def _scope_problem(exc: ValidationError, streams: list[str]) -> str:
    for error in exc.errors():
        loc = error.get("loc", ())
        if len(loc) == 2 and loc[0] == "streams" and isinstance(loc[1], int):
            token = STREAM_SCOPE + streams[loc[1]]
            return f"{describable(token)} is not a stream id or selector"
        if loc and loc[0] in ("streams", "query_sets", "ops"):
            return f"too many {loc[0]} in `scope`"
    return "`scope` is invalid"


def check_targets(params: dict[str, str], audience: str) -> None:
    """`resource` (RFC 8707) and `audience` (RFC 8693) may only name the one audience every sync
    token has: anything else is a target this service cannot issue for (`invalid_target`)."""
    for name in ("resource", "audience"):
        value = params.get(name)
        if value is not None and value != audience:
            raise OAuthError(
                "invalid_target",
                f"`{name}` may only be this service's token audience, {describable(audience)}",
            )


def granted_scope(response: TokenResponse) -> str:
    """What was granted, in the scope grammar: the streams, the query sets and the ops of the
    token's grants (the `grants` field says which go with which stream)."""
    streams = [STREAM_SCOPE + grant.stream for grant in response.grants]
    refs = sorted({ref for grant in response.grants for ref in grant.query_sets})
    present = {op for grant in response.grants for op in grant.ops}
    ops = [OP_SCOPE + op for op in OP_ORDER if op in present]
    return " ".join([*streams, *(QUERY_SET_SCOPE + ref for ref in refs), *ops])


def token_body(response: TokenResponse, *, exchanged: bool) -> dict[str, Any]:
    """RFC 6749 §5.1 (and RFC 8693 §2.2.1 for an exchange) first, then this service's own
    fields, exactly as a JSON request gets them."""
    body: dict[str, Any] = {
        "access_token": response.token,
        "token_type": response.token_type,
        "expires_in": response.expires_in,
        "scope": granted_scope(response),
    }
    if exchanged:
        body["issued_token_type"] = JWT_TOKEN_TYPE
    for name, value in response.model_dump(mode="json").items():
        body.setdefault(name, value)
    return body
