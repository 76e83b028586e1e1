from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from control.kit.schemas import Description, RequestBody
from control.revocations.models import Revocation


class RevocationCreate(RequestBody):
    kind: Literal["jti", "subject", "credential"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    reason: Description | None = None


class RevocationOut(BaseModel):
    cursor: str
    kind: str
    value: str
    not_before: datetime
    created_at: datetime

    @classmethod
    def of(cls, row: Revocation) -> RevocationOut:
        # Not `from_attributes`: the cursor is an integer in the table, a string on the wire.
        return cls(
            cursor=str(row.cursor),
            kind=row.kind,
            value=row.value,
            not_before=row.not_before,
            created_at=row.created_at,
        )


class RevocationFeed(BaseModel):
    items: list[RevocationOut]
    next_cursor: str = Field(description="Resume from here, even when nothing was new.")
