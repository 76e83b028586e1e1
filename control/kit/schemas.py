"""Shared pieces of request and response models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# Request bodies refuse unknown fields: a typo must not silently mean "use the default".
STRICT = ConfigDict(extra="forbid", str_strip_whitespace=False)

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Description = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
PrincipalKind = Annotated[str, StringConstraints(pattern=r"^(user|device|service)$")]
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class RequestBody(BaseModel):
    model_config = STRICT


class ResponseBody(BaseModel):
    """A response model read straight off an ORM row, where the shapes match."""

    model_config = ConfigDict(from_attributes=True)
