"""Which replicas are running: each announces itself in `replica_heartbeats` every
`CONTROL_REPLICA_HEARTBEAT_SECONDS` and counts the rows that beat within the last
`DEAD_AFTER_BEATS` periods. The count is how many ways the mint rate limit is shared
(`RateLimiter.share`); docs/operations.md states what that guarantees.

Liveness compares timestamps that different replicas wrote with their own clocks, so their
clocks must agree to well within a period (NTP does).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from control.tokens.models import ReplicaHeartbeat

# A replica that missed this many beats in a row counts as gone.
DEAD_AFTER_BEATS = 3
# Rows this many periods old are deleted by whichever replica sees them: replicas that died
# without saying goodbye must not pile up.
FORGET_AFTER_BEATS = 100


def new_replica_id() -> str:
    return secrets.token_hex(16)


def this_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


def beat(session: Session, replica_id: str, host: str, now: datetime, period: float) -> int:
    """Record that this replica is alive at `now`; the number of live replicas (this one
    included, so at least 1)."""
    updated = session.execute(
        update(ReplicaHeartbeat).where(ReplicaHeartbeat.id == replica_id).values(beat_at=now)
    )
    if updated.rowcount == 0:  # type: ignore[attr-defined]
        session.add(ReplicaHeartbeat(id=replica_id, host=host, started_at=now, beat_at=now))
        session.flush()
    session.execute(
        delete(ReplicaHeartbeat).where(
            ReplicaHeartbeat.beat_at < now - timedelta(seconds=period * FORGET_AFTER_BEATS)
        )
    )
    live = session.scalar(
        select(func.count())
        .select_from(ReplicaHeartbeat)
        .where(ReplicaHeartbeat.beat_at >= now - timedelta(seconds=period * DEAD_AFTER_BEATS))
    )
    return max(1, int(live or 0))


def leave(session: Session, replica_id: str) -> None:
    """This replica stops: the others take its share at their next beat, not after timing
    it out."""
    session.execute(delete(ReplicaHeartbeat).where(ReplicaHeartbeat.id == replica_id))
