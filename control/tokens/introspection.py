"""Introspection: is this sync token active in the caller's org, and does it cover a stream?"""

from __future__ import annotations

from control.grants import Op, stream_kind
from control.keys.service import KeySnapshot
from control.policy.models import Stream
from control.revocations.service import revocation_reason
from control.runtime import GrantDenied, TokenRejected, authorize, verify_token
from control.settings import Settings
from control.tokens.schemas import IntrospectRequest, IntrospectResponse
from control.views import OrgView


def introspect(
    view: OrgView, keys: KeySnapshot, settings: Settings, body: IntrospectRequest
) -> IntrospectResponse:
    try:
        claims = verify_token(
            body.token,
            keys.verification_keys.get,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.token_leeway_seconds,
        )
    except TokenRejected as exc:
        return IntrospectResponse(active=False, reason=exc.code)
    if claims.get("org_id") != view.org_id:
        # Another org's token: say no more than that it is not active here.
        return IntrospectResponse(active=False, reason="wrong_org")
    reason = revocation_reason(view, jti=claims["jti"], subject=claims["sub"], iat=claims["iat"])
    if reason is not None:
        return IntrospectResponse(active=False, reason=reason)
    answer = IntrospectResponse(
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
        # Only a stream id is looked up: other text is no stream, and may hold what a database
        # refuses (NUL).
        registered = (
            stream_kind(body.stream) is not None and view.find(Stream, body.stream) is not None
        )
        try:
            authorize(
                claims,
                body.stream,
                body.query_set,
                body.op or Op.SUBSCRIBE,
                stream_org=view.org_id if registered else None,
            )
            answer.allowed = True
        except GrantDenied as exc:
            answer.allowed = False
            answer.reason = exc.code
        if not registered and (answer.allowed or answer.reason == "stream_org_required"):
            answer.allowed = False
            answer.reason = "stream_not_found"
    return answer
