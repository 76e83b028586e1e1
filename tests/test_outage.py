"""The SDK through an outage of a real control plane: a `control serve` on a fixed loopback port
that hangs (SIGSTOP: connections are accepted, never answered), goes down, and comes back on
the same port and database. `GrantVerifier` keeps verifying with the keys it has, without
waiting; `SyncTokenSource` and its asyncio twin keep handing out the valid token, refresh once
however many callers ask, and say `TokenExpired` once it has expired; revocation entries are
dropped at their horizon; several orgs' feeds are followed, each on its own."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.client import AsyncSyncTokenSource, SyncTokenSource, TokenExpired
from control.runtime import FeedSource, GrantVerifier, TokenRejected
from tests.factories import Api, OrgFixture, rejection
from tests.server import BIN, Server, free_port, server_env, stop, wait_ready

pytestmark = pytest.mark.e2e

STREAM = "run:01J9ZK"
# What "does not wait" means here: a verify or token() that waited for the control plane would
# take at least the HTTP timeout (seconds). Half of it leaves room for a loaded machine, where
# scheduling alone can stretch a call that never touches the network to tens of milliseconds.
HTTP_TIMEOUT = 2.0
NO_WAIT = HTTP_TIMEOUT / 2
JWKS_MAX_AGE = 1


@dataclass
class ControlPlane:
    """One `control serve` on a fixed port and SQLite file, which a test can hang, stop and
    start again: same issuer, same keys, same rows."""

    database_url: str
    workdir: Path
    port: int
    settings: dict[str, str]
    server: Server | None = None
    hung: bool = False
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        env = server_env(self.database_url, self.port, **self.settings)
        self.starts += 1
        log_path = self.workdir / f"server-{self.port}-{self.starts}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(BIN / "control"), "serve", "--port", str(self.port)],
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.server = Server(self.base_url, env, process, log_path)
        wait_ready(self.server)

    def hang(self) -> None:
        assert self.server is not None
        os.kill(self.server.process.pid, signal.SIGSTOP)
        self.hung = True

    def resume(self) -> None:
        assert self.server is not None
        os.kill(self.server.process.pid, signal.SIGCONT)
        self.hung = False

    def down(self) -> None:
        assert self.server is not None
        if self.hung:
            self.resume()
        stop(self.server.process)
        self.server = None

    def ensure_up(self) -> None:
        if self.hung:
            self.resume()
        if self.server is None:
            self.up()


@dataclass
class World:
    plane: ControlPlane
    org_a: OrgFixture
    org_b: OrgFixture
    alice: Api
    bob: Api
    service_a: Api
    service_b: Api


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("outage")
    plane = ControlPlane(
        database_url=f"sqlite:///{workdir}/control.db",
        workdir=workdir,
        port=free_port(),
        settings={
            "key_publish_lead_seconds": "0",
            "token_ttl_min_seconds": "2",
            "jwks_max_age_seconds": str(JWKS_MAX_AGE),
        },
    )
    plane.up()
    http = httpx.Client(base_url=plane.base_url, timeout=10)
    try:
        assert plane.server is not None
        orgs = []
        for name in ("acme", "globex"):
            boot = plane.server.bootstrap(name)
            org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
            org.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
            orgs.append(org)
        org_a, org_b = orgs
        alice, bob = org_a.principal("alice"), org_b.principal("bob")
        org_a.stream(STREAM)
        org_b.stream("run:globex")
        for org in orgs:
            org.allow(query_sets=["run_events"])
        service_a = org_a.principal("runtime", kind="service")
        service_b = org_b.principal("runtime", kind="service")
        yield World(plane, org_a, org_b, alice, bob, service_a, service_b)
    finally:
        http.close()
        if plane.server is not None:
            plane.down()


@pytest.fixture(autouse=True)
def _plane_up_again(world: World) -> Iterator[None]:
    world.plane.ensure_up()
    yield
    world.plane.ensure_up()


@dataclass
class Traffic:
    """What an httpx client sent and got back: real requests, counted by path."""

    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[tuple[str, int]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_request(self, request: httpx.Request) -> None:
        with self.lock:
            self.sent[request.url.path] += 1

    def on_response(self, response: httpx.Response) -> None:
        with self.lock:
            self.answered[(response.request.url.path, response.status_code)] += 1

    def client(self, base_url: str = "") -> httpx.Client:
        return httpx.Client(
            base_url=base_url,
            timeout=HTTP_TIMEOUT,
            event_hooks={"request": [self.on_request], "response": [self.on_response]},
        )


JWKS = "/.well-known/jwks.json"
TOKEN = "/api/sync/token"
FEED = "/api/sync/revocations"


def mint(user: Api, stream: str = STREAM, ttl: int = 300) -> dict[str, Any]:
    response = user.post(TOKEN, {"streams": [stream], "ttl_seconds": ttl})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def with_kid(token: str, kid: str) -> str:
    """The token under a header naming another key: what a token of a key never seen looks
    like to the verifier (it is refused before its signature matters)."""
    header = json.dumps({"alg": "ES256", "kid": kid, "typ": "JWT"}, separators=(",", ":"))
    segment = base64.urlsafe_b64encode(header.encode()).rstrip(b"=").decode()
    return ".".join([segment, *token.split(".")[1:]])


def timed(call: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - started, result


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def verifier_for(world: World, traffic: Traffic, **options: Any) -> GrantVerifier:
    base = world.plane.base_url
    return GrantVerifier(
        issuer=base,
        audience="spacetimedb",
        jwks_url=f"{base}{JWKS}",
        http=traffic.client(),
        **options,
    )


def test_verify_keeps_known_keys_through_an_outage_without_waiting(world: World) -> None:
    plane, traffic = world.plane, Traffic()
    tokens = [mint(world.alice)["token"] for _ in range(5)]
    with verifier_for(world, traffic, min_refetch_interval=1.0, max_jwks_backoff=0.4) as verifier:
        assert verifier.verify(tokens[0])["sub"] == world.org_a.principals["alice"]
        assert traffic.sent[JWKS] == 1

        # Hung: the JWKS max-age passes, and a token not verified before (so its key is looked
        # up) verifies at once; one background refresh goes out and waits on the hung server.
        plane.hang()
        time.sleep(JWKS_MAX_AGE + 0.2)
        for token in tokens[1:3]:
            elapsed, claims = timed(verifier.verify, token)
            assert claims["sub"] == world.org_a.principals["alice"]
            assert elapsed < NO_WAIT, f"a known key's verify waited {elapsed:.3f}s"
        wait_for(lambda: traffic.sent[JWKS] == 2, 5, "no background refresh started")
        time.sleep(0.3)
        assert traffic.sent[JWKS] == 2, "more than one refresh at a time"

        # Down: refreshes fail at once and back off; known keys still verify without waiting.
        plane.down()
        elapsed, claims = timed(verifier.verify, tokens[3])
        assert elapsed < NO_WAIT and claims["jti"]
        # A key never seen makes `verify` fetch itself, at most once per min_refetch_interval.
        wait_for(lambda: not verifier._fetch_lock.locked(), 5, "the hung refresh never ended")
        time.sleep(1.0)
        before = traffic.sent[JWKS]
        codes = [rejection(verifier, with_kid(tokens[4], f"unseen-{n}")) for n in range(20)]
        assert codes == ["unknown_key"] * 20
        assert traffic.sent[JWKS] - before <= 1

        # Back, with a rotation: the new key verifies, and the background refresh recovers.
        plane.up()
        rotated = world.org_a.admin.ok("POST", "/api/admin/keys/rotate", status=200)
        wait_for(
            lambda: mint(world.alice)["kid"] == rotated["active"], 10, "rotation not picked up"
        )
        assert verifier.verify(tokens[4])["jti"]

        def refreshed() -> bool:
            fresh = mint(world.alice)
            assert verifier.verify(fresh["token"])["jti"] == fresh["jti"]
            return traffic.answered[(JWKS, 200)] >= 2

        wait_for(refreshed, 10, "the keys never refreshed again")


def test_verify_async_never_blocks_the_event_loop(world: World) -> None:
    plane, traffic = world.plane, Traffic()
    tokens = [mint(world.alice)["token"] for _ in range(2)]
    with verifier_for(world, traffic, min_refetch_interval=0.0) as verifier:
        verifier.verify(tokens[0])
        plane.hang()

        async def run() -> tuple[float, str | None, dict[str, Any]]:
            gaps: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticking = asyncio.create_task(ticker())
            await asyncio.sleep(0.02)
            code = None
            try:  # a key never seen: fetched on a worker thread, from the hung server
                await verifier.verify_async(with_kid(tokens[1], "unseen"))
            except TokenRejected as rejected:
                code = rejected.code
            claims = await verifier.verify_async(tokens[1])
            done.set()
            await ticking
            return max(gaps), code, claims

        widest_gap, code, claims = asyncio.run(run())
        assert code == "unknown_key"
        assert claims["sub"] == world.org_a.principals["alice"]
        assert traffic.sent[JWKS] >= 2
        assert widest_gap < HTTP_TIMEOUT / 2, f"the event loop stalled {widest_gap:.3f}s"


def source_for(world: World, traffic: Traffic, **options: Any) -> SyncTokenSource:
    assert world.alice.key is not None
    return SyncTokenSource(
        world.plane.base_url,
        world.alice.key,
        [STREAM],
        http=traffic.client(world.plane.base_url),
        ttl_seconds=8,
        refresh_jitter=0.0,
        expiry_margin=0.5,
        max_attempts=2,
        backoff=1.0,
        **options,
    )


def test_token_source_serves_the_valid_token_through_an_outage(world: World) -> None:
    plane, traffic = world.plane, Traffic()
    with source_for(world, traffic) as source:
        first = source.current()
        assert traffic.sent[TOKEN] == 1
        plane.hang()
        time.sleep(max(0.0, first.refresh_after - time.time()) + 0.05)
        assert time.time() < first.expires_at - 0.5, "the refresh window closed already"

        # Due for refresh, the server hung: many threads ask at once; every one gets the
        # current token without waiting, and one refresh goes out.
        start = threading.Barrier(12)
        latencies: list[float] = []
        handed: set[str] = set()

        def ask() -> None:
            start.wait()
            for _ in range(5):
                elapsed, token = timed(source.token)
                latencies.append(elapsed)
                handed.add(token)
                time.sleep(0.01)

        threads = [threading.Thread(target=ask) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert handed == {first.token}
        assert max(latencies) < NO_WAIT, f"token() waited {max(latencies):.3f}s"
        assert traffic.sent[TOKEN] == 2, "not one refresh in flight"

        # Expired, refresh failing: the clear error, and at once while the next one is not due.
        time.sleep(max(0.0, first.expires_at - 0.5 - time.time()))
        with pytest.raises(TokenExpired) as expired:
            source.token()
        assert expired.value.__cause__ is not None
        sent, started = traffic.sent[TOKEN], time.perf_counter()
        with pytest.raises(TokenExpired):
            source.token()
        assert time.perf_counter() - started < NO_WAIT
        assert traffic.sent[TOKEN] == sent

        # Back: the next call past the backoff gets a new token.
        plane.resume()

        def fresh_token() -> bool:
            try:
                return source.token() != first.token
            except TokenExpired:
                return False

        wait_for(fresh_token, 15, "no new token after the server came back")


def test_async_token_source_serves_the_valid_token_through_an_outage(world: World) -> None:
    plane = world.plane
    assert world.alice.key is not None
    sent: Counter[str] = Counter()

    async def count(request: httpx.Request) -> None:
        sent[request.url.path] += 1

    async def run() -> None:
        http = httpx.AsyncClient(
            base_url=plane.base_url, timeout=HTTP_TIMEOUT, event_hooks={"request": [count]}
        )
        source = AsyncSyncTokenSource(
            plane.base_url,
            world.alice.key or "",
            [STREAM],
            http=http,
            ttl_seconds=8,
            refresh_jitter=0.0,
            expiry_margin=0.5,
            max_attempts=1,
            backoff=0.05,
        )
        first = await source.current()
        plane.down()
        await asyncio.sleep(max(0.0, first.refresh_after - time.time()) + 0.05)
        started = time.perf_counter()
        handed = await asyncio.gather(*(source.token() for _ in range(50)))
        assert time.perf_counter() - started < NO_WAIT
        assert set(handed) == {first.token}
        await asyncio.sleep(0.2)
        assert sent[TOKEN] == 2, "not one refresh in flight"

        await asyncio.sleep(max(0.0, first.expires_at - 0.5 - time.time()))
        with pytest.raises(TokenExpired):
            await source.token()

        await asyncio.to_thread(plane.up)
        deadline = time.monotonic() + 15
        while True:
            try:
                if await source.token() != first.token:
                    break
            except TokenExpired:
                pass
            assert time.monotonic() < deadline, "no new token after the server came back"
            await asyncio.sleep(0.1)
        await source.aclose()
        await http.aclose()

    asyncio.run(run())


def revoke(org: OrgFixture, kind: str, value: str) -> None:
    org.admin.ok("POST", "/api/admin/revocations", {"kind": kind, "value": value})


def test_revocations_are_dropped_once_their_tokens_have_expired(world: World) -> None:
    traffic = Traffic()
    url = f"{world.plane.base_url}{FEED}"
    with verifier_for(world, traffic, revocations_url=url, api_key=world.service_a.key) as dflt:
        assert dflt.revocation_horizon == 900 + dflt.leeway
    minted = mint(world.alice)
    revoke(world.org_a, "jti", minted["jti"])
    subject_token = mint(world.alice)["token"]
    revoke(world.org_a, "subject", world.org_a.principals["alice"])
    # A horizon far shorter than these tokens' lives: only so that the drop can be seen.
    with verifier_for(
        world, traffic, revocations_url=url, api_key=world.service_a.key, revocation_horizon=2
    ) as verifier:
        assert rejection(verifier, minted["token"]) == "revoked"
        assert rejection(verifier, subject_token) == "revoked"
        time.sleep(4)  # past not_before (the next second) plus the horizon
        verifier.poll_revocations()
        assert verifier.verify(minted["token"])["jti"] == minted["jti"]
        assert verifier.verify(subject_token)["sub"] == world.org_a.principals["alice"]
        held = verifier._feeds[0].revocations
        assert not held.jtis and not held.subjects


def test_several_orgs_feeds_each_followed_on_their_own(world: World) -> None:
    traffic = Traffic()
    url = f"{world.plane.base_url}{FEED}"
    a, b = world.org_a, world.org_b
    assert world.service_a.key is not None and world.service_b.key is not None
    # A feed key of its own: this test revokes it.
    follower = a.principal("feed-follower", kind="service")
    assert follower.key is not None
    credentials = a.admin.ok(
        "GET", f"/api/admin/principals/{a.principals['feed-follower']}/credentials"
    )
    alice_token, alice_other = mint(world.alice), mint(world.alice)
    bob_token = mint(world.bob, "run:globex")
    with verifier_for(
        world,
        traffic,
        feeds=[
            FeedSource(url, follower.key, a.org_id),
            (url, world.service_b.key),  # a bare (url, key) pair: its entries apply to all
        ],
        poll_interval=0.3,
    ) as verifier:
        for minted in (alice_token, alice_other, bob_token):
            assert verifier.verify(minted["token"])["jti"] == minted["jti"]
        revoke(a, "jti", alice_token["jti"])
        revoke(b, "subject", b.principals["bob"])
        wait_for(
            lambda: rejection(verifier, alice_token["token"]) == "revoked", 10, "A's feed lags"
        )
        wait_for(lambda: rejection(verifier, bob_token["token"]) == "revoked", 10, "B's lags")
        assert rejection(verifier, alice_other["token"]) is None

        # A's feed stops working (its key is revoked); B's goes on.
        a.admin.ok("DELETE", f"/api/admin/credentials/{credentials['items'][0]['id']}", status=204)
        bob_later = mint(world.bob, "run:globex")
        assert verifier.verify(bob_later["token"])["jti"] == bob_later["jti"]
        polls = traffic.answered[(FEED, 401)]
        wait_for(lambda: traffic.answered[(FEED, 401)] > polls + 1, 10, "A's feed not polled")
        revoke(b, "jti", bob_later["jti"])
        wait_for(lambda: rejection(verifier, bob_later["token"]) == "revoked", 10, "B stopped")


def test_an_org_scoped_feed_ignores_other_orgs_revocations(world: World) -> None:
    url = f"{world.plane.base_url}{FEED}"
    assert world.service_b.key is not None
    bob_token = mint(world.bob, "run:globex")
    alice_token = mint(world.alice)
    # Org B's admin revokes org A's token by its jti: recorded in B, meaningless for A.
    revoke(world.org_b, "jti", alice_token["jti"])
    with verifier_for(
        world, Traffic(), feeds=[FeedSource(url, world.service_b.key, world.org_b.org_id)]
    ) as verifier:
        assert verifier.verify(alice_token["token"])["jti"] == alice_token["jti"]
        revoke(world.org_b, "jti", bob_token["jti"])
        verifier.poll_revocations()
        assert rejection(verifier, bob_token["token"]) == "revoked"
