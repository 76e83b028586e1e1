"""Revocations: writing them, and asking whether a token's claims are revoked.

Subject and credential revocations kill every token of the subject issued before `not_before`.
`iat` has one-second granularity, so `not_before` is the next whole second after the
revocation, and minting for a revoked subject within that second stamps `iat = not_before`:
a token minted just before a revocation is dead, one minted just after it in the same second
stays valid (`mint_time_floor`).

A revocation belongs to the org that made it, and only that org's tokens read it: every lookup
is filtered by org. Revoking a `jti` another org issued is therefore a no-op for that org (the
service keeps no ledger of minted jtis to tell whose a jti is, and saying so would leak it).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control.kit import locks
from control.kit.db import utcnow
from control.observability.hooks import revoked
from control.revocations.models import Revocation, RevocationHorizon
from control.revocations.repository import JTI_REVOKED, SUBJECT_NOT_BEFORE
from control.spacetime import outbox
from control.views import OrgView

KINDS = ("jti", "subject", "credential")


def revoke(
    session: Session,
    *,
    org_id: str,
    kind: str,
    value: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> Revocation:
    # The feed lock makes cursors commit in order: a reader resuming after cursor N can never
    # miss an N-1 that committed later. Revocations are rare; serializing them is cheap.
    locks.acquire(session, locks.REVOCATIONS_LOCK)
    now = now or utcnow()
    not_before = datetime.fromtimestamp(math.floor(now.timestamp()) + 1, UTC)
    row = Revocation(
        org_id=org_id, kind=kind, value=value, not_before=not_before, reason=reason, created_at=now
    )
    session.add(row)
    session.flush()
    # The push into each SpacetimeDB database commits with the revocation, or neither does.
    outbox.enqueue(session, row)
    revoked(session, kind, value)
    return row


def subject_not_before(view: OrgView, subject: str) -> int | None:
    """The latest `not_before` (epoch seconds) of the subject's revocations in the view's org."""
    latest = view.execute(SUBJECT_NOT_BEFORE, subject=subject).scalar()
    if latest is None:
        return None
    if latest.tzinfo is None:  # SQLite's aggregate bypasses the column type
        latest = latest.replace(tzinfo=UTC)
    return int(latest.timestamp())


def revocation_reason(view: OrgView, *, jti: str, subject: str, iat: int) -> str | None:
    """Why the view's org's token with these claims is revoked, or None when it is not."""
    if view.execute(JTI_REVOKED, jti=jti).scalar() is not None:
        return "revoked"
    not_before = subject_not_before(view, subject)
    if not_before is not None and iat < not_before:
        return "revoked"
    return None


def feed(view: OrgView, after: int, limit: int) -> tuple[list[Revocation], int]:
    """The view's org's revocations after cursor `after`, in order, and where to resume."""
    rows = list(
        view.session.scalars(
            view.select(Revocation)
            .where(Revocation.cursor > after)
            .order_by(Revocation.cursor)
            .limit(limit)
        )
    )
    return rows, rows[-1].cursor if rows else after


_NEWEST_CURSOR = select(func.max(Revocation.cursor)).scalar_subquery()


def prune(session: Session, *, before: datetime, batch: int) -> int:
    """Delete up to `batch` revocations whose `not_before` is before `before` (every token they
    concern has expired), oldest first, and move the feed's horizon past them; the count."""
    # The feed lock: the horizon moves in cursor order with the revocations being written.
    locks.acquire(session, locks.REVOCATIONS_LOCK)
    cursors = list(
        session.scalars(
            select(Revocation.cursor)
            # Never the newest row: SQLite would hand its cursor out again, and a reader past
            # it would miss the new revocation.
            .where(Revocation.not_before < before, Revocation.cursor < _NEWEST_CURSOR)
            .order_by(Revocation.cursor)
            .limit(batch)
        )
    )
    if not cursors:
        return 0
    session.execute(delete(Revocation).where(Revocation.cursor.in_(cursors)))
    horizon = session.get(RevocationHorizon, 1)
    if horizon is None:
        session.add(RevocationHorizon(id=1, cursor=max(cursors), pruned_at=utcnow()))
    else:
        horizon.cursor = max(horizon.cursor, *cursors)
        horizon.pruned_at = utcnow()
    session.flush()
    return len(cursors)


def feed_horizon(session: Session) -> int:
    """The highest cursor pruning may have removed (0: none): a reader resuming below it may
    have missed revocations, and must read the feed again from the start."""
    return int(
        session.scalar(select(RevocationHorizon.cursor).where(RevocationHorizon.id == 1)) or 0
    )
