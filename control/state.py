"""What one running replica holds: settings, the database, the key ring and per-process caches.

Built in the app's lifespan (never at import) so tests and replicas each get their own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from control.federation.verifier import UpstreamVerifier
from control.keys.crypto import KeyCipher
from control.keys.service import KeyRing
from control.kit.db import make_engine, make_sessionmaker
from control.policy.engine import PolicyCache
from control.settings import Settings
from control.tokens.ratelimit import RateLimiter


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: KeyRing
    credential_pepper: bytes
    # Per-process: compiled policies per org (valid for one policy_rev) and mint rate limits.
    policies: PolicyCache = field(default_factory=PolicyCache)
    mint_limiter: RateLimiter = field(init=False)
    # Upstream identity providers' keys, for ID tokens presented at the token endpoint.
    upstream: UpstreamVerifier = field(init=False)
    # SQLite has one writer: requests of this process queue here (see deps.get_session).
    request_lock: asyncio.Lock | None = None

    def __post_init__(self) -> None:
        self.mint_limiter = RateLimiter(
            self.settings.mint_rate_per_second, self.settings.mint_burst
        )
        self.upstream = UpstreamVerifier(
            max_age=self.settings.upstream_jwks_max_age_seconds,
            min_refetch_interval=self.settings.upstream_jwks_min_refetch_seconds,
            leeway=self.settings.token_leeway_seconds,
        )

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
            request_lock=asyncio.Lock() if engine.dialect.name == "sqlite" else None,
        )
