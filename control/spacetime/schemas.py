from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STATUS: dict[str, Any] = {
    "push": True,
    "url": "https://spacetime.example.com",
    "identity": "c2006f7d0c1b1e9f4a3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c",
    "subject": "control-plane",
    "outbox_head": "118",
    "databases": [
        {
            "database": "sync-prod",
            "delivered_id": "118",
            "backlog": 0,
            "lag_seconds": 0.0,
            "attempts": 0,
            "last_error": None,
            "retry_at": None,
            "delivered_at": "2026-05-04T09:31:09.120331Z",
        }
    ],
}


class DatabaseDelivery(BaseModel):
    """One configured database's place in the revocation outbox."""

    database: str = Field(description="The SpacetimeDB database name")
    delivered_id: str = Field(
        description="Every outbox entry up to this id has been accepted by the database"
    )
    backlog: int = Field(description="Outbox entries the database has yet to receive")
    lag_seconds: float = Field(
        description="How long the oldest entry it has yet to receive has waited; 0 when none"
    )
    attempts: int = Field(description="Failed attempts at the entry it is stuck on; 0 when none")
    last_error: str | None = Field(
        description="What the last failed attempt got: an HTTP status and the start of "
        "SpacetimeDB's message, `timeout`, or a connection error's name"
    )
    retry_at: datetime | None = Field(description="When the next attempt is due after a failure")
    delivered_at: datetime | None = Field(description="When an entry was last delivered")


class SpacetimeStatus(BaseModel):
    """Revocations pushed into SpacetimeDB: the identity the control plane calls with, and each
    configured database's progress."""

    model_config = ConfigDict(json_schema_extra={"examples": [_STATUS]})

    push: bool = Field(
        description="Whether revocations are pushed (CONTROL_SPACETIMEDB_URL and "
        "CONTROL_SPACETIMEDB_DATABASES set)"
    )
    url: str | None = Field(description="CONTROL_SPACETIMEDB_URL")
    identity: str = Field(
        description="The control plane's SpacetimeDB Identity: what the module's `configure` "
        "takes as `control_plane_identity`"
    )
    subject: str = Field(description="The `sub` of the token the control plane calls with")
    outbox_head: str = Field(description="The newest outbox entry's id (`0` when empty)")
    databases: list[DatabaseDelivery] = Field(description="Each configured database, in order")
