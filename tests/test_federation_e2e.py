"""Signing in with an upstream OIDC ID token at the token endpoint, end to end: a real control
server and a real identity provider, each on its own loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.factories import Api, OrgFixture
from tests.idp import IdentityProvider, running_idp
from tests.server import Server, running_server

pytestmark = pytest.mark.e2e
TOKEN = "/api/sync/token"


@pytest.fixture(scope="module")
def server(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        fresh_database_url,
        tmp_path_factory.mktemp("server"),
        upstream_jwks_min_refetch_seconds="0",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_idp() as provider:
        yield provider


@pytest.fixture(scope="module")
def other_idp() -> Iterator[IdentityProvider]:
    with running_idp() as provider:
        yield provider


def make_org(server: Server, name: str) -> OrgFixture:
    http = httpx.Client(base_url=server.base_url)
    boot = server.bootstrap(name)
    return OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)


@pytest.fixture(scope="module")
def world(server: Server, idp: IdentityProvider) -> dict[str, Any]:
    acme, globex = make_org(server, "acme"), make_org(server, "globex")
    for org, stream in ((acme, "run:acme1"), (globex, "run:globex1")):
        org.query_set("run_events", ["run"])
        org.stream(stream)
        org.allow(query_sets=["run_events"])
    trusted = acme.admin.ok(
        "POST",
        "/api/admin/trusted-issuers",
        {
            "issuer": idp.issuer,
            "audiences": ["desktop-app"],
            "role_claim": "groups",
            "role_map": {"sync-writers": ["writer"]},
        },
    )
    return {"acme": acme, "globex": globex, "trusted": trusted, "http": acme.client}


def mint_with(server: Server, id_token: str, streams: list[str]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{TOKEN}",
        json={"streams": streams},
        headers={"Authorization": f"Bearer {id_token}"},
    )


def test_first_use_creates_the_principal(
    server: Server, idp: IdentityProvider, world: dict
) -> None:
    id_token = idp.id_token("user-123", email="ada@example.com", groups=["sync-writers"])
    response = mint_with(server, id_token, ["run:acme1"])
    assert response.status_code == 200, response.text
    body = response.json()
    acme: OrgFixture = world["acme"]
    principal = acme.admin.ok("GET", f"/api/admin/principals/{body['subject']}", status=200)
    assert principal["name"] == "ada@example.com"
    assert principal["kind"] == "user"
    assert set(principal["roles"]) == {"member", "writer"}
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == principal["id"] and claims["org_id"] == acme.org_id
    # The same upstream subject maps to the same principal next time.
    again = mint_with(server, idp.id_token("user-123"), ["run:acme1"]).json()
    assert again["subject"] == principal["id"]
    audit = acme.admin.ok("GET", "/api/admin/audit?limit=500", status=200)["items"]
    created = [e for e in audit if e["action"] == "principal.federated_created"]
    assert [e["target"] for e in created] == [principal["id"]]
    assert id_token not in server.log()


def test_a_slow_identity_provider_holds_up_no_one_else(server: Server, world: dict) -> None:
    # The first ID token of a provider makes the service fetch its keys. That fetch must not
    # hold anything other requests need: no database connection, no SQLite request lock.
    acme: OrgFixture = world["acme"]
    member = acme.principal("api-member")
    with running_idp() as slow:
        acme.admin.ok(
            "POST", "/api/admin/trusted-issuers", {"issuer": slow.issuer, "audiences": ["slow"]}
        )
        slow.jwks_delay = 2.0
        federated: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: federated.append(
                mint_with(server, slow.id_token("patient", aud="slow"), ["run:acme1"])
            )
        )
        waiting.start()
        deadline = time.monotonic() + 5
        while slow.jwks_fetches == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.jwks_fetches == 1, "the ID-token request is waiting on the provider"
        began = time.monotonic()
        response = member.post(TOKEN, {"streams": ["run:acme1"]})
        elapsed = time.monotonic() - began
        waiting.join(10)
    assert response.status_code == 200, response.text
    assert elapsed < 1.0, f"an API-key mint waited {elapsed:.2f}s behind the slow provider"
    assert federated and federated[0].status_code == 200, federated


def test_untrusted_issuer_is_401(server: Server, other_idp: IdentityProvider, world: dict) -> None:
    response = mint_with(server, other_idp.id_token("user-1"), ["run:acme1"])
    assert response.status_code == 401
    assert response.json()["reason"] == "unknown_issuer"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_other_audience_is_401(server: Server, idp: IdentityProvider, world: dict) -> None:
    response = mint_with(server, idp.id_token("user-1", aud="someone-else"), ["run:acme1"])
    assert (response.status_code, response.json()["reason"]) == (401, "wrong_audience")


def test_expired_and_forged_are_401(server: Server, idp: IdentityProvider, world: dict) -> None:
    expired = idp.id_token("user-1", exp=1_000_000_000, iat=999_999_000)
    assert mint_with(server, expired, ["run:acme1"]).json()["reason"] == "expired"
    token = idp.id_token("user-1")
    header, payload, signature = token.split(".")
    forged = mint_with(server, f"{header}.{payload}.{signature[:-6]}AAAAAA", ["run:acme1"])
    assert (forged.status_code, forged.json()["reason"]) == (401, "invalid_signature")
    unsigned = jwt.encode({"iss": idp.issuer, "sub": "x", "aud": "desktop-app"}, None, "none")
    assert mint_with(server, unsigned, ["run:acme1"]).status_code == 401


def test_key_rotation_is_followed(server: Server, idp: IdentityProvider, world: dict) -> None:
    assert mint_with(server, idp.id_token("user-rot"), ["run:acme1"]).status_code == 200
    idp.rotate()
    idp.drop_old_keys()
    response = mint_with(server, idp.id_token("user-rot"), ["run:acme1"])
    assert response.status_code == 200, response.text


def test_org_a_issuer_cannot_mint_org_b_streams(
    server: Server, idp: IdentityProvider, world: dict
) -> None:
    response = mint_with(server, idp.id_token("user-123"), ["run:globex1"])
    assert response.status_code == 403
    assert response.json()["denied"] == [{"stream": "run:globex1", "reason": "stream_not_found"}]


def test_same_issuer_and_audience_cannot_be_claimed_twice(
    idp: IdentityProvider, world: dict
) -> None:
    globex: OrgFixture = world["globex"]
    clash = globex.admin.post(
        "/api/admin/trusted-issuers", {"issuer": idp.issuer, "audiences": ["desktop-app"]}
    )
    assert clash.status_code == 409


def test_disabled_federated_principal_is_401(
    server: Server, idp: IdentityProvider, world: dict
) -> None:
    body = mint_with(server, idp.id_token("user-off"), ["run:acme1"]).json()
    acme: OrgFixture = world["acme"]
    acme.admin.ok("PATCH", f"/api/admin/principals/{body['subject']}", {"disabled": True}, 200)
    assert mint_with(server, idp.id_token("user-off"), ["run:acme1"]).status_code == 401


def test_id_tokens_are_refused_on_other_routes(
    server: Server, idp: IdentityProvider, world: dict
) -> None:
    response = httpx.get(
        f"{server.base_url}/api/admin/principals",
        headers={"Authorization": f"Bearer {idp.id_token('user-123')}"},
    )
    assert response.status_code == 401
