"""The mint rate limit holds for the whole fleet: two replicas on one PostgreSQL database, both
hammered by one principal, admit what one would (`CONTROL_MINT_RATE_PER_SECOND` per second after
`CONTROL_MINT_BURST`), and a replica that leaves hands its share back. Also the limiter itself:
each replica's share, and buckets forgotten by age, never all at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.orm import Session

from control.kit.db import utcnow
from control.tokens import replicas as membership
from control.tokens.models import ReplicaHeartbeat
from control.tokens.ratelimit import RateLimiter
from tests.fleet import Outcome, World, make_world, mint_until, postgres_database, replicas
from tests.server import Server, migrate

RATE = 5.0
BURST = 10
HEARTBEAT = 0.5
# docs/operations.md: with membership steady, a principal gets at most RATE x T + BURST over
# any T seconds. This is slack for where the window's edges fall, one second's worth.
SLACK = RATE


def test_each_replica_enforces_its_share() -> None:
    limiter = RateLimiter(rate_per_second=10, burst=4)
    limiter.share(2)
    assert (limiter.local_rate, limiter.local_burst) == (5.0, 2.0)
    assert limiter.acquire("p") is None and limiter.acquire("p") is None
    wait = limiter.acquire("p")
    assert wait is not None and 0 < wait <= 1 / 5
    limiter.share(8)  # a bigger fleet: never less than one token of burst
    assert limiter.local_burst == 1.0
    limiter.share(0)
    assert limiter.replicas == 1


def test_buckets_are_forgotten_by_age_not_all_at_once() -> None:
    limiter = RateLimiter(rate_per_second=0.001, burst=1, max_keys=2)
    for key in ("p", "q"):
        assert limiter.acquire(key) is None
        assert limiter.acquire(key) is not None  # empty
    assert limiter.acquire("r") is None  # a third key: only the least recent one goes
    assert limiter.acquire("r") is not None
    assert limiter.acquire("q") is not None, "q's empty bucket was thrown away with the rest"
    assert len(limiter) == 2

    # A bucket idle long enough to be full again is dropped as soon as anyone acquires.
    fast = RateLimiter(rate_per_second=100, burst=1)
    assert fast.acquire("idle") is None
    time.sleep(0.05)
    assert fast.acquire("busy") is None
    assert len(fast) == 1
    assert fast.acquire("idle") is None  # and comes back full, as it would have been


def test_replicas_that_miss_beats_stop_counting(session: Session) -> None:
    now, period = utcnow(), 2.0
    membership.beat(session, "gone", "h:1", now - timedelta(seconds=period * 150), period)
    membership.beat(session, "late", "h:2", now - timedelta(seconds=period * 3.5), period)
    assert membership.beat(session, "a", "h:3", now, period) == 1  # "late" missed three beats
    assert membership.beat(session, "b", "h:4", now, period) == 2
    assert session.get(ReplicaHeartbeat, "gone") is None  # long dead: forgotten
    assert session.get(ReplicaHeartbeat, "late") is not None
    membership.leave(session, "a")
    assert membership.beat(session, "b", "h:4", now + timedelta(seconds=period), period) == 1


@dataclass
class Fleet:
    database_url: str
    a: Server
    b: Server
    world: World


def live_replicas(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM replica_heartbeats WHERE beat_at > now() - interval '1 second'"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for_replicas(database_url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while live_replicas(database_url) != count:
        assert time.monotonic() < deadline, f"never {count} live replicas"
        time.sleep(0.1)
    # Every replica reads the count at its own next beat.
    time.sleep(HEARTBEAT * 2)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: Path = tmp_path_factory.mktemp("fleet-limit")
    with postgres_database() as url:
        migrate(url)
        with replicas(
            url,
            workdir,
            [None, None],
            mint_rate_per_second=str(RATE),
            mint_burst=str(BURST),
            replica_heartbeat_seconds=str(HEARTBEAT),
        ) as (a, b):
            yield Fleet(url, a, b, make_world(a))


def hammer(servers: list[Server], key: str, seconds: float) -> tuple[int, int, float]:
    """Three clients per replica mint as fast as they can for `seconds`: (200s, 429s, elapsed)."""
    stop = threading.Event()
    outcomes = [Outcome() for _ in range(3 * len(servers))]
    threads = [
        threading.Thread(target=mint_until, args=(servers[n % len(servers)].base_url, key, stop, o))
        for n, o in enumerate(outcomes)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert not any(o.transport_errors for o in outcomes)
    statuses = sum((o.statuses for o in outcomes), start=Outcome().statuses)
    assert set(statuses) <= {200, 429}, statuses
    return statuses[200], statuses[429], elapsed


@pytest.mark.e2e
def test_two_replicas_admit_the_fleet_rate_not_twice_it(fleet: Fleet) -> None:
    wait_for_replicas(fleet.database_url, 2)
    accepted, limited, elapsed = hammer([fleet.a, fleet.b], fleet.world.alice_key, 10)
    ceiling = RATE * elapsed + BURST + SLACK
    print(
        f"\nfleet rate limit: {accepted} mints admitted in {elapsed:.1f}s across 2 replicas "
        f"(ceiling {ceiling:.0f} = {RATE}/s x {elapsed:.1f}s + burst {BURST} + {SLACK:.0f}), "
        f"{limited} refused with 429"
    )
    assert limited > 0
    assert accepted <= ceiling
    # Spread over both, the principal still gets (nearly) the whole fleet rate.
    assert accepted >= RATE * 10 * 0.8


@pytest.mark.e2e
def test_a_replica_that_leaves_hands_back_its_share(fleet: Fleet, tmp_path: Path) -> None:
    # B stops (cleanly: its row goes at once); A alone then admits the whole rate, more than
    # its half could.
    fleet.b.process.terminate()
    fleet.b.process.wait(timeout=20)
    wait_for_replicas(fleet.database_url, 1)
    accepted, _, elapsed = hammer([fleet.a], fleet.world.alice_key, 6)
    half = RATE / 2 * elapsed + BURST / 2
    assert accepted > half, (accepted, half)
    assert accepted <= RATE * elapsed + BURST + SLACK
