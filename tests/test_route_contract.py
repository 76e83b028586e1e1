"""Route-contract tests generated from the route table: adding a route is enough to get them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control.app import build_openapi
from control.cli import render_spec
from control.errors import ERROR_CODES, PROBLEM_MEDIA_TYPE
from control.kit.routing import Route, Status
from control.routes import ROUTES

ACTIVE = [route for route in ROUTES if route.status is Status.ACTIVE]
RETIRED = [route for route in ROUTES if route.status is Status.RETIRED]
PROTECTED = [route for route in ACTIVE if not route.access.public]
CONSOLE = [route for route in ROUTES if route.status is Status.CONSOLE]
SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def route_id(route: Route) -> str:
    return f"{route.method} {route.path}"


def concrete(path: str) -> str:
    """A callable URL for a templated path."""
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.fixture(scope="module")
def spec() -> dict:  # type: ignore[type-arg]
    return json.loads(render_spec())


def test_committed_spec_equals_generated() -> None:
    assert SPEC_FILE.read_text() == render_spec(), "run `control openapi export`"


def test_operation_ids_unique() -> None:
    ids = [route.operation_id for route in ROUTES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("route", ACTIVE, ids=route_id)
def test_active_route_documented(route: Route, spec: dict) -> None:  # type: ignore[type-arg]
    operation = spec["paths"][route.path][route.method.lower()]
    assert operation["operationId"] == route.operation_id
    assert operation["tags"] == [route.tag]
    for status in route.documented_statuses:
        response = operation["responses"][str(status)]
        assert PROBLEM_MEDIA_TYPE in response["content"], (route.operation_id, status)
    for code in route.documented_errors:
        status = ERROR_CODES[code][0]
        assert f"`{code}`" in operation["responses"][str(status)]["description"]
    if route.access.public:
        assert "security" not in operation
    else:
        assert operation["security"] == [{"HTTPBearer": []}]


def test_every_spec_operation_is_in_the_table(spec: dict) -> None:  # type: ignore[type-arg]
    table = {(route.method.lower(), route.path) for route in ACTIVE}
    in_spec = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert in_spec == table


@pytest.mark.parametrize("route", RETIRED, ids=route_id)
def test_retired_route_answers_410_and_is_absent(
    route: Route,
    client: TestClient,
    spec: dict,  # type: ignore[type-arg]
) -> None:
    response = client.request(route.method, route.path)
    assert response.status_code == 410
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["code"] == "route_retired"
    assert body["successor"] == route.successor
    assert route.path not in spec["paths"]


@pytest.mark.parametrize("route", PROTECTED, ids=route_id)
def test_protected_route_needs_a_credential(route: Route, client: TestClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer ctl_not-a-real-key"},
        {"Authorization": "Basic x"},
    ):
        response = client.request(route.method, concrete(route.path), headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"


def test_served_spec_equals_committed(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(SPEC_FILE.read_text())
    # Built once per app: the second answer is the document the first one built.
    assert client.get("/openapi.json").content == response.content
    app = client.app
    assert isinstance(app, FastAPI)
    assert build_openapi(app) is build_openapi(app)


@pytest.mark.parametrize("route", CONSOLE, ids=route_id)
def test_console_route_is_out_of_the_spec_and_needs_a_session(
    route: Route,
    client: TestClient,
    spec: dict,  # type: ignore[type-arg]
) -> None:
    assert route.path.startswith("/console")
    assert route.path not in spec["paths"]
    if route.access.public:
        return
    # A console page takes its session's cookie, never a bearer credential.
    assert route.access.accepts == frozenset({"console_session"})
    headers = {"Authorization": "Bearer ctl_not-a-real-key"}
    response = client.request(
        route.method, concrete(route.path), headers=headers, follow_redirects=False
    )
    if route.method == "GET":
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/console/sign-in")
    else:
        assert response.status_code == 403, response.text
