"""Writing audit events: always in the caller's transaction, so a change and its record commit
or vanish together."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from control.audit.models import AuditEvent
from control.kit.db import utcnow

# Built once, and of the table rather than the entity: a mint then pays neither the statement's
# construction nor the ORM's bulk-insert machinery.
_INSERT_EVENT = insert(cast(Table, AuditEvent.__table__))


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
        _INSERT_EVENT,
        {
            "at": utcnow(),
            "actor": actor,
            "action": action,
            "target": target,
            "org_id": org_id,
            "detail": detail or {},
        },
    )
