from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from control.kit.schemas import ResponseBody


class AuditEventOut(ResponseBody):
    """One entry of the org's audit log: who did what, to what, when."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 118,
                    "at": "2026-05-04T09:30:00.104518Z",
                    "actor": "prn_01JV6M3A7R2K9W4P1X8Z5C3D0E",
                    "action": "token.mint",
                    "target": "prn_01JV6M3A7R2K9W4P1X8Z5C3D0E",
                    "org_id": "org_01JV6M2Q8X4T0R7C5N3B9D1F6H",
                    "detail": {
                        "jti": "6d6_e9sUCOee5kLXt0c3fg",
                        "kid": "4wBU0qT85oWOI5iUr8UTX_bStfDKS8Bsqgqs4bBoZFA",
                        "exp": 1777887300,
                        "grants": ["run:01J9ZK run_events@1 subscribe"],
                        "denied": [],
                        "policy_rev": 7,
                    },
                }
            ]
        }
    )

    id: int = Field(description="The event's number: increasing, in the order events happened")
    at: datetime = Field(description="When it happened (RFC 3339, UTC)")
    actor: str = Field(description="Who acted: a principal id, or `cli` for the command line")
    action: str = Field(
        description="What was done, as `<thing>.<verb>`: `token.mint`, `token.denied`, "
        "`principal.create`, `grant_rule.update`, `revocation.subject`, …"
    )
    target: str = Field(
        description="What it was done to: a principal, stream, rule or credential id, a query "
        "set's name, a `jti`, …"
    )
    org_id: str | None = Field(description="The org the event belongs to")
    detail: dict[str, Any] = Field(
        description="What the action recorded: before and after states, the org's new "
        "`policy_rev`, a mint's grants and denials, … Never a secret"
    )
