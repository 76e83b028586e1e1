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
from control.state import AppState
from harness.api import Api, OrgFixture

__all__ = ["Api", "OrgFixture", "bootstrap", "database_text", "table_counts"]


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
