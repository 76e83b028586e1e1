"""Introspection: is this sync token active in the caller's org, and does it cover a stream?

`introspect_by_key` is the route's path: the token is verified (no database), then one read
(`INTROSPECT_READ`) returns the caller of the API key and, in the caller's org, what the
answer needs (the `jti`'s revocation, the subject's floor, the named stream); it writes
nothing, and hands back the key's `last_used_at` when it is due for the caller to commit.
`answer` is the decision on what was read.

The read is a transaction of its own, begun after the request arrived: a revocation committed
before it is seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from control.audit.writer import SideWrite
from control.grants import Op, stream_kind
from control.identity.service import presented_key_hash
from control.keys.service import KeySnapshot
from control.kit.db import utcnow
from control.runtime import GrantDenied, TokenRejected, VerifiedTokens, authorize
from control.settings import Settings
from control.tokens.fastpath import caller_of, epoch
from control.tokens.repository import INTROSPECT_READ
from control.tokens.schemas import IntrospectRequest, IntrospectResponse
from control.views import bindable


@dataclass(frozen=True, slots=True)
class Introspected:
    answer: IntrospectResponse
    # The key's `last_used_at`, when it is due for an update.
    touch: SideWrite | None


def _verified(
    keys: KeySnapshot, settings: Settings, verified: VerifiedTokens, token: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The token's claims, or why it is not active. A token introspected before skips its
    signature check (`verified`) while the key that signed it is still one this replica
    verifies with; its expiry is judged every time."""
    try:
        return (
            verified.claims(
                token,
                keys.verification_keys.get,
                issuer=settings.issuer,
                audience=settings.audience,
                leeway=settings.token_leeway_seconds,
                key_still_valid=keys.verification_keys.__contains__,
            ),
            None,
        )
    except TokenRejected as exc:
        return None, exc.code


def _named_stream(body: IntrospectRequest) -> str | None:
    """The stream id to look up: only a stream id is, as other text is no stream and may hold
    what a database refuses (NUL)."""
    stream = body.stream
    if stream is None or stream_kind(stream) is None or not bindable(stream):
        return None
    return stream


@dataclass(frozen=True, slots=True)
class IntrospectionRead:
    """`INTROSPECT_READ`'s parameters, and the token's claims (or why it is not active)."""

    params: dict[str, Any]
    claims: dict[str, Any] | None
    rejected: str | None


def prepare_read(
    *,
    pepper: bytes,
    presented: str,
    keys: KeySnapshot,
    settings: Settings,
    verified: VerifiedTokens,
    body: IntrospectRequest,
) -> IntrospectionRead:
    """What the read needs; 401 for a credential that cannot be an API key. The token is
    verified before the read (it needs no database), so that the read can carry the claims'
    lookups; nothing of it is answered unless the caller authenticates."""
    key_hash = presented_key_hash(pepper, presented)
    claims, rejected = _verified(keys, settings, verified, body.token)
    jti = claims.get("jti") if claims is not None else None
    subject = claims.get("sub") if claims is not None else None
    return IntrospectionRead(
        {
            "key_hash": key_hash,
            "jti": jti if isinstance(jti, str) and bindable(jti) else None,
            "subject": subject if isinstance(subject, str) and bindable(subject) else None,
            "stream": _named_stream(body),
        },
        claims,
        rejected,
    )


def introspect_by_key(
    connection: Connection,
    *,
    pepper: bytes,
    presented: str,
    roles: frozenset[str],
    keys: KeySnapshot,
    settings: Settings,
    verified: VerifiedTokens,
    body: IntrospectRequest,
) -> Introspected:
    """The answer for the caller of `presented` (401 as `caller_for_key` says; 403 without one
    of `roles`), from one read."""
    read = prepare_read(
        pepper=pepper,
        presented=presented,
        keys=keys,
        settings=settings,
        verified=verified,
        body=body,
    )
    row = connection.execute(INTROSPECT_READ, read.params).one_or_none()
    return decide(row, read, roles, body)


def decide(
    row: Any, read: IntrospectionRead, roles: frozenset[str], body: IntrospectRequest
) -> Introspected:
    """The answer from `INTROSPECT_READ`'s row (None: no such key), however it was read."""
    caller, touch = caller_of(row, utcnow(), roles)
    claims = read.claims
    if claims is None:
        return Introspected(IntrospectResponse(active=False, reason=read.rejected), touch)
    revoked = row.jti_revoked is not None
    floor = epoch(row.subject_floor)
    if not revoked and floor is not None and claims["iat"] < floor:
        revoked = True
    registered = row.stream_found is not None
    return Introspected(answer(caller.org_id, claims, body, revoked, registered), touch)


def answer(
    org_id: str,
    claims: dict[str, Any],
    body: IntrospectRequest,
    revoked: bool,
    registered: bool,
) -> IntrospectResponse:
    """The answer for a verified token's `claims` to a caller of `org_id`, given whether the
    token is revoked there and whether the named stream is registered there."""
    if claims.get("org_id") != org_id:
        # Another org's token: say no more than that it is not active here.
        return IntrospectResponse(active=False, reason="wrong_org")
    if revoked:
        return IntrospectResponse(active=False, reason="revoked")
    response = IntrospectResponse(
        active=True,
        sub=claims["sub"],
        org_id=claims["org_id"],
        exp=claims["exp"],
        iat=claims["iat"],
        jti=claims["jti"],
        grants=claims["grants"],
        policy_rev=claims.get("policy_rev"),
    )
    if body.stream is not None:
        # The registry has the last word: a grant on a stream the org has since deleted (or
        # never held) allows nothing, whatever the token says. It is also what a kind-wide
        # grant (`run:*`) needs: the stream's org, which is this org when the stream is
        # registered here and unknown otherwise (another org's stream reads as a missing one).
        try:
            authorize(
                claims,
                body.stream,
                body.query_set,
                body.op or Op.SUBSCRIBE,
                stream_org=org_id if registered else None,
            )
            response.allowed = True
        except GrantDenied as exc:
            response.allowed = False
            response.reason = exc.code
        if not registered and (response.allowed or response.reason == "stream_org_required"):
            response.allowed = False
            response.reason = "stream_not_found"
    return response
