"""Introspection's own path (`control.tokens.introspection.introspect_by_key`): the endpoint
authenticates its service key in the same read as the token's revocations, so what the route's
guard used to say it now says itself, in the same order.

- No credential, a key that is not one, an unknown key: 401, before a bad body's 422.
- A JWT presented as the bearer credential is never taken for an upstream ID token here: 401.
- A key without the `service` role: 403, before a bad body's 422.
- A service key's `last_used_at` is recorded (it rides the audit writer's batch).
- A subject revoked after its token was issued reads as revoked, from the same read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import select

from control.identity.models import Credential
from control.runtime import TokenRejected, VerifiedTokens
from control.state import AppState
from harness.api import Api
from tests.factories import OrgFixture

INTROSPECT = "/api/sync/introspect"
STREAM = "run:intro-1"


def _world(org: OrgFixture) -> tuple[Api, Api, str]:
    member = org.principal("member")
    service = org.principal("service", kind="service")
    org.query_set("run_events", ["run"])
    org.stream(STREAM, owner_id=org.principals["member"])
    org.allow(relation="org", query_sets=["run_events"])
    token = member.ok("POST", "/api/sync/token", {"streams": [STREAM]}, 200)["token"]
    return member, service, token


def _code(response: Any) -> str:
    return str(response.json()["code"])


def test_who_may_introspect_is_judged_before_the_body(org_a: OrgFixture) -> None:
    member, service, token = _world(org_a)
    client = org_a.client
    for headers in (
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer ctl_" + "x" * 40},
        {"Authorization": f"Bearer {token}"},  # a JWT: not an ID token route, not a key
    ):
        for body in ({"token": token}, {"nope": 1}):
            response = client.post(INTROSPECT, json=body, headers=headers)
            assert response.status_code == 401, (headers, body, response.text)
            assert _code(response) == "unauthorized"
    for body in ({"token": token}, {"nope": 1}):
        response = member.post(INTROSPECT, body)
        assert response.status_code == 403, response.text
        assert _code(response) == "forbidden"
    assert service.post(INTROSPECT, {"nope": 1}).status_code == 422
    assert service.ok("POST", INTROSPECT, {"token": token, "stream": STREAM}, 200)["allowed"]


def test_a_service_keys_use_is_recorded(state: AppState, org_a: OrgFixture) -> None:
    _member, service, token = _world(org_a)
    service_id = org_a.principals["service"]

    def last_used() -> Any:
        with state.sessions() as session:
            return session.scalars(
                select(Credential.last_used_at).where(Credential.principal_id == service_id)
            ).one()

    assert last_used() is None
    assert service.ok("POST", INTROSPECT, {"token": token}, 200)["active"] is True
    assert last_used() is not None


def test_a_revoked_subject_reads_as_revoked(org_a: OrgFixture) -> None:
    _member, service, token = _world(org_a)
    assert service.ok("POST", INTROSPECT, {"token": token}, 200)["active"] is True
    org_a.admin.ok(
        "POST",
        "/api/admin/revocations",
        {"kind": "subject", "value": org_a.principals["member"]},
        201,
    )
    answer = service.ok("POST", INTROSPECT, {"token": token, "stream": STREAM}, 200)
    assert answer == {"active": False, "reason": "revoked"}


def test_a_token_asked_about_again_is_judged_again(state: AppState, org_a: OrgFixture) -> None:
    """A token introspected before skips its signature check, never the rest: once the key
    that signed it is no longer one this replica verifies with, it is not active."""
    _member, service, token = _world(org_a)
    assert service.ok("POST", INTROSPECT, {"token": token}, 200)["active"] is True
    assert service.ok("POST", INTROSPECT, {"token": token}, 200)["active"] is True
    snapshot = state.keyring.snapshot
    state.keyring._snapshot = dataclasses.replace(snapshot, verification_keys={})
    try:
        answer = service.ok("POST", INTROSPECT, {"token": token}, 200)
        assert answer == {"active": False, "reason": "unknown_key"}
    finally:
        state.keyring._snapshot = snapshot
    assert service.ok("POST", INTROSPECT, {"token": token}, 200)["active"] is True


def test_a_remembered_token_still_expires(state: AppState, org_a: OrgFixture) -> None:
    _member, _service, token = _world(org_a)
    keys, settings = state.keyring.snapshot, state.settings
    remembered = VerifiedTokens(2)
    judge = {"issuer": settings.issuer, "audience": settings.audience}
    claims = remembered.claims(token, keys.verification_keys.get, leeway=0, **judge)
    # Judged a quarter of an hour later (a negative leeway moves "now" on): expired, although
    # its signature is not checked again.
    with pytest.raises(TokenRejected) as rejected:
        remembered.claims(token, lambda kid: None, leeway=-900, **judge)
    assert rejected.value.code == "expired"
    # The claims handed out are the caller's own: changing them changes no later answer.
    claims["grants"].clear()
    assert remembered.claims(token, lambda kid: None, leeway=0, **judge)["grants"]


def test_a_token_past_the_size_bound_is_not_remembered(state: AppState, org_a: OrgFixture) -> None:
    _member, _service, token = _world(org_a)
    keys, settings = state.keyring.snapshot, state.settings
    judge = {"issuer": settings.issuer, "audience": settings.audience, "leeway": 0}
    bounded = VerifiedTokens(2, max_token_bytes=len(token) - 1)
    assert bounded.claims(token, keys.verification_keys.get, **judge)["sub"]
    assert len(bounded) == 0  # verified, answered, not kept
    roomy = VerifiedTokens(2, max_token_bytes=len(token))
    roomy.claims(token, keys.verification_keys.get, **judge)
    assert len(roomy) == 1
