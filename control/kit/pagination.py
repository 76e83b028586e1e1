"""Cursor pagination: `?limit=&cursor=`, answered as `{"items": [...], "next_cursor": ...}`."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from control.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_INT64 = range(-(2**63), 2**63)

Item = TypeVar("Item")


def _page_example(schema: dict[str, Any], page: type[BaseModel]) -> None:
    """The example of `Page[X]`: a page of X's first example, and the cursor to the next."""
    (item,) = page.__pydantic_generic_metadata__["args"] or (None,)
    is_model = isinstance(item, type) and issubclass(item, BaseModel)
    extra = item.model_config.get("json_schema_extra") if is_model else None
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if not isinstance(examples, list) or not examples or not isinstance(examples[0], dict):
        return
    first = examples[0]
    key = first.get("id", first.get("name"))
    schema["examples"] = [
        {"items": [first], "next_cursor": encode_cursor(key) if key is not None else None}
    ]


class Page(BaseModel, Generic[Item]):
    """A page of a list. Pass `next_cursor` back as `?cursor=` for the next page."""

    model_config = ConfigDict(json_schema_extra=_page_example)

    items: list[Item] = Field(description="This page's items, in the list's order")
    next_cursor: str | None = Field(
        default=None,
        description="The cursor of the next page (an opaque string), or null on the last page",
    )


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
