"""Kind-wide grants: `run:*` is every `run` stream of the token's org, present and future.

Minted only under an org-wide allow rule with no deny rule of the kind reaching the caller
(else `kind_wide_not_permitted`, naming the rules in the way); explain decides the same; the
token stays one grant however many streams the org holds; introspection and `control.runtime`
apply it to the org's own streams only; narrowing the policy behind it revokes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control.grants import GrammarError, StreamId, parse_stream_id, parse_stream_selector
from control.policy.models import Stream
from control.runtime import GrantDenied, GrantVerifier, authorize
from tests.factories import Api, OrgFixture

TOKEN = "/api/sync/token"
EXPLAIN = "/api/admin/explain"
INTROSPECT = "/api/sync/introspect"


@pytest.fixture
def world(org_a: OrgFixture, org_b: OrgFixture) -> dict[str, Any]:
    """Org A: alice and bob (members), a service, query sets and two run streams; org B: a run
    stream of its own."""
    alice = org_a.principal("alice")
    bob = org_a.principal("bob")
    service = org_a.principal("ingest", kind="service")
    org_a.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
    org_a.query_set("run_checkpoints", ["run"], ["SELECT * FROM run_checkpoint_view"])
    org_a.query_set("worker_status", ["worker"])
    org_a.stream("run:alice1", owner_id=org_a.principals["alice"])
    org_a.stream("run:bob1", owner_id=org_a.principals["bob"])
    org_b.stream("run:theirs")
    return {"alice": alice, "bob": bob, "service": service}


def mint(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post(TOKEN, {"streams": ["run:*"], **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def introspect(world: dict[str, Any], token: str, **extra: Any) -> dict[str, Any]:
    body = {"token": token, **extra}
    return world["service"].ok("POST", INTROSPECT, body, status=200)  # type: ignore[no-any-return]


def explain(org: OrgFixture, name: str, streams: list[str], **extra: Any) -> list[dict[str, Any]]:
    body = {"principal_id": org.principals[name], "streams": streams, **extra}
    return org.admin.ok("POST", EXPLAIN, body, status=200)["decisions"]  # type: ignore[no-any-return]


def test_minted_under_an_org_rule(org_a: OrgFixture, world: dict) -> None:
    rule = org_a.allow(
        query_sets=["run_events", "run_checkpoints"],
        ops=["subscribe", "append"],
        max_ttl_seconds=120,
    )
    token = mint(world["alice"], ops=["subscribe", "append"], ttl_seconds=600)
    grant = {
        "stream": "run:*",
        "query_sets": ["run_checkpoints@1", "run_events@1"],
        "ops": ["subscribe", "append"],
    }
    assert token["grants"] == [grant] and token["denied"] == []
    assert token["expires_in"] == 120  # the rule's TTL bound holds as for a named stream
    active = introspect(world, token["token"])
    assert active["active"] is True and active["grants"] == [grant]
    # Query sets and ops are asked for as for a named stream; beside one, both are granted.
    both = mint(world["bob"], streams=["run:*", "run:alice1"], query_sets=["run_events"])
    assert [(g["stream"], g["query_sets"]) for g in both["grants"]] == [
        ("run:*", ["run_events@1"]),
        ("run:alice1", ["run_events@1"]),
    ]
    denied = world["alice"].post(TOKEN, {"streams": ["run:*"], "ops": ["checkpoint"]})
    assert denied.json()["denied"] == [{"stream": "run:*", "reason": "op_not_allowed"}]
    decision = explain(org_a, "alice", ["run:*"], ops=["subscribe", "append"])[0]
    assert decision["allowed"] is True and decision["rule_ids"] == [rule["id"]]


def test_refused_under_an_owner_rule(org_a: OrgFixture, world: dict) -> None:
    owner = org_a.allow(relation="owner", query_sets=["run_events"])
    ids = org_a.allow(relation="ids", ids=["run:bob1"], query_sets=["run_events"])
    response = world["alice"].post(TOKEN, {"streams": ["run:*"]})
    assert response.status_code == 403
    problem = response.json()
    assert problem["code"] == "stream_not_granted"
    assert problem["denied"] == [{"stream": "run:*", "reason": "kind_wide_not_permitted"}]
    assert owner["id"] in problem["detail"] and ids["id"] in problem["detail"]
    # The same rules still grant the streams they name.
    assert world["alice"].post(TOKEN, {"streams": ["run:alice1", "run:bob1"]}).status_code == 200
    decision = explain(org_a, "alice", ["run:*"])[0]
    assert decision["allowed"] is False
    assert decision["reason"] == "kind_wide_not_permitted"
    assert decision["rule_ids"] == sorted([owner["id"], ids["id"]])
    audit = org_a.admin.ok("GET", "/api/admin/audit?limit=50", status=200)["items"]
    refusal = next(e for e in audit if e["action"] == "token.denied")
    assert refusal["detail"]["denied"] == [
        {
            "stream": "run:*",
            "reason": "kind_wide_not_permitted",
            "rule_ids": sorted([owner["id"], ids["id"]]),
        }
    ]


def test_refused_under_a_deny_rule(org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    # A deny on one stream, for one op: it takes a piece out of "every run stream".
    deny = org_a.allow(
        effect="deny", relation="ids", ids=["run:bob1"], query_sets=[], ops=["append"],
        principal_ids=[org_a.principals["alice"]],
    )  # fmt: skip
    response = world["alice"].post(TOKEN, {"streams": ["run:*"]})
    assert response.status_code == 403
    assert response.json()["denied"] == [{"stream": "run:*", "reason": "kind_wide_not_permitted"}]
    assert deny["id"] in response.json()["detail"]
    decision = explain(org_a, "alice", ["run:*"])[0]
    assert (decision["reason"], decision["rule_ids"]) == ("kind_wide_not_permitted", [deny["id"]])
    # Named streams are decided as before, and the deny does not reach bob, nor another kind.
    assert world["alice"].post(TOKEN, {"streams": ["run:bob1"]}).status_code == 200
    assert mint(world["bob"])["grants"][0]["stream"] == "run:*"
    org_a.allow(kind="worker", effect="deny", query_sets=[], ops=[], roles=["member"])
    assert mint(world["bob"])["grants"][0]["stream"] == "run:*"


def test_no_other_wildcard_shape(org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events"])
    alice = world["alice"]
    for bad in ("run:01*", "*:*", "*:x", "run:*x", "run:**", "*", ":*"):
        for path, body in (
            (TOKEN, {"streams": [bad]}),
            (EXPLAIN, {"principal_id": org_a.principals["alice"], "streams": [bad]}),
        ):
            api = alice if path == TOKEN else org_a.admin
            response = api.post(path, body)
            assert (response.status_code, response.json()["code"]) == (422, "invalid_request"), bad
    # A selector is not a stream: it cannot be registered, nor named by an `ids` rule.
    registered = org_a.admin.post("/api/streams", {"id": "run:*"})
    assert (registered.status_code, registered.json()["code"]) == (422, "invalid_request")
    rule = org_a.admin.post(
        "/api/admin/grant-rules",
        {
            "effect": "allow",
            "subjects": {"roles": ["member"]},
            "streams": {"kind": "run", "relation": "ids", "ids": ["run:*"]},
            "query_sets": ["run_events"],
            "ops": ["subscribe"],
        },
    )
    assert (rule.status_code, rule.json()["code"]) == (422, "invalid_request")


def test_the_grammar_has_one_wildcard() -> None:
    assert parse_stream_selector("run:*") == StreamId("run", "*")
    assert parse_stream_selector("run:*").kind_wide
    assert not parse_stream_selector("run:01J9ZK").kind_wide
    for bad in ("run:01*", "*:*", "*:x", "run:*x", "run:**", "*", ":*", "run:* "):
        with pytest.raises(GrammarError) as refused:
            parse_stream_selector(bad)
        assert refused.value.code == "invalid_stream_selector", bad
    # A selector names streams; it is not one.
    with pytest.raises(GrammarError) as refused:
        parse_stream_id("run:*")
    assert refused.value.code == "invalid_stream_id"


def test_counts_as_one_stream_against_the_cap(org_a: OrgFixture, world: dict) -> None:
    org_a.allow(query_sets=["run_events"])
    alice = world["alice"]
    named = [f"run:n{i}" for i in range(63)]  # unregistered: denied, and allowed to be
    within = alice.post(TOKEN, {"streams": ["run:*", *named], "allow_partial": True})
    assert within.status_code == 200, within.text
    assert [g["stream"] for g in within.json()["grants"]] == ["run:*"]
    over = alice.post(TOKEN, {"streams": ["run:*", *named, "run:n63"], "allow_partial": True})
    assert (over.status_code, over.json()["code"]) == (422, "too_many_streams")


def test_introspection_answers_with_the_registry(
    org_a: OrgFixture, org_b: OrgFixture, world: dict
) -> None:
    org_a.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    token = mint(world["alice"], ops=["subscribe", "append"])["token"]
    # Registered after the mint: allowed at once, under the same token.
    org_a.stream("run:later")
    for stream in ("run:later", "run:bob1"):
        answer = introspect(world, token, stream=stream, query_set="run_events", op="append")
        assert answer["allowed"] is True, (stream, answer)
    # Another org's stream of the kind, and a stream nobody registered, read alike.
    for stream in ("run:theirs", "run:never"):
        answer = introspect(world, token, stream=stream)
        assert (answer["allowed"], answer["reason"]) == (False, "stream_not_found"), stream
    # The grant covers its kind only, its ops only, and no text that is not a stream id.
    org_a.stream("worker:w-1")
    for extra, reason in (
        ({"stream": "worker:w-1"}, "stream_not_granted"),
        ({"stream": "run:later", "op": "checkpoint"}, "op_not_granted"),
        ({"stream": "run:later", "query_set": "run_checkpoints"}, "query_set_not_granted"),
        ({"stream": "run:*"}, "stream_not_granted"),
        ({"stream": "run:x\x00"}, "stream_not_granted"),
    ):
        answer = introspect(world, token, **extra)
        assert (answer["allowed"], answer["reason"]) == (False, reason), extra
    # Deleting the stream ends the grant on it, as for a named stream.
    org_a.admin.ok("DELETE", "/api/admin/streams/run:later", status=204)
    fresh = mint(world["alice"])["token"]
    answer = introspect(world, fresh, stream="run:later")
    assert (answer["allowed"], answer["reason"]) == (False, "stream_not_found")


def test_token_size_does_not_grow_with_the_org(
    org_a: OrgFixture, world: dict, session: Session
) -> None:
    org_a.allow(query_sets=["run_events"])
    service = org_a.principal("bulk", kind="service")
    one_stream = mint(world["alice"])
    # Bring the org to 10,000 run streams (and many of another kind) through the ORM.
    session.add_all(
        Stream(id=f"run:bulk{i:05d}", kind="run", org_id=org_a.org_id, labels={})
        for i in range(9_998)
    )
    session.add_all(
        Stream(id=f"worker:bulk{i:05d}", kind="worker", org_id=org_a.org_id, labels={})
        for i in range(2_000)
    )
    session.commit()
    count = session.query(Stream).filter_by(org_id=org_a.org_id, kind="run").count()
    assert count == 10_000
    many_streams = mint(world["alice"])
    assert len(many_streams["token"]) == len(one_stream["token"])
    assert many_streams["grants"] == one_stream["grants"]
    # And every one of them is covered by it.
    answer = service.ok(
        "POST", INTROSPECT, {"token": many_streams["token"], "stream": "run:bulk09997"}, 200
    )
    assert answer["allowed"] is True


@pytest.mark.parametrize("change", ["narrow_rule", "delete_rule", "deny_rule", "deny_other_op"])
def test_narrowing_revokes(change: str, org_a: OrgFixture, world: dict) -> None:
    rule = org_a.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    token = mint(world["alice"])["token"]
    unrelated = mint(world["bob"])["token"]
    alice_id = org_a.principals["alice"]
    if change == "narrow_rule":  # org-wide to the owner's streams only
        org_a.admin.ok(
            "PUT",
            f"/api/admin/grant-rules/{rule['id']}",
            {
                "effect": "allow",
                "subjects": {"roles": ["member"]},
                "streams": {"kind": "run", "relation": "owner"},
                "query_sets": ["run_events"],
                "ops": ["subscribe", "append"],
            },
            200,
        )
    elif change == "delete_rule":
        org_a.admin.ok("DELETE", f"/api/admin/grant-rules/{rule['id']}", status=204)
    elif change == "deny_rule":
        org_a.allow(
            effect="deny", relation="ids", ids=["run:bob1"], query_sets=[], ops=[],
            principal_ids=[alice_id],
        )  # fmt: skip
    else:
        org_a.allow(effect="deny", query_sets=[], ops=["append"], principal_ids=[alice_id])
    assert introspect(world, token) == {"active": False, "reason": "revoked"}
    # The new policy refuses the kind-wide grant to alice.
    after = world["alice"].post(TOKEN, {"streams": ["run:*"]})
    assert after.status_code == 403
    assert after.json()["denied"] == [{"stream": "run:*", "reason": "kind_wide_not_permitted"}]
    if change in ("deny_rule", "deny_other_op"):
        assert introspect(world, unrelated)["active"] is True  # the deny names alice only


@pytest.mark.parametrize(
    "policy", ["org", "owner", "deny", "other_kind", "none", "query_set", "two_org_rules"]
)
def test_explain_decides_as_minting_does(policy: str, org_a: OrgFixture, world: dict) -> None:
    alice_id = org_a.principals["alice"]
    request: dict[str, Any] = {"streams": ["run:*", "run:alice1"], "ops": ["subscribe"]}
    if policy == "org":
        org_a.allow(query_sets=["run_events", "run_checkpoints"], max_ttl_seconds=300)
    elif policy == "owner":
        org_a.allow(relation="owner", query_sets=["run_events"])
    elif policy == "deny":
        org_a.allow(query_sets=["run_events"])
        org_a.allow(effect="deny", query_sets=["run_checkpoints"], ops=[], roles=["member"])
    elif policy == "other_kind":
        org_a.allow(kind="worker", query_sets=["worker_status"])
    elif policy == "query_set":
        org_a.allow(query_sets=["run_events"])
        request["query_sets"] = ["run_checkpoints"]
    elif policy == "two_org_rules":
        org_a.allow(query_sets=["run_events"], principal_ids=[alice_id])
        org_a.allow(query_sets=["run_checkpoints"], ops=["subscribe", "append"])
        request["ops"] = ["subscribe", "append"]
    decisions = explain(org_a, "alice", **request)
    response = world["alice"].post(TOKEN, {**request, "allow_partial": True})
    body = response.json()
    granted = {g["stream"]: g for g in body.get("grants", [])}
    denied = {d["stream"]: d["reason"] for d in body.get("denied", [])}
    assert {d["stream"] for d in decisions} == {"run:*", "run:alice1"}
    for decision in decisions:
        if decision["allowed"]:
            assert granted[decision["stream"]] == {
                "stream": decision["stream"],
                "query_sets": decision["query_sets"],
                "ops": decision["ops"],
            }
        elif response.status_code == 200:
            assert denied[decision["stream"]] == decision["reason"]
        else:
            assert response.status_code == 403
            reasons = {d["stream"]: d["reason"] for d in body["denied"]}
            assert reasons[decision["stream"]] == decision["reason"]
    wide = next(d for d in decisions if d["stream"] == "run:*")
    expected = {
        "org": True, "owner": False, "deny": False, "other_kind": False, "none": False,
        "query_set": False, "two_org_rules": True,
    }  # fmt: skip
    assert wide["allowed"] is expected[policy]
    if policy == "two_org_rules":  # what every stream of the kind gets: both org-wide rules
        assert wide["query_sets"] == ["run_checkpoints@1", "run_events@1"]


# --- control.runtime ----------------------------------------------------------------------


@pytest.fixture
def verifier(client: TestClient) -> Iterator[GrantVerifier]:
    with GrantVerifier(
        issuer="http://127.0.0.1:8080",
        audience="spacetimedb",
        jwks_url="/.well-known/jwks.json",
        http=client,
    ) as verifier:
        yield verifier


def test_runtime_needs_the_streams_org(
    org_a: OrgFixture, org_b: OrgFixture, world: dict, verifier: GrantVerifier
) -> None:
    org_a.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    org_a.allow(relation="owner", query_sets=["run_checkpoints"], ops=["subscribe", "checkpoint"])
    token = mint(world["alice"], streams=["run:*", "run:alice1"], ops=["subscribe"])
    claims = verifier.verify(token["token"])
    # With the stream's org: any stream of the kind in the token's org, even one the control
    # plane has never heard of (the service's records are the registry here).
    for check in (verifier.authorize, lambda *a, **k: authorize(claims, *a[1:], **k)):
        grant = check(
            claims, "run:made-up-later", "run_events", "subscribe", stream_org=org_a.org_id
        )
        assert grant.stream == "run:*"
    # Without it, only a grant naming the stream counts.
    assert verifier.authorize(claims, "run:alice1", "run_events").stream == "run:alice1"
    for stream, stream_org, code in (
        ("run:made-up-later", None, "stream_org_required"),
        ("run:bob1", None, "stream_org_required"),
        ("run:theirs", org_b.org_id, "stream_not_granted"),
        ("run:alice1", org_b.org_id, "stream_not_granted"),
        ("worker:w-1", org_a.org_id, "stream_not_granted"),
        ("run:*", org_a.org_id, "stream_not_granted"),
    ):
        with pytest.raises(GrantDenied) as denied:
            verifier.authorize(claims, stream, "run_events", stream_org=stream_org)
        assert denied.value.code == code, (stream, stream_org)
    with pytest.raises(GrantDenied) as denied:
        verifier.authorize(claims, "run:bob1", op="append", stream_org=org_a.org_id)
    assert denied.value.code == "op_not_granted"
    # The org comes from the token itself: a token without one holds no kind-wide grant.
    orphan = {key: value for key, value in claims.items() if key != "org_id"}
    with pytest.raises(GrantDenied) as denied:
        authorize(orphan, "run:bob1", "run_events", stream_org=org_a.org_id)
    assert denied.value.code == "stream_not_granted"
