"""The audit log, paged."""

from __future__ import annotations

from control.api.auth import ViewDep
from control.audit.models import AuditEvent
from control.audit.schemas import AuditEventOut
from control.kit.pagination import Page, PageDep


def list_audit(view: ViewDep, page: PageDep) -> Page[AuditEventOut]:
    """The org's audit log, oldest first, a page at a time: every mint, refusal and change, with who
    acted, what was done to what, and the details. Needs the `admin` role.
    """
    rows, cursor = view.page(AuditEvent, page, AuditEvent.id)
    return Page(
        items=[AuditEventOut.model_validate(row) for row in rows],
        next_cursor=cursor,
    )
