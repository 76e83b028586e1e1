"""federation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:58:27.479708
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import control.kit.db
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trusted_issuers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("audiences", sa.JSON(), nullable=False),
        sa.Column("default_roles", sa.JSON(), nullable=False),
        sa.Column("role_claim", sa.String(length=100), nullable=True),
        sa.Column("role_map", sa.JSON(), nullable=False),
        sa.Column("algorithms", sa.JSON(), nullable=False),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_trusted_issuers_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trusted_issuers")),
        sa.UniqueConstraint("org_id", "issuer", name=op.f("uq_trusted_issuers_org_id_issuer")),
    )
    with op.batch_alter_table("trusted_issuers", schema=None) as batch_op:
        batch_op.create_index("ix_trusted_issuers_issuer", ["issuer"], unique=False)
        batch_op.create_index("ix_trusted_issuers_org_id_id", ["org_id", "id"], unique=False)

    op.create_table(
        "federated_identities",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("trusted_issuer_id", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", control.kit.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_federated_identities_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_federated_identities_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trusted_issuer_id"],
            ["trusted_issuers.id"],
            name=op.f("fk_federated_identities_trusted_issuer_id_trusted_issuers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_federated_identities")),
        sa.UniqueConstraint(
            "trusted_issuer_id",
            "subject",
            name=op.f("uq_federated_identities_trusted_issuer_id_subject"),
        ),
    )
    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_federated_identities_org_id"), ["org_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_federated_identities_principal_id"), ["principal_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("federated_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federated_identities_principal_id"))
        batch_op.drop_index(batch_op.f("ix_federated_identities_org_id"))

    op.drop_table("federated_identities")
    with op.batch_alter_table("trusted_issuers", schema=None) as batch_op:
        batch_op.drop_index("ix_trusted_issuers_org_id_id")
        batch_op.drop_index("ix_trusted_issuers_issuer")

    op.drop_table("trusted_issuers")
