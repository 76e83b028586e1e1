"""Writing the outbox: each revocation becomes the module reducer call that carries it into
SpacetimeDB, in the transaction that made the revocation (so no revocation commits without its
push, and no push without its revocation)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from control.spacetime.models import OutboxEntry

REVOKE_SUBJECT = "revoke_subject"
REVOKE_JTI = "revoke_jti"


class RevocationLike(Protocol):
    cursor: int
    org_id: str
    kind: str
    value: str
    not_before: datetime


def epoch_seconds(instant: datetime) -> int:
    if instant.tzinfo is None:  # SQLite hands back naive UTC
        instant = instant.replace(tzinfo=UTC)
    return math.floor(instant.timestamp())


def push_for(org_id: str, kind: str, value: str, not_before: int) -> tuple[str, list[Any]] | None:
    """The module reducer and its JSON arguments for a revocation, or None when nothing is
    pushed: a credential's revocation reaches the module through the subject revocation made
    with it (tokens do not name the credential that minted them)."""
    if kind == "subject":
        return REVOKE_SUBJECT, [org_id, value, not_before]
    if kind == "jti":
        return REVOKE_JTI, [org_id, value]
    return None


def enqueue(session: Session, revocation: RevocationLike) -> OutboxEntry | None:
    """Add the revocation's push to the outbox, in the caller's transaction."""
    push = push_for(
        revocation.org_id, revocation.kind, revocation.value, epoch_seconds(revocation.not_before)
    )
    if push is None:
        return None
    reducer, args = push
    entry = OutboxEntry(
        org_id=revocation.org_id,
        revocation_cursor=revocation.cursor,
        reducer=reducer,
        args=args,
    )
    session.add(entry)
    return entry
