"""Test helpers that drive the service the way its users do: bootstrap, then the HTTP API
(`Api` and `OrgFixture` live in the harness, shared with the benchmarks)."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.identity.service import bootstrap_org
from control.kit.db import unit_of_work
from control.models import metadata
from control.runtime import GrantVerifier, TokenRejected
from control.state import AppState
from harness.api import Api, OrgFixture
from harness.server import Server

__all__ = [
    "RUN_EVENTS_QUERIES",
    "Api",
    "OrgFixture",
    "bootstrap",
    "database_text",
    "member_of_new_org",
    "rejection",
    "table_counts",
]

# The `run_events` query set's queries: the reference module's two views of a run.
RUN_EVENTS_QUERIES = ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"]


def bootstrap(state: AppState, client: TestClient | httpx.Client, name: str) -> OrgFixture:
    with unit_of_work(state.sessions) as session:
        created = bootstrap_org(session, state.credential_pepper, name)
    return OrgFixture(
        org_id=created["org_id"],
        admin_id=created["principal_id"],
        admin=Api(client, created["api_key"]),
        client=client,
    )


def member_of_new_org(server: Server, name: str, stream: str) -> tuple[str, str]:
    """A new org on a real server, whose member `alice` owns `stream` and may subscribe to it
    with `run_events`: the org's id and her API key."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        boot = server.bootstrap(name)
        org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
        alice = org.principal("alice")
        org.query_set("run_events", ["run"], RUN_EVENTS_QUERIES)
        org.stream(stream, owner_id=org.principals["alice"])
        org.allow(relation="owner", query_sets=["run_events"], ops=["subscribe"])
    assert alice.key is not None
    return boot["org_id"], alice.key


def rejection(verifier: GrantVerifier, token: str) -> str | None:
    """The code `verifier` refuses `token` with, or None where it accepts it."""
    try:
        verifier.verify(token)
    except TokenRejected as rejected:
        return rejected.code
    return None


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
