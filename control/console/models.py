"""A signed-in console session, stored server-side; the browser holds only its random id."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    # SHA-256 of the session id: a copy of this table cannot be replayed as a cookie.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The API key it was opened with: revoking, expiring or deleting it (or disabling its
    # principal) ends the session, and deleting the credential deletes the row.
    credential_id: Mapped[str] = mapped_column(
        ForeignKey("credentials.id", ondelete="CASCADE"), index=True
    )
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The absolute end: created_at plus the absolute timeout when it was opened.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
