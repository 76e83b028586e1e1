from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from control.kit.schemas import Description, RequestBody
from control.revocations.models import Revocation

_REVOCATION: dict[str, Any] = {
    "cursor": "42",
    "kind": "jti",
    "value": "6d6_e9sUCOee5kLXt0c3fg",
    "not_before": "2026-05-04T09:31:08Z",
    "created_at": "2026-05-04T09:31:07.412980Z",
}
KIND_DESCRIPTION = (
    "`jti`: one token, by its `jti`; `subject`: every token of a principal issued before "
    "`not_before`; `credential`: an API key stops authenticating, and every token of its "
    "principal issued before `not_before` ends with it"
)


class RevocationCreate(RequestBody):
    """Tokens to revoke before they expire."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "jti", "value": "6d6_e9sUCOee5kLXt0c3fg", "reason": "laptop lost"},
                {"kind": "subject", "value": "prn_01JV6M3A7R2K9W4P1X8Z5C3D0E"},
                {"kind": "credential", "value": "cred_01JV6M4C2D9F5H1K7M3N8P4Q6R"},
            ]
        }
    )

    kind: Literal["jti", "subject", "credential"] = Field(description=KIND_DESCRIPTION)
    value: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    ] = Field(
        description="What to revoke: a token's `jti`, a principal id of the org (`prn_…`) or a "
        "credential id of the org (`cred_…`), as `kind` says"
    )
    reason: Description | None = Field(
        default=None, description="Why, kept with the revocation; the feed does not show it"
    )


class RevocationOut(BaseModel):
    """A revocation, as the feed carries it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REVOCATION]})

    cursor: str = Field(
        description="Its place in the org's feed: digits, increasing in the order revocations "
        "were made"
    )
    kind: str = Field(description=KIND_DESCRIPTION)
    value: str = Field(description="The revoked `jti`, principal id or credential id")
    not_before: datetime = Field(
        description="Tokens issued (`iat`) before this instant are revoked: the next whole "
        "second after the revocation, so a token minted after it is valid"
    )
    created_at: datetime = Field(description="When the revocation was made (RFC 3339, UTC)")

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
    """A page of the org's revocation feed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [_REVOCATION], "next_cursor": "42"},
                {"items": [], "next_cursor": "42"},
            ]
        }
    )

    items: list[RevocationOut] = Field(description="The revocations after the cursor, oldest first")
    next_cursor: str = Field(description="Resume from here, even when nothing was new.")
