"""A small authenticated HTTP API client, and an org driven through it the way its admin would."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    # Only a type: importing it warns about httpx, and benchmarks never need it.
    from fastapi.testclient import TestClient


# The subscription a query set holds when its definition names none.
DEFAULT_QUERY = "SELECT * FROM run_event_view"


@dataclass
class Api:
    """An authenticated client: `api.post("/api/admin/principals", {...})`."""

    client: TestClient | httpx.Client
    key: str | None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, path, headers=self.headers(), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None) -> httpx.Response:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any = None) -> httpx.Response:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> httpx.Response:
        return self.request("DELETE", path)

    def ok(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        response = self.request(method, path, body)
        expected = status or (201 if method == "POST" and "explain" not in path else 200)
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        return response.json() if response.content else None


@dataclass
class OrgFixture:
    """A bootstrapped org with an admin, and helpers to add principals with their own keys."""

    org_id: str
    admin_id: str
    admin: Api
    client: TestClient | httpx.Client
    principals: dict[str, str] = field(default_factory=dict)

    def principal(self, name: str, kind: str = "user", roles: list[str] | None = None) -> Api:
        body: dict[str, Any] = {"kind": kind, "name": name}
        if roles is not None:
            body["roles"] = roles
        created = self.admin.ok("POST", "/api/admin/principals", body)
        self.principals[name] = created["id"]
        key = self.admin.ok("POST", f"/api/admin/principals/{created['id']}/credentials", {})
        return Api(self.client, key["key"])

    def query_set(self, name: str, kinds: list[str], queries: list[str] | None = None) -> Any:
        """Define a query set; the module's catalog must serve `name@1` with the views the
        queries read (by default the run events' view, which the test catalog opens for each
        of its names)."""
        return self.admin.ok(
            "POST",
            "/api/admin/query-sets",
            {"name": name, "stream_kinds": kinds, "queries": queries or [DEFAULT_QUERY]},
        )

    def stream(self, stream_id: str, owner_id: str | None = None) -> Any:
        body: dict[str, Any] = {"id": stream_id}
        if owner_id is not None:
            body["owner_id"] = owner_id
        return self.admin.ok("POST", "/api/streams", body)

    def rule(self, **body: Any) -> Any:
        return self.admin.ok("POST", "/api/admin/grant-rules", body)

    def allow(
        self,
        *,
        kind: str = "run",
        relation: str = "org",
        query_sets: list[str],
        ops: list[str] | None = None,
        roles: list[str] | None = None,
        principal_ids: list[str] | None = None,
        ids: list[str] | None = None,
        max_ttl_seconds: int | None = None,
        effect: str = "allow",
    ) -> Any:
        subjects: dict[str, Any] = {}
        if roles:
            subjects["roles"] = roles
        if principal_ids:
            subjects["principal_ids"] = principal_ids
        if not subjects:
            subjects["roles"] = ["member"]
        streams: dict[str, Any] = {"kind": kind, "relation": relation}
        if ids:
            streams["ids"] = ids
        body: dict[str, Any] = {
            "effect": effect,
            "subjects": subjects,
            "streams": streams,
            "query_sets": query_sets,
            "ops": ops if ops is not None else ["subscribe"],
        }
        if max_ttl_seconds is not None:
            body["max_ttl_seconds"] = max_ttl_seconds
        return self.rule(**body)
