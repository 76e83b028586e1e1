from __future__ import annotations

from datetime import datetime
from typing import Any

from control.kit.schemas import ResponseBody


class AuditEventOut(ResponseBody):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    org_id: str | None
    detail: dict[str, Any]
