"""The statements identity runs on every authenticated request, built once: building a statement
costs more than SQLite takes to run it. Plain columns, not ORM entities: nothing here needs an
identity map."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, select, update

from control.identity.models import Credential, Org, Principal

_credential_table, _principal_table, _org_table = (
    cast(Table, Credential.__table__),
    cast(Table, Principal.__table__),
    cast(Table, Org.__table__),
)
_credentials, _principals, _orgs = _credential_table.c, _principal_table.c, _org_table.c

# The caller of an API key: its credential, principal and whether its org is the operator org.
CALLER_BY_KEY_HASH = (
    select(
        _credentials.id,
        _credentials.revoked_at,
        _credentials.expires_at,
        _credentials.last_used_at,
        _principals.id.label("principal_id"),
        _principals.org_id,
        _principals.kind,
        _principals.roles,
        _principals.disabled,
        _orgs.is_operator,
    )
    .join_from(_credential_table, _principal_table, _principals.id == _credentials.principal_id)
    .join(_org_table, _orgs.id == _principals.org_id)
    .where(_credentials.key_hash == bindparam("key_hash"))
)
TOUCH_CREDENTIAL = (
    update(_credential_table)
    .where(_credentials.id == bindparam("credential_id"))
    .values(last_used_at=bindparam("now"))
)
