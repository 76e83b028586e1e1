"""Introspection, the revocation feed and admin revocations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from control.audit.service import record
from control.deps import StateDep
from control.errors import InvalidRequest
from control.grants import Op
from control.identity.auth import CallerDep, ViewDep
from control.identity.models import Credential, Principal
from control.identity.service import require_authority_over, revoke_credential
from control.kit.pagination import MAX_LIMIT
from control.kit.schemas import Description, RequestBody
from control.policy.models import Stream
from control.runtime import GrantDenied, TokenRejected, authorize, verify_token
from control.tokens.models import Revocation
from control.tokens.revocations import revocation_reason, revoke

TokenText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
NO_STORE = {"Cache-Control": "no-store"}


class IntrospectRequest(RequestBody):
    token: TokenText
    stream: Annotated[str, StringConstraints(max_length=200)] | None = None
    query_set: Annotated[str, StringConstraints(max_length=80)] | None = None
    op: Op | None = None


class IntrospectResponse(BaseModel):
    active: bool
    reason: str | None = Field(default=None, description="why inactive, or why not allowed")
    sub: str | None = None
    org_id: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    grants: list[dict[str, Any]] | None = None
    policy_rev: int | None = None
    allowed: bool | None = Field(default=None, description="present when a stream was named")


def introspect(body: IntrospectRequest, state: StateDep, view: ViewDep) -> JSONResponse:
    settings = state.settings
    snapshot = state.keyring.snapshot
    try:
        claims = verify_token(
            body.token,
            snapshot.verification_keys.get,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.token_leeway_seconds,
        )
    except TokenRejected as exc:
        return _answer(IntrospectResponse(active=False, reason=exc.code))
    if claims.get("org_id") != view.org_id:
        # Another org's token: say no more than that it is not active here.
        return _answer(IntrospectResponse(active=False, reason="wrong_org"))
    reason = revocation_reason(view, jti=claims["jti"], subject=claims["sub"], iat=claims["iat"])
    if reason is not None:
        return _answer(IntrospectResponse(active=False, reason=reason))
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
        try:
            authorize(claims, body.stream, body.query_set, body.op or Op.SUBSCRIBE)
            # The registry has the last word: a grant on a stream the org has since deleted
            # (or never held) allows nothing, whatever the token says.
            if view.find(Stream, body.stream) is None:
                raise GrantDenied("stream_not_found", f"{body.stream} is not a stream of this org")
            answer.allowed = True
        except GrantDenied as exc:
            answer.allowed = False
            answer.reason = exc.code
    return _answer(answer)


def _answer(answer: IntrospectResponse) -> JSONResponse:
    return JSONResponse(answer.model_dump(exclude_none=True), headers=NO_STORE)


class RevocationCreate(RequestBody):
    kind: Literal["jti", "subject", "credential"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    reason: Description | None = None


class RevocationOut(BaseModel):
    cursor: str
    kind: str
    value: str
    not_before: datetime
    created_at: datetime


class RevocationFeed(BaseModel):
    items: list[RevocationOut]
    next_cursor: str = Field(description="Resume from here, even when nothing was new.")


def revocation_out(row: Revocation) -> RevocationOut:
    return RevocationOut(
        cursor=str(row.cursor),
        kind=row.kind,
        value=row.value,
        not_before=row.not_before,
        created_at=row.created_at,
    )


def create_revocation(body: RevocationCreate, view: ViewDep, caller: CallerDep) -> RevocationOut:
    session = view.session
    if body.kind == "credential":
        credential = view.find(Credential, body.value)
        if credential is None:
            raise InvalidRequest(f"credential {body.value} is not a credential of this org")
        revoke_credential(session, caller, credential, reason=body.reason)
        row = revoke(
            session, org_id=view.org_id, kind="credential", value=credential.id, reason=body.reason
        )
        return revocation_out(row)
    if body.kind == "subject":
        principal = view.find(Principal, body.value)
        if principal is None:
            raise InvalidRequest(f"subject {body.value} is not a principal of this org")
        require_authority_over(caller, principal, "revoke the tokens of")
    row = revoke(session, org_id=view.org_id, kind=body.kind, value=body.value, reason=body.reason)
    record(
        session,
        actor=caller.principal_id,
        action=f"revocation.{body.kind}",
        target=body.value,
        org_id=view.org_id,
        detail={"cursor": row.cursor, "reason": body.reason},
    )
    return revocation_out(row)


def revocation_feed(
    view: ViewDep,
    # At most 18 digits: every such cursor fits the 64-bit column on both backends.
    after: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> RevocationFeed:
    start = int(after) if after else 0
    rows = view.session.scalars(
        view.select(Revocation)
        .where(Revocation.cursor > start)
        .order_by(Revocation.cursor)
        .limit(limit)
    ).all()
    next_cursor = str(rows[-1].cursor) if rows else str(start)
    return RevocationFeed(items=[revocation_out(row) for row in rows], next_cursor=next_cursor)
