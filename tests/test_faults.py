"""Faults under load: a replica killed with SIGKILL mid-rotation and mid-mint, then restarted,
and the database itself restarting while the service serves.

- After each kill: exactly one active key and one pending key, every key row whole and in a
  consistent state, one `keys.rotate` event per committed rotation, and exactly one
  `token.mint` event for every token a client received (events for tokens nobody received are
  bounded by the requests the kill cut off). The surviving replica never noticed.
- The database restarting (a private PostgreSQL cluster, so the shared one is left alone): every
  answer during the outage is 503 `unavailable` problem+json, never a 500, and minting works
  again afterwards without restarting the service.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.runtime import GrantVerifier
from tests.fleet import (
    TIMEOUT,
    Outcome,
    World,
    active_kid,
    audit_events,
    bearer,
    check_key_rows,
    key_rows,
    make_world,
    mint,
    mint_jtis,
    mint_until,
    postgres_database,
    published_kids,
    replica,
)
from tests.pg import without_postgres
from tests.server import Server, free_port, running_server

pytestmark = pytest.mark.e2e

KILL_ROUNDS = 3
VICTIM_MINTERS = 3


# --- SIGKILL mid-rotation and mid-mint -----------------------------------------------------


@dataclass
class Survivor:
    database_url: str
    workdir: Path
    server: Server
    world: World
    settings: dict[str, str]


@pytest.fixture(scope="module")
def survivor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Survivor]:
    """A replica that stays up on the database while its sibling is killed and restarted."""
    workdir = tmp_path_factory.mktemp("faults")
    with postgres_database() as url:
        port = free_port()
        # Rotation may promote a pending key at once: rotations can run back to back.
        settings = {"issuer": f"http://127.0.0.1:{port}", "key_publish_lead_seconds": "0"}
        with running_server(url, workdir, port=port, **settings) as server:
            yield Survivor(url, workdir, server, make_world(server), settings)


@dataclass
class Rotations:
    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # any answer but 200
    transport_errors: int = 0


def rotate_until(base_url: str, admin_key: str, stop: threading.Event, out: Rotations) -> None:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        while not stop.is_set():
            try:
                response = http.post("/api/admin/keys/rotate", headers=bearer(admin_key))
            except httpx.TransportError:
                out.transport_errors += 1
                return
            if response.status_code != 200:
                out.refused.append(f"{response.status_code} {response.text}")
                return
            out.acknowledged.append(response.json())


@dataclass
class KillLedger:
    """What the clients saw across all kills."""

    received: list[dict[str, Any]] = field(default_factory=list)
    acknowledged_rotations: list[dict[str, Any]] = field(default_factory=list)
    committed_rotations: set[str] = field(default_factory=set)
    cut_off_requests: int = 0
    kills: int = 0
    survivor_statuses: Counter[int] = field(default_factory=Counter)


def load_and_kill(survivor: Survivor, victim: Server, ledger: KillLedger, delay: float) -> None:
    """Mint on both replicas and rotate on the victim as fast as it goes; SIGKILL the victim
    `delay` seconds after the load is under way."""
    world = survivor.world
    stop = threading.Event()
    on_victim = [Outcome() for _ in range(VICTIM_MINTERS)]
    on_survivor = Outcome()
    rotations = Rotations()
    threads = [
        threading.Thread(
            target=mint_until, args=(victim.base_url, world.alice_key, stop, o), daemon=True
        )
        for o in on_victim
    ]
    threads.append(
        threading.Thread(
            target=mint_until,
            args=(survivor.server.base_url, world.alice_key, stop, on_survivor, 0.02),
            daemon=True,
        )
    )
    threads.append(
        threading.Thread(
            target=rotate_until,
            args=(victim.base_url, world.admin_key, stop, rotations),
            daemon=True,
        )
    )
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while not rotations.acknowledged or not all(o.tokens for o in on_victim):
            assert time.monotonic() < deadline, f"no load reached the victim:\n{victim.log()}"
            time.sleep(0.02)
        time.sleep(delay)
        victim.process.kill()
        victim.process.wait(timeout=30)
        ledger.kills += 1
        time.sleep(0.5)  # the survivor keeps minting through its sibling's death
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    # The victim's clients lost their connections; the survivor's never noticed.
    assert any(o.transport_errors for o in on_victim), "no victim client saw the kill"
    assert not rotations.refused, rotations.refused
    assert rotations.transport_errors <= 1
    for outcome in on_victim:
        assert set(outcome.statuses) == {200}, outcome.problems
    assert set(on_survivor.statuses) == {200}, on_survivor.problems
    assert not on_survivor.transport_errors
    ledger.survivor_statuses += on_survivor.statuses
    ledger.received += [token for o in [*on_victim, on_survivor] for token in o.tokens]
    ledger.acknowledged_rotations += rotations.acknowledged
    ledger.cut_off_requests += sum(len(o.transport_errors) for o in on_victim)
    ledger.cut_off_requests += rotations.transport_errors


def check_after_restart(survivor: Survivor, restarted: Server, ledger: KillLedger) -> None:
    """The restarted replica started on whatever the kill left, and found it consistent."""
    world = survivor.world
    states = check_key_rows(survivor.database_url)  # one active, one pending, all rows whole
    events = audit_events(restarted.base_url, world.admin_key)
    rotated = [e["target"] for e in events if e["action"] == "keys.rotate"]
    # A rotation and its audit event commit together: one retiring key per event.
    assert states["retiring"] == len(rotated), (states, len(rotated))
    assert sum(states.values()) == 2 + len(rotated)
    ledger.committed_rotations = set(rotated)
    acknowledged = {r["active"] for r in ledger.acknowledged_rotations}
    assert acknowledged <= ledger.committed_rotations
    # At most the one rotation in flight per kill committed without its answer arriving.
    assert len(ledger.committed_rotations - acknowledged) <= ledger.kills
    # Every replica signs with the one active key and publishes every key that ever signed.
    [active] = [r["kid"] for r in key_rows(survivor.database_url) if r["state"] == "active"]
    assert active_kid(restarted) == active
    deadline = time.monotonic() + 20
    while active_kid(survivor.server) != active:
        assert time.monotonic() < deadline, "the survivor never loaded the active key"
        time.sleep(0.1)
    for server in (restarted, survivor.server):
        assert {t["kid"] for t in ledger.received} <= published_kids(server.base_url)
    with httpx.Client(base_url=restarted.base_url, timeout=TIMEOUT) as http:
        response = mint(http, world.alice_key)
        assert response.status_code == 200, response.text
        assert response.json()["kid"] == active
        ledger.received.append(response.json())


def test_sigkill_mid_rotation_and_mid_mint(survivor: Survivor) -> None:
    world = survivor.world
    rng = random.Random()
    ledger = KillLedger()
    # Each start after the first is the restart of the replica killed before it.
    for round_ in range(KILL_ROUNDS + 1):
        with replica(survivor.database_url, survivor.workdir, **survivor.settings) as victim:
            if round_ > 0:
                check_after_restart(survivor, victim, ledger)
            if round_ < KILL_ROUNDS:
                load_and_kill(survivor, victim, ledger, rng.uniform(0.1, 1.0))
            else:
                assert "Traceback" not in victim.log()
    assert "Traceback" not in survivor.server.log()

    # The audit log: exactly one event per token received; the extra events are requests
    # whose response the kill cut off (the mint committed, the client never heard back).
    events_by_jti = mint_jtis(survivor.server.base_url, world.admin_key)
    jtis = Counter(token["jti"] for token in ledger.received)
    assert max(jtis.values()) == 1
    missing = [jti for jti in jtis if events_by_jti[jti] != 1]
    assert not missing, f"{len(missing)} tokens without exactly one token.mint event"
    assert max(events_by_jti.values()) == 1
    unreceived = sum(events_by_jti.values()) - len(jtis)
    assert 0 <= unreceived <= ledger.cut_off_requests

    # Every token handed out before, between and after the kills still verifies.
    with GrantVerifier(
        issuer=survivor.settings["issuer"],
        audience="spacetimedb",
        jwks_url=f"{survivor.server.base_url}/.well-known/jwks.json",
    ) as verifier:
        for token in ledger.received:
            assert verifier.verify(token["token"])["jti"] == token["jti"]
    print(
        f"\nSIGKILL x{ledger.kills}: {len(ledger.received)} tokens received and verified, "
        f"{sum(events_by_jti.values())} token.mint events ({unreceived} for mints whose "
        f"answer the kills cut off; {ledger.cut_off_requests} requests got no answer), "
        f"{len(ledger.acknowledged_rotations)} rotations acknowledged, "
        f"{len(ledger.committed_rotations)} committed; "
        f"survivor statuses {dict(ledger.survivor_statuses)}; 5xx: 0"
    )


# --- the database restarting under load ---------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a loopback port, owned by this test: stopping and
    starting it disturbs nobody else. Runs as the `postgres` OS user when the tests run as root
    (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="control-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.as_user, *args], capture_output=True, check=False, timeout=120
        )
        assert result.returncode == 0, (args, result.stdout.decode(), result.stderr.decode())

    def initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c max_connections=60"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
            "stop",
        )  # fmt: skip

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                 "-m", "immediate", "-w", "stop"],
                capture_output=True, check=False, timeout=120,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _postgres_bin()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        without_postgres(
            "the database-restart test",
            "no PostgreSQL server binaries (initdb, pg_ctl) or no runuser on this machine",
        )
    cluster = PrivatePostgres(bindir)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@dataclass
class Answer:
    at: float
    status: int | None  # None: no HTTP answer (a connection error)
    content_type: str = ""
    code: str = ""
    retry_after: str | None = None
    jti: str | None = None


def _load(base_url: str, key: str, path: str, stop: threading.Event, out: list[Answer]) -> None:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as http:
        while not stop.is_set():
            try:
                response = http.get(path) if path == "/readyz" else mint(http, key)
            except httpx.TransportError as exc:
                out.append(Answer(time.monotonic(), None, code=type(exc).__name__))
                time.sleep(0.05)
                continue
            body = response.json() if "json" in response.headers.get("content-type", "") else {}
            out.append(
                Answer(
                    time.monotonic(),
                    response.status_code,
                    response.headers.get("content-type", ""),
                    str(body.get("code", "")),
                    response.headers.get("retry-after"),
                    body.get("jti") if response.status_code == 200 else None,
                )
            )
            time.sleep(0.01)


def test_database_restart_under_load_gives_503_then_recovers(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    cluster = private_postgres
    with running_server(cluster.url, tmp_path) as server:
        world = make_world(server)
        pid = server.process.pid
        stop = threading.Event()
        answers: list[list[Answer]] = [[] for _ in range(4)]
        threads = [
            threading.Thread(
                target=_load,
                args=(server.base_url, world.alice_key, path, stop, out),
                daemon=True,
            )
            for path, out in zip(["/api/sync/token"] * 3 + ["/readyz"], answers, strict=True)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            down_at = time.monotonic()
            cluster.stop()
            time.sleep(1.5)
            cluster.start()
            up_at = time.monotonic()
            # Recovery without restarting the service: mints succeed again within a bound.
            deadline = up_at + 30
            while not any(a.status == 200 and a.at > up_at for out in answers[:3] for a in out):
                assert time.monotonic() < deadline, f"no recovery:\n{server.log()[-5000:]}"
                time.sleep(0.1)
            recovered_at = min(
                a.at for out in answers[:3] for a in out if a.status == 200 and a.at > up_at
            )
            time.sleep(1.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert server.process.poll() is None and server.process.pid == pid

        everything = [a for out in answers for a in out]
        statuses = Counter(a.status for a in everything)
        # Never a 500: every failure is a 503 problem+json `unavailable` with Retry-After (or,
        # at worst, a clean connection error, counted under None).
        assert set(statuses) <= {200, 503, None}, statuses
        for answer in everything:
            if answer.status == 503:
                assert answer.content_type.startswith("application/problem+json"), answer
                assert answer.code == "unavailable" and answer.retry_after, answer
        assert statuses[503] > 0, f"the outage was never observed: {statuses}"
        readiness = [a for a in answers[3] if down_at <= a.at <= up_at]
        assert any(a.status == 503 for a in readiness), "readyz stayed ready during the outage"
        # After recovery, everything succeeds again.
        settled = [a for out in answers for a in out if a.at > recovered_at + 0.5]
        assert settled and all(a.status == 200 for a in settled), Counter(a.status for a in settled)
        assert " -> 500" not in server.log()

        # No token was handed out without its audit event.
        received = [a.jti for out in answers[:3] for a in out if a.jti is not None]
        events = mint_jtis(server.base_url, world.admin_key)
        assert all(events[jti] == 1 for jti in received)
        assert 0 <= sum(events.values()) - len(received) <= statuses[503]
        during = Counter(a.status for a in everything if down_at <= a.at < recovered_at)
        print(
            f"\ndatabase restart: statuses {dict(statuses)}, during the outage {dict(during)}; "
            f"5xx other than 503: 0; minting again {recovered_at - up_at:.2f} s after the "
            f"database came back, without restarting the service; {len(received)} tokens "
            f"received, {sum(events.values())} token.mint events"
        )
