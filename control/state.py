"""What one running replica holds: settings, the database, the key ring and per-process caches.

Built in the app's lifespan (never at import) so tests and replicas each get their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from control.federation.verifier import UpstreamVerifier
from control.keys.crypto import KeyCipher
from control.keys.service import KeyRing
from control.kit.db import make_engine, make_sessionmaker, unit_of_work, utcnow
from control.policy.engine import PolicyCache
from control.settings import Settings
from control.tokens import replicas
from control.tokens.ratelimit import RateLimiter

log = logging.getLogger("control.state")


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
    # Whether this replica refreshes its key ring in the background: only then can the ring go
    # stale, and only then does a stale ring stop it signing (`control.api.tokens`).
    keys_refreshing: bool = False
    # This process, as the other replicas see it in `replica_heartbeats`.
    replica_id: str = field(default_factory=replicas.new_replica_id)

    def __post_init__(self) -> None:
        self.mint_limiter = RateLimiter(
            self.settings.mint_rate_per_second, self.settings.mint_burst
        )
        self.upstream = UpstreamVerifier(
            max_age=self.settings.upstream_jwks_max_age_seconds,
            min_refetch_interval=self.settings.upstream_jwks_min_refetch_seconds,
            leeway=self.settings.token_leeway_seconds,
        )

    def heartbeat(self) -> int:
        """Announce this replica and take its share of the fleet's mint limits; the number of
        live replicas."""
        with unit_of_work(self.sessions) as session:
            live = replicas.beat(
                session,
                self.replica_id,
                replicas.this_host(),
                utcnow(),
                self.settings.replica_heartbeat_seconds,
            )
        self.mint_limiter.share(live)
        return live

    async def heartbeat_forever(self) -> None:
        """`heartbeat` every `CONTROL_REPLICA_HEARTBEAT_SECONDS` until cancelled; then leave
        the table, so the others take this replica's share at once."""
        try:
            while True:
                try:
                    await asyncio.to_thread(self.heartbeat)
                except Exception:  # keep the last share; a missed beat or two is tolerated
                    log.exception("replica heartbeat failed; keeping the previous rate share")
                await asyncio.sleep(self.settings.replica_heartbeat_seconds)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._leave)

    def _leave(self) -> None:
        with unit_of_work(self.sessions) as session:
            replicas.leave(session, self.replica_id)

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
