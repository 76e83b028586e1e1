"""replica heartbeats: the live replicas share the fleet-wide mint rate limit

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import control.kit.db
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replica_heartbeats",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("started_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("beat_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replica_heartbeats")),
    )
    with op.batch_alter_table("replica_heartbeats", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_replica_heartbeats_beat_at"), ["beat_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("replica_heartbeats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_replica_heartbeats_beat_at"))
    op.drop_table("replica_heartbeats")
