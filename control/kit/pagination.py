"""Cursor pagination: `?limit=&cursor=`, answered as `{"items": [...], "next_cursor": ...}`."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from control.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = None


class PageRequest(BaseModel):
    limit: int
    after: Any = None


def encode_cursor(after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        after = None
    if after is None:  # `encode_cursor` is only ever given a row's key, never null
        raise InvalidRequest("`cursor` is not a cursor this service issued")
    return after


async def page_request(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,512}$")] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageRequest, Depends(page_request)]
