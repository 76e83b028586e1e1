"""A replica that cannot refresh its signing keys stops signing.

It may have missed a rotation the other replicas made, and would go on signing with a key they
have retired. Past the bound tied to the publish lead and the leeway, the token endpoint answers
503 `signing_unavailable` and `/readyz` says not ready; once the keys load again, both recover
on their own. The refresh is made to fail for real: the database role the replica connects as
loses the right to read the signing keys, while everything else it reads still works.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.pg import ADMIN_URL, reachable_postgres, scratch_database
from tests.server import Server, running_server


def _admin(statement: str, database: str | None = None) -> None:
    url = ADMIN_URL if database is None else ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(statement)  # type: ignore[arg-type]


def _wait(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.e2e
def test_a_replica_that_cannot_load_its_keys_stops_signing_and_recovers(tmp_path: Path) -> None:
    reachable_postgres("the fail-closed signing test")
    role = f"control_{secrets.token_hex(4)}"
    _admin(f"CREATE ROLE {role} LOGIN")
    try:
        with scratch_database() as url:
            database = url.rsplit("/", 1)[1]
            # The replica's own role owns the database, as in a deployment.
            _admin(f'ALTER DATABASE "{database}" OWNER TO {role}')
            role_url = url.replace("postgres@", f"{role}@", 1)
            with running_server(
                role_url, tmp_path, key_refresh_seconds="0.2", token_leeway_seconds="1"
            ) as server:
                _scenario(server, database, role)
    finally:
        _admin(f"DROP ROLE IF EXISTS {role}")


def _scenario(server: Server, database: str, role: str) -> None:
    admin = {"Authorization": f"Bearer {server.bootstrap('a')['api_key']}"}
    base = server.base_url

    def call(method: str, path: str, body: Any = None, key: dict[str, str] = admin) -> Any:
        response = httpx.request(method, f"{base}{path}", json=body, headers=key, timeout=10)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    member = call("POST", "/api/admin/principals", {"kind": "user", "name": "ada"})
    key = call("POST", f"/api/admin/principals/{member['id']}/credentials", {})["key"]
    call(
        "POST",
        "/api/admin/query-sets",
        {
            "name": "run_events",
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_event_view"],
        },
    )
    call("POST", "/api/streams", {"id": "run:r1", "owner_id": member["id"]})
    call("POST", "/api/admin/grant-rules", {
        "effect": "allow", "subjects": {"roles": ["member"]},
        "streams": {"kind": "run", "relation": "org"}, "query_sets": ["run_events"],
        "ops": ["subscribe"],
    })  # fmt: skip
    as_member = {"Authorization": f"Bearer {key}"}

    def mint() -> httpx.Response:
        return httpx.post(
            f"{base}/api/sync/token", json={"streams": ["run:r1"]}, headers=as_member, timeout=10
        )

    assert mint().status_code == 200
    _admin(f"REVOKE SELECT ON signing_keys FROM {role}", database)
    try:
        # Past the bound (leeway 1 s; three refreshes of 0.2 s): not ready, and no token.
        refused = _wait(
            lambda: (r := mint()).status_code == 503 and r, 20, "the mint to be refused"
        )
        problem = refused.json()
        assert problem["code"] == "signing_unavailable", problem
        assert refused.headers["retry-after"] == "1"
        assert "token" not in problem
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["keys"] is False
        # The rest of the replica still answers: authentication reads the database as before.
        assert httpx.get(f"{base}/api/admin/principals", headers=admin).status_code == 200
    finally:
        _admin(f"GRANT SELECT ON signing_keys TO {role}", database)
    _wait(lambda: mint().status_code == 200, 20, "signing to resume")
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    assert server.process.poll() is None  # the same process: it recovered on its own
