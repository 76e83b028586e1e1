"""The reads every mint makes of the policy, built once (statement construction costs more than
SQLite takes to run them) and run through `OrgView.execute`, which binds `org_id`."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, select

from control.identity.models import Org
from control.policy.models import Stream

_orgs, _streams = cast(Table, Org.__table__).c, cast(Table, Stream.__table__).c

POLICY_REV = select(_orgs.policy_rev).where(_orgs.id == bindparam("org_id"))
STREAMS_BY_ID = select(_streams.id, _streams.kind, _streams.owner_id).where(
    _streams.org_id == bindparam("org_id"), _streams.id.in_(bindparam("ids", expanding=True))
)
