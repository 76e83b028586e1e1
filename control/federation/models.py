from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class TrustedIssuer(Base):
    """An upstream OIDC issuer whose ID tokens an org accepts at the token endpoint."""

    __tablename__ = "trusted_issuers"
    __table_args__ = (
        UniqueConstraint("org_id", "issuer"),
        Index("ix_trusted_issuers_issuer", "issuer"),
        Index("ix_trusted_issuers_org_id_id", "org_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    issuer: Mapped[str] = mapped_column(String(500))
    audiences: Mapped[list[str]] = mapped_column(JSON)
    default_roles: Mapped[list[str]] = mapped_column(JSON)
    role_claim: Mapped[str | None] = mapped_column(String(100))
    role_map: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    algorithms: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FederatedIdentity(Base):
    """Which principal an upstream (issuer, sub) maps to; created on first use."""

    __tablename__ = "federated_identities"
    __table_args__ = (UniqueConstraint("trusted_issuer_id", "subject"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    trusted_issuer_id: Mapped[str] = mapped_column(
        ForeignKey("trusted_issuers.id", ondelete="CASCADE")
    )
    subject: Mapped[str] = mapped_column(String(255))
    principal_id: Mapped[str] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
