"""policy and revocations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:44:08.339981
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import control.kit.db
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column(
            "cursor",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("not_before", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cursor", name=op.f("pk_revocations")),
    )
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        batch_op.create_index("ix_revocations_kind_value", ["kind", "value"], unique=False)
        batch_op.create_index(batch_op.f("ix_revocations_org_id"), ["org_id"], unique=False)

    op.create_table(
        "grant_rules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("effect", sa.String(length=8), nullable=False),
        sa.Column("subject_principal_ids", sa.JSON(), nullable=False),
        sa.Column("subject_roles", sa.JSON(), nullable=False),
        sa.Column("subject_kinds", sa.JSON(), nullable=False),
        sa.Column("stream_kind", sa.String(length=32), nullable=False),
        sa.Column("stream_relation", sa.String(length=8), nullable=False),
        sa.Column("stream_ids", sa.JSON(), nullable=False),
        sa.Column("query_sets", sa.JSON(), nullable=False),
        sa.Column("ops", sa.JSON(), nullable=False),
        sa.Column("max_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_grant_rules_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grant_rules")),
    )
    with op.batch_alter_table("grant_rules", schema=None) as batch_op:
        batch_op.create_index("ix_grant_rules_org_id_id", ["org_id", "id"], unique=False)

    op.create_table(
        "query_sets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stream_kinds", sa.JSON(), nullable=False),
        sa.Column("queries", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_query_sets_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_query_sets")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_query_sets_org_id_name")),
    )
    with op.batch_alter_table("query_sets", schema=None) as batch_op:
        batch_op.create_index("ix_query_sets_org_id_id", ["org_id", "id"], unique=False)

    op.create_table(
        "streams",
        sa.Column("id", sa.String(length=170), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_streams_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["principals.id"],
            name=op.f("fk_streams_owner_id_principals"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_streams")),
    )
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.create_index("ix_streams_org_id_id", ["org_id", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_owner_id"), ["owner_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_streams_owner_id"))
        batch_op.drop_index("ix_streams_org_id_id")

    op.drop_table("streams")
    with op.batch_alter_table("query_sets", schema=None) as batch_op:
        batch_op.drop_index("ix_query_sets_org_id_id")

    op.drop_table("query_sets")
    with op.batch_alter_table("grant_rules", schema=None) as batch_op:
        batch_op.drop_index("ix_grant_rules_org_id_id")

    op.drop_table("grant_rules")
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_revocations_org_id"))
        batch_op.drop_index("ix_revocations_kind_value")

    op.drop_table("revocations")
