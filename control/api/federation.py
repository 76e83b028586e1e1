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
    """Trust an OIDC identity provider: its ID tokens for one of `audiences` become credentials at
    the token endpoint. A subject's first ID token creates a `user` principal with
    `default_roles` (and the roles `role_map` gives its `role_claim` values). The service fetches
    the provider's discovery document and keys only from network targets its configuration
    allows; another target is 422. An issuer this org trusts already, or an issuer and audience
    another org trusts, is 409 `conflict`. Conferring `admin` or `operator` needs the caller to
    hold it. Audited. Needs the `admin` role.
    """
    return TrustedIssuerOut.model_validate(
        service.create_trusted_issuer(view, caller, body, state.settings)
    )


def list_trusted_issuers(view: ViewDep, page: PageDep) -> Page[TrustedIssuerOut]:
    """The identity providers the org trusts, a page at a time, with their audiences and the
    roles they confer. Needs the `admin` role.
    """
    rows, cursor = view.page(TrustedIssuer, page, TrustedIssuer.id)
    return Page(items=[TrustedIssuerOut.model_validate(row) for row in rows], next_cursor=cursor)


def get_trusted_issuer(issuer_id: str, view: ViewDep) -> TrustedIssuerOut:
    """One trusted issuer of the caller's org, by id (`tis_…`). Another org's issuer is 404,
    like a missing one. Needs the `admin` role.
    """
    return TrustedIssuerOut.model_validate(view.get(TrustedIssuer, issuer_id, "trusted issuer"))


def update_trusted_issuer(
    issuer_id: str, body: TrustedIssuerBody, state: StateDep, view: ViewDep, caller: CallerDep
) -> TrustedIssuerOut:
    """Replace a trusted issuer's settings, checked as on create. Pointing it at another issuer URL
    ends the links to every principal it signed in and revokes their tokens: the new issuer's
    subjects get principals of their own. New `default_roles` apply to principals created from
    then on; a new `role_map` applies from each principal's next ID token. Audited. Needs the
    `admin` role.
    """
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    return TrustedIssuerOut.model_validate(
        service.update_trusted_issuer(view, caller, row, body, state.settings)
    )


def delete_trusted_issuer(issuer_id: str, view: ViewDep, caller: CallerDep) -> Response:
    """Stop trusting an issuer: its ID tokens no longer authenticate, and the tokens of every
    principal it signed in are revoked. The principals stay, with their API keys. Audited. Needs
    the `admin` role.
    """
    row = view.get(TrustedIssuer, issuer_id, "trusted issuer")
    service.delete_trusted_issuer(view, caller, row)
    return Response(status_code=204)
