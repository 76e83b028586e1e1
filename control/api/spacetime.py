"""SpacetimeDB: how far revocations have been pushed into each configured database."""

from __future__ import annotations

from sqlalchemy import func, select

from control.api.deps import SessionDep, StateDep
from control.spacetime.delivery import CONTROL_PLANE_SUBJECT, status
from control.spacetime.models import OutboxEntry
from control.spacetime.schemas import DatabaseDelivery, SpacetimeStatus
from control.tokens.spacetime_identity import spacetimedb_identity


def spacetime_status(session: SessionDep, state: StateDep) -> SpacetimeStatus:
    """Revocation push into SpacetimeDB: whether it is on, the Identity the control plane calls
    with (configure the module with it), and per configured database the outbox entries it has
    yet to receive (`backlog`), how long the oldest has waited (`lag_seconds`) and the last
    failure. The outbox spans every org, so this needs the `operator` role.
    """
    settings = state.settings
    targets = settings.spacetimedb_targets()
    head = session.scalar(select(func.max(OutboxEntry.id))) or 0
    return SpacetimeStatus(
        push=bool(targets),
        url=settings.spacetimedb_url,
        identity=spacetimedb_identity(settings.issuer, CONTROL_PLANE_SUBJECT),
        subject=CONTROL_PLANE_SUBJECT,
        outbox_head=str(head),
        databases=[
            DatabaseDelivery(
                database=item.database,
                delivered_id=str(item.delivered_id),
                backlog=item.backlog,
                lag_seconds=item.lag_seconds,
                attempts=item.attempts,
                last_error=item.last_error,
                retry_at=item.retry_at,
                delivered_at=item.delivered_at,
            )
            for item in status(session, targets)
        ],
    )
