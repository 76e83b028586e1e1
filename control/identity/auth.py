"""Who is calling: API-key authentication and the role guard the route table attaches."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update

from control.deps import SessionDep, StateDep
from control.errors import Forbidden, Unauthorized
from control.identity.models import Credential, Principal
from control.identity.secrets import hash_api_key, looks_like_api_key
from control.kit.db import utcnow
from control.kit.routing import Access
from control.views import OrgView

bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`ctl_…`).")

# Refresh `last_used_at` at most this often per credential: a write on every request would
# turn each read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


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
    row = session.execute(
        select(Credential, Principal)
        .join(Principal, Principal.id == Credential.principal_id)
        .where(Credential.key_hash == key_hash)
    ).one_or_none()
    # Unknown, revoked, expired and disabled all read the same to the caller.
    rejected = Unauthorized("the credential is invalid", reason="invalid_credential")
    if row is None:
        raise rejected
    credential, principal = row
    now = utcnow()
    if credential.revoked_at is not None or principal.disabled:
        raise rejected
    if credential.expires_at is not None and credential.expires_at <= now:
        raise rejected
    if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_RESOLUTION:
        session.execute(
            update(Credential).where(Credential.id == credential.id).values(last_used_at=now)
        )
    return Caller(
        principal_id=principal.id,
        org_id=principal.org_id,
        kind=principal.kind,
        roles=frozenset(principal.roles),
        credential_id=credential.id,
    )


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
