"""boundaries: retired stream ids; `operator` only in the operator org

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 03:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

import control.kit.db
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPERATOR = "operator"


def _roles(value: Any) -> list[str]:
    return list(json.loads(value) if isinstance(value, str) else value or [])


def upgrade() -> None:
    op.create_table(
        "retired_stream_ids",
        sa.Column("id", sa.String(length=170), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("deleted_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retired_stream_ids")),
    )
    # `operator` is the operator org's alone: strip it wherever another org came to hold it,
    # on principals and on the trusted issuers that would confer it.
    bind = op.get_bind()
    others = sa.text("SELECT id FROM orgs WHERE NOT is_operator")
    other_orgs = [row.id for row in bind.execute(others)]
    if not other_orgs:
        return
    principals = sa.table(
        "principals", sa.column("id", sa.String), sa.column("org_id"), sa.column("roles", sa.JSON)
    )
    for row in bind.execute(
        sa.select(principals.c.id, principals.c.roles).where(principals.c.org_id.in_(other_orgs))
    ):
        roles = _roles(row.roles)
        if OPERATOR in roles:
            bind.execute(
                principals.update()
                .where(principals.c.id == row.id)
                .values(roles=[r for r in roles if r != OPERATOR])
            )
    issuers = sa.table(
        "trusted_issuers",
        sa.column("id", sa.String),
        sa.column("org_id"),
        sa.column("default_roles", sa.JSON),
        sa.column("role_map", sa.JSON),
    )
    for row in bind.execute(
        sa.select(issuers.c.id, issuers.c.default_roles, issuers.c.role_map).where(
            issuers.c.org_id.in_(other_orgs)
        )
    ):
        defaults = _roles(row.default_roles)
        role_map = json.loads(row.role_map) if isinstance(row.role_map, str) else row.role_map
        cleaned = {key: [r for r in roles if r != OPERATOR] for key, roles in role_map.items()}
        if OPERATOR in defaults or cleaned != role_map:
            bind.execute(
                issuers.update()
                .where(issuers.c.id == row.id)
                .values(default_roles=[r for r in defaults if r != OPERATOR], role_map=cleaned)
            )


def downgrade() -> None:
    op.drop_table("retired_stream_ids")
