"""What one running replica holds: settings, the database, the key ring and per-process caches.

Built in the app's lifespan (never at import) so tests and replicas each get their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from control.audit import service as audit_service
from control.audit.writer import AuditWriter
from control.federation.verifier import UpstreamVerifier
from control.keys.crypto import KeyCipher
from control.keys.service import KeyRing
from control.kit.db import (
    AsyncDatabase,
    InlineReader,
    InlineWriter,
    make_async_database,
    make_engine,
    make_sessionmaker,
    unit_of_work,
    utcnow,
)
from control.policy.engine import PolicyCache
from control.revocations import service as revocation_service
from control.runtime import VerifiedTokens
from control.settings import Settings
from control.spacetime.catalog import catalog_for
from control.tokens import replicas
from control.tokens.ratelimit import RateLimiter

log = logging.getLogger("control.state")

# How many introspected tokens a replica remembers as verified, and the longest it remembers
# (a token of a few streams is well under 2 KiB): about 30 MiB at most.
INTROSPECTED_TOKENS_KEPT = 4096
INTROSPECTED_TOKEN_MAX_BYTES = 4096


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
    # Group commit of the token route's audit events (`control.audit.writer`).
    audit_writer: AuditWriter = field(init=False)
    # PostgreSQL: the same database for asyncio, used by the token routes' reads and the group
    # commit (no thread hop); None on SQLite.
    async_db: AsyncDatabase | None = None
    # SQLite: the token routes' prebuilt reads, on the event loop (`InlineReader`).
    inline_reads: InlineReader | None = None
    # Tokens introspection has verified, so that one asked about again skips its signature.
    introspected_tokens: VerifiedTokens = field(
        default_factory=lambda: VerifiedTokens(
            INTROSPECTED_TOKENS_KEPT, max_token_bytes=INTROSPECTED_TOKEN_MAX_BYTES
        )
    )

    def __post_init__(self) -> None:
        self.mint_limiter = RateLimiter(
            self.settings.mint_rate_per_second, self.settings.mint_burst
        )
        self.upstream = UpstreamVerifier(
            max_age=self.settings.upstream_jwks_max_age_seconds,
            min_refetch_interval=self.settings.upstream_jwks_min_refetch_seconds,
            leeway=self.settings.token_leeway_seconds,
        )
        database = self.async_database()
        self.audit_writer = AuditWriter(
            self.sessions,
            max_batch=self.settings.audit_batch_max,
            max_wait=self.settings.audit_batch_wait_ms / 1000,
            write_lock=lambda: self.request_lock,
            inline=self.request_lock is not None,
            async_engine=database.writes if database is not None else None,
            inline_writer=InlineWriter(self.engine) if self.inline_reads is not None else None,
        )

    def inline_reader(self) -> InlineReader | None:
        """The SQLite prebuilt reads, when units of work go to the same engine."""
        if self.inline_reads is None or not isinstance(self.sessions.kw.get("bind"), Engine):
            return None
        return self.inline_reads

    def async_database(self) -> AsyncDatabase | None:
        """The asyncio database, when units of work go to the same engine (not a test's
        transaction, which only the synchronous binding sees)."""
        if self.async_db is None or not isinstance(self.sessions.kw.get("bind"), Engine):
            return None
        return self.async_db

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

    async def prune(self, now: datetime | None = None) -> tuple[int, int]:
        """Prune what has outlived its use, batch by batch until none is left: audit events
        older than `CONTROL_AUDIT_RETENTION_DAYS`, and revocations whose tokens have all
        expired (`not_before` older than the longest TTL plus the leeway). Returns the counts.

        Each batch is its own short transaction, and on SQLite takes the request lock like any
        write, so a mint's audit commit waits at most for one batch, never for the whole job."""
        now = now or utcnow()
        settings = self.settings
        audit_before = now - timedelta(days=settings.audit_retention_days)
        revocations_before = now - timedelta(
            seconds=settings.token_ttl_max_seconds + settings.token_leeway_seconds
        )
        counts = []
        for prune, before in (
            (audit_service.prune, audit_before),
            (revocation_service.prune, revocations_before),
        ):
            total = 0
            while True:
                lock = self.request_lock
                if lock is not None:
                    await lock.acquire()
                try:
                    pruned = await asyncio.to_thread(self._prune_batch, prune, before)
                finally:
                    if lock is not None:
                        lock.release()
                total += pruned
                if pruned < settings.prune_batch:
                    break
            counts.append(total)
        return counts[0], counts[1]

    def _prune_batch(self, prune: Callable[..., int], before: datetime) -> int:
        with unit_of_work(self.sessions) as session:
            return prune(session, before=before, batch=self.settings.prune_batch)

    async def prune_forever(self) -> None:
        """`prune` every `CONTROL_PRUNE_INTERVAL_SECONDS` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.prune_interval_seconds)
            try:
                audit, revocations = await self.prune()
                if audit or revocations:
                    log.info("pruned %d audit events and %d revocations", audit, revocations)
            except Exception:  # the next round tries again; serving is unaffected
                log.exception("pruning failed; will retry")

    def _leave(self) -> None:
        with unit_of_work(self.sessions) as session:
            replicas.leave(session, self.replica_id)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        catalog_for(settings)  # a replica does not start on a catalog it cannot read
        engine = make_engine(settings.sqlalchemy_url)
        cipher = KeyCipher(settings.key_encryption_key_bytes())
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            keyring=KeyRing(settings, cipher),
            credential_pepper=settings.credential_pepper_bytes(),
            request_lock=asyncio.Lock() if engine.dialect.name == "sqlite" else None,
            async_db=make_async_database(settings.sqlalchemy_url),
            inline_reads=InlineReader(engine) if engine.dialect.name == "sqlite" else None,
        )
