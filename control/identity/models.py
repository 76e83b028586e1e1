from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class Org(Base):
    __tablename__ = "orgs"
    __table_args__ = (
        # One operator org, even when two first bootstraps race on an empty database.
        Index(
            "uq_orgs_one_operator",
            "is_operator",
            unique=True,
            sqlite_where=text("is_operator"),
            postgresql_where=text("is_operator"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Bumped by every change to the org's grant policy; stamped into each token it decides.
    policy_rev: Mapped[int] = mapped_column(Integer, default=1)
    # The operator org owns the issuer's signing keys (DESIGN.md, Roles).
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Principal(Base):
    __tablename__ = "principals"
    __table_args__ = (Index("ix_principals_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Credential(Base):
    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_principal_id_id", "principal_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    # The first characters of the key, safe to show so a human can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256 of the key under the credential pepper; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
