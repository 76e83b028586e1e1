"""An API key's plaintext appears in exactly one response (the one that issues it), and nowhere
in the database (rows, the SQLite file and its WAL) or the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control.app import create_app
from control.identity.secrets import hash_api_key
from control.identity.service import bootstrap_org
from control.kit.db import unit_of_work
from control.migrate import upgrade
from control.state import AppState
from tests.conftest import make_settings
from tests.factories import Api, OrgFixture, database_text


class Recorder:
    """Every response an API client received, to search for a secret."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, httpx.Response]] = []

    def call(self, api: Api, method: str, path: str, body: Any = None) -> httpx.Response:
        response = api.request(method, path, body)
        self.responses.append((f"{method} {path} -> {response.status_code}", response))
        return response

    def containing(self, secret: str) -> list[str]:
        found = []
        for label, response in self.responses:
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            if secret in response.text or secret in headers:
                found.append(label)
        return found


def secret_parts(key: str, prefix: str) -> list[str]:
    """The key, and the part of it that is never displayed (the prefix is shown by design)."""
    return [key, key[len(prefix) :]]


def test_key_appears_in_exactly_one_response_and_no_row(
    org_a: OrgFixture, session: Session, state: AppState
) -> None:
    rec = Recorder()
    admin = org_a.admin
    alice = rec.call(
        admin, "POST", "/api/admin/principals", {"kind": "user", "name": "alice",
                                                  "roles": ["admin", "member"]}
    ).json()  # fmt: skip
    credentials = f"/api/admin/principals/{alice['id']}/credentials"
    issued = rec.call(admin, "POST", credentials, {"name": "laptop"}).json()
    key = issued["key"]
    api = Api(org_a.client, key)
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:s1")
    org_a.allow(query_sets=["run_events"])

    rec.call(api, "GET", "/api/admin/principals")
    rec.call(api, "GET", f"/api/admin/principals/{alice['id']}")
    rec.call(api, "GET", credentials)
    rec.call(api, "POST", "/api/sync/token", {"streams": ["run:s1"]})
    rec.call(api, "POST", "/api/admin/explain", {"principal_id": alice["id"], "streams": ["a"]})
    # The key pasted into the wrong field is refused without being echoed back.
    rec.call(admin, "POST", "/api/admin/principals", {"kind": key, "name": key + "\n"})
    rec.call(admin, "POST", "/api/streams", {"id": key})
    rec.call(admin, "POST", "/api/admin/grant-rules", {"effect": "allow", "subjects":
             {"principal_ids": [key]}, "streams": {"kind": "run", "relation": "org"},
             "ops": ["subscribe"]})  # fmt: skip
    rec.call(admin, "GET", f"/api/admin/principals/{key}")
    rec.call(admin, "GET", f"/api/admin/principals?cursor={key}")
    rec.call(admin, "GET", "/api/admin/audit?limit=500")
    rec.call(admin, "DELETE", f"/api/admin/credentials/{issued['id']}")
    rec.call(api, "GET", "/api/admin/principals")  # 401 now: the challenge names no key
    rec.call(admin, "GET", credentials)
    rec.call(admin, "GET", "/api/admin/audit?limit=500")

    assert rec.responses[1][0].startswith(f"POST {credentials} -> 201")
    for secret in secret_parts(key, issued["prefix"]):
        assert rec.containing(secret) == [rec.responses[1][0]]
    text = database_text(session)
    for secret in secret_parts(key, issued["prefix"]):
        assert secret not in text
    # Positive control: the credential's row is there, holding only the keyed hash.
    assert hash_api_key(state.credential_pepper, key) in text
    assert issued["id"] in text


def test_bootstrap_key_is_not_stored(org_a: OrgFixture, session: Session) -> None:
    assert org_a.admin.key is not None
    text = database_text(session)
    assert org_a.admin.key not in text
    assert org_a.admin.key[12:] not in text


def _database_bytes(directory: Path) -> bytes:
    # The database, its write-ahead log and shared memory, and any rollback journal.
    return b"".join(path.read_bytes() for path in sorted(directory.glob("control.db*")))


def test_key_is_not_in_the_sqlite_file_or_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own loggers at WARNING: open them too, so every statement and its
    # parameters reach the captured log.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    directory = tmp_path / "db"
    directory.mkdir()
    url = f"sqlite:///{directory / 'control.db'}"
    upgrade(url)
    app = create_app(make_settings(url), background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        state: AppState = app.state.control
        with unit_of_work(state.sessions) as session:
            boot = bootstrap_org(session, state.credential_pepper, "acme")
        admin = Api(client, boot["api_key"])
        alice = admin.ok(
            "POST", "/api/admin/principals", {"kind": "user", "name": "alice", "roles": ["admin"]}
        )
        issued = admin.ok("POST", f"/api/admin/principals/{alice['id']}/credentials", {})
        key = issued["key"]
        api = Api(client, key)
        assert api.get("/api/admin/principals").status_code == 200  # writes last_used_at
        assert admin.delete(f"/api/admin/credentials/{issued['id']}").status_code == 204
        assert api.get("/api/admin/principals").status_code == 401
        while_serving = _database_bytes(directory)
        pepper = state.credential_pepper
    after_shutdown = _database_bytes(directory)

    for raw in (while_serving, after_shutdown):
        # Positive control: these bytes do hold the credential's row.
        assert issued["id"].encode() in raw
        assert hash_api_key(pepper, key).encode() in raw
        for secret in (key, key[len(issued["prefix"]) :], boot["api_key"], boot["api_key"][12:]):
            assert secret.encode() not in raw
    assert "request" in caplog.text and "INSERT INTO credentials" in caplog.text
    for secret in (key, key[len(issued["prefix"]) :], boot["api_key"], boot["api_key"][12:]):
        assert secret not in caplog.text
