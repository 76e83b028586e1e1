"""Revocations: an admin's revocation, and the feed runtime caches follow."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from control.api.auth import CallerDep, ViewDep
from control.identity.service import revoke_tokens
from control.kit.pagination import MAX_LIMIT
from control.revocations import service
from control.revocations.schemas import RevocationCreate, RevocationFeed, RevocationOut


def create_revocation(body: RevocationCreate, view: ViewDep, caller: CallerDep) -> RevocationOut:
    return RevocationOut.of(revoke_tokens(view, caller, body.kind, body.value, body.reason))


def revocation_feed(
    view: ViewDep,
    # At most 18 digits: every such cursor fits the 64-bit column on both backends.
    after: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> RevocationFeed:
    rows, next_cursor = service.feed(view, int(after) if after else 0, limit)
    return RevocationFeed(
        items=[RevocationOut.of(row) for row in rows], next_cursor=str(next_cursor)
    )
