"""control.runtime and control.client against a real uvicorn serving control."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from control.client import CredentialRejected, StreamsDenied, SyncTokenSource
from control.runtime import GrantDenied, GrantVerifier, TokenRejected
from tests.factories import Api, OrgFixture
from tests.server import Server, running_server

pytestmark = pytest.mark.e2e
POLL = 0.5


@pytest.fixture(scope="module")
def server(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        fresh_database_url,
        tmp_path_factory.mktemp("server"),
        key_publish_lead_seconds="0",
        token_ttl_min_seconds="2",
        token_ttl_default_seconds="300",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, Any]:
    http = httpx.Client(base_url=server.base_url)
    boot = server.bootstrap("acme")
    org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
    alice = org.principal("alice")
    service = org.principal("runtime", kind="service")
    org.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
    org.query_set("run_checkpoints", ["run"], ["SELECT * FROM run_checkpoint_view"])
    org.stream("run:01J9ZK", owner_id=org.principals["alice"])
    org.stream("run:other")
    rule = org.allow(relation="owner", query_sets=["run_events"], ops=["subscribe", "append"])
    return {"org": org, "alice": alice, "service": service, "rule": rule, "http": http}


@pytest.fixture
def verifier(server: Server, world: dict[str, Any]) -> Iterator[GrantVerifier]:
    with GrantVerifier(
        issuer=server.base_url,
        audience="spacetimedb",
        jwks_url=f"{server.base_url}/.well-known/jwks.json",
        revocations_url=f"{server.base_url}/api/sync/revocations",
        api_key=world["service"].key,
        poll_interval=POLL,
        min_refetch_interval=0.2,
    ) as verifier:
        yield verifier


def mint(world: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = world["alice"].post("/api/sync/token", {"streams": ["run:01J9ZK"], **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def introspect(world: dict[str, Any], token: str, **extra: Any) -> dict[str, Any]:
    response = world["service"].post("/api/sync/introspect", {"token": token, **extra})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_minted_token_verifies_and_authorizes(verifier: GrantVerifier, world: dict) -> None:
    minted = mint(world, ops=["subscribe", "append"])
    claims = verifier.verify(minted["token"])
    assert claims["sub"] == world["org"].principals["alice"]
    grant = verifier.authorize(claims, "run:01J9ZK", "run_events", "subscribe")
    assert grant.stream == "run:01J9ZK"
    verifier.authorize(claims, "run:01J9ZK", "run_events@1", "append")
    verifier.authorize(claims, "run:01J9ZK")
    for args, code in (
        (("run:other",), "stream_not_granted"),
        (("run:01J9ZK", "run_checkpoints"), "query_set_not_granted"),
        (("run:01J9ZK", "run_events@2"), "query_set_not_granted"),
        (("run:01J9ZK", "run_events", "checkpoint"), "op_not_granted"),
    ):
        with pytest.raises(GrantDenied) as denied:
            verifier.authorize(claims, *args)
        assert denied.value.code == code, args
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(minted["token"][:-4] + "AAAA")
    assert rejected.value.code == "invalid_signature"


def test_a_cached_token_hands_out_claims_of_its_own(verifier: GrantVerifier, world: dict) -> None:
    token = mint(world)["token"]
    first = verifier.verify(token)
    pristine = json.loads(json.dumps(first))
    first["sub"] = "someone-else"
    first["grants"].append({"stream": "run:other", "query_sets": [], "ops": ["append"]})
    again = verifier.verify(token)  # from the cache
    assert again == pristine and again is not first
    with pytest.raises(GrantDenied):
        verifier.authorize(again, "run:other", None, "append")


def test_the_verified_cache_stays_bounded_under_threads(server: Server, world: dict) -> None:
    tokens = [mint(world)["token"] for _ in range(12)]
    failures: list[BaseException] = []
    with GrantVerifier(
        issuer=server.base_url,
        audience="spacetimedb",
        jwks_url=f"{server.base_url}/.well-known/jwks.json",
        cache_size=3,
    ) as verifier:

        def verify_all(offset: int) -> None:
            try:
                for index in range(60):
                    token = tokens[(index + offset) % len(tokens)]
                    assert verifier.verify(token)["jti"]
            except BaseException as exc:  # reported below, on the main thread
                failures.append(exc)

        threads = [threading.Thread(target=verify_all, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
        assert len(verifier._verified) <= 3


def test_introspection(world: dict) -> None:
    minted = mint(world)
    active = introspect(world, minted["token"], stream="run:01J9ZK", query_set="run_events")
    assert active["active"] is True and active["allowed"] is True
    assert active["jti"] == minted["jti"] and active["grants"] == minted["grants"]
    other = introspect(world, minted["token"], stream="run:other")
    assert other["active"] is True and other["allowed"] is False
    assert other["reason"] == "stream_not_granted"
    assert introspect(world, "not-a-token") == {"active": False, "reason": "malformed"}
    # Only services introspect.
    assert world["alice"].post("/api/sync/introspect", {"token": "x"}).status_code == 403


def test_rotation_keeps_old_and_new_tokens_valid(
    server: Server, verifier: GrantVerifier, world: dict
) -> None:
    old = mint(world)
    verifier.verify(old["token"])
    admin: Api = world["org"].admin
    rotated = admin.ok("POST", "/api/admin/keys/rotate", status=200)
    assert rotated["retiring"] == old["kid"]
    deadline = time.monotonic() + 10
    new = mint(world)
    while new["kid"] == old["kid"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the replica picks the rotation up within its refresh interval
        new = mint(world)
    assert new["kid"] == rotated["active"] != old["kid"]
    assert verifier.verify(old["token"])["jti"] == old["jti"]
    assert verifier.verify(new["token"])["jti"] == new["jti"]
    assert introspect(world, old["token"])["active"] is True


def test_revocation_reaches_verifier_within_a_poll_and_introspection_at_once(
    verifier: GrantVerifier, world: dict
) -> None:
    minted = mint(world)
    verifier.verify(minted["token"])
    admin: Api = world["org"].admin
    admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": minted["jti"]})
    assert introspect(world, minted["token"]) == {"active": False, "reason": "revoked"}
    time.sleep(POLL * 2.5)
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(minted["token"])
    assert rejected.value.code == "revoked"
    assert verifier.verify(mint(world)["token"])  # other tokens unaffected


def test_narrowing_a_rule_revokes_older_tokens(verifier: GrantVerifier, world: dict) -> None:
    org: OrgFixture = world["org"]
    older = mint(world, ops=["subscribe", "append"])
    rule = world["rule"]
    narrowed = {
        "effect": "allow",
        "subjects": {"roles": ["member"]},
        "streams": {"kind": "run", "relation": "owner"},
        "query_sets": ["run_events"],
        "ops": ["subscribe"],
    }
    org.admin.ok("PUT", f"/api/admin/grant-rules/{rule['id']}", narrowed, status=200)
    assert introspect(world, older["token"]) == {"active": False, "reason": "revoked"}
    time.sleep(1.1)  # the next second: a token minted now postdates the revocation
    newer = mint(world)
    assert introspect(world, newer["token"])["active"] is True
    time.sleep(POLL * 2.5)
    with pytest.raises(TokenRejected):
        verifier.verify(older["token"])
    assert verifier.verify(newer["token"])["sub"] == older["subject"]


def test_client_source_refreshes_before_expiry(server: Server, world: dict) -> None:
    with SyncTokenSource(
        server.base_url, world["alice"].key, ["run:01J9ZK"], ttl_seconds=3, refresh_jitter=0.2
    ) as source:
        first = source.current()
        assert source.token() == first.token  # cached
        seen = {first.token}
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            current = source.current()
            assert current.expires_at > time.time(), "returned an expired token"
            seen.add(current.token)
            time.sleep(0.1)
        assert len(seen) >= 2, "never refreshed"


def test_client_source_errors(server: Server, world: dict) -> None:
    with (
        SyncTokenSource(server.base_url, "ctl_wrong", ["run:01J9ZK"]) as source,
        pytest.raises(CredentialRejected),
    ):
        source.token()
    with SyncTokenSource(server.base_url, world["alice"].key, ["run:other"]) as source:
        with pytest.raises(StreamsDenied) as denied:
            source.token()
        assert denied.value.denied == [{"stream": "run:other", "reason": "not_permitted"}]


def test_no_secret_in_server_log(server: Server, world: dict) -> None:
    minted = mint(world)
    log = server.log()
    assert minted["token"] not in log
    assert world["alice"].key not in log
    assert "Traceback" not in log
