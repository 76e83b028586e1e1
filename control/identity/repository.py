"""The statements identity runs on every authenticated request, built once: building a statement
costs more than SQLite takes to run it. Plain columns, not ORM entities: nothing here needs an
identity map."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, bindparam, select, update

from control.identity.models import Credential, Org, Principal

_credential_table, _principal_table, _org_table = (
    cast(Table, Credential.__table__),
    cast(Table, Principal.__table__),
    cast(Table, Org.__table__),
)
_credentials, _principals, _orgs = _credential_table.c, _principal_table.c, _org_table.c

# What a caller is made of beyond its credential: its principal and whether its org is the
# operator org (the console's session read selects them too).
PRINCIPAL_COLUMNS = (
    _principals.id.label("principal_id"),
    _principals.org_id,
    _principals.kind,
    _principals.roles,
    _principals.disabled,
    _orgs.is_operator,
)

# The columns of an API key's caller, as every read that authenticates one selects them (the
# row `control.identity.service.caller_of_row` reads): its credential, then `PRINCIPAL_COLUMNS`.
CALLER_COLUMNS = (
    _credentials.id,
    _credentials.revoked_at,
    _credentials.expires_at,
    _credentials.last_used_at,
    *PRINCIPAL_COLUMNS,
)


def caller_by_key_hash(*more: ColumnElement[Any]) -> Select[Any]:
    """The caller of the API key whose hash is `:key_hash` (`CALLER_COLUMNS`), then `more`
    columns, which may refer to the credential, principal and org."""
    return (
        select(*CALLER_COLUMNS, *more)
        .join_from(_credential_table, _principal_table, _principals.id == _credentials.principal_id)
        .join(_org_table, _orgs.id == _principals.org_id)
        .where(_credentials.key_hash == bindparam("key_hash"))
    )


CALLER_BY_KEY_HASH = caller_by_key_hash()
TOUCH_CREDENTIAL = (
    update(_credential_table)
    .where(_credentials.id == bindparam("credential_id"))
    .values(last_used_at=bindparam("now"))
)
