"""The one read of a mint by API key, built once: the credential, its principal, the org's
`policy_rev` and operator flag, the subject's revocation floor and the requested streams, in a
single statement (one round trip on PostgreSQL, one step on SQLite).

One row per requested stream the org holds, or a single row with null stream columns when it
holds none of them (or none was named); no row when the key is unknown.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Select, Table, Text, and_, bindparam, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSONB

from control.identity.models import Credential, Org, Principal
from control.identity.repository import caller_by_key_hash
from control.policy.models import Stream
from control.revocations.models import Revocation

_credential_table, _principal_table, _org_table, _stream_table, _revocation_table = (
    cast(Table, Credential.__table__),
    cast(Table, Principal.__table__),
    cast(Table, Org.__table__),
    cast(Table, Stream.__table__),
    cast(Table, Revocation.__table__),
)
_credentials, _principals, _orgs = _credential_table.c, _principal_table.c, _org_table.c
_streams, _revocations = _stream_table.c, _revocation_table.c

# The latest `not_before` of the subject's revocations in its org (the same filter as
# `control.revocations.repository.SUBJECT_NOT_BEFORE`, correlated to the principal).
_SUBJECT_FLOOR = (
    select(func.max(_revocations.not_before))
    .where(
        _revocations.org_id == _principals.org_id,
        _revocations.kind == "subject",
        _revocations.value == _principals.id,
    )
    .scalar_subquery()
)


def _mint_read(requested_ids: Any) -> Select[Any]:
    """The mint's read, with the org's streams among `requested_ids` joined."""
    return caller_by_key_hash(
        _orgs.policy_rev,
        _SUBJECT_FLOOR.label("subject_floor"),
        _streams.id.label("stream_id"),
        _streams.kind.label("stream_kind"),
        _streams.owner_id.label("stream_owner_id"),
    ).outerjoin(
        _stream_table,
        and_(_streams.org_id == _principals.org_id, _streams.id.in_(requested_ids)),
    )


MINT_READ = _mint_read(bindparam("ids", expanding=True))
# `MINT_READ` as PostgreSQL reads it for concurrent mints at once (`AsyncDatabase.grouped`,
# which carries each request's parameters as one element of an array): the requested stream ids
# travel as one parameter, a JSON array (`ids_json`). The same columns and rows.
MINT_READ_GROUPED = _mint_read(
    select(
        func.jsonb_array_elements_text(sql_cast(bindparam("ids_json", type_=Text), JSONB))
        .table_valued("value")
        .c.value
    )
)

# The one read of an introspection by API key: the caller (the columns of
# `control.identity.repository.CALLER_BY_KEY_HASH`) and, in the caller's org, whether the
# token's `jti` is revoked, its subject's revocation floor (the filters of
# `control.revocations.repository`), and whether the named stream is registered. Null
# parameters (no token claims, no stream) match nothing. One row, or none for an unknown key.
_JTI_REVOKED = (
    select(_revocations.cursor)
    .where(
        _revocations.org_id == _principals.org_id,
        _revocations.kind == "jti",
        _revocations.value == bindparam("jti"),
    )
    .limit(1)
    .scalar_subquery()
)
_NAMED_SUBJECT_FLOOR = (
    select(func.max(_revocations.not_before))
    .where(
        _revocations.org_id == _principals.org_id,
        _revocations.kind == "subject",
        _revocations.value == bindparam("subject"),
    )
    .scalar_subquery()
)
_STREAM_REGISTERED = (
    select(_streams.id)
    .where(_streams.org_id == _principals.org_id, _streams.id == bindparam("stream"))
    .scalar_subquery()
)

INTROSPECT_READ = caller_by_key_hash(
    _JTI_REVOKED.label("jti_revoked"),
    _NAMED_SUBJECT_FLOOR.label("subject_floor"),
    _STREAM_REGISTERED.label("stream_found"),
)
