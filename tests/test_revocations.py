"""Revocations: the admin API, the feed, introspection, automatic subject revocation, and the
one-second granularity of `iat`."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.factories import Api, OrgFixture

TOKEN = "/api/sync/token"


@pytest.fixture
def world(org_a: OrgFixture) -> dict[str, Any]:
    alice = org_a.principal("alice")
    service = org_a.principal("runtime", kind="service")
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:r1", owner_id=org_a.principals["alice"])
    rule = org_a.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    return {"alice": alice, "service": service, "rule": rule}


def mint(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post(TOKEN, {"streams": ["run:r1"], **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def active(world: dict[str, Any], token: str) -> dict[str, Any]:
    return world["service"].ok("POST", "/api/sync/introspect", {"token": token}, status=200)  # type: ignore[no-any-return]


def feed(world: dict[str, Any], after: str | None = None) -> dict[str, Any]:
    path = "/api/sync/revocations" + (f"?after={after}" if after else "")
    return world["service"].ok("GET", path, status=200)  # type: ignore[no-any-return]


def test_iat_granularity_around_a_subject_revocation(org_a: OrgFixture, world: dict) -> None:
    while time.time() % 1 > 0.4:  # start early in a second so all three land in it
        time.sleep(0.05)
    before = mint(world["alice"])
    revocation = org_a.admin.ok(
        "POST", "/api/admin/revocations", {"kind": "subject", "value": org_a.principals["alice"]}
    )
    after = mint(world["alice"])
    not_before = int(datetime.fromisoformat(revocation["not_before"]).timestamp())
    assert int(time.time()) < not_before, "the test ran too slowly to be meaningful"
    assert active(world, before["token"]) == {"active": False, "reason": "revoked"}
    assert active(world, after["token"])["active"] is True
    assert active(world, after["token"])["iat"] == not_before


def test_feed_is_ordered_and_resumable(org_a: OrgFixture, world: dict) -> None:
    empty = feed(world)
    assert empty["items"] == []
    start = empty["next_cursor"]
    first = mint(world["alice"])
    org_a.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": first["jti"]})
    org_a.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": "other"})
    page = feed(world, start)
    assert [(e["kind"], e["value"]) for e in page["items"]] == [
        ("jti", first["jti"]),
        ("jti", "other"),
    ]
    cursors = [int(e["cursor"]) for e in page["items"]]
    assert cursors == sorted(cursors)
    assert page["next_cursor"] == page["items"][-1]["cursor"]
    again = feed(world, page["next_cursor"])
    assert again == {"items": [], "next_cursor": page["next_cursor"]}
    bad = world["service"].get("/api/sync/revocations?after=abc")
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")
    assert world["alice"].get("/api/sync/revocations").status_code == 403


def test_feed_is_per_org(org_a: OrgFixture, org_b: OrgFixture, world: dict) -> None:
    org_b.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": "org-b-token"})
    assert all(e["value"] != "org-b-token" for e in feed(world)["items"])


def test_revocation_kinds_validate(org_a: OrgFixture, org_b: OrgFixture, world: dict) -> None:
    for body in (
        {"kind": "subject", "value": "prn_unknown"},
        {"kind": "credential", "value": "cred_unknown"},
        {"kind": "token", "value": "x"},
        {"kind": "jti", "value": ""},
    ):
        response = org_a.admin.post("/api/admin/revocations", body)
        assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), body
    # Another org's principal reads as unknown.
    foreign = org_b.admin.post(
        "/api/admin/revocations", {"kind": "subject", "value": org_a.principals["alice"]}
    )
    assert foreign.status_code == 422


def test_credential_revocation_kills_key_and_tokens(org_a: OrgFixture, world: dict) -> None:
    minted = mint(world["alice"])
    credentials = org_a.admin.ok(
        "GET", f"/api/admin/principals/{org_a.principals['alice']}/credentials", status=200
    )["items"]
    revocation = org_a.admin.ok(
        "POST", "/api/admin/revocations", {"kind": "credential", "value": credentials[0]["id"]}
    )
    assert revocation["kind"] == "credential"
    assert world["alice"].post(TOKEN, {"streams": ["run:r1"]}).status_code == 401
    assert active(world, minted["token"]) == {"active": False, "reason": "revoked"}
    kinds = [(e["kind"], e["value"]) for e in feed(world)["items"]]
    assert ("subject", org_a.principals["alice"]) in kinds


@pytest.mark.parametrize(
    "change",
    ["disable", "remove_role", "delete_rule", "narrow_rule", "deny_rule"],
)
def test_narrowing_changes_revoke_the_subject(change: str, org_a: OrgFixture, world: dict) -> None:
    older = mint(world["alice"])
    alice_id = org_a.principals["alice"]
    rule_id = world["rule"]["id"]
    if change == "disable":
        org_a.admin.ok("PATCH", f"/api/admin/principals/{alice_id}", {"disabled": True}, 200)
    elif change == "remove_role":
        org_a.admin.ok("PATCH", f"/api/admin/principals/{alice_id}", {"roles": ["viewer"]}, 200)
    elif change == "delete_rule":
        org_a.admin.ok("DELETE", f"/api/admin/grant-rules/{rule_id}", status=204)
    elif change == "narrow_rule":
        org_a.admin.ok(
            "PUT",
            f"/api/admin/grant-rules/{rule_id}",
            {
                "effect": "allow",
                "subjects": {"roles": ["member"]},
                "streams": {"kind": "run", "relation": "org"},
                "query_sets": ["run_events"],
                "ops": ["subscribe"],
            },
            200,
        )
    else:
        org_a.allow(effect="deny", query_sets=[], ops=["append"], roles=["member"])
    assert active(world, older["token"]) == {"active": False, "reason": "revoked"}


def test_widening_does_not_revoke(org_a: OrgFixture, world: dict) -> None:
    older = mint(world["alice"])
    org_a.query_set("run_more", ["run"])
    rule_id = world["rule"]["id"]
    org_a.admin.ok(
        "PUT",
        f"/api/admin/grant-rules/{rule_id}",
        {
            "effect": "allow",
            "subjects": {"roles": ["member", "viewer"]},
            "streams": {"kind": "run", "relation": "org"},
            "query_sets": ["run_events", "run_more"],
            "ops": ["subscribe", "append", "checkpoint"],
        },
        200,
    )
    org_a.admin.ok(
        "PATCH",
        f"/api/admin/principals/{org_a.principals['alice']}",
        {"roles": ["member", "x"]},
        200,
    )
    assert active(world, older["token"])["active"] is True
