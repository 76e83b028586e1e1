"""Test helpers that drive the service the way its users do: bootstrap, then the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.identity.service import bootstrap_org
from control.kit.db import unit_of_work
from control.models import metadata
from control.state import AppState


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
        return self.admin.ok(
            "POST",
            "/api/admin/query-sets",
            {"name": name, "stream_kinds": kinds, "queries": queries or [f"SELECT * FROM {name}"]},
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


def bootstrap(state: AppState, client: TestClient | httpx.Client, name: str) -> OrgFixture:
    with unit_of_work(state.sessions) as session:
        created = bootstrap_org(session, state.credential_pepper, name)
    return OrgFixture(
        org_id=created["org_id"],
        admin_id=created["principal_id"],
        admin=Api(client, created["api_key"]),
        client=client,
    )


def table_counts(session: Session) -> dict[str, int]:
    """Rows per table: equal before and after means nothing was written."""
    return {
        table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
        for table in metadata.sorted_tables
        if table.name != "control_locks"
    }


def database_text(session: Session) -> str:
    """Every value of every row of every table, as text, to search for leaked secrets."""
    parts = []
    for table in metadata.sorted_tables:
        for row in session.execute(select(table)):
            parts.extend(repr(value) for value in row)
    return "\n".join(parts)
