from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from control.kit.schemas import Name, RequestBody, ResponseBody, RoleName


class PrincipalCreate(RequestBody):
    kind: Literal["user", "device", "service"]
    name: Name
    roles: list[RoleName] | None = Field(default=None, max_length=32)


class PrincipalUpdate(RequestBody):
    roles: list[RoleName] | None = Field(default=None, max_length=32)
    disabled: StrictBool | None = None  # a JSON boolean: `"false"` is refused, not guessed at


class PrincipalOut(ResponseBody):
    id: str
    kind: str
    name: str
    org_id: str
    roles: list[str]
    disabled: bool


class CredentialCreate(RequestBody):
    name: Name | None = None
    expires_at: datetime | None = None


class CredentialIssued(BaseModel):
    id: str
    key: str = Field(description="The API key. Shown only in this response; store it now.")
    prefix: str
    created_at: datetime


class CredentialOut(ResponseBody):
    id: str
    principal_id: str
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class Bootstrap(BaseModel):
    org_id: str
    principal_id: str
    api_key: str
