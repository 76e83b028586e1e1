from __future__ import annotations

from fastapi import Response

from control.api.auth import CallerDep, ViewDep
from control.api.deps import SessionDep, StateDep
from control.identity import service
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


def create_principal(body: PrincipalCreate, session: SessionDep, caller: CallerDep) -> PrincipalOut:
    return PrincipalOut.model_validate(service.create_principal(session, caller, body))


def list_principals(view: ViewDep, page: PageDep) -> Page[PrincipalOut]:
    rows, cursor = view.page(Principal, page, Principal.id)
    return Page(items=[PrincipalOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_principal(principal_id: str, view: ViewDep) -> PrincipalOut:
    return PrincipalOut.model_validate(view.get(Principal, principal_id, "principal"))


def update_principal(
    principal_id: str, body: PrincipalUpdate, view: ViewDep, caller: CallerDep
) -> PrincipalOut:
    principal = view.get(Principal, principal_id, "principal")
    return PrincipalOut.model_validate(
        service.update_principal(view.session, caller, principal, body)
    )


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
    return Page(items=[CredentialOut.model_validate(row) for row in rows], next_cursor=cursor)


def revoke_credential(credential_id: str, view: ViewDep, caller: CallerDep) -> Response:
    service.revoke_credential(
        view.session, caller, view.get(Credential, credential_id, "credential")
    )
    return Response(status_code=204)
