"""The org's counters. `policy_rev` moves whenever what the org's policy may grant changes: a
principal's roles (here, in identity), its rules, query sets and streams (in policy). The Org
row owns it, so it lives beside the Org; policy imports identity, never the reverse."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control.identity.models import Org


def bump_policy_rev(session: Session, org_id: str) -> int:
    session.execute(update(Org).where(Org.id == org_id).values(policy_rev=Org.policy_rev + 1))
    return int(session.scalar(select(Org.policy_rev).where(Org.id == org_id)) or 0)
