from __future__ import annotations

from typing import Annotated

from fastapi import Body, Response

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
    """Create a principal in the caller's org: a `user`, `device` or `service`. Without `roles`,
    users and devices get `member` and services get `service`; conferring `admin` or `operator`
    needs the caller to hold it. Give it an API key with
    `POST /api/admin/principals/{principal_id}/credentials`. Audited; moves the org's
    `policy_rev`. Needs the `admin` role.
    """
    return PrincipalOut.model_validate(service.create_principal(session, caller, body))


def list_principals(view: ViewDep, page: PageDep) -> Page[PrincipalOut]:
    """The org's principals, a page at a time (`limit` 1 to 500, default 50); pass
    `next_cursor` back as `cursor` for the next page. Needs the `admin` role.
    """
    rows, cursor = view.page(Principal, page, Principal.id)
    return Page(items=[PrincipalOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_principal(principal_id: str, view: ViewDep) -> PrincipalOut:
    """One principal of the caller's org, by id. A principal of another org is 404, like a missing
    one. Needs the `admin` role.
    """
    return PrincipalOut.model_validate(view.get(Principal, principal_id, "principal"))


def update_principal(
    principal_id: str, body: PrincipalUpdate, view: ViewDep, caller: CallerDep
) -> PrincipalOut:
    """Replace a principal's roles, or disable or re-enable it; a field left out stays as it
    is. Removing a role or disabling it revokes the principal's outstanding tokens at once (the
    revocation feed carries it). Acting on a principal that holds `admin` or `operator`, or
    giving one of those roles, needs the caller to hold it too. Audited. Needs the `admin`
    role.
    """
    principal = view.get(Principal, principal_id, "principal")
    return PrincipalOut.model_validate(
        service.update_principal(view.session, caller, principal, body)
    )


def delete_principal(principal_id: str, view: ViewDep, caller: CallerDep) -> Response:
    """Delete a principal and its credentials, and revoke its tokens. A caller cannot delete itself
    (409 `conflict`), and deleting a principal that holds `admin` or `operator` needs the caller
    to hold those too. Streams it owned stay, without an owner. Audited. Needs the `admin` role.
    """
    service.delete_principal(view.session, caller, view.get(Principal, principal_id, "principal"))
    return Response(status_code=204)


def create_credential(
    principal_id: str,
    # Every field is optional, so is the body: no body is `{}`.
    body: Annotated[CredentialCreate, Body(default_factory=CredentialCreate)],
    view: ViewDep,
    caller: CallerDep,
    state: StateDep,
    response: Response,
) -> CredentialIssued:
    """Issue an API key (`ctl_…`) for a principal. The key is in this response only (sent with
    `Cache-Control: no-store`); the service keeps just a keyed hash of it, so store it now. With
    `expires_at` it stops working then; without, it works until revoked. The credential's `id` is
    also its OAuth client id. Issuing a key for a principal that holds `admin` or `operator` needs
    the caller to hold those too. Audited. Needs the `admin` role.
    """
    principal = view.get(Principal, principal_id, "principal")
    credential, key = service.issue_credential(
        view.session, state.credential_pepper, caller, principal, body
    )
    response.headers["Cache-Control"] = "no-store"
    return CredentialIssued(
        id=credential.id, key=key, prefix=credential.prefix, created_at=credential.created_at
    )


def list_credentials(principal_id: str, view: ViewDep, page: PageDep) -> Page[CredentialOut]:
    """A principal's API keys, a page at a time: names, display prefixes, expiry, revocation and
    last use. The keys themselves are never shown again. Needs the `admin` role.
    """
    view.get(Principal, principal_id, "principal")
    rows, cursor = view.page(
        Credential, page, Credential.id, Credential.principal_id == principal_id
    )
    return Page(items=[CredentialOut.model_validate(row) for row in rows], next_cursor=cursor)


def revoke_credential(credential_id: str, view: ViewDep, caller: CallerDep) -> Response:
    """Revoke an API key: it stops authenticating at once, and every token its principal holds
    is revoked with it (a token does not say which key minted it). Audited. Needs the `admin`
    role, and `admin` or `operator` too when the principal holds them.
    """
    service.revoke_credential(
        view.session, caller, view.get(Credential, credential_id, "credential")
    )
    return Response(status_code=204)
