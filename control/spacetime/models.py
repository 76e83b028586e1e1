"""The revocation outbox, and how far each SpacetimeDB database has received it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class OutboxEntry(Base):
    """One reducer call to push into every configured database, written in the transaction
    that made the revocation. `id` orders the outbox: entries are written under the revocation
    feed's lock, so ids commit in order and a deliverer resuming after id N never misses an
    earlier one."""

    __tablename__ = "spacetime_outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    org_id: Mapped[str] = mapped_column(String(40))
    # The revocation it carries (its feed cursor), for an operator following one through.
    revocation_cursor: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    reducer: Mapped[str] = mapped_column(String(64))
    # The reducer's arguments: the JSON array SpacetimeDB's `call` route takes as its body.
    args: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Delivery(Base):
    """One configured database's place in the outbox, and the lease of the replica delivering
    to it (one at a time per database; a lease that runs out passes to another replica)."""

    __tablename__ = "spacetime_deliveries"

    database: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Every entry with an id up to this one has been accepted by the database.
    delivered_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due, after a failure (capped exponential backoff).
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last failure, as a status or error class; never a response body or a token.
    last_error: Mapped[str | None] = mapped_column(String(200))
    leased_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
