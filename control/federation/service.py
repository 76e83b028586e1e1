"""Trusted issuers (admin side) and signing in with an upstream ID token (token endpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from control.audit.service import record
from control.errors import Conflict, Unauthorized, Unavailable
from control.federation.models import FederatedIdentity, TrustedIssuer
from control.federation.schemas import TrustedIssuerBody
from control.federation.verifier import (
    UpstreamRejected,
    UpstreamUnavailable,
    UpstreamVerifier,
    unverified_issuer,
)
from control.identity.auth import Caller
from control.identity.models import Principal
from control.kit.db import utcnow
from control.kit.ids import new_id
from control.views import OrgView


def _check_unclaimed(view: OrgView, body: TrustedIssuerBody, exclude_id: str | None) -> None:
    """An (issuer, audience) pair may belong to one org only, or a token would be ambiguous."""
    for other in view.session.scalars(
        select(TrustedIssuer).where(TrustedIssuer.issuer == body.issuer)
    ):
        if other.id == exclude_id:
            continue
        if other.org_id == view.org_id:
            raise Conflict(f"{body.issuer} is already trusted by this org")
        if set(other.audiences) & set(body.audiences):
            raise Conflict(f"an audience of {body.issuer} is already trusted elsewhere")


def _apply(row: TrustedIssuer, body: TrustedIssuerBody) -> None:
    row.issuer = body.issuer
    row.audiences = sorted(set(body.audiences))
    row.default_roles = sorted(set(body.default_roles))
    row.role_claim = body.role_claim
    row.role_map = {key: sorted(set(roles)) for key, roles in body.role_map.items()}
    row.algorithms = sorted(set(body.algorithms))
    row.updated_at = utcnow()


def _summary(row: TrustedIssuer) -> dict[str, Any]:
    return {"issuer": row.issuer, "audiences": row.audiences, "default_roles": row.default_roles}


def create_trusted_issuer(view: OrgView, caller: Caller, body: TrustedIssuerBody) -> TrustedIssuer:
    _check_unclaimed(view, body, None)
    row = TrustedIssuer(id=new_id("tis"), org_id=view.org_id, created_at=utcnow())
    _apply(row, body)
    view.session.add(row)
    view.session.flush()
    record(
        view.session,
        actor=caller.principal_id,
        action="trusted_issuer.create",
        target=row.id,
        org_id=view.org_id,
        detail={"after": _summary(row)},
    )
    return row


def update_trusted_issuer(
    view: OrgView, caller: Caller, row: TrustedIssuer, body: TrustedIssuerBody
) -> TrustedIssuer:
    _check_unclaimed(view, body, row.id)
    before = _summary(row)
    _apply(row, body)
    view.session.flush()
    record(
        view.session,
        actor=caller.principal_id,
        action="trusted_issuer.update",
        target=row.id,
        org_id=view.org_id,
        detail={"before": before, "after": _summary(row)},
    )
    return row


def delete_trusted_issuer(view: OrgView, caller: Caller, row: TrustedIssuer) -> None:
    view.session.delete(row)
    view.session.flush()
    record(
        view.session,
        actor=caller.principal_id,
        action="trusted_issuer.delete",
        target=row.id,
        org_id=view.org_id,
        detail={"before": _summary(row)},
    )


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and not value.startswith("ctl_")


def _mapped_roles(row: TrustedIssuer, claims: dict[str, Any]) -> set[str]:
    if not row.role_claim:
        return set()
    values = claims.get(row.role_claim)
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return set()
    return {
        role for value in values if isinstance(value, str) for role in row.role_map.get(value, [])
    }


@dataclass(frozen=True)
class VerifiedIdToken:
    """An upstream ID token whose signature and claims checked out against a trusted issuer."""

    trusted_issuer_id: str
    claims: dict[str, Any]


def verify_id_token(
    sessions: sessionmaker[Session], verifier: UpstreamVerifier, token: str
) -> VerifiedIdToken:
    """Step one of signing in with an ID token, before the request's unit of work opens.

    Verifying may fetch the provider's discovery document and keys, and a provider can be slow:
    nothing another request needs may wait on it. So the trusted issuers are read in a session
    of their own, closed before any fetch, and no database connection or SQLite request lock
    is held while the provider answers.
    """
    try:
        issuer = unverified_issuer(token)
        with sessions() as session:
            candidates = [
                (row.id, list(row.audiences), list(row.algorithms))
                for row in session.scalars(
                    select(TrustedIssuer).where(TrustedIssuer.issuer == issuer)
                )
            ]
        if not candidates:
            raise UpstreamRejected("unknown_issuer", "the token's issuer is not trusted")
        last_error: UpstreamRejected | None = None
        for trusted_issuer_id, audiences, algorithms in candidates:
            # At most one org per (issuer, audience): the first match wins.
            try:
                claims = verifier.verify(
                    token, issuer=issuer, audiences=audiences, algorithms=algorithms
                )
            except UpstreamRejected as exc:
                last_error = exc
                continue
            return VerifiedIdToken(trusted_issuer_id, claims)
        assert last_error is not None
        raise last_error
    except UpstreamRejected as exc:
        raise Unauthorized(f"the ID token was refused: {exc}", reason=exc.reason) from None
    except UpstreamUnavailable as exc:
        raise Unavailable(str(exc)) from None


def caller_for_id_token(session: Session, verified: VerifiedIdToken) -> Caller:
    """Step two, in the request's unit of work: the caller the verified token stands for,
    creating its principal on first use."""
    trusted = session.get(TrustedIssuer, verified.trusted_issuer_id)
    if trusted is None:  # no longer trusted since step one
        raise Unauthorized(
            "the ID token was refused: the token's issuer is not trusted", reason="unknown_issuer"
        )
    principal = _principal_for(session, trusted, verified.claims)
    if principal.disabled:
        raise Unauthorized("the principal is disabled", reason="invalid_credential")
    return Caller(
        principal_id=principal.id,
        org_id=principal.org_id,
        kind=principal.kind,
        roles=frozenset(principal.roles) | _mapped_roles(trusted, verified.claims),
    )


def _principal_for(session: Session, trusted: TrustedIssuer, claims: dict[str, Any]) -> Principal:
    subject = str(claims["sub"])
    link = session.scalar(
        select(FederatedIdentity).where(
            FederatedIdentity.trusted_issuer_id == trusted.id,
            FederatedIdentity.subject == subject,
        )
    )
    if link is not None:
        principal = session.get(Principal, link.principal_id)
        assert principal is not None  # the link cascades with its principal
        return principal
    name = next(
        (str(claims[c])[:200] for c in ("email", "preferred_username", "name") if claims.get(c)),
        subject[:200],
    )
    roles = sorted(set(trusted.default_roles) | _mapped_roles(trusted, claims))
    principal = Principal(
        id=new_id("prn"), org_id=trusted.org_id, kind="user", name=name, roles=roles
    )
    try:
        with session.begin_nested():
            session.add(principal)
            session.flush()
            session.add(
                FederatedIdentity(
                    id=new_id("fid"),
                    org_id=trusted.org_id,
                    trusted_issuer_id=trusted.id,
                    subject=subject,
                    principal_id=principal.id,
                )
            )
            session.flush()
    except IntegrityError:
        # A concurrent first use created it: use theirs.
        return _principal_for(session, trusted, claims)
    record(
        session,
        actor=principal.id,
        action="principal.federated_created",
        target=principal.id,
        org_id=trusted.org_id,
        detail={"issuer": trusted.issuer, "trusted_issuer_id": trusted.id, "roles": roles},
    )
    return principal
