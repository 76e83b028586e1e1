"""Writing audit events: always in the caller's transaction, so a change and its record commit
or vanish together."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from control.audit.models import AuditEvent
from control.kit.db import utcnow


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    org_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    # A Core insert: no ORM bookkeeping on the mint path, still inside the caller's transaction.
    session.execute(
        insert(AuditEvent).values(
            at=utcnow(),
            actor=actor,
            action=action,
            target=target,
            org_id=org_id,
            detail=detail or {},
        )
    )
