"""Revocations: an admin's revocation, and the feed runtime caches follow."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from control.api.auth import CallerDep, ViewDep
from control.errors import ProblemError
from control.identity.service import revoke_tokens
from control.kit.pagination import MAX_LIMIT
from control.revocations import service
from control.revocations.schemas import RevocationCreate, RevocationFeed, RevocationOut


def create_revocation(body: RevocationCreate, view: ViewDep, caller: CallerDep) -> RevocationOut:
    """Revoke tokens before they expire: `jti` ends one token, `subject` every token of a principal
    issued before now, `credential` stops an API key and ends its principal's tokens. It takes
    effect at once for introspection and appears in the revocation feed for runtime services.
    `not_before` is the next whole second: a token minted after it is valid. A `subject` or
    `credential` not of the org is 422. Audited. Needs the `admin` role, and `admin` or
    `operator` too when the principal holds them.
    """
    return RevocationOut.of(revoke_tokens(view, caller, body.kind, body.value, body.reason))


def revocation_feed(
    view: ViewDep,
    # At most 18 digits: every such cursor fits the 64-bit column on both backends.
    after: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> RevocationFeed:
    """The org's revocations after the cursor `after`, oldest first, at most `limit` (default and
    maximum 500), and `next_cursor` to pass as `after` next time, even when nothing was new. Start
    without `after` to read from the beginning. Runtime services that verify tokens locally follow
    it: a `jti` entry ends one token; `subject` and `credential` entries end every token of the
    principal issued before `not_before`. Revocations whose tokens have all expired are pruned;
    a cursor older than what was pruned gets 410 `cursor_expired`: read again from the start.
    Needs the `service` role.
    """
    horizon = service.feed_horizon(view.session)
    if after is not None and 0 < int(after) < horizon:
        raise ProblemError(
            "cursor_expired",
            f"the feed was pruned past cursor {after}: revocations whose tokens have all "
            "expired are removed. Read the feed again from the start (without `after`): it "
            "holds every revocation that can still matter",
        )
    rows, next_cursor = service.feed(view, int(after) if after else 0, limit)
    return RevocationFeed(
        items=[RevocationOut.of(row) for row in rows], next_cursor=str(next_cursor)
    )
