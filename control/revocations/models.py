from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class Revocation(Base):
    """One entry of the revocation feed. `cursor` orders the feed across every replica."""

    __tablename__ = "revocations"
    __table_args__ = (
        Index("ix_revocations_kind_value", "kind", "value"),
        # Pruning finds the revocations whose tokens have all expired by this.
        Index("ix_revocations_not_before", "not_before"),
    )

    cursor: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(200))
    # Tokens of a revoked subject / credential issued before this instant are dead.
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RevocationHorizon(Base):
    """How far the feed has been pruned: revocations at or below `cursor` may be gone, so a
    reader resuming from an older cursor must start over (410 `cursor_expired`). One row."""

    __tablename__ = "revocation_horizon"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cursor: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime)
