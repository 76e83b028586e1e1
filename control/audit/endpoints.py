from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from control.audit.models import AuditEvent
from control.identity.auth import ViewDep
from control.kit.pagination import Page, PageDep


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    org_id: str | None
    detail: dict[str, Any]


def list_audit(view: ViewDep, page: PageDep) -> Page[AuditEventOut]:
    rows, cursor = view.page(AuditEvent, page, AuditEvent.id)
    return Page(
        items=[
            AuditEventOut(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                target=row.target,
                org_id=row.org_id,
                detail=row.detail,
            )
            for row in rows
        ],
        next_cursor=cursor,
    )
