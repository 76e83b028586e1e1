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
_INT64 = range(-(2**63), 2**63)

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = None


class PageRequest(BaseModel):
    limit: int
    after: Any = None


def encode_cursor(after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode().rstrip("=")


def _issued_shape(after: Any) -> bool:
    """Whether `after` could be a row key `encode_cursor` was given: a 64-bit integer, or text
    every backend can bind. JSON escapes can spell lone UTF-16 surrogates (`"\\ud800"`) and NUL,
    which decode to a Python str that no database driver can send; such a cursor was never
    issued, so it is refused here rather than failing when it is bound."""
    if isinstance(after, bool):
        return False
    if isinstance(after, int):
        return after in _INT64
    if isinstance(after, str):
        try:
            after.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in after
    return False


def decode_cursor(cursor: str) -> Any:
    try:
        after = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        after = None
    # `encode_cursor` is only ever given a row's key: never null, a float, a list or an object.
    if not _issued_shape(after):
        raise InvalidRequest("`cursor` is not a cursor this service issued")
    return after


async def page_request(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,512}$")] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageRequest, Depends(page_request)]
