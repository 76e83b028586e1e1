"""What one running replica holds: settings, the database, the key ring and per-process caches.

Built in the app's lifespan (never at import) so tests and replicas each get their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from control.keys.crypto import KeyCipher
from control.keys.service import KeyRing
from control.kit.db import make_engine, make_sessionmaker
from control.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: KeyRing
    credential_pepper: bytes
    # Per-process caches owned by the services that fill them (policy, rate limits, ...).
    caches: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        engine = make_engine(settings.sqlalchemy_url)
        cipher = KeyCipher(settings.key_encryption_key_bytes())
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            keyring=KeyRing(settings, cipher),
            credential_pepper=settings.credential_pepper_bytes(),
        )
