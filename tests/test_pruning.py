"""Data that grows: the audit log's retention, the revocations' pruning and the feed's horizon.

- Pruning removes only what has outlived its use: audit events older than the retention, and
  revocations whose tokens have all expired; nothing newer.
- A feed cursor older than the pruning horizon answers 410 `cursor_expired` (problem+json, what
  to do), for the org's service and any other alike; from the start, and from the horizon on,
  the feed answers; a `GrantVerifier` whose cursor expired reads the feed again from the start.
- A real server pruning (every half second, in small batches) while clients mint: every mint
  is answered, and every answered mint keeps its audit event; the old events are gone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text

from control.audit.models import AuditEvent
from control.kit.db import make_engine
from control.revocations.models import Revocation
from control.runtime import GrantVerifier
from control.state import AppState
from tests.factories import Api, OrgFixture, member_of_new_org
from tests.fleet import TIMEOUT, bearer
from tests.pg import reachable_postgres, scratch_database
from tests.server import running_server

FEED = "/api/sync/revocations"


def revoke(admin: Api, kind: str, value: str) -> dict[str, Any]:
    result: dict[str, Any] = admin.ok(
        "POST", "/api/admin/revocations", {"kind": kind, "value": value}, status=201
    )
    return result


def count(state: AppState, model: Any) -> int:
    with state.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_pruning_keeps_what_may_still_matter(
    state: AppState, client: TestClient, org_a: OrgFixture
) -> None:
    now = datetime.now(UTC)
    with state.sessions() as session:
        session.execute(
            insert(AuditEvent),
            [
                {"at": now - timedelta(days=days), "actor": "prn_OLD", "action": "test.old",
                 "target": f"t{days}", "org_id": org_a.org_id, "detail": {}}
                for days in (91, 120, 89, 1)
            ],
        )  # fmt: skip
        session.commit()
    alice = org_a.principal("alice")
    revoke(org_a.admin, "jti", "recent-jti")
    events_before, revocations_before = count(state, AuditEvent), count(state, Revocation)

    audit, revocations = asyncio.run(state.prune(now))
    # Two events older than 90 days; the revocation is seconds old.
    assert (audit, revocations) == (2, 0)
    assert count(state, AuditEvent) == events_before - 2
    assert count(state, Revocation) == revocations_before
    # Once the longest token lifetime and the leeway have passed, no token it concerns lives.
    # (All but the newest row, whose cursor SQLite would otherwise hand out again.)
    later = now + timedelta(seconds=state.settings.token_ttl_max_seconds + 60)
    assert asyncio.run(state.prune(later))[1] == revocations_before - 1
    assert count(state, Revocation) == 1
    assert alice.key is not None


def test_an_expired_cursor_is_410_and_the_verifier_starts_over(
    state: AppState, client: TestClient, org_a: OrgFixture, org_b: OrgFixture
) -> None:
    service = org_a.principal("runtime", kind="service")
    other_service = org_b.principal("runtime", kind="service")
    first = revoke(org_a.admin, "jti", "jti-one")
    # A verifier that has read the feed up to the first revocation.
    verifier = GrantVerifier(
        "http://127.0.0.1:8080",
        "spacetimedb",
        "http://testserver/.well-known/jwks.json",
        revocations_url=f"http://testserver{FEED}",
        api_key=service.key,
        poll_interval=3600,
        http=client,
    )
    second = revoke(org_a.admin, "jti", "jti-two")
    newest = revoke(org_a.admin, "jti", "jti-newest")
    feed = service.ok("GET", FEED)
    assert [item["value"] for item in feed["items"]] == ["jti-one", "jti-two", "jti-newest"]
    # The revocations age past every token's lifetime and all but the newest are pruned (its
    # cursor must never be handed out again); a new one comes.
    later = datetime.now(UTC) + timedelta(seconds=state.settings.token_ttl_max_seconds + 60)
    assert asyncio.run(state.prune(later)) == (0, 2)
    third = revoke(org_a.admin, "jti", "jti-three")

    for reader, after in ((service, first["cursor"]), (other_service, "1")):
        response = reader.get(FEED, params={"after": after})
        assert response.status_code == 410, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["code"] == "cursor_expired"
        assert "from the start" in problem["detail"]
        # The problem names no other org's data: not the revocations, nor their values.
        assert "jti-" not in response.text

    # From the start, and from the horizon on, the feed answers with what is left.
    left = ["jti-newest", "jti-three"]
    assert [i["value"] for i in service.ok("GET", FEED)["items"]] == left
    from_zero = service.get(FEED, params={"after": "0"})
    assert [i["value"] for i in from_zero.json()["items"]] == left, from_zero.text
    after_horizon = service.get(FEED, params={"after": second["cursor"]})
    assert after_horizon.status_code == 200, after_horizon.text
    assert [i["value"] for i in after_horizon.json()["items"]] == left
    assert int(third["cursor"]) > int(newest["cursor"]) > int(second["cursor"])

    # The verifier's cursor is behind the horizon: it reads the feed again from the start and
    # applies what is left, without raising.
    assert verifier.poll_revocations() == 2


def test_bad_cursors_are_still_422(client: TestClient, org_a: OrgFixture) -> None:
    service = org_a.principal("runtime", kind="service")
    for bad in ("-1", "abc", "9" * 19):
        response = service.get(FEED, params={"after": bad})
        assert response.status_code == 422, response.text


# --- a real server pruning while clients mint ---------------------------------------------

STREAM = "run:pruned"
OLD_EVENTS = 5_000
MINTERS = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def served_database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    reachable_postgres("(the pruning test runs a real server on PostgreSQL)")
    with scratch_database() as url:
        yield url


def test_pruning_under_concurrent_minting(served_database: str, tmp_path: Path) -> None:
    received: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    settings = {"prune_interval_seconds": "0.5", "prune_batch": "500"}
    with running_server(served_database, tmp_path, **settings) as server:
        org_id, alice_key = member_of_new_org(server, "pruned", STREAM)
        engine = make_engine(served_database.replace("postgresql://", "postgresql+psycopg://"))
        old = datetime.now(UTC) - timedelta(days=365)
        with engine.begin() as connection:
            connection.execute(
                insert(AuditEvent),
                [
                    {"at": old, "actor": "prn_OLD", "action": "test.old", "target": f"t{i}",
                     "org_id": org_id, "detail": {}}
                    for i in range(OLD_EVENTS)
                ],
            )  # fmt: skip

        def minter() -> None:
            with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
                while not stop.is_set():
                    response = client.post(
                        "/api/sync/token", json={"streams": [STREAM]}, headers=bearer(alice_key)
                    )
                    with lock:
                        if response.status_code == 200:
                            received.append(response.json()["jti"])
                        else:
                            failures.append(response.text)

        threads = [threading.Thread(target=minter) for _ in range(MINTERS)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with engine.connect() as connection:
                    left = connection.scalar(
                        text("SELECT count(*) FROM audit_events WHERE action = 'test.old'")
                    )
                if left == 0 and len(received) >= 200:
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        with engine.connect() as connection:
            left = connection.scalar(
                text("SELECT count(*) FROM audit_events WHERE action = 'test.old'")
            )
            details = connection.execute(
                text("SELECT detail FROM audit_events WHERE action = 'token.mint'")
            ).all()
        engine.dispose()
    assert not failures, failures[:3]
    assert left == 0, f"{left} events older than the retention were left"
    audited = {(d[0] if isinstance(d[0], dict) else json.loads(d[0]))["jti"] for d in details}
    assert len(received) >= 200
    assert not [jti for jti in received if jti not in audited]
