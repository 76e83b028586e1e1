from __future__ import annotations

from fastapi import Response

from control.deps import SessionDep, StateDep
from control.identity import service
from control.identity.auth import CallerDep, ViewDep
from control.identity.models import Credential, Principal
from control.identity.schemas import (
    CredentialCreate,
    CredentialIssued,
    CredentialOut,
    PrincipalCreate,
    PrincipalOut,
    PrincipalUpdate,
)
from control.kit.pagination import Page, PageDep


def principal_out(row: Principal) -> PrincipalOut:
    return PrincipalOut(
        id=row.id,
        kind=row.kind,
        name=row.name,
        org_id=row.org_id,
        roles=list(row.roles),
        disabled=row.disabled,
    )


def credential_out(row: Credential) -> CredentialOut:
    return CredentialOut(
        id=row.id,
        principal_id=row.principal_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def create_principal(body: PrincipalCreate, session: SessionDep, caller: CallerDep) -> PrincipalOut:
    return principal_out(service.create_principal(session, caller, body))


def list_principals(view: ViewDep, page: PageDep) -> Page[PrincipalOut]:
    rows, cursor = view.page(Principal, page, Principal.id)
    return Page(items=[principal_out(row) for row in rows], next_cursor=cursor)


def get_principal(principal_id: str, view: ViewDep) -> PrincipalOut:
    return principal_out(view.get(Principal, principal_id, "principal"))


def update_principal(
    principal_id: str, body: PrincipalUpdate, view: ViewDep, caller: CallerDep
) -> PrincipalOut:
    principal = view.get(Principal, principal_id, "principal")
    return principal_out(service.update_principal(view.session, caller, principal, body))


def delete_principal(principal_id: str, view: ViewDep, caller: CallerDep) -> Response:
    service.delete_principal(view.session, caller, view.get(Principal, principal_id, "principal"))
    return Response(status_code=204)


def create_credential(
    principal_id: str,
    body: CredentialCreate,
    view: ViewDep,
    caller: CallerDep,
    state: StateDep,
    response: Response,
) -> CredentialIssued:
    principal = view.get(Principal, principal_id, "principal")
    credential, key = service.issue_credential(
        view.session, state.credential_pepper, caller, principal, body
    )
    response.headers["Cache-Control"] = "no-store"
    return CredentialIssued(
        id=credential.id, key=key, prefix=credential.prefix, created_at=credential.created_at
    )


def list_credentials(principal_id: str, view: ViewDep, page: PageDep) -> Page[CredentialOut]:
    view.get(Principal, principal_id, "principal")
    rows, cursor = view.page(
        Credential, page, Credential.id, Credential.principal_id == principal_id
    )
    return Page(items=[credential_out(row) for row in rows], next_cursor=cursor)


def revoke_credential(credential_id: str, view: ViewDep, caller: CallerDep) -> Response:
    service.revoke_credential(
        view.session, caller, view.get(Credential, credential_id, "credential")
    )
    return Response(status_code=204)
