"""What a newcomer meets first: errors that say what to do, and the API docs in the browser."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from control.kit.routing import Status
from control.routes import ROUTES
from tests.factories import OrgFixture


def test_a_body_without_the_json_header_says_which_header(
    org_a: OrgFixture, client: TestClient
) -> None:
    headers = {"Authorization": f"Bearer {org_a.admin.key}"}
    # What `curl -d '{"kind": ...}'` sends: a form content type.
    response = client.post(
        "/api/admin/principals",
        content=b'{"kind": "user", "name": "ada"}',
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "Content-Type: application/json" in detail
    assert "application/x-www-form-urlencoded" in detail
    bare = client.post(
        "/api/admin/principals", content=b'{"kind": "user", "name": "ada"}', headers=headers
    )
    assert "no Content-Type" in bare.json()["detail"]
    # With the header, the same bytes work.
    ok = client.post(
        "/api/admin/principals",
        content=b'{"kind": "user", "name": "ada"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert ok.status_code == 201, ok.text


def test_a_trailing_slash_is_a_problem_not_an_empty_redirect(
    org_a: OrgFixture, client: TestClient
) -> None:
    headers = {"Authorization": f"Bearer {org_a.admin.key}"}
    response = client.get("/api/admin/principals/", headers=headers, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


def test_the_interactive_docs_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # Nothing is fetched from elsewhere: users run this on private networks.
    assert "http://" not in page.text and "https://" not in page.text
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text):
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.content, asset
    assert client.get("/docs/assets/init.js").text.count("/openapi.json") == 1
    for name in ("nope.js", "..%2Fdocs.py", "swagger-ui.css.map"):
        missing = client.get(f"/docs/assets/{name}")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


def test_pages_are_routes_of_the_table_but_not_of_the_api(client: TestClient) -> None:
    pages = [route for route in ROUTES if route.status is Status.PAGE]
    assert {route.path for route in pages} == {"/docs", "/docs/assets/{asset}"}
    spec = client.get("/openapi.json").json()
    for route in pages:
        assert route.path not in spec["paths"]
        assert route.access.public


def test_a_credential_needs_no_body(org_a: OrgFixture, client: TestClient) -> None:
    # Every field of the request is optional, so the body is too.
    headers = {"Authorization": f"Bearer {org_a.admin.key}"}
    issued = client.post(f"/api/admin/principals/{org_a.admin_id}/credentials", headers=headers)
    assert issued.status_code == 201, issued.text
    assert issued.json()["key"].startswith("ctl_")
