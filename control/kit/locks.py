"""Named database locks that serialize a critical section across every replica.

The lock is a row update in `control_locks`: PostgreSQL holds the row lock and SQLite the write
lock until the transaction ends, so the same code serializes on both backends.
"""

from __future__ import annotations

from sqlalchemy import String, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow

# Lock rows are created by the migrations, one per name.
KEY_RING_LOCK = "signing_keys"
REVOCATIONS_LOCK = "revocations"


class ControlLock(Base):
    __tablename__ = "control_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    touched_at: Mapped[object] = mapped_column(UTCDateTime, nullable=True)


def acquire(session: Session, name: str) -> None:
    """Block until this transaction holds the lock `name`; released at commit or rollback."""
    result = session.execute(
        update(ControlLock).where(ControlLock.name == name).values(touched_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RuntimeError(f"lock row {name!r} is missing; run `control db upgrade`")
