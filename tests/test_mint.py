"""The canonical token endpoint: claims, grants, policy relations, bounds, rate limit."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import pytest
from blake3 import blake3
from fastapi.testclient import TestClient
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from control.kit.routing import Status
from control.routes import ROUTES
from control.state import AppState
from control.tokens.ratelimit import RateLimiter
from tests.factories import Api, OrgFixture

TOKEN = "/api/sync/token"


def verify_independently(client: TestClient, token: str) -> dict[str, Any]:
    """Verify with joserfc against the served JWKS, found through OIDC discovery."""
    discovery = client.get("/.well-known/openid-configuration").json()
    jwks_path = discovery["jwks_uri"].removeprefix(discovery["issuer"])
    keys = KeySet.import_key_set(client.get(jwks_path).json())
    decoded = jose_jwt.decode(token, keys, algorithms=["ES256"])
    return dict(decoded.claims)


def expected_identity(issuer: str, subject: str) -> str:
    # SpacetimeDB: h = blake3("iss|sub")[..26]; c = blake3(C2 00 ++ h)[..4]; C2 00 ++ c ++ h.
    h = blake3(f"{issuer}|{subject}".encode()).digest()[:26]
    c = blake3(bytes([0xC2, 0x00]) + h).digest()[:4]
    return "c200" + c.hex() + h.hex()


@pytest.fixture
def world(org_a: OrgFixture) -> dict[str, Any]:
    """Org A: query sets, streams owned by alice and bob, and two members."""
    alice = org_a.principal("alice")
    bob = org_a.principal("bob")
    org_a.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
    org_a.query_set("run_checkpoints", ["run"], ["SELECT * FROM run_checkpoint_view"])
    org_a.query_set("worker_status", ["worker"])
    org_a.stream("run:alice1", owner_id=org_a.principals["alice"])
    org_a.stream("run:bob1", owner_id=org_a.principals["bob"])
    org_a.stream("worker:w-7")
    return {"alice": alice, "bob": bob}


def test_claims_exactly_as_designed(client: TestClient, org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events", "run_checkpoints"], ops=["subscribe", "append"])
    alice: Api = world["alice"]
    before = int(time.time())
    response = alice.post(
        TOKEN,
        {"streams": ["run:alice1"], "ops": ["subscribe", "append"], "device_id": "laptop-1"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    claims = verify_independently(client, body["token"])
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": body["kid"]}
    alice_id = org_a.principals["alice"]
    assert set(claims) == {
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "token_use", "org_id", "sid",
        "scope", "grants", "policy_rev",
    }  # fmt: skip
    assert claims["iss"] == "http://127.0.0.1:8080"
    assert claims["sub"] == alice_id
    assert claims["aud"] == "spacetimedb"
    assert claims["token_use"] == "sync"
    assert claims["org_id"] == org_a.org_id
    assert claims["sid"] == "laptop-1"
    assert claims["scope"] == "sync.subscribe sync.append"
    assert claims["grants"] == [
        {
            "stream": "run:alice1",
            "query_sets": ["run_checkpoints@1", "run_events@1"],
            "ops": ["subscribe", "append"],
        }
    ]
    assert all(isinstance(claims[c], int) for c in ("iat", "nbf", "exp", "policy_rev"))
    assert before <= claims["iat"] <= before + 2
    assert claims["exp"] - claims["iat"] == 300
    assert body["expires_in"] == 300
    assert body["token_type"] == "Bearer"
    assert body["subject"] == alice_id
    assert body["identity"] == expected_identity("http://127.0.0.1:8080", alice_id)
    assert body["identity"].startswith("c200") and len(body["identity"]) == 64
    assert body["jti"] == claims["jti"]
    assert body["policy_rev"] == claims["policy_rev"]
    assert body["grants"] == claims["grants"]
    assert body["denied"] == []
    assert body["expires_at"].endswith("Z") or body["expires_at"].endswith("+00:00")
    refresh = datetime.fromisoformat(body["refresh_after"]).timestamp()
    assert claims["iat"] + 0.74 * 300 <= refresh <= claims["iat"] + 0.86 * 300


def test_relations_owner_org_ids(org_a: OrgFixture, world: dict) -> None:
    alice, bob = world["alice"], world["bob"]
    org_a.allow(relation="owner", query_sets=["run_events"])
    assert alice.post(TOKEN, {"streams": ["run:alice1"]}).status_code == 200
    denied = alice.post(TOKEN, {"streams": ["run:bob1"]})
    assert denied.status_code == 403
    assert denied.json()["denied"] == [{"stream": "run:bob1", "reason": "not_permitted"}]
    org_a.allow(
        relation="ids",
        ids=["run:bob1"],
        query_sets=["run_events"],
        principal_ids=[org_a.principals["alice"]],
    )
    assert alice.post(TOKEN, {"streams": ["run:bob1"]}).status_code == 200
    # The worker stream needs an org-wide rule of its own kind.
    assert alice.post(TOKEN, {"streams": ["worker:w-7"]}).status_code == 403
    org_a.allow(kind="worker", relation="org", query_sets=["worker_status"])
    token = alice.post(TOKEN, {"streams": ["worker:w-7"]}).json()
    assert token["grants"][0]["query_sets"] == ["worker_status@1"]
    assert bob.post(TOKEN, {"streams": ["worker:w-7", "run:bob1"]}).status_code == 200


def test_deny_wins(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    org_a.allow(query_sets=["run_events", "run_checkpoints"], ops=["subscribe", "append"])
    deny = org_a.allow(
        effect="deny", query_sets=[], ops=[], principal_ids=[org_a.principals["alice"]],
        relation="ids", ids=["run:bob1"],
    )  # fmt: skip
    response = alice.post(TOKEN, {"streams": ["run:bob1"]})
    assert response.status_code == 403
    assert response.json()["denied"] == [{"stream": "run:bob1", "reason": "denied_by_rule"}]
    # A deny naming an op removes that op only.
    org_a.allow(effect="deny", query_sets=[], ops=["append"], roles=["member"])
    assert alice.post(TOKEN, {"streams": ["run:alice1"]}).status_code == 200
    appended = alice.post(TOKEN, {"streams": ["run:alice1"], "ops": ["append"]})
    assert appended.json()["denied"] == [{"stream": "run:alice1", "reason": "denied_by_rule"}]
    # A deny naming a query set removes that query set from the default.
    org_a.allow(effect="deny", query_sets=["run_checkpoints"], ops=[], roles=["member"])
    token = alice.post(TOKEN, {"streams": ["run:alice1"]}).json()
    assert token["grants"][0]["query_sets"] == ["run_events@1"]
    explained = org_a.admin.ok(
        "POST",
        "/api/admin/explain",
        {"principal_id": org_a.principals["alice"], "streams": ["run:bob1", "run:alice1"]},
        status=200,
    )
    first, second = explained["decisions"]
    assert first["allowed"] is False and deny["id"] in first["rule_ids"]
    assert second["allowed"] is True and second["query_sets"] == ["run_events@1"]


def test_cross_org_stream_is_not_found(org_a: OrgFixture, org_b: OrgFixture, world: dict) -> None:
    org_b.query_set("run_events", ["run"])
    org_b.allow(query_sets=["run_events"])
    carol = org_b.principal("carol")
    response = carol.post(TOKEN, {"streams": ["run:alice1"]})
    assert response.status_code == 403
    assert response.json()["denied"] == [{"stream": "run:alice1", "reason": "stream_not_found"}]
    # Registering the same id in another org is refused: ids are global.
    assert org_b.admin.post("/api/streams", {"id": "run:alice1"}).status_code == 409


def test_partial_vs_strict(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    org_a.allow(relation="owner", query_sets=["run_events"])
    streams = ["run:alice1", "run:bob1", "run:nope"]
    strict = alice.post(TOKEN, {"streams": streams})
    assert strict.status_code == 403
    problem = strict.json()
    assert strict.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "stream_not_granted"
    assert problem["denied"] == [
        {"stream": "run:bob1", "reason": "not_permitted"},
        {"stream": "run:nope", "reason": "stream_not_found"},
    ]
    partial = alice.post(TOKEN, {"streams": streams, "allow_partial": True})
    assert partial.status_code == 200
    assert [g["stream"] for g in partial.json()["grants"]] == ["run:alice1"]
    assert len(partial.json()["denied"]) == 2
    # Nothing at all granted is a 403 even with allow_partial: a token never means everything.
    nothing = alice.post(TOKEN, {"streams": ["run:bob1"], "allow_partial": True})
    assert nothing.status_code == 403


def test_requested_query_sets_and_ops(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    org_a.allow(query_sets=["run_events"], ops=["subscribe"])
    ok = alice.post(TOKEN, {"streams": ["run:alice1"], "query_sets": ["run_events@1"]})
    assert ok.status_code == 200
    rule_id = org_a.admin.ok("GET", "/api/admin/grant-rules")["items"][0]["id"]
    for body, reason, rule_ids in (
        ({"query_sets": ["run_checkpoints"]}, "query_set_not_allowed", [rule_id]),
        ({"query_sets": ["run_events@7"]}, "query_set_not_allowed", [rule_id]),
        # A name the org never defined says so, rather than "not allowed".
        ({"query_sets": ["run_evnts"]}, "query_set_not_found", []),
        ({"ops": ["checkpoint"]}, "op_not_allowed", [rule_id]),
    ):
        response = alice.post(TOKEN, {"streams": ["run:alice1"], **body})
        assert response.status_code == 403, body
        assert response.json()["denied"][0]["reason"] == reason
        # Explain names the rules behind the denial: the rule that matched and fell short.
        explained = org_a.admin.ok(
            "POST",
            "/api/admin/explain",
            {"principal_id": org_a.principals["alice"], "streams": ["run:alice1"], **body},
            200,
        )["decisions"][0]
        assert (explained["reason"], explained["rule_ids"]) == (reason, rule_ids), body


def test_ttl_bounds_and_rule_clamp(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    org_a.allow(query_sets=["run_events"])
    for ttl in (59, 901, -1, 0):
        response = alice.post(TOKEN, {"streams": ["run:alice1"], "ttl_seconds": ttl})
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_request"
    assert (
        alice.post(TOKEN, {"streams": ["run:alice1"], "ttl_seconds": 900}).json()["expires_in"]
        == 900
    )
    org_a.allow(query_sets=["run_events"], max_ttl_seconds=120, roles=["member"])
    clamped = alice.post(TOKEN, {"streams": ["run:alice1"], "ttl_seconds": 900}).json()
    assert clamped["expires_in"] == 120


def test_stream_count_and_grammar(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    empty = alice.post(TOKEN, {"streams": []})
    assert (empty.status_code, empty.json()["code"]) == (422, "invalid_request")
    too_many = alice.post(TOKEN, {"streams": [f"run:s{i}" for i in range(65)]})
    assert (too_many.status_code, too_many.json()["code"]) == (422, "too_many_streams")
    for bad in ({"streams": ["org:acme:workers"]}, {"streams": ["Run:x"]}, {"ops": ["delete"]},
                {"streams": ["run:" + "x" * 129]}, {"query_sets": ["Bad Name"]}):  # fmt: skip
        response = alice.post(TOKEN, {"streams": ["run:alice1"], **bad})
        assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), bad


def test_device_credential_binds_own_id(org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events"], roles=["member"])
    device = org_a.principal("tablet", kind="device")
    device_id = org_a.principals["tablet"]
    mine = device.post(TOKEN, {"streams": ["run:alice1"], "device_id": device_id})
    assert mine.status_code == 200
    assert mine.json()["token"]
    other = device.post(TOKEN, {"streams": ["run:alice1"], "device_id": "someone-else"})
    assert (other.status_code, other.json()["code"]) == (403, "forbidden")


def test_only_members_mint(org_a: OrgFixture, world: dict) -> None:
    service = org_a.principal("ingest", kind="service")
    assert service.post(TOKEN, {"streams": ["run:alice1"]}).status_code == 403


def test_every_mint_and_denial_is_audited(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    org_a.allow(relation="owner", query_sets=["run_events"])
    minted = alice.post(TOKEN, {"streams": ["run:alice1"]}).json()
    alice.post(TOKEN, {"streams": ["run:bob1"]})
    events = org_a.admin.ok("GET", "/api/admin/audit?limit=500", status=200)["items"]
    mints = [e for e in events if e["action"] == "token.mint"]
    denials = [e for e in events if e["action"] == "token.denied"]
    assert len(mints) == 1 and mints[0]["detail"]["jti"] == minted["jti"]
    assert mints[0]["detail"]["policy_rev"] == minted["policy_rev"]
    assert mints[0]["detail"]["grants"] == ["run:alice1 run_events@1 subscribe"]
    assert len(denials) == 1
    assert denials[0]["detail"]["denied"] == [{"stream": "run:bob1", "reason": "not_permitted"}]
    assert minted["token"] not in json.dumps(events)


def test_policy_change_is_seen_at_once(org_a: OrgFixture, world: dict) -> None:
    alice = world["alice"]
    rule = org_a.allow(query_sets=["run_events"])
    first = alice.post(TOKEN, {"streams": ["run:alice1"]}).json()
    org_a.admin.ok("DELETE", f"/api/admin/grant-rules/{rule['id']}", status=204)
    after = alice.post(TOKEN, {"streams": ["run:alice1"]})
    assert after.status_code == 403
    org_a.admin.ok(
        "PUT",
        "/api/admin/query-sets/run_events",
        {"stream_kinds": ["run"], "queries": ["SELECT * FROM run_event_view"]},
        status=200,
    )
    org_a.allow(query_sets=["run_events"])
    again = alice.post(TOKEN, {"streams": ["run:alice1"]}).json()
    assert again["grants"][0]["query_sets"] == ["run_events@2"]
    assert again["policy_rev"] > first["policy_rev"]


def test_rate_limit(state: AppState, org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events"])
    state.mint_limiter = RateLimiter(rate_per_second=1, burst=3)
    alice, bob = world["alice"], world["bob"]
    statuses = [alice.post(TOKEN, {"streams": ["run:alice1"]}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = alice.post(TOKEN, {"streams": ["run:alice1"]})
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["retry_after"] >= 1
    # Per principal: bob still has his own bucket.
    assert bob.post(TOKEN, {"streams": ["run:bob1"]}).status_code == 200


def test_rate_zero_disables() -> None:
    limiter = RateLimiter(rate_per_second=0, burst=1)
    assert all(limiter.acquire("p") is None for _ in range(1000))


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.status is Status.RETIRED], ids=lambda r: r.path
)
def test_retired_token_routes_still_410(route: Any, client: TestClient, world: dict) -> None:
    alice: Api = world["alice"]
    response = alice.request(route.method, route.path, {"streams": ["run:alice1"]})
    assert response.status_code == 410
    assert response.json()["successor"] == TOKEN
