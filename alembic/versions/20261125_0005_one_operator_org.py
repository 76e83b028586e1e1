"""one operator org

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.create_index(
            "uq_orgs_one_operator",
            ["is_operator"],
            unique=True,
            sqlite_where=sa.text("is_operator"),
            postgresql_where=sa.text("is_operator"),
        )


def downgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.drop_index("uq_orgs_one_operator")
