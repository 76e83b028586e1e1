from __future__ import annotations

from fastapi import Response

from control.api.auth import CallerDep, ViewDep
from control.api.deps import StateDep
from control.federation import service
from control.federation.models import TrustedIssuer
from control.federation.schemas import TrustedIssuerBody, TrustedIssuerOut
from control.kit.pagination import Page, PageDep


def create_trusted_issuer(
    body: TrustedIssuerBody, state: StateDep, view: ViewDep, caller: CallerDep
) -> TrustedIssuerOut:
    return TrustedIssuerOut.model_validate(
        service.create_trusted_issuer(view, caller, body, state.settings)
    )


def list_trusted_issuers(view: ViewDep, page: PageDep) -> Page[TrustedIssuerOut]:
    rows, cursor = view.page(TrustedIssuer, page, TrustedIssuer.id)
    return Page(items=[TrustedIssuerOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_trusted_issuer(issuer_id: str, view: ViewDep) -> TrustedIssuerOut:
    return TrustedIssuerOut.model_validate(view.get(TrustedIssuer, issuer_id, "trusted issuer"))


def update_trusted_issuer(
    issuer_id: str, body: TrustedIssuerBody, state: StateDep, view: ViewDep, caller: CallerDep
) -> TrustedIssuerOut:
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    return TrustedIssuerOut.model_validate(
        service.update_trusted_issuer(view, caller, row, body, state.settings)
    )


def delete_trusted_issuer(issuer_id: str, view: ViewDep, caller: CallerDep) -> Response:
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    service.delete_trusted_issuer(view, caller, row)
    return Response(status_code=204)
