"""the SpacetimeDB outbox: revocations waiting to be pushed into each configured database

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import control.kit.db
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spacetime_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column(
            "revocation_cursor",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("reducer", sa.String(length=64), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spacetime_outbox")),
    )
    with op.batch_alter_table("spacetime_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_spacetime_outbox_created_at"), ["created_at"], unique=False
        )
    op.create_table(
        "spacetime_deliveries",
        sa.Column("database", sa.String(length=64), nullable=False),
        sa.Column(
            "delivered_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("delivered_at", control.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retry_at", control.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("leased_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", control.kit.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("database", name=op.f("pk_spacetime_deliveries")),
    )


def downgrade() -> None:
    op.drop_table("spacetime_deliveries")
    with op.batch_alter_table("spacetime_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spacetime_outbox_created_at"))
    op.drop_table("spacetime_outbox")
