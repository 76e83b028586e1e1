"""Writing audit events: always in the caller's transaction, so a change and its record commit
or vanish together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control.audit.models import AuditEvent
from control.audit.repository import INSERT_EVENT
from control.kit.db import utcnow
from control.observability.hooks import audit_write


@audit_write
def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    org_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.execute(
        INSERT_EVENT,
        {
            "at": utcnow(),
            "actor": actor,
            "action": action,
            "target": target,
            "org_id": org_id,
            "detail": detail or {},
        },
    )


@dataclass(frozen=True)
class Auditor:
    """Writes the audit events of one actor in one org, in the caller's transaction: built once
    per request (or command) from whoever acts, then one call per event."""

    session: Session
    actor: str
    org_id: str | None

    @classmethod
    def of(cls, session: Session, caller: Actor) -> Auditor:
        return cls(session, caller.principal_id, caller.org_id)

    def record(self, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        record(
            self.session,
            actor=self.actor,
            action=action,
            target=target,
            org_id=self.org_id,
            detail=detail,
        )


class Actor(Protocol):
    """Who acts: a caller, as far as the audit log needs to know it."""

    @property
    def principal_id(self) -> str: ...

    @property
    def org_id(self) -> str: ...


_NEWEST_ID = select(func.max(AuditEvent.id)).scalar_subquery()


def prune(session: Session, *, before: datetime, batch: int) -> int:
    """Delete up to `batch` audit events older than `before`, oldest first; the count. One
    short transaction per batch (the caller's), so pruning never holds a lock for long."""
    oldest = (
        select(AuditEvent.id)
        # Never the newest event: SQLite would hand its id out again, and the audit log's
        # cursors would go back.
        .where(AuditEvent.at < before, AuditEvent.id < _NEWEST_ID)
        .order_by(AuditEvent.id)
        .limit(batch)
        .scalar_subquery()
    )
    result = session.execute(delete(AuditEvent).where(AuditEvent.id.in_(oldest)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
