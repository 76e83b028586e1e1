"""Who is calling: API-key authentication and the role guard the route table attaches."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Table, bindparam, select, update

from control.deps import SessionDep, StateDep
from control.errors import Forbidden, Unauthorized
from control.identity.authority import OPERATOR_ROLE
from control.identity.models import Credential, Org, Principal
from control.identity.secrets import hash_api_key, looks_like_api_key
from control.kit.db import utcnow
from control.kit.routing import Access
from control.views import OrgView

bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`ctl_…`).")

# Refresh `last_used_at` at most this often per credential: a write on every request would
# turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


# Built once: every authenticated request runs these, and building a statement costs more than
# SQLite takes to run it. Plain columns, not ORM entities: nothing here needs an identity map.
_credential_table, _principal_table, _org_table = (
    cast(Table, Credential.__table__),
    cast(Table, Principal.__table__),
    cast(Table, Org.__table__),
)
_credentials, _principals, _orgs = _credential_table.c, _principal_table.c, _org_table.c
_CALLER_BY_KEY_HASH = (
    select(
        _credentials.id,
        _credentials.revoked_at,
        _credentials.expires_at,
        _credentials.last_used_at,
        _principals.id.label("principal_id"),
        _principals.org_id,
        _principals.kind,
        _principals.roles,
        _principals.disabled,
        _orgs.is_operator,
    )
    .join_from(_credential_table, _principal_table, _principals.id == _credentials.principal_id)
    .join(_org_table, _orgs.id == _principals.org_id)
    .where(_credentials.key_hash == bindparam("key_hash"))
)
_TOUCH_CREDENTIAL = (
    update(_credential_table)
    .where(_credentials.id == bindparam("credential_id"))
    .values(last_used_at=bindparam("now"))
)


@dataclass(frozen=True)
class Caller:
    principal_id: str
    org_id: str
    kind: str
    roles: frozenset[str]
    credential_id: str | None = None

    def has_any(self, roles: frozenset[str]) -> bool:
        return bool(self.roles & roles)


def authenticate(
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    if credentials is None:
        raise Unauthorized("an `Authorization: Bearer` credential is required")
    presented = credentials.credentials
    if not looks_like_api_key(presented):
        raise Unauthorized("the credential is not a valid API key", reason="invalid_credential")
    key_hash = hash_api_key(state.credential_pepper, presented)
    row = session.execute(_CALLER_BY_KEY_HASH, {"key_hash": key_hash}).one_or_none()
    # Unknown, revoked, expired and disabled all read the same to the caller.
    rejected = Unauthorized("the credential is invalid", reason="invalid_credential")
    if row is None:
        raise rejected
    now = utcnow()
    if row.revoked_at is not None or row.disabled:
        raise rejected
    if row.expires_at is not None and row.expires_at <= now:
        raise rejected
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        session.execute(_TOUCH_CREDENTIAL, {"credential_id": row.id, "now": now})
    return Caller(
        principal_id=row.principal_id,
        org_id=row.org_id,
        kind=row.kind,
        roles=effective_roles(row.roles, operator_org=row.is_operator),
        credential_id=row.id,
    )


def effective_roles(roles: list[str] | frozenset[str], *, operator_org: bool) -> frozenset[str]:
    """The roles a principal acts with: `operator` only counts in the operator org (the
    issuer's keys are that org's), whatever a principal elsewhere has stored."""
    held = frozenset(roles)
    return held if operator_org else held - {OPERATOR_ROLE}


CallerDep = Annotated[Caller, Depends(authenticate)]


def require(access: Access) -> Callable[[Caller], Coroutine[Any, Any, None]]:
    """The dependency the route table attaches to a protected route."""

    async def guard(caller: CallerDep) -> None:
        if not caller.has_any(access.roles):
            needed = " or ".join(sorted(access.roles))
            raise Forbidden(f"this route needs the {needed} role")

    return guard


async def org_view(session: SessionDep, caller: CallerDep) -> OrgView:
    """The caller's view of org-owned rows (see `control.views`)."""
    return OrgView(session, caller.org_id)


ViewDep = Annotated[OrgView, Depends(org_view)]
