"""The revocation reads every mint and introspection makes, built once and filtered by org (run
through `OrgView.execute`, which binds `org_id`)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, func, select

from control.revocations.models import Revocation

_revocations = cast(Table, Revocation.__table__).c
SUBJECT_NOT_BEFORE = select(func.max(_revocations.not_before)).where(
    _revocations.org_id == bindparam("org_id"),
    _revocations.kind == "subject",
    _revocations.value == bindparam("subject"),
)
JTI_REVOKED = (
    select(_revocations.cursor)
    .where(
        _revocations.org_id == bindparam("org_id"),
        _revocations.kind == "jti",
        _revocations.value == bindparam("jti"),
    )
    .limit(1)
)
