"""Two replicas (two `control serve` processes) on one PostgreSQL database, under concurrent
load: tokens minted on one are introspected on the other, keys rotated on one while both mint
(every token verifies against both JWKS, and was published by both before anyone signed with
it), revocations written on one are honoured by the other at once, and the audit log holds
exactly one `token.mint` event per token handed out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.runtime import GrantVerifier
from tests.factories import rejection
from tests.fleet import (
    TIMEOUT,
    Outcome,
    World,
    active_kid,
    audit_events,
    bearer,
    check_key_rows,
    introspect,
    make_world,
    mint,
    mint_jtis,
    mint_until,
    postgres_database,
    published_kids,
    replicas,
)
from tests.server import Server, free_port, migrate

pytestmark = pytest.mark.e2e

# A pending key is published this long before any replica may sign with it; replicas reload
# their keys every 0.5 s, so every replica publishes a key well before any signs with it.
LEAD_SECONDS = 3
ROTATIONS = 3
MINTERS_PER_REPLICA = 2


@dataclass
class Fleet:
    database_url: str
    issuer: str
    a: Server
    b: Server
    world: World
    # Every token any test of this module received, by jti: the audit log must match it.
    received: list[str] = field(default_factory=list)

    @property
    def replicas(self) -> tuple[Server, Server]:
        return (self.a, self.b)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: Path = tmp_path_factory.mktemp("replicas")
    with postgres_database() as url:
        port = free_port()
        # One issuer for both: tokens carry `iss`, and either replica must accept the other's.
        issuer = f"http://127.0.0.1:{port}"
        settings = {"issuer": issuer, "key_publish_lead_seconds": str(LEAD_SECONDS)}
        migrate(url)
        # Started together: both load (and the first creates) the keys at the same moment.
        with replicas(url, workdir, [port, None], **settings) as [a, b]:
            yield Fleet(url, issuer, a, b, make_world(a))
            for server in (a, b):
                assert " -> 500" not in server.log(), server.log()[-5000:]


def assert_audit_matches(fleet: Fleet) -> None:
    """Exactly one `token.mint` event per token received, and none for anything else."""
    for server in fleet.replicas:  # both replicas read the same log
        events = mint_jtis(server.base_url, fleet.world.admin_key)
        assert events == Counter(fleet.received), (
            f"{sum(events.values())} token.mint events for {len(fleet.received)} tokens"
        )


def test_mint_on_one_introspect_on_the_other(fleet: Fleet) -> None:
    world = fleet.world

    def worker(index: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        minter, checker = fleet.replicas[index % 2], fleet.replicas[(index + 1) % 2]
        pairs = []
        with (
            httpx.Client(base_url=minter.base_url, timeout=TIMEOUT) as mint_http,
            httpx.Client(base_url=checker.base_url, timeout=TIMEOUT) as check_http,
        ):
            for _ in range(15):
                response = mint(mint_http, world.alice_key)
                assert response.status_code == 200, response.text
                minted = response.json()
                pairs.append((minted, introspect(check_http, world.service_key, minted["token"])))
        return pairs

    with ThreadPoolExecutor(4) as pool:
        pairs = [pair for result in pool.map(worker, range(4)) for pair in result]
    assert len(pairs) == 60
    for minted, answer in pairs:
        assert answer["active"] is True, answer
        assert answer["jti"] == minted["jti"] and answer["sub"] == world.alice_id
        assert minted["issuer"] == fleet.issuer
    fleet.received.extend(minted["jti"] for minted, _ in pairs)
    assert_audit_matches(fleet)


@dataclass
class JwksWatch:
    """Polls both replicas' JWKS: (monotonic time the answer arrived, kids published)."""

    seen: dict[str, list[tuple[float, frozenset[str]]]]
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, replicas: tuple[Server, ...]) -> None:
        clients = [httpx.Client(base_url=s.base_url, timeout=TIMEOUT) for s in replicas]
        try:
            while not self.stop.is_set():
                for server, http in zip(replicas, clients, strict=True):
                    try:
                        keys = http.get("/.well-known/jwks.json").json()["keys"]
                    except httpx.HTTPError:
                        continue  # a slow answer: the next poll will do
                    kids = frozenset(key["kid"] for key in keys)
                    self.seen[server.base_url].append((time.monotonic(), kids))
                time.sleep(0.05)
        finally:
            for http in clients:
                http.close()

    def published_before(self, base_url: str, moment: float) -> frozenset[str]:
        """The kids the replica published in its last answer that arrived before `moment`."""
        earlier = [kids for at, kids in self.seen[base_url] if at < moment]
        return earlier[-1] if earlier else frozenset()


def signed_with(outcomes: list[Outcome], kid: str | None) -> bool:
    return any(token["kid"] == kid for outcome in outcomes for token in outcome.tokens)


def test_rotation_on_one_replica_while_both_mint(fleet: Fleet) -> None:
    world = fleet.world
    watch = JwksWatch({server.base_url: [] for server in fleet.replicas})
    watcher = threading.Thread(target=watch.run, args=(fleet.replicas,), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 20
    while not all(watch.seen.values()):
        assert time.monotonic() < deadline, "the JWKS watcher got no answer"
        time.sleep(0.05)

    kid_before = active_kid(fleet.a)
    stop = threading.Event()
    outcomes = {
        server.base_url: [Outcome() for _ in range(MINTERS_PER_REPLICA)]
        for server in fleet.replicas
    }
    minters = [
        threading.Thread(
            target=mint_until, args=(url, world.alice_key, stop, outcome, 0.01), daemon=True
        )
        for url, per_replica in outcomes.items()
        for outcome in per_replica
    ]
    for thread in minters:
        thread.start()

    # Both replicas sign with the first key before the first rotation.
    deadline = time.monotonic() + 30
    while not all(signed_with(o, kid_before) for o in outcomes.values()):
        assert time.monotonic() < deadline, "the replicas minted nothing"
        time.sleep(0.05)

    rotations: list[dict[str, Any]] = []
    refused = 0
    try:
        with httpx.Client(base_url=fleet.a.base_url, timeout=TIMEOUT) as http:
            deadline = time.monotonic() + 60
            while len(rotations) < ROTATIONS and time.monotonic() < deadline:
                response = http.post("/api/admin/keys/rotate", headers=bearer(world.admin_key))
                if response.status_code == 409:  # the pending key is not published long enough
                    refused += 1
                    time.sleep(0.25)
                    continue
                assert response.status_code == 200, response.text
                rotations.append(response.json())
            # Let both replicas sign with the last active key for a moment.
            final = rotations[-1]["active"] if rotations else None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(
                signed_with(per_replica, final) for per_replica in outcomes.values()
            ):
                time.sleep(0.1)
    finally:
        stop.set()
        for thread in minters:
            thread.join(timeout=60)
        watch.stop.set()
        watcher.join(timeout=60)

    assert len(rotations) == ROTATIONS, rotations
    assert refused > 0, "rotations were never held back by the publish lead time"
    everything = [o for per_replica in outcomes.values() for o in per_replica]
    statuses = sum((o.statuses for o in everything), Counter())
    assert set(statuses) == {200}, statuses
    assert not any(o.transport_errors for o in everything)
    tokens = [token for o in everything for token in o.tokens]
    fleet.received.extend(token["jti"] for token in tokens)

    # Keys: four have signed (the first and one per rotation), each replica used the final one.
    kids_used = Counter(token["kid"] for token in tokens)
    assert rotations[0]["retiring"] == kid_before
    assert set(kids_used) == {kid_before, *(r["active"] for r in rotations)}
    for url, per_replica in outcomes.items():
        assert signed_with(per_replica, rotations[-1]["active"]), url

    # No token was signed with a key some replica did not yet publish when it was requested.
    for token in tokens:
        for server in fleet.replicas:
            published = watch.published_before(server.base_url, token["started"])
            assert token["kid"] in published, (token["kid"], server.base_url, token["jti"])

    # Every token verifies against the JWKS of either replica.
    verified: Counter[str] = Counter()
    for server in fleet.replicas:
        with GrantVerifier(
            issuer=fleet.issuer,
            audience="spacetimedb",
            jwks_url=f"{server.base_url}/.well-known/jwks.json",
        ) as verifier:
            for token in tokens:
                claims = verifier.verify(token["token"])
                assert claims["jti"] == token["jti"]
                verified[server.base_url] += 1
    assert set(verified.values()) == {len(tokens)}
    assert published_kids(fleet.a.base_url) == published_kids(fleet.b.base_url)

    states = check_key_rows(fleet.database_url)
    assert states["retiring"] == ROTATIONS, states

    # The audit log: one event per token, naming the key that signed it; one per rotation.
    assert_audit_matches(fleet)
    events = audit_events(fleet.a.base_url, world.admin_key)
    kid_of = {e["detail"]["jti"]: e["detail"]["kid"] for e in events if e["action"] == "token.mint"}
    assert all(kid_of[token["jti"]] == token["kid"] for token in tokens)
    assert [e["target"] for e in events if e["action"] == "keys.rotate"] == [
        r["active"] for r in rotations
    ]
    print(
        f"\nrotation under load: {len(tokens)} tokens minted across {ROTATIONS} rotations "
        f"({dict(kids_used)} by kid), {refused} early rotations refused (409), every token "
        f"verified against both replicas' JWKS ({dict(verified)}), "
        f"{len(kid_of)} token.mint events for {len(fleet.received)} tokens received, 5xx: 0"
    )


def test_revocation_on_one_is_honoured_by_the_other_at_once(fleet: Fleet) -> None:
    world = fleet.world
    a, b = fleet.replicas
    with (
        httpx.Client(base_url=a.base_url, timeout=TIMEOUT) as http_a,
        httpx.Client(base_url=b.base_url, timeout=TIMEOUT) as http_b,
        GrantVerifier(
            issuer=fleet.issuer,
            audience="spacetimedb",
            jwks_url=f"{b.base_url}/.well-known/jwks.json",
            revocations_url=f"{b.base_url}/api/sync/revocations",
            api_key=world.service_key,
            poll_interval=0.3,
        ) as follower,
    ):
        clients = (http_a, http_b)
        for index in range(6):
            minter, revoker = clients[index % 2], clients[(index + 1) % 2]
            minted = mint(minter, world.alice_key).json()
            fleet.received.append(minted["jti"])
            assert introspect(minter, world.service_key, minted["token"])["active"] is True
            revoked = revoker.post(
                "/api/admin/revocations",
                json={"kind": "jti", "value": minted["jti"]},
                headers=bearer(world.admin_key),
            )
            assert revoked.status_code == 201, revoked.text
            # At once, on the replica that did not write the revocation (and on the one that did).
            for http in (minter, revoker):
                assert introspect(http, world.service_key, minted["token"]) == {
                    "active": False,
                    "reason": "revoked",
                }

        # A subject revocation written on A kills B's earlier tokens at once; B's next token for
        # the subject is valid on A.
        older = mint(http_b, world.alice_key).json()
        fleet.received.append(older["jti"])
        follower.verify(older["token"])
        revoked = http_a.post(
            "/api/admin/revocations",
            json={"kind": "subject", "value": world.alice_id},
            headers=bearer(world.admin_key),
        )
        assert revoked.status_code == 201, revoked.text
        assert introspect(http_b, world.service_key, older["token"])["active"] is False
        newer = mint(http_b, world.alice_key).json()
        fleet.received.append(newer["jti"])
        assert introspect(http_a, world.service_key, newer["token"])["active"] is True

        # A runtime following B's revocation feed learns of A's revocation within a few polls.
        deadline = time.monotonic() + 15
        while (code := rejection(follower, older["token"])) is None:
            assert time.monotonic() < deadline, "the revocation never reached the feed follower"
            time.sleep(0.1)
        assert code == "revoked"
        assert follower.verify(newer["token"])["jti"] == newer["jti"]
    assert_audit_matches(fleet)
