"""Orgs, principals and credentials: each change audited in the same transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control.audit.service import Auditor
from control.errors import Conflict, InvalidRequest, Unauthorized
from control.identity.authority import ADMIN_ROLE, OPERATOR_ROLE, require_authority
from control.identity.caller import Caller, effective_roles
from control.identity.models import Credential, Org, Principal
from control.identity.orgs import bump_policy_rev
from control.identity.repository import CALLER_BY_KEY_HASH, TOUCH_CREDENTIAL
from control.identity.schemas import CredentialCreate, PrincipalCreate, PrincipalUpdate
from control.identity.secrets import (
    DISPLAY_PREFIX_LENGTH,
    display_prefix,
    hash_api_key,
    looks_like_api_key,
    new_api_key,
)
from control.kit.db import utcnow
from control.kit.ids import new_id
from control.kit.schemas import Name
from control.observability.context import credential_presented, identify
from control.observability.hooks import auto_revoked, principal_changed
from control.revocations.models import Revocation
from control.revocations.service import revoke
from control.views import OrgView

_ORG_NAME: TypeAdapter[str] = TypeAdapter(Name)
DEFAULT_ROLES = {"user": ["member"], "device": ["member"], "service": ["service"]}


def summarize_principal(principal: Principal) -> dict[str, Any]:
    return {"kind": principal.kind, "roles": list(principal.roles), "disabled": principal.disabled}


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def summarize_credential(credential: Credential) -> dict[str, Any]:
    """What the audit log says about a credential: never its key, nor its hash."""
    return {
        "principal_id": credential.principal_id,
        "name": credential.name,
        "prefix": credential.prefix,
        "expires_at": _when(credential.expires_at),
        "revoked_at": _when(credential.revoked_at),
    }


def bootstrap_org(session: Session, pepper: bytes, org_name: str) -> dict[str, str]:
    """Create an org, its first admin and that admin's API key. The first org ever is the
    operator org: its first admin also holds `operator` (the issuer's keys are theirs)."""
    try:
        org_name = _ORG_NAME.validate_python(org_name)
    except ValidationError:
        raise InvalidRequest(
            "an org name is 1 to 200 characters, without control characters"
        ) from None
    if session.scalar(select(Org.id).where(Org.name == org_name)) is not None:
        raise Conflict(f"an org named {org_name!r} already exists")
    first = session.scalar(select(func.count()).select_from(Org)) == 0
    org = Org(id=new_id("org"), name=org_name, policy_rev=1, is_operator=first)
    session.add(org)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent bootstrap took the name, or became the operator org first.
        raise Conflict("another bootstrap ran at the same time; run this one again") from None
    roles = [ADMIN_ROLE, OPERATOR_ROLE] if first else [ADMIN_ROLE]
    admin = Principal(
        id=new_id("prn"),
        org_id=org.id,
        kind="user",
        name=f"{org_name} admin"[:200],
        roles=roles,
    )
    session.add(admin)
    session.flush()
    issued, key = _new_credential(session, pepper, admin, name="bootstrap", expires_at=None)
    Auditor(session, "cli", org.id).record(
        "org.bootstrap",
        org.id,
        {"name": org_name, "admin": admin.id, "operator": first, "credential": issued.id},
    )
    return {"org_id": org.id, "principal_id": admin.id, "api_key": key}


def require_authority_over(caller: Caller, principal: Principal, action: str) -> None:
    """403 unless `caller` holds every privileged role `principal` holds (see `authority`)."""
    require_authority(caller.roles, principal.roles, f"{action} a principal holding them")


def create_principal(session: Session, caller: Caller, body: PrincipalCreate) -> Principal:
    roles = sorted(set(body.roles if body.roles is not None else DEFAULT_ROLES[body.kind]))
    require_authority(caller.roles, roles, "grant them")
    principal = Principal(
        id=new_id("prn"), org_id=caller.org_id, kind=body.kind, name=body.name, roles=roles
    )
    session.add(principal)
    session.flush()
    rev = bump_policy_rev(session, caller.org_id)
    Auditor.of(session, caller).record(
        "principal.create",
        principal.id,
        {"after": summarize_principal(principal), "policy_rev": rev},
    )
    return principal


def update_principal(
    session: Session, caller: Caller, principal: Principal, body: PrincipalUpdate
) -> Principal:
    before = summarize_principal(principal)
    narrowed = False
    if body.roles is not None or body.disabled is not None:
        require_authority_over(caller, principal, "change")
    if body.roles is not None:
        roles = sorted(set(body.roles))
        require_authority(caller.roles, roles, "grant them")
        narrowed |= bool(set(principal.roles) - set(roles))
        principal.roles = roles
    if body.disabled is not None:
        narrowed |= body.disabled and not principal.disabled
        principal.disabled = body.disabled
    after = summarize_principal(principal)
    if before == after:
        return principal
    principal.updated_at = utcnow()
    session.flush()
    rev = bump_policy_rev(session, caller.org_id)
    if narrowed:
        auto_revoked(session, "principal", 1)
        # What the principal may get shrank: its outstanding tokens die now, not at expiry.
        revoke(
            session,
            org_id=caller.org_id,
            kind="subject",
            value=principal.id,
            reason="principal narrowed",
        )
    Auditor.of(session, caller).record(
        "principal.update",
        principal.id,
        {"before": before, "after": after, "policy_rev": rev, "revoked": narrowed},
    )
    principal_changed(session, principal.id, before, after)
    return principal


def delete_principal(session: Session, caller: Caller, principal: Principal) -> None:
    if principal.id == caller.principal_id:
        raise Conflict("a principal cannot delete itself")
    require_authority_over(caller, principal, "delete")
    before = summarize_principal(principal)
    session.delete(principal)
    session.flush()
    rev = bump_policy_rev(session, caller.org_id)
    revoke(session, org_id=caller.org_id, kind="subject", value=principal.id, reason="deleted")
    Auditor.of(session, caller).record(
        "principal.delete", principal.id, {"before": before, "policy_rev": rev}
    )


def _new_credential(
    session: Session, pepper: bytes, principal: Principal, *, name: str | None, expires_at: Any
) -> tuple[Credential, str]:
    key = new_api_key()
    credential = Credential(
        id=new_id("cred"),
        org_id=principal.org_id,
        principal_id=principal.id,
        name=name,
        prefix=key[:DISPLAY_PREFIX_LENGTH],
        key_hash=hash_api_key(pepper, key),
        expires_at=expires_at,
    )
    session.add(credential)
    session.flush()
    return credential, key


def issue_credential(
    session: Session, pepper: bytes, caller: Caller, principal: Principal, body: CredentialCreate
) -> tuple[Credential, str]:
    expires_at: datetime | None = body.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidRequest("`expires_at` must carry a timezone (RFC 3339)")
        if expires_at <= utcnow():
            raise InvalidRequest("`expires_at` is in the past")
    require_authority_over(caller, principal, "issue credentials for")
    credential, key = _new_credential(
        session, pepper, principal, name=body.name, expires_at=expires_at
    )
    Auditor.of(session, caller).record(
        "credential.create",
        credential.id,
        {
            "principal_id": principal.id,
            "prefix": credential.prefix,
            "after": summarize_credential(credential),
        },
    )
    return credential, key


def revoke_credential(
    session: Session, caller: Caller, credential: Credential, reason: str | None = None
) -> None:
    """Stop the credential authenticating and kill the tokens its principal holds: tokens do
    not name the credential that minted them, so the subject's tokens are revoked with it."""
    principal = session.get(Principal, credential.principal_id)
    if principal is not None:
        require_authority_over(caller, principal, "revoke the credentials of")
    before = summarize_credential(credential)
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
        session.flush()
    revoke(
        session,
        org_id=caller.org_id,
        kind="subject",
        value=credential.principal_id,
        reason=reason or f"credential {credential.id} revoked",
    )
    Auditor.of(session, caller).record(
        "credential.revoke",
        credential.id,
        {
            "principal_id": credential.principal_id,
            "before": before,
            "after": summarize_credential(credential),
        },
    )


def revoke_tokens(
    view: OrgView, caller: Caller, kind: str, value: str, reason: str | None
) -> Revocation:
    """An admin's revocation of one token (`jti`), every earlier token of a principal
    (`subject`) or a credential and its principal's tokens (`credential`), in the view's org.

    A `jti` is not looked up: the service keeps no ledger of minted jtis, so another org's jti
    is recorded in this org and changes nothing for the other (see `control.revocations`).
    """
    session = view.session
    if kind == "credential":
        credential = view.find(Credential, value)
        if credential is None:
            raise InvalidRequest(f"credential {value} is not a credential of this org")
        revoke_credential(session, caller, credential, reason=reason)
        return revoke(
            session, org_id=view.org_id, kind="credential", value=credential.id, reason=reason
        )
    if kind == "subject":
        principal = view.find(Principal, value)
        if principal is None:
            raise InvalidRequest(f"subject {value} is not a principal of this org")
        require_authority_over(caller, principal, "revoke the tokens of")
    row = revoke(session, org_id=view.org_id, kind=kind, value=value, reason=reason)
    Auditor(session, caller.principal_id, view.org_id).record(
        f"revocation.{kind}", value, {"cursor": row.cursor, "reason": reason}
    )
    return row


# Refresh `last_used_at` at most this often per credential: a write on every request would
# turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def presented_key_hash(pepper: bytes, presented: str) -> str:
    """The hash an API key is looked up by; 401 for what cannot be one."""
    credential_presented(display_prefix(presented))
    if not looks_like_api_key(presented):
        raise Unauthorized("the credential is not a valid API key", reason="invalid_credential")
    return hash_api_key(pepper, presented)


def caller_of_row(row: Any, now: datetime) -> tuple[Caller, bool]:
    """The caller of a credential row (`CALLER_COLUMNS`; None for an unknown key), and whether
    its `last_used_at` is due for an update; 401 otherwise. An expired key says so and when:
    only its holder can present it, and "renew it" is the answer they need. Unknown, revoked
    and disabled read alike."""
    if row is None or row.revoked_at is not None or row.disabled:
        raise Unauthorized("the credential is invalid", reason="invalid_credential")
    if row.expires_at is not None and row.expires_at <= now:
        expired = row.expires_at.isoformat().replace("+00:00", "Z")
        raise Unauthorized(
            f"the API key expired at {expired}; ask an admin for a new one",
            reason="expired_credential",
        )
    identify(row.org_id, row.principal_id)
    caller = Caller(
        principal_id=row.principal_id,
        org_id=row.org_id,
        kind=row.kind,
        roles=effective_roles(row.roles, operator_org=row.is_operator),
        credential_id=row.id,
    )
    return caller, row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION


def caller_for_key(session: Session, pepper: bytes, presented: str) -> Caller:
    """The caller an API key stands for (`caller_of_row`); 401 otherwise."""
    key_hash = presented_key_hash(pepper, presented)
    row = session.execute(CALLER_BY_KEY_HASH, {"key_hash": key_hash}).one_or_none()
    now = utcnow()
    caller, touch = caller_of_row(row, now)
    if touch:
        session.execute(TOUCH_CREDENTIAL, {"credential_id": caller.credential_id, "now": now})
    return caller
