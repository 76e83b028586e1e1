"""revocations lock

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

control_locks = sa.table("control_locks", sa.column("name", sa.String))


def upgrade() -> None:
    # Serializes revocation inserts so the feed's cursors commit in order (control/kit/locks.py).
    op.bulk_insert(control_locks, [{"name": "revocations"}])


def downgrade() -> None:
    op.execute(control_locks.delete().where(control_locks.c.name == "revocations"))
