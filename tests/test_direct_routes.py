"""The hot routes served directly (`Route.direct`) answer exactly as FastAPI's own handler for
the same endpoint and guard would: the same status, media type, problem and fields, for good
and bad bodies, media types and credentials alike."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import control.app
from control.routes import ROUTES
from control.state import AppState
from tests.factories import OrgFixture

TOKEN = "/api/sync/token"
INTROSPECT = "/api/sync/introspect"
# Fields that differ between two answers to the same request by nature (a new token each time).
VOLATILE = {"token", "jti", "expires_at", "refresh_after", "instance", "request_id", "iat", "nbf"}


@pytest.fixture
def through_fastapi(state: AppState, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The same app on the same data (its own event loop, so its own audit writer), with every
    route served by FastAPI's handler; no mint rate limit in either."""
    assert any(route.direct is not None for route in ROUTES)
    state.settings = state.settings.model_copy(update={"mint_rate_per_second": 0})
    table = tuple(dataclasses.replace(route, direct=None) for route in ROUTES)
    monkeypatch.setattr(control.app, "ROUTES", table)
    twin = AppState(
        settings=state.settings,
        engine=state.engine,
        sessions=state.sessions,
        keyring=state.keyring,
        credential_pepper=state.credential_pepper,
    )
    app = control.app.create_app(state=twin, background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def answer(client: TestClient, path: str, case: tuple[bytes, str | None, str | None]) -> Any:
    body, media, authorization = case
    headers = {}
    if media is not None:
        headers["content-type"] = media
    if authorization is not None:
        headers["authorization"] = authorization
    response = client.post(path, content=body, headers=headers)
    try:
        payload = comparable(response.json())
    except ValueError:
        payload = response.text
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("www-authenticate"),
        payload,
    )


def bodies(valid: dict[str, Any]) -> list[bytes]:
    text = json.dumps(valid)
    return [
        text.encode(),
        text.encode("utf-16"),  # JSON's other encodings, which the standard parser detects
        b"",
        b"{",
        b"\xff\xfe\xfa",  # not UTF-8
        b"[" * 5000 + b"]" * 5000,  # nested past any parser's depth
        b"null",
        b"[]",
        b'{"streams": 5}',
        b'{"streams": ["run:r1"], "ttl_seconds": NaN}',  # only the standard parser reads NaN
        b'{"streams": ["run:r1"], "ttl_seconds": 123456789012345678901234567890}',
        b'{"token": "\\ud800"}',  # a lone surrogate
        text.replace("{", '{"unknown": 1, ', 1).encode(),
    ]


MEDIA = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/vnd.control+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    None,
]


def cases(valid: dict[str, Any], keys: list[str | None]) -> list[Any]:
    found = [(body, "application/json", key) for body in bodies(valid) for key in keys]
    found += [(json.dumps(valid).encode(), media, key) for media in MEDIA for key in keys]
    return found


def test_the_token_route_answers_as_fastapi_would(
    state: AppState, client: TestClient, through_fastapi: TestClient, org_a: OrgFixture
) -> None:
    member = org_a.principal("alice")
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:r1")
    org_a.allow(query_sets=["run_events"])
    keys: list[str | None] = [
        f"Bearer {member.key}",
        f"Bearer {org_a.admin.key}",
        "Bearer ctl_not_a_key_at_all_000000000000000000000000",
        "Basic dXNlcjpwYXNz",
        None,
    ]
    mismatches = []
    for case in cases({"streams": ["run:r1"]}, keys):
        direct, fastapi = answer(client, TOKEN, case), answer(through_fastapi, TOKEN, case)
        if direct != fastapi:
            mismatches.append((case[0][:40], case[1], direct, fastapi))
    assert not mismatches, mismatches


def test_introspection_answers_as_fastapi_would(
    state: AppState, client: TestClient, through_fastapi: TestClient, org_a: OrgFixture
) -> None:
    member = org_a.principal("alice")
    service = org_a.principal("runtime", kind="service", roles=["service"])
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:r1")
    org_a.allow(query_sets=["run_events"])
    token = member.post(TOKEN, {"streams": ["run:r1"]}).json()["token"]
    keys: list[str | None] = [
        f"Bearer {service.key}",
        f"Bearer {member.key}",  # without the service role
        "Bearer ctl_not_a_key_at_all_000000000000000000000000",
        None,
    ]
    mismatches = []
    for case in cases({"token": token, "stream": "run:r1"}, keys):
        direct = answer(client, INTROSPECT, case)
        fastapi = answer(through_fastapi, INTROSPECT, case)
        if direct != fastapi:
            mismatches.append((case[0][:40], case[1], direct, fastapi))
    assert not mismatches, mismatches


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/.well-known/openid-configuration"])
def test_the_discovery_routes_answer_as_fastapi_would(
    client: TestClient, through_fastapi: TestClient, path: str
) -> None:
    """The JWKS and discovery, served directly: the same status, headers and bytes, for a
    plain GET, a HEAD, a conditional GET that matches and one that does not, and a GET with a
    body and credentials it ignores."""
    etag = client.get(path).headers["etag"]
    requests: list[tuple[str, dict[str, str], bytes]] = [
        ("GET", {}, b""),
        ("HEAD", {}, b""),
        ("GET", {"if-none-match": etag}, b""),
        ("GET", {"if-none-match": '"other"'}, b""),
        ("GET", {"authorization": "Bearer x", "content-type": "application/json"}, b"{]"),
        ("POST", {}, b""),
    ]
    for method, headers, body in requests:
        direct = client.request(method, path, headers=headers, content=body)
        fastapi = through_fastapi.request(method, path, headers=headers, content=body)
        assert direct.status_code == fastapi.status_code, (method, headers)
        assert direct.content == fastapi.content, (method, headers)
        for name in ("content-type", "cache-control", "etag", "allow"):
            assert direct.headers.get(name) == fastapi.headers.get(name), (method, name)
