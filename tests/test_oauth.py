"""OAuth 2.0 at the canonical token route: client credentials (RFC 6749 §4.4) with both client
authentication methods, token exchange (RFC 8693) of an ID token or an API key, the scope
grammar, every OAuth error, and the JSON form of the route exactly as it was. Tokens are fetched
with Authlib's client from a real server and checked with `control.runtime`."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from fastapi.testclient import TestClient
from pydantic import ValidationError

from control.errors import PROBLEM_MEDIA_TYPE
from control.kit.routing import Status
from control.routes import ROUTES
from control.runtime import GrantVerifier
from control.settings import Settings
from control.state import AppState
from control.tokens.oauth import OAuthError, token_request
from control.tokens.ratelimit import RateLimiter
from control.tokens.schemas import TokenRequest, TokenResponse
from tests.conftest import make_settings
from tests.factories import Api, OrgFixture
from tests.idp import IdentityProvider, running_idp
from tests.server import Server, running_server

TOKEN = "/api/sync/token"
FORM = "application/x-www-form-urlencoded"
CLIENT_CREDENTIALS = "client_credentials"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUDIENCE = "spacetimedb"
IDP_AUDIENCE = "desktop-app"
SCOPE = "stream:run:alice1 op:subscribe"
OAUTH_FIELDS = {"access_token", "scope"}


@dataclass(frozen=True)
class Client:
    """A principal with one credential: the OAuth client id is the credential's id, the client
    secret its API key."""

    principal_id: str
    client_id: str
    secret: str


def new_client(
    org: OrgFixture, name: str, kind: str = "user", roles: list[str] | None = None
) -> Client:
    body: dict[str, Any] = {"kind": kind, "name": name}
    if roles is not None:
        body["roles"] = roles
    principal = org.admin.ok("POST", "/api/admin/principals", body)
    org.principals[name] = principal["id"]
    return new_credential(org, principal["id"])


def new_credential(org: OrgFixture, principal_id: str) -> Client:
    issued = org.admin.ok("POST", f"/api/admin/principals/{principal_id}/credentials", {})
    return Client(principal_id, issued["id"], issued["key"])


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then joined and base64-encoded."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def form(client: TestClient | httpx.Client, body: str | bytes, **headers: str) -> httpx.Response:
    """A raw form post: exactly these bytes, repeated parameters and all."""
    content = body.encode() if isinstance(body, str) else body
    return client.post(TOKEN, content=content, headers={"Content-Type": FORM, **headers})


def client_credentials(
    client: TestClient | httpx.Client, who: Client, scope: str = SCOPE, **params: str
) -> httpx.Response:
    fields = {"grant_type": CLIENT_CREDENTIALS, "scope": scope, **params}
    return form(client, urlencode(fields), Authorization=basic(who.client_id, who.secret))


def exchange(
    client: TestClient | httpx.Client,
    token: str,
    token_type: str = ACCESS_TOKEN_TYPE,
    scope: str = SCOPE,
    **params: str,
) -> httpx.Response:
    fields = {
        "grant_type": EXCHANGE,
        "subject_token": token,
        "subject_token_type": token_type,
        "scope": scope,
        **params,
    }
    return form(client, urlencode(fields))


def oauth_error(response: httpx.Response, error: str, status: int = 400) -> str:
    """Assert an RFC 6749 §5.2 error answer; returns its description."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error, body
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic realm=")
    description: str = body["error_description"]
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)
    return description


def verifier_for(client: TestClient | httpx.Client, issuer: str) -> GrantVerifier:
    return GrantVerifier(
        issuer=issuer,
        audience=AUDIENCE,
        jwks_url="/.well-known/jwks.json"
        if isinstance(client, TestClient)
        else f"{issuer}/.well-known/jwks.json",
        http=client,
        min_refetch_interval=0,
    )


def audit_actions(org: OrgFixture) -> list[str]:
    items = org.admin.ok("GET", "/api/admin/audit?limit=500", status=200)["items"]
    return [item["action"] for item in items]


@pytest.fixture
def world(org_a: OrgFixture) -> dict[str, Any]:
    """Alice and Bob own one run each; members may subscribe to and append to runs they own."""
    alice = new_client(org_a, "alice")
    bob = new_client(org_a, "bob")
    org_a.query_set("run_events", ["run"])
    org_a.query_set("run_checkpoints", ["run"])
    org_a.stream("run:alice1", owner_id=alice.principal_id)
    org_a.stream("run:bob1", owner_id=bob.principal_id)
    org_a.allow(
        relation="owner", query_sets=["run_events", "run_checkpoints"], ops=["subscribe", "append"]
    )
    return {"alice": alice, "bob": bob}


# --- real clients against a real server -------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_idp() as provider:
        yield provider


@pytest.fixture(scope="module")
def server(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(fresh_database_url, tmp_path_factory.mktemp("oauth")) as server:
        yield server


@pytest.fixture(scope="module")
def served(server: Server, idp: IdentityProvider) -> dict[str, Any]:
    http = httpx.Client(base_url=server.base_url)
    boot = server.bootstrap("oauth-e2e")
    org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
    alice = new_client(org, "alice")
    org.query_set("run_events", ["run"])
    org.stream("run:alice1", owner_id=alice.principal_id)
    org.allow(relation="owner", query_sets=["run_events"], ops=["subscribe", "append"])
    org.admin.ok(
        "POST", "/api/admin/trusted-issuers", {"issuer": idp.issuer, "audiences": [IDP_AUDIENCE]}
    )
    return {"org": org, "alice": alice, "http": http}


@pytest.mark.e2e
def test_authlib_fetches_tokens_with_every_advertised_auth_method(
    server: Server, served: dict[str, Any]
) -> None:
    alice: Client = served["alice"]
    discovery = served["http"].get("/.well-known/openid-configuration").json()
    assert CLIENT_CREDENTIALS in discovery["grant_types_supported"]
    methods = discovery["token_endpoint_auth_methods_supported"]
    assert set(methods) == {"client_secret_basic", "client_secret_post"}
    for method in methods:
        with (
            OAuth2Client(alice.client_id, alice.secret, token_endpoint_auth_method=method) as oauth,
            verifier_for(served["http"], server.base_url) as verifier,
        ):
            token = oauth.fetch_token(
                discovery["token_endpoint"],
                grant_type=CLIENT_CREDENTIALS,
                scope="stream:run:alice1 query_set:run_events op:append",
            )
            assert token["token_type"] == "Bearer"
            assert token["scope"] == "stream:run:alice1 query_set:run_events@1 op:append"
            assert 0 < token["expires_in"] <= 900
            claims = verifier.verify(token["access_token"])
            assert claims["sub"] == alice.principal_id
            grant = verifier.authorize(claims, "run:alice1", "run_events", "append")
            assert grant.stream == "run:alice1"
            assert token["access_token"] == token["token"]  # this service's own fields too
        # Authlib reads the server's refusal as the OAuth error it is.
        with (
            OAuth2Client(alice.client_id, "ctl_wrong", token_endpoint_auth_method=method) as oauth,
            pytest.raises(AuthlibOAuthError) as refused,
        ):
            oauth.fetch_token(
                discovery["token_endpoint"], grant_type=CLIENT_CREDENTIALS, scope=SCOPE
            )
        assert refused.value.error == "invalid_client"


@pytest.mark.e2e
def test_a_plain_token_exchange_post_against_a_real_server(
    server: Server, served: dict[str, Any], idp: IdentityProvider
) -> None:
    http: httpx.Client = served["http"]
    alice: Client = served["alice"]
    id_token = idp.id_token("upstream-ada", aud=IDP_AUDIENCE, email="ada@example.com")
    by_key = exchange(http, alice.secret, ACCESS_TOKEN_TYPE, requested_token_type=JWT_TYPE)
    by_id_token = exchange(http, id_token, ID_TOKEN_TYPE, scope="stream:run:alice1")
    assert by_key.status_code == 200, by_key.text
    # The federated principal is an org member without a rule for alice's run: refused by the
    # same policy that decides JSON requests.
    oauth_error(by_id_token, "invalid_scope")
    served["org"].allow(relation="org", query_sets=["run_events"], ops=["subscribe"])
    by_id_token = exchange(http, id_token, ID_TOKEN_TYPE, scope="stream:run:alice1")
    assert by_id_token.status_code == 200, by_id_token.text
    with verifier_for(http, server.base_url) as verifier:
        for response, subject in ((by_key, alice.principal_id), (by_id_token, None)):
            body = response.json()
            assert body["issued_token_type"] == JWT_TYPE
            assert body["token_type"] == "Bearer"
            claims = verifier.verify(body["access_token"])
            assert claims["sub"] == (subject or body["subject"])
            verifier.authorize(claims, "run:alice1", "run_events", "subscribe")
    assert by_id_token.json()["subject"] != alice.principal_id
    assert id_token not in server.log() and alice.secret not in server.log()


# --- each grant type and auth method, in process ----------------------------------------------


def test_client_credentials_mint_what_the_json_route_mints(
    client: TestClient, state: AppState, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    scope = "stream:run:alice1 query_set:run_events@1 op:subscribe op:append"
    by_basic = client_credentials(client, alice, scope)
    by_post = form(
        client,
        urlencode(
            {
                "grant_type": CLIENT_CREDENTIALS,
                "client_id": alice.client_id,
                "client_secret": alice.secret,
                "scope": scope,
            }
        ),
    )
    by_json = client.post(
        TOKEN,
        json={
            "streams": ["run:alice1"],
            "query_sets": ["run_events@1"],
            "ops": ["subscribe", "append"],
        },
        headers={"Authorization": f"Bearer {alice.secret}"},
    )
    json_body = by_json.json()
    assert set(json_body) == set(TokenResponse.model_fields)
    with verifier_for(client, state.settings.issuer) as verifier:
        for response in (by_basic, by_post):
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["pragma"] == "no-cache"
            body = response.json()
            assert set(body) == set(json_body) | OAUTH_FIELDS  # no issued_token_type
            assert body["access_token"] == body["token"]
            assert body["token_type"] == "Bearer"
            assert (
                body["scope"] == "stream:run:alice1 query_set:run_events@1 op:subscribe op:append"
            )
            for same in (
                "grants",
                "denied",
                "subject",
                "org_id",
                "audience",
                "issuer",
                "expires_in",
            ):
                assert body[same] == json_body[same], same
            claims = verifier.verify(body["access_token"])
            assert claims["grants"] == [
                {
                    "stream": "run:alice1",
                    "query_sets": ["run_events@1"],
                    "ops": ["subscribe", "append"],
                }
            ]
            verifier.authorize(claims, "run:alice1", "run_events@1", "append")


def test_basic_credentials_are_form_urlencoded_before_base64(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    # Every character percent-encoded: a server that skipped the decoding would see another id.
    encoded_id = "".join(f"%{byte:02X}" for byte in alice.client_id.encode())
    raw = f"{encoded_id}:{quote(alice.secret, safe='')}".encode()
    header = "Basic " + base64.b64encode(raw).decode()
    response = form(
        client, urlencode({"grant_type": CLIENT_CREDENTIALS, "scope": SCOPE}), Authorization=header
    )
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == alice.principal_id


def test_token_exchange_of_an_api_key_and_of_an_id_token(
    client: TestClient, state: AppState, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    by_key = exchange(client, alice.secret, requested_token_type=JWT_TYPE)
    assert by_key.status_code == 200, by_key.text
    assert by_key.json()["issued_token_type"] == JWT_TYPE
    assert by_key.json()["subject"] == alice.principal_id
    with running_idp() as idp:
        org_a.admin.ok(
            "POST",
            "/api/admin/trusted-issuers",
            {"issuer": idp.issuer, "audiences": [IDP_AUDIENCE]},
        )
        org_a.allow(relation="ids", ids=["run:bob1"], query_sets=["run_events"])
        id_token = idp.id_token("upstream-7", aud=IDP_AUDIENCE, email="grace@example.com")
        by_id_token = exchange(client, id_token, ID_TOKEN_TYPE, scope="stream:run:bob1")
    assert by_id_token.status_code == 200, by_id_token.text
    body = by_id_token.json()
    assert body["issued_token_type"] == JWT_TYPE
    assert body["scope"] == "stream:run:bob1 query_set:run_events@1 op:subscribe"
    assert org_a.admin.ok("GET", f"/api/admin/principals/{body['subject']}", status=200)[
        "name"
    ] == ("grace@example.com")
    with verifier_for(client, state.settings.issuer) as verifier:
        for response in (by_key, by_id_token):
            claims = verifier.verify(response.json()["access_token"])
            assert claims["sub"] == response.json()["subject"]


def test_audience_and_resource_may_name_only_the_token_audience(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    for params in (
        {"audience": AUDIENCE},
        {"resource": AUDIENCE},
        {"audience": AUDIENCE, "resource": AUDIENCE},
    ):
        assert client_credentials(client, alice, **params).status_code == 200, params
        assert exchange(client, alice.secret, **params).status_code == 200, params
    for params in ({"audience": "billing"}, {"resource": "https://api.example.com/"}):
        oauth_error(client_credentials(client, alice, **params), "invalid_target")
        oauth_error(exchange(client, alice.secret, **params), "invalid_target")


def test_unrecognized_parameters_are_ignored_and_empty_ones_are_omitted(
    client: TestClient, state: AppState, world: dict[str, Any]
) -> None:
    # RFC 6749 §3.2. `ttl_seconds` is no OAuth parameter: the default TTL stands.
    response = client_credentials(client, world["alice"], ttl_seconds="60", audience="")
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == state.settings.token_ttl_default_seconds


# --- the scope grammar --------------------------------------------------------------------------

VALID_SCOPES = [
    ("stream:run:alice1", {"streams": ["run:alice1"]}),
    (
        "stream:run:alice1 query_set:run_events op:append",
        {"streams": ["run:alice1"], "query_sets": ["run_events"], "ops": ["append"]},
    ),
    (
        "op:subscribe query_set:run_events@1 stream:run:alice1 stream:run:alice1",
        {"streams": ["run:alice1"], "query_sets": ["run_events@1"], "ops": ["subscribe"]},
    ),
    (
        "stream:run:a.b~c-d_e stream:worker:w-7 op:checkpoint",
        {"streams": ["run:a.b~c-d_e", "worker:w-7"], "ops": ["checkpoint"]},
    ),
]
INVALID_SCOPES = [
    "",
    "op:subscribe",
    "query_set:run_events",
    "stream:",
    "stream:run",
    "stream:RUN:x",
    "stream:run:a/b",
    "stream:run:*x",
    "streams:run:alice1",
    "stream:run:alice1 openid",
    "stream:run:alice1 read:all",
    "stream:run:alice1  op:subscribe",
    "stream:run:alice1 ",
    "stream:run:alice1 query_set:Run",
    "stream:run:alice1 query_set:run_events@0",
    "stream:run:alice1 query_set:run_events@v1",
    "stream:run:alice1 op:delete",
    "stream:run:alice1 op:",
    "stream:run:alice1\top:subscribe",
]


@pytest.mark.parametrize(("scope", "expected"), VALID_SCOPES, ids=[s for s, _ in VALID_SCOPES])
def test_valid_scopes_spell_a_token_request(scope: str, expected: dict[str, Any]) -> None:
    assert token_request(scope) == TokenRequest.model_validate(expected)


@pytest.mark.parametrize("scope", INVALID_SCOPES, ids=repr)
def test_invalid_scope_tokens_are_invalid_scope(
    scope: str, client: TestClient, world: dict[str, Any]
) -> None:
    with pytest.raises(OAuthError) as raised:
        token_request(scope)
    assert raised.value.error == "invalid_scope"
    oauth_error(client_credentials(client, world["alice"], scope), "invalid_scope")


@pytest.mark.parametrize(
    "stream", ["run:alice1", "run:*", "run:", "run:a*", "*:*", "Run:x", "run:" + "k" * 129]
)
def test_a_scope_stream_is_what_a_json_stream_is(stream: str) -> None:
    # One validation for both request forms: whatever `streams` of a JSON body accepts (kind-wide
    # selectors included, where the grammar has them), `stream:` accepts, and nothing else.
    try:
        TokenRequest.model_validate({"streams": [stream]})
        json_accepts = True
    except ValidationError:
        json_accepts = False
    try:
        token_request(f"stream:{stream}")
        form_accepts = True
    except OAuthError:
        form_accepts = False
    assert form_accepts == json_accepts


def test_more_streams_than_a_token_carries_is_invalid_scope(
    client: TestClient, world: dict[str, Any]
) -> None:
    scope = " ".join(f"stream:run:s{i}" for i in range(65))  # the default cap is 64
    description = oauth_error(client_credentials(client, world["alice"], scope), "invalid_scope")
    assert "64" in description


def test_streams_not_granted_are_invalid_scope_and_audited(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    for scope in ("stream:run:bob1", "stream:run:alice1 stream:run:bob1", "stream:run:nowhere"):
        description = oauth_error(client_credentials(client, alice, scope), "invalid_scope")
        assert "not granted" in description
    assert audit_actions(org_a).count("token.denied") == 3
    # The query set and op grammar is the grant's: an op no rule allows is not granted either.
    oauth_error(
        client_credentials(client, alice, "stream:run:alice1 op:checkpoint"), "invalid_scope"
    )


# --- every OAuth error ----------------------------------------------------------------------------


def test_grant_types_other_than_the_two_are_unsupported(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    for grant_type in ("password", "authorization_code", "refresh_token", "urn:x:custom"):
        response = client_credentials(client, alice, grant_type=grant_type)
        oauth_error(response, "unsupported_grant_type")
    oauth_error(form(client, urlencode({"scope": SCOPE})), "invalid_request")  # no grant_type


def test_malformed_requests_are_invalid_request(client: TestClient, world: dict[str, Any]) -> None:
    alice: Client = world["alice"]
    cases = {
        "no subject token": {"grant_type": EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE},
        "no subject token type": {"grant_type": EXCHANGE, "subject_token": alice.secret},
        "unknown subject token type": {
            "grant_type": EXCHANGE,
            "subject_token": alice.secret,
            "subject_token_type": "urn:ietf:params:oauth:token-type:saml2",
        },
        "other requested token type": {
            "grant_type": EXCHANGE,
            "subject_token": alice.secret,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
        },
        "delegation": {
            "grant_type": EXCHANGE,
            "subject_token": alice.secret,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "actor_token": alice.secret,
            "actor_token_type": ACCESS_TOKEN_TYPE,
        },
        "client authentication on an exchange": {
            "grant_type": EXCHANGE,
            "subject_token": alice.secret,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "client_id": alice.client_id,
            "client_secret": alice.secret,
        },
    }
    for name, fields in cases.items():
        fields.setdefault("scope", SCOPE)
        description = oauth_error(form(client, urlencode(fields)), "invalid_request")
        assert description, name
    response = form(
        client,
        urlencode({"grant_type": CLIENT_CREDENTIALS, "scope": SCOPE, "client_id": "cred_other"}),
        Authorization=basic(alice.client_id, alice.secret),
    )
    oauth_error(response, "invalid_request")  # two client ids
    oauth_error(form(client, b"grant_type=client_credentials&scope=%ff"), "invalid_request")


def test_failed_client_authentication_is_invalid_client(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    body = urlencode({"grant_type": CLIENT_CREDENTIALS, "scope": SCOPE})
    for header in (
        basic(alice.client_id, "ctl_not-the-key"),
        basic("cred_unknown", alice.secret),
        basic(alice.client_id, alice.secret)[:-4] + "!!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        f"Bearer {alice.secret}",
    ):
        oauth_error(form(client, body, Authorization=header), "invalid_client", 401)
    oauth_error(form(client, body), "invalid_client", 401)  # no client authentication at all
    posted = {"grant_type": CLIENT_CREDENTIALS, "scope": SCOPE, "client_id": alice.client_id}
    oauth_error(form(client, urlencode(posted)), "invalid_client", 401)  # no secret
    posted["client_secret"] = "ctl_not-the-key"
    oauth_error(form(client, urlencode(posted)), "invalid_client", 401)


def test_a_bad_or_expired_subject_token_is_invalid_grant(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    oauth_error(exchange(client, "ctl_not-a-key"), "invalid_grant")
    oauth_error(exchange(client, "not.a.jwt", ID_TOKEN_TYPE), "invalid_grant")
    oauth_error(exchange(client, alice.secret, ID_TOKEN_TYPE), "invalid_grant")  # types matter
    with running_idp() as idp:
        org_a.admin.ok(
            "POST",
            "/api/admin/trusted-issuers",
            {"issuer": idp.issuer, "audiences": [IDP_AUDIENCE]},
        )
        now = int(time.time())
        expired = idp.id_token("upstream-1", aud=IDP_AUDIENCE, iat=now - 3600, exp=now - 1800)
        description = oauth_error(exchange(client, expired, ID_TOKEN_TYPE), "invalid_grant")
        assert "expired" in description
        wrong_audience = idp.id_token("upstream-1", aud="another-app")
        oauth_error(exchange(client, wrong_audience, ID_TOKEN_TYPE), "invalid_grant")
        oauth_error(
            exchange(client, idp.id_token("upstream-1", aud=IDP_AUDIENCE), ACCESS_TOKEN_TYPE),
            "invalid_grant",
        )


def test_a_principal_without_the_member_role_is_refused(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    service = new_client(org_a, "runtime", kind="service")
    oauth_error(client_credentials(client, service), "unauthorized_client")
    oauth_error(exchange(client, service.secret), "invalid_grant")


def test_rate_limiting_is_429_with_retry_after(
    client: TestClient, state: AppState, world: dict[str, Any]
) -> None:
    state.mint_limiter = RateLimiter(rate_per_second=1, burst=2)
    alice: Client = world["alice"]
    statuses = [client_credentials(client, alice).status_code for _ in range(2)]
    limited = exchange(client, alice.secret)  # one bucket per principal, whatever the form
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["cache-control"] == "no-store"
    assert limited.headers["content-type"] == PROBLEM_MEDIA_TYPE
    json_limited = client.post(
        TOKEN, json={"streams": ["run:alice1"]}, headers={"Authorization": f"Bearer {alice.secret}"}
    )
    assert json_limited.status_code == 429


# --- attacks on the form path ---------------------------------------------------------------------


def test_an_oversized_form_is_413_before_anything_runs(
    client: TestClient, state: AppState, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    limit = state.settings.max_body_bytes
    body = urlencode({"grant_type": CLIENT_CREDENTIALS, "scope": SCOPE, "padding": ""})
    # Up to the limit, an unrecognized parameter is ignored and the form is answered...
    fits = form(
        client, body + "x" * (limit - len(body)), Authorization=basic(alice.client_id, alice.secret)
    )
    assert fits.status_code == 200, fits.text
    # ...one byte more, declared or streamed, and nothing behind the limit runs.
    before = audit_actions(org_a)
    over = body + "x" * (limit - len(body) + 1)
    streamed = (chunk.encode() for chunk in (over[:1000], over[1000:]))
    for content in (over, streamed):
        response = client.post(
            TOKEN,
            content=content,
            headers={"Content-Type": FORM, "Authorization": basic(alice.client_id, alice.secret)},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
    assert audit_actions(org_a) == before


@pytest.mark.parametrize(
    "repeat",
    [
        "scope=stream:run:bob1",
        "scope=stream:run:alice1",
        "grant_type=client_credentials",
        "client_id=x",
        "client_secret=x",
        "audience=spacetimedb",
        "resource=spacetimedb",
        "scope=",
    ],
)
def test_a_repeated_parameter_is_invalid_request(
    repeat: str, client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    body = urlencode(
        {
            "grant_type": CLIENT_CREDENTIALS,
            "client_id": alice.client_id,
            "client_secret": alice.secret,
            "scope": SCOPE,
            "audience": AUDIENCE,
            "resource": AUDIENCE,
        }
    )
    before = audit_actions(org_a)
    oauth_error(form(client, f"{body}&{repeat}"), "invalid_request")
    assert audit_actions(org_a) == before  # nothing minted, nothing decided


def test_both_client_authentication_methods_at_once_are_refused(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    body = {
        "grant_type": CLIENT_CREDENTIALS,
        "scope": SCOPE,
        "client_id": alice.client_id,
        "client_secret": alice.secret,
    }
    auth = basic(alice.client_id, alice.secret)
    description = oauth_error(form(client, urlencode(body), Authorization=auth), "invalid_request")
    assert "one way" in description
    # Even when each would fail alone, the request is refused for using two.
    body["client_secret"] = "ctl_wrong"
    oauth_error(form(client, urlencode(body), Authorization=auth), "invalid_request")


def test_an_id_token_from_an_untrusted_issuer_is_refused_without_a_fetch(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    with running_idp() as trusted, running_idp() as stranger:
        org_a.admin.ok(
            "POST",
            "/api/admin/trusted-issuers",
            {"issuer": trusted.issuer, "audiences": [IDP_AUDIENCE]},
        )
        token = stranger.id_token("upstream-1", aud=IDP_AUDIENCE)
        description = oauth_error(exchange(client, token, ID_TOKEN_TYPE), "invalid_grant")
        assert "not trusted" in description
        assert stranger.discovery_fetches == 0 and stranger.jwks_fetches == 0
        # Nor does naming the trusted issuer get it in: the trusted issuer's keys did not sign it.
        posing = stranger.id_token("upstream-1", aud=IDP_AUDIENCE, iss=trusted.issuer)
        description = oauth_error(exchange(client, posing, ID_TOKEN_TYPE), "invalid_grant")
        assert "key" in description
        assert stranger.discovery_fetches == 0 and stranger.jwks_fetches == 0


def test_a_credential_id_with_another_credentials_key_is_invalid_client(
    client: TestClient, org_a: OrgFixture, org_b: OrgFixture, world: dict[str, Any]
) -> None:
    alice, bob = world["alice"], world["bob"]
    alice_again = new_credential(org_a, alice.principal_id)  # same principal, other credential
    outsider = new_client(org_b, "mallory")
    for client_id, key in (
        (alice.client_id, bob.secret),
        (bob.client_id, alice.secret),
        (alice.client_id, alice_again.secret),
        (alice.client_id, outsider.secret),
        (outsider.client_id, alice.secret),
    ):
        forged = Client(alice.principal_id, client_id, key)
        description = oauth_error(client_credentials(client, forged), "invalid_client", 401)
        assert description == "client authentication failed"
    assert client_credentials(client, alice_again).status_code == 200


def test_a_disabled_principal_gets_nothing_by_any_grant(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    with running_idp() as idp:
        org_a.admin.ok(
            "POST",
            "/api/admin/trusted-issuers",
            {"issuer": idp.issuer, "audiences": [IDP_AUDIENCE]},
        )
        id_token = idp.id_token("upstream-9", aud=IDP_AUDIENCE)
        org_a.allow(relation="org", query_sets=["run_events"])
        first = exchange(client, id_token, ID_TOKEN_TYPE, scope="stream:run:bob1")
        assert first.status_code == 200, first.text
        federated = first.json()["subject"]
        for principal_id in (alice.principal_id, federated):
            org_a.admin.ok(
                "PATCH", f"/api/admin/principals/{principal_id}", {"disabled": True}, status=200
            )
        oauth_error(client_credentials(client, alice), "invalid_client", 401)
        oauth_error(exchange(client, alice.secret), "invalid_grant")
        description = oauth_error(
            exchange(client, id_token, ID_TOKEN_TYPE, scope="stream:run:bob1"), "invalid_grant"
        )
        assert "disabled" in description
    # A revoked credential reads the same as a wrong one.
    org_a.admin.ok("DELETE", f"/api/admin/credentials/{world['bob'].client_id}", status=204)
    oauth_error(client_credentials(client, world["bob"], "stream:run:bob1"), "invalid_client", 401)


# --- the JSON route, unchanged; the one route in the table and the spec ---------------------------


def test_json_requests_are_answered_exactly_as_before(
    client: TestClient, world: dict[str, Any]
) -> None:
    alice: Client = world["alice"]
    bearer = {"Authorization": f"Bearer {alice.secret}"}
    minted = client.post(TOKEN, json={"streams": ["run:alice1"]}, headers=bearer)
    assert minted.status_code == 200
    assert minted.headers["content-type"] == "application/json"
    assert set(minted.json()) == set(TokenResponse.model_fields)
    refused = client.post(TOKEN, json={"streams": ["run:bob1"]}, headers=bearer)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert refused.json()["code"] == "stream_not_granted"
    assert refused.json()["denied"] == [{"stream": "run:bob1", "reason": "not_permitted"}]
    invalid = client.post(
        TOKEN, json={"streams": ["run:alice1"], "ttl_seconds": "300"}, headers=bearer
    )
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "invalid_request"
    assert invalid.json()["errors"][0]["loc"] == ["body", "ttl_seconds"]
    for headers in ({}, {"Authorization": basic(alice.client_id, alice.secret)}):
        anonymous = client.post(TOKEN, json={"streams": ["run:alice1"]}, headers=headers)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
    # Other bodies than JSON and forms go where they always went: the JSON route refuses them.
    text = client.post(
        TOKEN, content=b"streams=run:alice1", headers={**bearer, "Content-Type": "text/plain"}
    )
    assert text.status_code == 422 and text.headers["content-type"] == PROBLEM_MEDIA_TYPE
    # The same request as a form: the same answer, spelled as OAuth spells it.
    as_form = client_credentials(client, alice, "stream:run:alice1")
    assert as_form.status_code == 200, as_form.text
    assert set(as_form.json()) == set(minted.json()) | OAUTH_FIELDS
    assert as_form.json()["grants"] == minted.json()["grants"]
    oauth_error(client_credentials(client, alice, "stream:run:bob1"), "invalid_scope")


def test_one_route_documents_both_request_bodies(client: TestClient) -> None:
    entries = [r for r in ROUTES if r.path == TOKEN and r.method == "POST"]
    assert len(entries) == 1 and entries[0].status is Status.ACTIVE
    assert set(entries[0].media_endpoints) == {FORM}
    spec = client.get("/openapi.json").json()
    assert list(spec["paths"][TOKEN]) == ["post"]
    operation = spec["paths"][TOKEN]["post"]
    assert operation["operationId"] == "mint_sync_token"
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", FORM}
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/TokenRequest"}
    form_schema = content[FORM]["schema"]
    assert form_schema["required"] == ["grant_type"]
    assert set(form_schema["properties"]["grant_type"]["enum"]) == {CLIENT_CREDENTIALS, EXCHANGE}
    assert {"scope", "client_id", "client_secret", "subject_token", "subject_token_type"} <= set(
        form_schema["properties"]
    )
    errors = operation["responses"]["400"]["content"]["application/json"]["schema"]
    assert {
        "invalid_request",
        "invalid_grant",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_target",
    } <= set(errors["properties"]["error"]["enum"])
    unauthorized = operation["responses"]["401"]["content"]
    assert set(unauthorized) == {PROBLEM_MEDIA_TYPE, "application/json"}
    assert unauthorized["application/json"]["schema"]["properties"]["error"]["enum"] == [
        "invalid_client"
    ]


# --- discovery ---------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    # RFC 8414 wants an https issuer; the service takes one in dev as in prod.
    return make_settings(database_url, issuer="https://control.test")


def test_discovery_is_valid_authorization_server_metadata(
    client: TestClient, state: AppState
) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    # RFC 8414 metadata, not OpenID provider metadata: this is a token endpoint without an
    # authorization endpoint, and it issues no ID tokens (OpenID's validator wants RS256 ID
    # tokens). RFC 8414 requires an authorization endpoint only with grant types that use one.
    AuthorizationServerMetadata(document).validate()
    issuer = state.settings.issuer
    assert document["issuer"] == issuer
    assert document["token_endpoint"] == f"{issuer}{TOKEN}"
    assert document["grant_types_supported"] == [CLIENT_CREDENTIALS, EXCHANGE]
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert document["scopes_supported"] == [
        "stream:", "query_set:", "op:subscribe", "op:append", "op:checkpoint"
    ]  # fmt: skip
    assert document["introspection_endpoint"] == f"{issuer}/api/sync/introspect"
    assert document["revocation_feed_endpoint"] == f"{issuer}/api/sync/revocations"
    assert "authorization_endpoint" not in document


def test_a_kind_wide_selector_in_scope_mints_a_kind_wide_grant(
    client: TestClient, org_a: OrgFixture, world: dict[str, Any]
) -> None:
    org_a.allow(relation="org", query_sets=["run_events"])
    response = client_credentials(client, world["alice"], "stream:run:* op:subscribe")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "stream:run:* query_set:run_events@1 op:subscribe"
    assert [grant["stream"] for grant in body["grants"]] == ["run:*"]
