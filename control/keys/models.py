from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from control.kit.db import Base, UTCDateTime, utcnow


class KeyState(enum.StrEnum):
    PENDING = "pending"  # published in the JWKS, not signing yet
    ACTIVE = "active"  # signing; exactly one
    RETIRING = "retiring"  # published, no longer signing, until its last token expires
    RETIRED = "retired"  # gone from the JWKS


PUBLISHED_STATES = (KeyState.PENDING, KeyState.ACTIVE, KeyState.RETIRING)


class SigningKey(Base):
    __tablename__ = "signing_keys"
    __table_args__ = (
        # The database itself guarantees at most one active key, whatever replicas race.
        Index(
            "uq_signing_keys_one_active",
            "state",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), index=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    # AES-256-GCM(nonce || ciphertext) of the PKCS#8 private key, bound to the kid.
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retiring_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
