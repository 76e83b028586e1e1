"""Helpers for end-to-end tests that run several real replicas (uvicorn processes) on one
PostgreSQL database, and kill them: the org every replica serves, minting, the audit log, and
the signing-key rows as the database holds them."""

from __future__ import annotations

import base64
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from control.keys.crypto import KeyCipher
from control.keys.models import KeyState
from tests.conftest import KEK
from tests.factories import Api, OrgFixture
from tests.pg import reachable_postgres, scratch_database
from tests.server import BIN, Server, free_port, server_env

STREAM = "run:fleet"
QUERY_SET = "run_events"
# Generous: the machine is shared, and a replica under load may answer slowly.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A scratch database on the shared PostgreSQL: several replicas need a real server."""
    reachable_postgres("(replicas need PostgreSQL)")
    with scratch_database() as url:
        yield url


@contextmanager
def replicas(
    database_url: str, workdir: Path, ports: Sequence[int | None], **settings: str
) -> Iterator[list[Server]]:
    """Replicas on a migrated database, started together: `tests.server`'s `running_server`
    without its (no-op, once migrated) upgrade."""
    servers: list[Server] = []
    try:
        for wanted in ports:
            port = wanted or free_port()
            env = server_env(database_url, port, **settings)
            log_path = workdir / f"server-{port}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [str(BIN / "control"), "serve", "--port", str(port)],
                    env=env,
                    cwd=workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            servers.append(Server(f"http://127.0.0.1:{port}", env, process, log_path))
        deadline = time.monotonic() + 60
        for server in servers:
            while True:
                try:
                    if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"replica did not start:\n{server.log()}")
                time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


@contextmanager
def replica(database_url: str, workdir: Path, **settings: str) -> Iterator[Server]:
    """One more replica on a migrated database."""
    with replicas(database_url, workdir, [None], **settings) as [server]:
        yield server


@dataclass
class World:
    """One org, set up through the HTTP API of one replica; keys work on every replica."""

    org_id: str
    admin_key: str
    alice_key: str
    alice_id: str
    service_key: str


def make_world(server: Server, org: str = "acme") -> World:
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
        boot = server.bootstrap(org)
        fixture = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
        alice = fixture.principal("alice")
        service = fixture.principal("runtime", kind="service")
        fixture.query_set(QUERY_SET, ["run"], ["SELECT * FROM run_event_view"])
        fixture.stream(STREAM, owner_id=fixture.principals["alice"])
        fixture.allow(relation="owner", query_sets=[QUERY_SET], ops=["subscribe"])
    assert alice.key is not None and service.key is not None
    return World(
        org_id=boot["org_id"],
        admin_key=boot["api_key"],
        alice_key=alice.key,
        alice_id=fixture.principals["alice"],
        service_key=service.key,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mint(http: httpx.Client, key: str) -> httpx.Response:
    return http.post("/api/sync/token", json={"streams": [STREAM]}, headers=bearer(key))


def introspect(http: httpx.Client, key: str, token: str) -> dict[str, Any]:
    response = http.post("/api/sync/introspect", json={"token": token}, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def audit_events(base_url: str, admin_key: str, action: str | None = None) -> list[dict[str, Any]]:
    """The whole audit log of the admin's org, page by page, oldest first."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    with httpx.Client(base_url=base_url, timeout=TIMEOUT, headers=bearer(admin_key)) as http:
        while True:
            response = http.get("/api/admin/audit", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
    return [item for item in items if action is None or item["action"] == action]


def mint_jtis(base_url: str, admin_key: str) -> Counter[str]:
    """jti -> number of `token.mint` audit events naming it."""
    return Counter(
        event["detail"]["jti"] for event in audit_events(base_url, admin_key, "token.mint")
    )


def key_rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM signing_keys ORDER BY created_at, kid").fetchall()


def check_key_rows(database_url: str) -> Counter[str]:
    """Every signing-key row whole and in a consistent state, exactly one active; returns the
    number of keys in each state."""
    rows = key_rows(database_url)
    cipher = KeyCipher(base64.urlsafe_b64decode(KEK))
    states: Counter[str] = Counter()
    for row in rows:
        state = row["state"]
        states[state] += 1
        assert row["public_jwk"]["kid"] == row["kid"], row["kid"]
        cipher.decrypt(row["kid"], bytes(row["private_key_encrypted"]))  # written whole
        assert row["created_at"] is not None
        if state == KeyState.PENDING:
            assert row["activated_at"] is None and row["retiring_at"] is None, row
        elif state == KeyState.ACTIVE:
            assert row["activated_at"] is not None and row["retiring_at"] is None, row
        elif state == KeyState.RETIRING:
            assert row["activated_at"] is not None and row["retiring_at"] is not None, row
        else:
            assert state == KeyState.RETIRED and row["retired_at"] is not None, row
    assert states[KeyState.ACTIVE] == 1, states
    assert states[KeyState.PENDING] == 1, states
    return states


def active_kid(server: Server) -> str:
    response = httpx.get(f"{server.base_url}/readyz", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return str(response.json()["active_kid"])


def published_kids(base_url: str) -> set[str]:
    response = httpx.get(f"{base_url}/.well-known/jwks.json", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {key["kid"] for key in response.json()["keys"]}


@dataclass
class Outcome:
    """What one load thread saw: the tokens it received and everything else."""

    tokens: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)


def mint_until(
    base_url: str, key: str, stop: threading.Event, outcome: Outcome, pause: float = 0.0
) -> None:
    """Mint until `stop` is set, recording each response; a transport error (the replica
    died) ends the loop, since the request's fate is unknown to the client."""
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = mint(http, key)
            except httpx.TransportError as exc:
                outcome.transport_errors.append(type(exc).__name__)
                return
            outcome.statuses[response.status_code] += 1
            if response.status_code == 200:
                body = response.json()
                body["started"] = started
                body["finished"] = time.monotonic()
                outcome.tokens.append(body)
            else:
                content_type = response.headers.get("content-type", "")
                code = response.json().get("code", "") if "json" in content_type else ""
                outcome.problems.append((response.status_code, content_type, code))
            if pause:
                time.sleep(pause)
