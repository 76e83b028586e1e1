"""Trusted issuers at their edges: who may configure one, where the service may be made to fetch
from, how an unreachable or broken identity provider looks to a caller, and what of an upstream
token may reach the database. Real loopback identity providers and real HTTP throughout."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control.federation.network import NetworkPolicy
from control.federation.verifier import UpstreamUnavailable, UpstreamVerifier
from control.settings import Settings
from tests.conftest import make_settings
from tests.factories import OrgFixture
from tests.idp import IdentityProvider, running_idp

TOKEN = "/api/sync/token"
ISSUERS = "/api/admin/trusted-issuers"
INTROSPECT = "/api/sync/introspect"
AUDIENCE = "app"
STREAM = "run:fed1"

# Prod refuses secrets that do not look random.
PROD_SECRETS = {
    "key_encryption_key": base64.urlsafe_b64encode(bytes(range(32))).decode(),
    "credential_pepper": base64.urlsafe_b64encode(bytes(range(32, 64))).decode(),
}
PROD = {"env": "prod", "issuer": "https://control.test", **PROD_SECRETS}
PROD_ALLOWING = {**PROD, "federation_allow_private_networks": True}
DEV_ALLOWING = {"federation_allow_private_networks": True}
NAME_PATTERN = re.compile(r"^[^\x00-\x1f]{1,200}$")


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    """conftest's settings, with a test's overrides (`indirect` parametrization)."""
    return make_settings(database_url, **getattr(request, "param", {}))


def issuer_body(issuer: str, **fields: Any) -> dict[str, Any]:
    return {"issuer": issuer, "audiences": [AUDIENCE], **fields}


def federate(org: OrgFixture, idp: IdentityProvider, **fields: Any) -> dict[str, Any]:
    """Trust `idp` in `org`, and let members subscribe to one stream."""
    org.query_set("run_events", ["run"])
    org.stream(STREAM)
    org.allow(query_sets=["run_events"])
    created: dict[str, Any] = org.admin.ok("POST", ISSUERS, issuer_body(idp.issuer, **fields))
    return created


def mint(client: TestClient, id_token: str) -> Any:
    return client.post(
        TOKEN, json={"streams": [STREAM]}, headers={"Authorization": f"Bearer {id_token}"}
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def garbage_server() -> Iterator[int]:
    """A port that accepts connections and answers bytes that are not HTTP."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n\r\ngarbage\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        listener.close()


# --- who may configure a trusted issuer ---------------------------------------------------

OPERATOR_CONFERRING = [
    pytest.param({"default_roles": ["member", "operator"]}, id="default_roles"),
    pytest.param({"role_claim": "groups", "role_map": {"ops": ["operator"]}}, id="role_map"),
]


@pytest.mark.parametrize("fields", OPERATOR_CONFERRING)
def test_a_non_operator_admin_cannot_confer_operator(
    org_b: OrgFixture, fields: dict[str, Any]
) -> None:
    refused = org_b.admin.post(ISSUERS, issuer_body("https://idp.b.example", **fields))
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden"), refused.text
    assert org_b.admin.ok("GET", ISSUERS)["items"] == []
    plain = org_b.admin.ok("POST", ISSUERS, issuer_body("https://idp.b.example"))
    path = f"{ISSUERS}/{plain['id']}"
    raised = org_b.admin.put(path, issuer_body("https://idp.b.example", **fields))
    assert (raised.status_code, raised.json()["code"]) == (403, "forbidden"), raised.text
    assert org_b.admin.ok("GET", path) == plain


def test_only_an_operator_may_change_or_delete_an_issuer_conferring_operator(
    org_a: OrgFixture,
) -> None:
    # org_a is the operator org: its bootstrap admin holds operator, a second admin does not.
    fields = {"role_claim": "groups", "role_map": {"ops": ["operator"]}}
    row = org_a.admin.ok("POST", ISSUERS, issuer_body("https://idp.a.example", **fields))
    path = f"{ISSUERS}/{row['id']}"
    admin = org_a.principal("second-admin", roles=["admin"])
    for method, body in (
        ("PUT", issuer_body("https://idp.a.example")),  # dropping operator is editing it
        ("PUT", issuer_body("https://elsewhere.a.example", **fields)),  # repointing it
        ("DELETE", None),
    ):
        response = admin.request(method, path, body)
        assert (response.status_code, response.json()["code"]) == (403, "forbidden"), method
    assert org_a.admin.ok("GET", path) == row
    # The operator may do all of it, and create one conferring operator by default too.
    org_a.admin.ok("PUT", path, issuer_body("https://idp2.a.example", **fields))
    org_a.admin.ok("DELETE", path, status=204)
    org_a.admin.ok(
        "POST",
        ISSUERS,
        issuer_body("https://idp3.a.example", default_roles=["member", "operator"]),
    )


def test_this_services_own_issuer_cannot_be_trusted(org_a: OrgFixture, settings: Settings) -> None:
    own = settings.issuer
    for issuer in (own, f"{own}/"):
        response = org_a.admin.post(ISSUERS, issuer_body(issuer))
        assert response.status_code == 422, (issuer, response.text)
        body = response.json()
        assert body["code"] == "invalid_request" and "issuer" in body["detail"]
        assert body["errors"][0]["loc"] == ["body", "issuer"]
    other = org_a.admin.ok("POST", ISSUERS, issuer_body("https://idp.a.example"))
    moved = org_a.admin.put(f"{ISSUERS}/{other['id']}", issuer_body(own))
    assert moved.status_code == 422, moved.text


def test_deleting_an_issuer_revokes_the_tokens_of_its_principals(
    org_b: OrgFixture, client: TestClient
) -> None:
    with running_idp() as idp:
        trusted = federate(org_b, idp)
        tokens = []
        for sub in ("user-1", "user-2"):
            response = mint(client, idp.id_token(sub, aud=AUDIENCE))
            assert response.status_code == 200, response.text
            tokens.append(response.json()["token"])
    member = org_b.principal("member-with-key")
    kept = member.post(TOKEN, {"streams": [STREAM]})
    assert kept.status_code == 200, kept.text
    service = org_b.principal("introspector", kind="service", roles=["service"])

    def introspect(token: str) -> dict[str, Any]:
        answer: dict[str, Any] = service.ok("POST", INTROSPECT, {"token": token}, status=200)
        return answer

    assert all(introspect(token)["active"] for token in tokens)
    org_b.admin.ok("DELETE", f"{ISSUERS}/{trusted['id']}", status=204)
    for token in tokens:
        answer = introspect(token)
        assert (answer["active"], answer["reason"]) == (False, "revoked"), answer
    assert introspect(kept.json()["token"])["active"] is True  # not one of its principals
    audit = org_b.admin.ok("GET", "/api/admin/audit?limit=500")["items"]
    deleted = [e for e in audit if e["action"] == "trusted_issuer.delete"]
    assert deleted[0]["detail"]["revoked_principals"] == 2


def test_repointing_an_issuer_ends_the_old_subjects(org_b: OrgFixture, client: TestClient) -> None:
    """A `sub` of the new issuer is not the old issuer's `sub`: it never signs in as the old
    principal, and the old principals' tokens end with the trust that minted them."""
    with running_idp() as old, running_idp() as new:
        trusted = federate(org_b, old)
        first = mint(client, old.id_token("same-sub", aud=AUDIENCE))
        assert first.status_code == 200, first.text
        old_principal = first.json()["subject"]
        service = org_b.principal("introspector", kind="service", roles=["service"])
        org_b.admin.ok("PUT", f"{ISSUERS}/{trusted['id']}", issuer_body(new.issuer), status=200)
        answer = service.ok("POST", INTROSPECT, {"token": first.json()["token"]}, status=200)
        assert (answer["active"], answer["reason"]) == (False, "revoked")
        second = mint(client, new.id_token("same-sub", aud=AUDIENCE))
        assert second.status_code == 200, second.text
        assert second.json()["subject"] != old_principal
    audit = org_b.admin.ok("GET", "/api/admin/audit?limit=500")["items"]
    updated = [e for e in audit if e["action"] == "trusted_issuer.update"]
    assert updated[0]["detail"]["revoked_principals"] == 1


# --- where the service may be made to fetch from ------------------------------------------

PROD_REFUSED = [
    "http://93.184.216.34",  # not https
    "https://127.0.0.1",
    "https://localhost",  # a name resolving to loopback
    "https://2130706433",  # 127.0.0.1 in another spelling
    "https://10.1.2.3",
    "https://172.16.0.1",
    "https://192.168.0.10",
    "https://100.64.0.1",
    "https://169.254.169.254",
    "https://0.0.0.0",
    "https://[::1]",
    "https://[fe80::1]",
    "https://[fd00::1]",
    "https://[::ffff:127.0.0.1]",
    "https://[::ffff:169.254.169.254]",
    "https://[ff02::1]",
]


def assert_issuer_refused(org: OrgFixture, issuer: str) -> None:
    response = org.admin.post(ISSUERS, issuer_body(issuer))
    assert response.status_code == 422, (issuer, response.status_code, response.text)
    body = response.json()
    assert body["code"] == "invalid_request" and body["detail"].startswith("`issuer`"), body
    assert body["errors"][0]["loc"] == ["body", "issuer"]


def test_an_issuer_url_that_names_nothing_reachable_is_refused(
    org_b: OrgFixture,
) -> None:
    # An unclosed IPv6 bracket, a NUL and a non-ASCII host: httpx cannot parse them.
    for issuer in ("https://[::1", "https://idp\x00.example", "https://\u2603.example"):
        assert_issuer_refused(org_b, issuer)
        refused = org_b.admin.post(ISSUERS, issuer_body(issuer)).json()
        assert "not a valid URL" in refused["detail"], refused
    # A port no socket has (the resolver would wrap 99999 to another port), and a host that
    # names nothing a resolver could find.
    for issuer, why in (
        ("https://idp.example:99999", "port outside 1-65535"),
        ("https://idp.example:0", "port outside 1-65535"),
        ("https://%7Aidp.example", "neither a DNS name nor an IP address"),
        ("https://idp!.example", "neither a DNS name nor an IP address"),
    ):
        assert_issuer_refused(org_b, issuer)
        refused = org_b.admin.post(ISSUERS, issuer_body(issuer)).json()
        assert why in refused["detail"], refused
    assert org_b.admin.ok("GET", ISSUERS)["items"] == []
    # An international name is a DNS name once encoded, and an IPv6 literal an address.
    org_b.admin.ok("POST", ISSUERS, issuer_body("https://bücher.example:8443"))
    org_b.admin.ok("POST", ISSUERS, issuer_body("https://[2606:4700::1111]"))


@pytest.mark.parametrize("settings", [PROD], indirect=True, ids=["prod"])
def test_prod_refuses_to_trust_issuers_on_internal_addresses(org_b: OrgFixture) -> None:
    for issuer in PROD_REFUSED:
        assert_issuer_refused(org_b, issuer)
    assert org_b.admin.ok("GET", ISSUERS)["items"] == []
    org_b.admin.ok("POST", ISSUERS, issuer_body("https://93.184.216.34"))


@pytest.mark.parametrize("settings", [PROD_ALLOWING], indirect=True, ids=["prod-allowing"])
def test_prod_allows_private_networks_when_told_but_still_wants_https(
    org_b: OrgFixture,
) -> None:
    for issuer in ("https://10.1.2.3", "https://169.254.169.254", "https://127.0.0.1"):
        org_b.admin.ok("POST", ISSUERS, issuer_body(issuer))
    org_b.admin.ok("POST", ISSUERS, issuer_body("https://[::1]:8443"))
    for issuer in ("http://10.1.2.4", "https://0.0.0.0", "https://[ff02::1]"):
        assert_issuer_refused(org_b, issuer)


def test_dev_allows_loopback_over_http_but_not_private_networks(org_b: OrgFixture) -> None:
    for issuer in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"):
        org_b.admin.ok("POST", ISSUERS, issuer_body(issuer))
    for issuer in ("http://10.1.2.3", "http://169.254.169.254", "http://[fe80::1]"):
        assert_issuer_refused(org_b, issuer)
    row = org_b.admin.ok("POST", ISSUERS, issuer_body("https://idp.b.example"))
    moved = org_b.admin.put(f"{ISSUERS}/{row['id']}", issuer_body("http://192.168.1.1"))
    assert moved.status_code == 422, moved.text


@pytest.mark.parametrize("settings", [DEV_ALLOWING], indirect=True, ids=["dev-allowing"])
def test_dev_allows_private_networks_when_told(org_b: OrgFixture) -> None:
    for issuer in ("http://10.1.2.3", "http://169.254.169.254", "http://[fe80::1]"):
        org_b.admin.ok("POST", ISSUERS, issuer_body(issuer))
    # No identity provider lives at an unspecified or multicast address, whatever the setting.
    for issuer in ("http://0.0.0.0:9", "http://[::]:9", "http://224.0.0.1"):
        assert_issuer_refused(org_b, issuer)


def test_a_jwks_uri_on_a_refused_address_is_not_fetched(
    org_b: OrgFixture, client: TestClient
) -> None:
    with running_idp() as idp:
        federate(org_b, idp)
        idp.discovery_raw = json.dumps(
            {"issuer": idp.issuer, "jwks_uri": "http://169.254.169.254/latest/jwks"}
        ).encode()
        response = mint(client, idp.id_token("user-1", aud=AUDIENCE))
        assert (response.status_code, response.json()["code"]) == (503, "issuer_unavailable")
        assert idp.discovery_fetches == 1 and idp.jwks_fetches == 0


def test_names_are_checked_again_when_fetching() -> None:
    # Registration saw the name; what it resolves to when fetching is what is checked then.
    loopback_refused = NetworkPolicy(require_https=False, allow_loopback=False, allow_private=False)
    dev = NetworkPolicy(require_https=False, allow_loopback=True, allow_private=False)
    with running_idp() as idp:
        idp.issuer = idp.issuer.replace("127.0.0.1", "localhost")
        token = idp.id_token("user-1", aud=AUDIENCE)
        refusing, allowing = UpstreamVerifier(), UpstreamVerifier()
        with pytest.raises(UpstreamUnavailable):
            refusing.verify(
                token,
                issuer=idp.issuer,
                audiences=[AUDIENCE],
                algorithms=["RS256"],
                network=loopback_refused,
            )
        assert idp.discovery_fetches == 0
        claims = allowing.verify(
            token, issuer=idp.issuer, audiences=[AUDIENCE], algorithms=["RS256"], network=dev
        )
        assert claims["sub"] == "user-1" and idp.discovery_fetches == 1
        refusing.close()
        allowing.close()


# --- an unreachable or broken identity provider ---------------------------------------------


def test_an_unreachable_issuer_is_not_fetched_per_request(
    org_b: OrgFixture, client: TestClient
) -> None:
    with running_idp() as idp:
        federate(org_b, idp)
        idp.status = 500
        answers = [mint(client, idp.id_token(f"user-{i}", aud=AUDIENCE)) for i in range(12)]
        assert {(r.status_code, r.json()["code"]) for r in answers} == {(503, "issuer_unavailable")}
        assert all(int(r.headers["retry-after"]) >= 1 for r in answers)
        assert idp.discovery_fetches == 1


def test_concurrent_tokens_share_one_fetch_and_failures_back_off() -> None:
    dev = NetworkPolicy(require_https=False, allow_loopback=True, allow_private=False)
    verifier = UpstreamVerifier(backoff_initial=0.5, backoff_max=10.0)
    with running_idp() as idp:
        idp.status, idp.discovery_delay = 500, 0.3
        token = idp.id_token("user-1", aud=AUDIENCE)
        outcomes: list[str] = []

        def attempt() -> None:
            try:
                verifier.verify(
                    token,
                    issuer=idp.issuer,
                    audiences=[AUDIENCE],
                    algorithms=["RS256"],
                    network=dev,
                )
                outcomes.append("ok")
            except UpstreamUnavailable:
                outcomes.append("unavailable")

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert outcomes == ["unavailable"] * 8
        assert idp.discovery_fetches == 1
        idp.discovery_delay = 0.0
        time.sleep(0.6)  # past the first backoff (0.5 s): one more attempt, which fails
        attempt()
        assert idp.discovery_fetches == 2
        idp.status = 200
        time.sleep(0.3)  # the second backoff is twice as long (1 s): not yet
        attempt()
        assert (outcomes[-1], idp.discovery_fetches) == ("unavailable", 2)
        time.sleep(0.8)
        attempt()
        assert (outcomes[-1], idp.discovery_fetches) == ("ok", 3)
    verifier.close()


def test_a_closed_port_and_a_garbage_port_read_the_same(
    org_b: OrgFixture, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="control.federation")
    org_b.query_set("run_events", ["run"])
    org_b.stream(STREAM)
    org_b.allow(query_sets=["run_events"])
    with running_idp() as signer, garbage_server() as garbage, running_idp() as not_json:
        not_json.discovery_raw = b"<html>Welcome to nginx</html>"
        ports = {
            "closed": closed_port(),
            "garbage": garbage,
            "not-json": int(not_json.issuer.rsplit(":", 1)[1]),
        }
        bodies = {}
        for label, port in ports.items():
            issuer = f"http://127.0.0.1:{port}"
            org_b.admin.ok("POST", ISSUERS, issuer_body(issuer))
            signer.issuer = issuer
            id_token = signer.id_token("user-1", aud=AUDIENCE)
            response = mint(client, id_token)
            assert response.status_code == 503, (label, response.text)
            # The server's log says what went wrong, and where; never with the token.
            assert issuer in caplog.text and id_token not in caplog.text
            text = response.text
            for leak in (str(port), "127.0.0.1", "localhost", "Error", "Exception", "nginx"):
                assert leak not in text, (label, leak, text)
            bodies[label] = response.json()
    assert bodies["closed"] == bodies["garbage"] == bodies["not-json"]
    assert bodies["closed"]["code"] == "issuer_unavailable"


BIG = 300 * 1024
MALFORMED = [
    pytest.param({"discovery_raw": b"[]"}, id="discovery-not-an-object"),
    pytest.param({"discovery_raw": b'"issuer"'}, id="discovery-a-string"),
    pytest.param({"discovery_raw": b'\xff\xfe{"issuer": 1}'}, id="discovery-not-utf8"),
    pytest.param({"discovery_raw": b"[" * 100_000 + b"]" * 100_000}, id="discovery-deep"),
    pytest.param({"discovery_raw": b" " * BIG + b"{}"}, id="discovery-huge"),
    pytest.param(
        {"discovery_raw": b" " * BIG + b"{}", "send_length": False}, id="discovery-huge-streamed"
    ),
    pytest.param({"jwks_raw": b"{}"}, id="jwks-without-keys"),
    pytest.param({"jwks_raw": b'{"keys": {"kty": "RSA"}}'}, id="jwks-keys-not-a-list"),
    pytest.param({"jwks_raw": b'{"keys": ["x", 1, null]}'}, id="jwks-keys-not-objects"),
    pytest.param(
        {"jwks_raw": b'{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}'}, id="jwks-bad-key"
    ),
    pytest.param(
        {"jwks_raw": b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}'},
        id="jwks-point-off-curve",
    ),
    pytest.param({"jwks_raw": b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}, id="jwks-oct"),
    pytest.param({"jwks_raw": b"\xc3\x28"}, id="jwks-not-utf8"),
    pytest.param({"jwks_raw": b"[]"}, id="jwks-a-list"),
]


@pytest.mark.parametrize("broken", MALFORMED)
def test_malformed_upstream_documents_are_503_not_500(
    org_b: OrgFixture, client: TestClient, broken: dict[str, Any]
) -> None:
    with running_idp() as idp:
        federate(org_b, idp)
        for name, value in broken.items():
            setattr(idp, name, value)
        response = mint(client, idp.id_token("user-1", aud=AUDIENCE))
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "issuer_unavailable"


# --- what of an upstream token may reach the database ---------------------------------------


def raw_claims(idp: IdentityProvider, sub: str, iss: str | None = None, **claims: str) -> bytes:
    """A payload as JSON text, so escapes no encoder writes (lone surrogates) can be sent."""
    now = int(time.time())
    fields = [
        f'"iss": "{iss if iss is not None else idp.issuer}"',
        f'"sub": "{sub}"',
        f'"aud": "{AUDIENCE}"',
        f'"iat": {now}',
        f'"exp": {now + 300}',
        *(f'"{name}": "{value}"' for name, value in claims.items()),
    ]
    return ("{" + ", ".join(fields) + "}").encode()


def test_unencodable_subjects_and_issuers_are_401(org_b: OrgFixture, client: TestClient) -> None:
    with running_idp() as idp:
        federate(org_b, idp)
        for sub in (r"\ud800", r"user-\udfff", r"user\u0000one", r"two\nlines"):
            response = mint(client, idp.sign_raw(raw_claims(idp, sub)))
            assert response.status_code == 401, (sub, response.text)
            assert response.json()["reason"] == "invalid_claims", sub
        for iss in (idp.issuer + r"\ud800", idp.issuer + r"\u0000"):
            response = mint(client, idp.sign_raw(raw_claims(idp, "user-1", iss=iss)))
            assert response.status_code == 401, (iss, response.text)
            assert response.json()["reason"] in ("malformed", "unknown_issuer")
        # A lone surrogate in a name claim is replaced, not a reason to refuse.
        surrogate = idp.sign_raw(raw_claims(idp, "user-2", email=r"ada\ud800@example.com"))
        response = mint(client, surrogate)
        assert response.status_code == 200, response.text
    principal = org_b.admin.ok("GET", f"/api/admin/principals/{response.json()['subject']}")
    assert principal["name"] == "ada\ufffd@example.com"


def test_federated_names_are_stored_sanitized(org_b: OrgFixture, client: TestClient) -> None:
    cases = [
        (
            {"email": "\x1b[31mada\x00lovelace\nhacker\x1b[0m@example.com"},
            "ada lovelace hacker@example.com",
        ),
        ({"email": "\x00\n\x1b[2J", "name": "\r\n"}, "user-2"),  # nothing left: the subject
        ({"preferred_username": "x" * 300}, "x" * 200),
        ({"name": "Grace\tHopper\x7f\x9b31m"}, "Grace Hopper 31m"),
    ]
    with running_idp() as idp:
        federate(org_b, idp)
        for i, (claims, expected) in enumerate(cases, start=1):
            response = mint(client, idp.id_token(f"user-{i}", aud=AUDIENCE, **claims))
            assert response.status_code == 200, response.text
            principal = org_b.admin.ok("GET", f"/api/admin/principals/{response.json()['subject']}")
            assert principal["name"] == expected
            assert NAME_PATTERN.match(principal["name"])
