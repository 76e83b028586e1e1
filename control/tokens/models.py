from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime


class ReplicaHeartbeat(Base):
    """A running replica, as it last announced itself: replicas count the live rows to take
    their share of the fleet-wide mint rate limit (`control.tokens.replicas`)."""

    __tablename__ = "replica_heartbeats"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # host:pid, for an operator reading the table.
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
