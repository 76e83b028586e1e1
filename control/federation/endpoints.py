from __future__ import annotations

from fastapi import Response

from control.deps import StateDep
from control.federation import service
from control.federation.models import TrustedIssuer
from control.federation.schemas import TrustedIssuerBody, TrustedIssuerOut
from control.identity.auth import CallerDep, ViewDep
from control.kit.pagination import Page, PageDep


def trusted_issuer_out(row: TrustedIssuer) -> TrustedIssuerOut:
    return TrustedIssuerOut(
        id=row.id,
        org_id=row.org_id,
        issuer=row.issuer,
        audiences=list(row.audiences),
        default_roles=list(row.default_roles),
        role_claim=row.role_claim,
        role_map=dict(row.role_map),
        algorithms=list(row.algorithms),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def create_trusted_issuer(
    body: TrustedIssuerBody, state: StateDep, view: ViewDep, caller: CallerDep
) -> TrustedIssuerOut:
    return trusted_issuer_out(service.create_trusted_issuer(view, caller, body, state.settings))


def list_trusted_issuers(view: ViewDep, page: PageDep) -> Page[TrustedIssuerOut]:
    rows, cursor = view.page(TrustedIssuer, page, TrustedIssuer.id)
    return Page(items=[trusted_issuer_out(row) for row in rows], next_cursor=cursor)


def get_trusted_issuer(issuer_id: str, view: ViewDep) -> TrustedIssuerOut:
    return trusted_issuer_out(view.get(TrustedIssuer, issuer_id, "trusted issuer"))


def update_trusted_issuer(
    issuer_id: str, body: TrustedIssuerBody, state: StateDep, view: ViewDep, caller: CallerDep
) -> TrustedIssuerOut:
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    return trusted_issuer_out(
        service.update_trusted_issuer(view, caller, row, body, state.settings)
    )


def delete_trusted_issuer(issuer_id: str, view: ViewDep, caller: CallerDep) -> Response:
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    service.delete_trusted_issuer(view, caller, row)
    return Response(status_code=204)
