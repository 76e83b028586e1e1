"""Trusted issuers (admin side) and signing in with an upstream ID token (token endpoint)."""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from control.audit.service import Auditor
from control.errors import Conflict, InvalidRequest, ProblemError, Unauthorized
from control.federation.models import FederatedIdentity, TrustedIssuer
from control.federation.network import NetworkPolicy, TargetRefused
from control.federation.schemas import TrustedIssuerBody
from control.federation.verifier import (
    UpstreamRejected,
    UpstreamUnavailable,
    UpstreamVerifier,
    unverified_issuer,
)
from control.identity.authority import require_authority
from control.identity.caller import Caller, effective_roles
from control.identity.models import Org, Principal
from control.kit.db import utcnow
from control.kit.ids import new_id
from control.observability.context import credential_presented, identify
from control.observability.hooks import auto_revoked
from control.revocations.service import revoke
from control.settings import Settings
from control.views import OrgView

log = logging.getLogger("control.federation")

MAX_NAME_CHARS = 200
# What a caller learns when an issuer's keys cannot be had: nothing about hosts, ports or
# upstream errors (the log has those), and the same words whatever went wrong.
ISSUER_UNAVAILABLE = "the ID token's issuer cannot be reached now; try again later"


class IssuerUnavailable(ProblemError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "issuer_unavailable", ISSUER_UNAVAILABLE, headers={"Retry-After": str(retry_after)}
        )


def conferred_roles(default_roles: list[str], role_map: dict[str, list[str]]) -> set[str]:
    """Every role a trusted issuer can put on the principals it signs in."""
    return set(default_roles).union(*role_map.values())


def _same_issuer(a: str, b: str) -> bool:
    # Scheme and host are case-insensitive, and a trailing slash is a typo, not another service.
    def key(url: str) -> str:
        scheme, _, rest = url.rstrip("/").partition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme.lower()}://{host.lower()}{slash}{path}"

    return key(a) == key(b)


def _issuer_problem(message: str) -> InvalidRequest:
    return InvalidRequest(
        f"`issuer` {message}",
        errors=[{"loc": ["body", "issuer"], "message": message, "type": "value_error"}],
    )


def _check_target(settings: Settings, body: TrustedIssuerBody) -> None:
    if _same_issuer(body.issuer, settings.issuer):
        # Its sync tokens are not ID tokens: trusting them would let any sync token sign in.
        raise _issuer_problem("is this service's own issuer, whose tokens are not ID tokens")
    try:
        NetworkPolicy.from_settings(settings).check_registration(body.issuer)
    except TargetRefused as exc:
        raise _issuer_problem(str(exc)) from None


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


def create_trusted_issuer(
    view: OrgView, caller: Caller, body: TrustedIssuerBody, settings: Settings
) -> TrustedIssuer:
    require_authority(
        caller.roles,
        conferred_roles(body.default_roles, body.role_map),
        "trust an issuer that confers it",
    )
    _check_target(settings, body)
    _check_unclaimed(view, body, None)
    row = TrustedIssuer(id=new_id("tis"), org_id=view.org_id, created_at=utcnow())
    _apply(row, body)
    view.session.add(row)
    view.session.flush()
    Auditor(view.session, caller.principal_id, view.org_id).record(
        "trusted_issuer.create", row.id, {"after": _summary(row)}
    )
    return row


def update_trusted_issuer(
    view: OrgView, caller: Caller, row: TrustedIssuer, body: TrustedIssuerBody, settings: Settings
) -> TrustedIssuer:
    # Both sides: editing or repointing an issuer that confers a role is conferring it.
    require_authority(
        caller.roles,
        conferred_roles(row.default_roles, row.role_map),
        "change a trusted issuer that confers it",
    )
    require_authority(
        caller.roles,
        conferred_roles(body.default_roles, body.role_map),
        "trust an issuer that confers it",
    )
    _check_target(settings, body)
    _check_unclaimed(view, body, row.id)
    before = _summary(row)
    unlinked = 0
    if body.issuer != row.issuer:
        # Another issuer's `sub` values are another namespace: a subject of the new issuer must
        # never sign in as whoever the old one's same `sub` was. The old links end here, with
        # their principals' tokens; users who moved with the issuer get new principals.
        unlinked = _end_links(view, row, "trusted issuer repointed")
        view.session.execute(
            delete(FederatedIdentity).where(FederatedIdentity.trusted_issuer_id == row.id)
        )
    _apply(row, body)
    view.session.flush()
    Auditor(view.session, caller.principal_id, view.org_id).record(
        "trusted_issuer.update",
        row.id,
        {"before": before, "after": _summary(row), "revoked_principals": unlinked},
    )
    return row


def _end_links(view: OrgView, row: TrustedIssuer, reason: str) -> int:
    """Revoke the sync tokens of every principal `row` signed in, while the links still say
    whose they are; returns how many principals that was."""
    principal_ids = sorted(
        set(
            view.session.scalars(
                select(FederatedIdentity.principal_id).where(
                    FederatedIdentity.trusted_issuer_id == row.id,
                    FederatedIdentity.org_id == view.org_id,
                )
            )
        )
    )
    for principal_id in principal_ids:
        revoke(view.session, org_id=view.org_id, kind="subject", value=principal_id, reason=reason)
    auto_revoked(view.session, "issuer", len(principal_ids))
    return len(principal_ids)


def delete_trusted_issuer(view: OrgView, caller: Caller, row: TrustedIssuer) -> None:
    require_authority(
        caller.roles,
        conferred_roles(row.default_roles, row.role_map),
        "stop trusting an issuer that confers it",
    )
    # The sync tokens it let its principals mint must not outlive the trust (the links go
    # with the row).
    revoked = _end_links(view, row, "trusted issuer deleted")
    view.session.delete(row)
    view.session.flush()
    Auditor(view.session, caller.principal_id, view.org_id).record(
        "trusted_issuer.delete", row.id, {"before": _summary(row), "revoked_principals": revoked}
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
    sessions: sessionmaker[Session], verifier: UpstreamVerifier, token: str, settings: Settings
) -> VerifiedIdToken:
    """Step one of signing in with an ID token, before the request's unit of work opens.

    Verifying may fetch the provider's discovery document and keys, and a provider can be slow:
    nothing another request needs may wait on it. So the trusted issuers are read in a session
    of their own, closed before any fetch, and no database connection or SQLite request lock
    is held while the provider answers.

    Every failure is a 401 with a precise, non-secret reason, or a 503 `issuer_unavailable`
    that says nothing of what went wrong upstream; the log says what did.
    """
    credential_presented("id_token")
    issuer = ""
    try:
        issuer = unverified_issuer(token)
        if _same_issuer(issuer, settings.issuer):
            raise UpstreamRejected("unknown_issuer", "the token's issuer is not trusted")
        network = NetworkPolicy.from_settings(settings)
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
                    token,
                    issuer=issuer,
                    audiences=audiences,
                    algorithms=algorithms,
                    network=network,
                )
            except UpstreamRejected as exc:
                last_error = exc
                continue
            return VerifiedIdToken(trusted_issuer_id, claims)
        assert last_error is not None
        raise last_error
    except UpstreamRejected as exc:
        # Attacker-chosen text is logged as a repr, so it cannot forge log lines.
        log.warning("ID token refused (%s) for issuer %.200r: %s", exc.reason, issuer, exc)
        raise Unauthorized(f"the ID token was refused: {exc}", reason=exc.reason) from None
    except UpstreamUnavailable as exc:
        # The verifier logged the cause; the caller learns only that it should retry.
        raise IssuerUnavailable(exc.retry_after) from None


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
    identify(principal.org_id, principal.id)
    return Caller(
        principal_id=principal.id,
        org_id=principal.org_id,
        kind=principal.kind,
        roles=effective_roles(
            set(principal.roles) | _mapped_roles(trusted, verified.claims),
            operator_org=_is_operator_org(session, trusted.org_id),
        ),
    )


def _is_operator_org(session: Session, org_id: str) -> bool:
    org = session.get(Org, org_id)
    return org is not None and org.is_operator


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
    name = principal_name(claims)
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
    Auditor(session, principal.id, trusted.org_id).record(
        "principal.federated_created",
        principal.id,
        {"issuer": trusted.issuer, "trusted_issuer_id": trusted.id, "roles": roles},
    )
    return principal


# ANSI escape sequences (CSI, OSC and two-character ones), removed whole: dropping only the ESC
# would leave "[31m" in the name.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")
_SPACES = re.compile(r"\s+")
_CLEAN = {"Cc": " ", "Cs": "\ufffd"}


def clean_name(value: str) -> str:
    """`value` made a valid `Name` (see control.kit.schemas), possibly empty: no escape
    sequences, control characters as spaces, lone surrogates (not encodable, so not storable)
    as U+FFFD, runs of whitespace collapsed, at most MAX_NAME_CHARS."""
    value = _ANSI.sub("", value)
    value = "".join(_CLEAN.get(unicodedata.category(char), char) for char in value)
    return _SPACES.sub(" ", value).strip()[:MAX_NAME_CHARS].strip()


def principal_name(claims: dict[str, Any]) -> str:
    """The display name of a principal an ID token creates: the first usable of its email,
    preferred_username and name, else its subject, else a placeholder."""
    for claim in ("email", "preferred_username", "name", "sub"):
        value = claims.get(claim)
        if isinstance(value, str):
            name = clean_name(value)
            if name:
                return name
    return "federated user"
