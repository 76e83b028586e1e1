"""Delivering the outbox: every replica runs a `Deliverer`, and for each configured database one
replica at a time (the holder of that database's lease) calls the module's revoke reducers
through SpacetimeDB's HTTP API, `POST {CONTROL_SPACETIMEDB_URL}/v1/database/{name}/call/{reducer}`
with the reducer's arguments as a JSON array and a Bearer token the control plane mints for
itself (`CONTROL_PLANE_SUBJECT`; the module's `configure` names its Identity).

Delivery is in outbox order and at least once: a database's place (`Delivery.delivered_id`)
moves only after SpacetimeDB answered 200, so a crash, a restart or a lost lease between the call
and the commit delivers that entry again, which the module ignores. Any other answer (401, 403,
404, 5xx, 530 for a reducer error, a timeout) is retried after a capped exponential backoff,
recorded on the database's row as `last_error`; later entries wait behind it, so the module never
sees revocations out of order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt
from sqlalchemy import column, delete, exists, func, or_, select, table, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from control.keys.service import KeySnapshot
from control.kit.db import UTCDateTime, unit_of_work, utcnow
from control.settings import Settings
from control.spacetime.models import Delivery, OutboxEntry

log = logging.getLogger("control.spacetime")

# The replicas' heartbeats (`control.tokens.replicas`), read as a bare table: a lease held by a
# replica that no longer beats is free. As there: missing this many beats means gone.
_heartbeats = table("replica_heartbeats", column("id"), column("beat_at", UTCDateTime))
DEAD_AFTER_BEATS = 3

# The `sub` of the control plane's own token: its SpacetimeDB Identity is blake3 of
# `{CONTROL_ISSUER}|control-plane`. No principal id has this form (they are `prn_…`).
CONTROL_PLANE_SUBJECT = "control-plane"
# Not `sync`: a runtime verifying sync tokens refuses it (`wrong_token_use`).
CONTROL_PLANE_TOKEN_USE = "control_plane"  # noqa: S105 - a claim value
TOKEN_TTL_SECONDS = 300
# A token is reused until this long before its `exp`.
TOKEN_MARGIN_SECONDS = 60
# Outbox entries older than this, delivered to every configured database, are deleted: the
# longest-lived token any of them covers has expired long before.
OUTBOX_RETENTION = timedelta(days=1)


@dataclass(frozen=True)
class Tuning:
    """How the deliverer paces itself (tests shorten these). A call's timeout is a setting,
    `CONTROL_SPACETIMEDB_TIMEOUT_SECONDS`."""

    poll_seconds: float = 1.0
    lease_seconds: float = 30.0
    batch: int = 50
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 30.0


@dataclass(frozen=True)
class DatabaseStatus:
    database: str
    delivered_id: int
    backlog: int
    lag_seconds: float
    attempts: int
    last_error: str | None
    retry_at: datetime | None
    delivered_at: datetime | None
    leased_by: str | None


def backoff(attempts: int, tuning: Tuning) -> float:
    """Seconds before attempt `attempts + 1`: doubling from the base, capped, with jitter."""
    # The exponent is bounded: past it the cap holds anyway, and 2.0 ** 1024 overflows.
    doubling = 2.0 ** min(attempts - 1, 64)
    delay = min(tuning.backoff_cap_seconds, tuning.backoff_base_seconds * doubling)
    return delay * random.uniform(0.8, 1.0)


def mint_control_plane_token(settings: Settings, keys: KeySnapshot, now: float) -> str:
    """The token the control plane calls SpacetimeDB with: its own issuer, its own subject."""
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": CONTROL_PLANE_SUBJECT,
        "aud": settings.audience,
        "iat": iat,
        "exp": iat + TOKEN_TTL_SECONDS,
        "jti": secrets.token_urlsafe(16),
        "token_use": CONTROL_PLANE_TOKEN_USE,
    }
    active = keys.active
    return jwt.encode(claims, active.private_key, algorithm=active.alg, headers={"kid": active.kid})


def _describe(response: httpx.Response) -> str:
    # The status and a short, printable start of the body (a reducer's error message); never a
    # header, which could echo the token.
    text = "".join(ch for ch in response.text[:120] if ch.isprintable())
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


class Deliverer:
    """One replica's deliverer of the outbox into every configured database."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        keys: Callable[[], KeySnapshot],
        replica_id: str,
        *,
        tuning: Tuning | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.keys = keys
        self.replica_id = replica_id
        self.tuning = tuning or Tuning()
        self.targets = settings.spacetimedb_targets()
        self.base_url = settings.spacetimedb_url or ""
        self._client = client or httpx.Client(
            timeout=settings.spacetimedb_timeout_seconds, follow_redirects=False
        )
        self._token: tuple[str, float] | None = None
        # A lease outlives the slowest call it covers (CONTROL_SPACETIMEDB_TIMEOUT_SECONDS may
        # exceed the tuning's lease): a lease that ran out mid-call would let another replica
        # deliver the next entries while this call's answer is still on its way.
        self._lease = timedelta(
            seconds=max(self.tuning.lease_seconds, 2 * settings.spacetimedb_timeout_seconds)
        )
        # A lease whose holder stopped beating passes on at once (a replica that crashed
        # mid-delivery), without waiting for the lease to run out.
        self._dead_after = timedelta(seconds=settings.replica_heartbeat_seconds * DEAD_AFTER_BEATS)

    def close(self) -> None:
        self._client.close()

    # --- the token ------------------------------------------------------------------------

    def token(self) -> str:
        now = time.time()
        if self._token is None or now >= self._token[1]:
            token = mint_control_plane_token(self.settings, self.keys(), now)
            self._token = (token, now + TOKEN_TTL_SECONDS - TOKEN_MARGIN_SECONDS)
        return self._token[0]

    # --- one pass -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Deliver what is due to every database this replica can lease; the number of entries
        delivered."""
        delivered = 0
        for database in self.targets:
            try:
                delivered += self._deliver(database)
            except Exception:  # a database error: the next pass tries again
                log.exception("spacetimedb delivery to %s failed; retrying", database)
        return delivered

    def _claim(self, database: str) -> int | None:
        """Take `database`'s lease if it is free (or ours, or run out) and no retry is pending;
        its delivered id, or None when another replica holds it or it must wait."""
        now = utcnow()
        with unit_of_work(self.sessions) as session:
            if session.get(Delivery, database) is None:
                try:
                    with session.begin_nested():
                        session.add(Delivery(database=database, delivered_id=0, attempts=0))
                except IntegrityError:
                    pass  # another replica created it first
            won = session.execute(
                update(Delivery)
                .where(
                    Delivery.database == database,
                    or_(
                        Delivery.leased_by.is_(None),
                        Delivery.leased_by == self.replica_id,
                        Delivery.lease_until < now,
                        ~exists().where(
                            _heartbeats.c.id == Delivery.leased_by,
                            _heartbeats.c.beat_at >= now - self._dead_after,
                        ),
                    ),
                    or_(Delivery.retry_at.is_(None), Delivery.retry_at <= now),
                )
                .values(
                    leased_by=self.replica_id,
                    lease_until=now + self._lease,
                )
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return session.scalars(
                select(Delivery.delivered_id).where(Delivery.database == database)
            ).one()

    def _pending(self, after: int) -> list[OutboxEntry]:
        with unit_of_work(self.sessions) as session:
            return list(
                session.scalars(
                    select(OutboxEntry)
                    .where(OutboxEntry.id > after)
                    .order_by(OutboxEntry.id)
                    .limit(self.tuning.batch)
                )
            )

    def _mine(self, database: str) -> Any:
        return update(Delivery).where(
            Delivery.database == database, Delivery.leased_by == self.replica_id
        )

    def _deliver(self, database: str) -> int:
        after = self._claim(database)
        if after is None:
            return 0
        delivered = 0
        try:
            for entry in self._pending(after):
                error = self._call(database, entry)
                now = utcnow()
                with unit_of_work(self.sessions) as session:
                    if error is not None:
                        attempts = (
                            session.scalars(
                                select(Delivery.attempts).where(Delivery.database == database)
                            ).one()
                            + 1
                        )
                        delay = backoff(attempts, self.tuning)
                        session.execute(
                            self._mine(database).values(
                                attempts=attempts,
                                retry_at=now + timedelta(seconds=delay),
                                last_error=error[:200],
                            )
                        )
                        log.warning(
                            "spacetimedb delivery of outbox entry %d to %s failed (%s); "
                            "attempt %d, next in %.1f s",
                            entry.id,
                            database,
                            error,
                            attempts,
                            delay,
                        )
                        return delivered
                    moved = session.execute(
                        self._mine(database).values(
                            delivered_id=entry.id,
                            delivered_at=now,
                            attempts=0,
                            retry_at=None,
                            last_error=None,
                            lease_until=now + self._lease,
                        )
                    )
                    if moved.rowcount != 1:  # type: ignore[attr-defined]
                        return delivered  # the lease ran out and passed on: stop here
                delivered += 1
        finally:
            with unit_of_work(self.sessions) as session:
                session.execute(self._mine(database).values(leased_by=None, lease_until=None))
        return delivered

    def _call(self, database: str, entry: OutboxEntry) -> str | None:
        """Call the entry's reducer on `database`; None on 200, else what went wrong."""
        url = f"{self.base_url}/v1/database/{database}/call/{entry.reducer}"
        try:
            response = self._client.post(
                url,
                json=entry.args,
                headers={"Authorization": f"Bearer {self.token()}"},
            )
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code == 200:
            return None
        return _describe(response)

    # --- housekeeping ---------------------------------------------------------------------

    def prune(self) -> int:
        """Delete entries past retention that every configured database has (all entries past
        retention when none is configured)."""
        cutoff = utcnow() - OUTBOX_RETENTION
        with unit_of_work(self.sessions) as session:
            query = delete(OutboxEntry).where(
                OutboxEntry.created_at < cutoff,
                # Never the newest entry: SQLite would hand its id out again, at or below what
                # the databases have, and the next revocations would never be delivered.
                OutboxEntry.id < select(func.max(OutboxEntry.id)).scalar_subquery(),
            )
            if self.targets:
                floor = session.scalar(
                    select(func.min(Delivery.delivered_id)).where(
                        Delivery.database.in_(self.targets)
                    )
                )
                known = session.scalar(
                    select(func.count()).where(Delivery.database.in_(self.targets))
                )
                if floor is None or known != len(self.targets):
                    return 0
                query = query.where(OutboxEntry.id <= floor)
            result = session.execute(query)
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def run_forever(self) -> None:
        """Deliver every `poll_seconds` until cancelled."""
        passes = 0
        try:
            while True:
                try:
                    await asyncio.to_thread(self.run_once)
                    passes += 1
                    if passes % 600 == 1:
                        await asyncio.to_thread(self.prune)
                except Exception:  # keep delivering; the next pass tries again
                    log.exception("spacetimedb delivery pass failed")
                await asyncio.sleep(self.tuning.poll_seconds)
        finally:
            self.close()


def status(
    session: Session, targets: tuple[str, ...], now: datetime | None = None
) -> list[DatabaseStatus]:
    """Each configured database's place in the outbox: what is left to push (`backlog`), and
    how long the oldest of it has waited (`lag_seconds`, 0 when nothing waits)."""
    now = now or utcnow()
    rows = {
        row.database: row
        for row in session.scalars(select(Delivery).where(Delivery.database.in_(targets)))
    }
    out: list[DatabaseStatus] = []
    for database in targets:
        row = rows.get(database)
        after = row.delivered_id if row is not None else 0
        backlog, oldest = session.execute(
            select(func.count(), func.min(OutboxEntry.created_at)).where(OutboxEntry.id > after)
        ).one()
        if oldest is not None and oldest.tzinfo is None:  # SQLite's aggregate is naive UTC
            oldest = oldest.replace(tzinfo=now.tzinfo)
        lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        out.append(
            DatabaseStatus(
                database=database,
                delivered_id=after,
                backlog=int(backlog),
                lag_seconds=round(lag, 3),
                attempts=row.attempts if row is not None else 0,
                last_error=row.last_error if row is not None else None,
                retry_at=row.retry_at if row is not None else None,
                delivered_at=row.delivered_at if row is not None else None,
                leased_by=row.leased_by if row is not None else None,
            )
        )
    return out
