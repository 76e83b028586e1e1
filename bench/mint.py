"""Mint throughput and latency against a real uvicorn, on SQLite and on PostgreSQL.

For each backend: start `control serve` (one uvicorn worker) on a loopback port, set up an org
through the HTTP API (a member with an API key, a query set, 100 run streams, an allow rule and 9
rules that do not match the member), then

1. throughput at 16 concurrent keep-alive clients: GET /healthz and POST /api/sync/token in
   alternating phases, several rounds; mints/s, p50/p99, and mint/healthz ratios per round;
   in each round, the database-free signing ceiling (`bench/ceiling_app.py`, served beside
   the service) against its own /healthz, so the mint is compared with that round's yardstick;
2. latency at 1 client with 100 streams and 10 rules and with 100,000 streams and 1,000 rules,
   switching small, large, small, large, small: the extra rows are bulk-inserted into the
   database (then `policy_rev` bumped so the service recompiles) and deleted again, so every
   large phase has a small one on either side; each mint phase follows a /healthz phase.

Every figure that is compared is compared with one measured in the same run, next to it in time.
The load generator runs in this process and shares the machine's cores with the server.

    .venv/bin/python bench/mint.py [--backends sqlite,postgresql] [--seconds 3] [--rounds 3]
                                   [--scale-cycles 2] [--scale-rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from ceiling import REQUEST as CEILING_REQUEST
from ceiling import serve as ceiling_serve
from loadgen import (
    QUERY_SET,
    PhaseResult,
    World,
    database,
    get_request,
    make_world,
    median,
    post_request,
    run_phase,
    serving,
)
from sqlalchemy import Engine, delete, text, update

from control.kit.db import make_engine
from control.models import metadata
from harness.server import BIN, free_port, server_env

SMALL_STREAMS = 100
LARGE_STREAMS = 100_000
SMALL_RULES = 10
LARGE_RULES = 1_000
# Of the large case's extra rules, this many name the member's role and the run kind, so the
# engine must look at them on every mint, but they list other stream ids and so never match.
CANDIDATE_RULES = 10
BULK_STREAM_PREFIX = "run:b"

# The targets, per backend: mint/healthz throughput and mint p99 / healthz p99 at 16 clients.
TARGET_THROUGHPUT_RATIO = {"sqlite": 0.25, "postgresql": 0.15}
TARGET_P99_RATIO = {"sqlite": 4.0, "postgresql": 8.0}
TARGET_CEILING_RATIO = 0.75  # of the database-free signing ceiling (SQLite)
TARGET_SCALE_RATIO = 1.2
TARGET_INTROSPECT_RATIO = 0.30
TARGET_STATIC_RATIO = 0.80  # JWKS and discovery throughput against /healthz
TARGET_STATIC_P99 = 2.0
AUDIT_ROWS = 1_000_000


def bulk_stream_ids(count: int) -> list[str]:
    return [f"{BULK_STREAM_PREFIX}{index}" for index in range(count)]


def fake_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12).upper()}"


def other_rules(org_id: str, count: int, candidates: int, tag: str) -> list[dict[str, Any]]:
    """Rules that exist but do not grant the member anything: for other principals, roles and
    kinds, over run/worker/thread streams; `candidates` of them are for the member's role and
    kind `run` but only for stream ids nobody requests."""
    now = datetime.now(UTC)
    kinds = ["run", "worker", "thread"]
    rows = []
    for index in range(count):
        row: dict[str, Any] = {
            "id": f"rule_{tag}{index:05d}_{secrets.token_hex(4)}",
            "org_id": org_id,
            "effect": "deny" if index % 7 == 0 else "allow",
            "subject_principal_ids": [],
            "subject_roles": [],
            "subject_kinds": [],
            "stream_kind": kinds[index % 3],
            "stream_relation": ["org", "owner", "ids"][index % 3],
            "stream_ids": [],
            "query_sets": [QUERY_SET],
            "ops": ["subscribe"],
            "max_ttl_seconds": None,
            "description": "bench: does not match the member",
            "created_at": now,
            "updated_at": now,
        }
        if index < candidates:
            row.update(
                effect="allow",
                subject_roles=["member"],
                stream_kind="run",
                stream_relation="ids",
                stream_ids=[f"run:nomatch-{tag}{index}-{n}" for n in range(5)],
            )
        elif index % 10 < 6:
            row["subject_principal_ids"] = [fake_id("prn") for _ in range(1 + index % 3)]
        elif index % 10 < 9:
            row["subject_roles"] = [f"team_{index % 50}"]
        else:
            row["subject_kinds"] = ["service" if index % 2 else "device"]
        if row["stream_relation"] == "ids" and not row["stream_ids"]:
            row["stream_ids"] = [f"{row['stream_kind']}:x{index}-{n}" for n in range(3)]
        rows.append(row)
    return rows


@dataclass
class Policy:
    """Direct database access for the bulk rows (the API would take minutes for 100,000)."""

    engine: Engine
    org_id: str
    owners: list[str]
    is_postgres: bool

    @classmethod
    def open(cls, database_url: str, world: World) -> Policy:
        url = database_url
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return cls(
            make_engine(url),
            world.org_id,
            [world.member_id, world.admin_id],
            "postgresql" in url,
        )

    def _bump(self, connection: Any) -> None:
        orgs = metadata.tables["orgs"]
        connection.execute(
            update(orgs).where(orgs.c.id == self.org_id).values(policy_rev=orgs.c.policy_rev + 1)
        )

    def add_rules(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(metadata.tables["grant_rules"].insert(), rows)
            self._bump(connection)
        self.analyze()

    def add_streams(self, count: int) -> None:
        now = datetime.now(UTC)
        ids = bulk_stream_ids(count)
        streams = metadata.tables["streams"]
        with self.engine.begin() as connection:
            for start in range(0, count, 10_000):
                connection.execute(
                    streams.insert(),
                    [
                        {
                            "id": stream_id,
                            "kind": "run",
                            "org_id": self.org_id,
                            "owner_id": self.owners[index % len(self.owners)],
                            "labels": {},
                            "created_at": now,
                        }
                        for index, stream_id in enumerate(ids[start : start + 10_000], start)
                    ],
                )
            self._bump(connection)
        self.analyze()

    def remove_bulk(self, rule_tag: str) -> None:
        streams, rules = metadata.tables["streams"], metadata.tables["grant_rules"]
        with self.engine.begin() as connection:
            connection.execute(delete(streams).where(streams.c.id.like(f"{BULK_STREAM_PREFIX}%")))
            connection.execute(delete(rules).where(rules.c.id.like(f"rule_{rule_tag}%")))
            self._bump(connection)
        self.analyze(vacuum=True)

    def add_audit_rows(self, count: int) -> None:
        """`count` audit events of another actor, spread over the last 30 days."""
        events = metadata.tables["audit_events"]
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            for start in range(0, count, 20_000):
                connection.execute(
                    events.insert(),
                    [
                        {
                            "at": now - timedelta(seconds=index % (30 * 86400)),
                            "actor": "prn_BENCH",
                            "action": "token.mint",
                            "target": "prn_BENCH",
                            "org_id": self.org_id,
                            "detail": {"jti": f"bench-{index}"},
                        }
                        for index in range(start, min(count, start + 20_000))
                    ],
                )
        # The bulk load's pages flushed now, not by a checkpoint that competes with the
        # measured mints' commits (on SQLite, the first commits after it would checkpoint the
        # whole WAL): a table grown over months has no such backlog.
        if self.is_postgres:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE audit_events"))
                conn.execute(text("CHECKPOINT"))
        else:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def analyze(self, vacuum: bool = False) -> None:
        if not self.is_postgres:
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            verb = "VACUUM ANALYZE" if vacuum else "ANALYZE"
            connection.execute(text(f"{verb} streams"))
            connection.execute(text(f"{verb} grant_rules"))


def check_healthz(body: bytes) -> None:
    assert json.loads(body) == {"status": "ok"}, body


def check_mint(body: bytes) -> None:
    minted = json.loads(body)
    assert minted["token"].count(".") == 2 and minted["grants"], body
    assert minted["grants"][0]["query_sets"] == [f"{QUERY_SET}@1"], body


@dataclass
class Row:
    """One line of the table: the medians of the per-round figures of one phase."""

    label: str
    concurrency: int
    rate: float
    p50_ms: float
    p99_ms: float
    server_us: float
    client_us: float

    @classmethod
    def of(cls, label: str, results: list[PhaseResult]) -> Row:
        return cls(
            label,
            results[0].concurrency,
            median([r.rate for r in results]),
            median([r.p50_ms for r in results]),
            median([r.p99_ms for r in results]),
            median([r.server_cpu_us for r in results]),
            median([r.client_cpu_us for r in results]),
        )

    def render(self, backend: str) -> str:
        return (
            f"{backend:<10} {self.label:<34} {self.concurrency:>4} {self.rate:>9.0f} "
            f"{self.p50_ms:>8.2f} {self.p99_ms:>8.2f} {self.server_us:>9.0f} "
            f"{self.client_us:>8.0f}"
        )


HEADER = (
    f"{'backend':<10} {'phase':<34} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'srv CPU':>9} {'cli CPU':>8}\n{'':<10} {'':<34} {'':>4} {'':>9} {'':>8} {'':>8} "
    f"{'us/req':>9} {'us/req':>8}"
)


@dataclass
class BackendReport:
    backend: str
    lines: list[str]
    throughput_ratio: float
    p99_ratio: float
    scale_p50_ratio: float
    scale_p99_ratio: float
    scale_cpu_ratio: float
    scale_norm_ratio: float
    first_mint_ms: float
    reads: dict[str, tuple[float, float]]  # phase -> (throughput ratio, p99 ratio)
    audit_ratio: float  # mint p50 with AUDIT_ROWS more audit rows / without, healthz-normalised
    audit_raw_ratio: float  # the same, not normalised
    workers: tuple[float, float] | None  # mints/s with 1 and 2 workers
    # Median over the throughput rounds of (mint/healthz) / (ceiling sign/ceiling healthz), the
    # ceiling's phases run in the same round as the mint's; and the ceiling's own ratio.
    ceiling_share: float = float("nan")
    ceiling_own: float = float("nan")


def bench_backend(
    backend: str, args: argparse.Namespace, ceiling: Ceiling | None = None
) -> BackendReport:
    seconds, rounds, concurrency = args.seconds, args.rounds, args.concurrency
    cap = args.max_requests
    with tempfile.TemporaryDirectory(prefix="control-bench-") as tmp:
        workdir = Path(tmp)
        with database(backend, workdir) as url, serving(url, workdir, **args.setting) as server:
            pid = server.process.pid
            started = time.perf_counter()
            world = make_world(server, SMALL_STREAMS)
            policy = Policy.open(url, world)
            policy.add_rules(other_rules(world.org_id, SMALL_RULES - 1, 0, "s"))
            print(
                f"[{backend}] set up {SMALL_STREAMS} streams and {SMALL_RULES} rules "
                f"in {time.perf_counter() - started:.1f}s; server pid {pid}",
                flush=True,
            )
            healthz = get_request("/healthz", world.port)
            small = [world.mint_request([stream]) for stream in world.streams]
            service = world.admin("POST", "/api/admin/principals", {"kind": "service", "name": "s"})
            service_key = world.admin(
                "POST", f"/api/admin/principals/{service['id']}/credentials", {}
            )["key"]
            token = world.http.post(
                "/api/sync/token",
                json={"streams": [world.streams[0]]},
                headers={"Authorization": f"Bearer {world.member_key}"},
            ).json()["token"]
            reads = {
                "introspect": [
                    post_request(
                        "/api/sync/introspect",
                        world.port,
                        {"token": token, "stream": world.streams[0], "query_set": QUERY_SET},
                        service_key,
                    )
                ],
                "jwks": [get_request("/.well-known/jwks.json", world.port)],
                "discovery": [get_request("/.well-known/openid-configuration", world.port)],
            }

            def phase(
                name: str, conc: int, secs: float, requests: list[bytes], limit: int = cap
            ) -> PhaseResult:
                is_health = requests[0] is healthz
                is_mint = requests[0] in small or requests[0] in large_requests
                result = run_phase(
                    name,
                    world.port,
                    lambda seq: requests[seq % len(requests)],
                    concurrency=conc,
                    seconds=secs,
                    max_requests=limit,
                    server_pid=pid,
                    check=check_healthz if is_health else check_mint if is_mint else None,
                )
                if result.errors:
                    raise RuntimeError(f"{backend} {name}: non-200 responses {result.errors}")
                print(
                    f"  [{backend}] {name:<28} c={conc:<2} {result.rate:8.0f}/s "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"server {result.server_cpu_us:6.0f} us/req",
                    flush=True,
                )
                return result

            large_requests: list[bytes] = []
            # Warm up both paths (connections, statement caches, the compiled policy).
            phase("warm-up healthz", concurrency, 1.0, [healthz])
            phase("warm-up mint", concurrency, 1.0, small)
            for name, requests in reads.items():
                phase(f"warm-up {name}", concurrency, 0.5, requests)

            # 1. Throughput at `concurrency` clients, alternating: healthz, mint, and each read
            # path, every one next to a healthz phase of the same round.
            health_runs, mint_runs = [], []
            read_runs: dict[str, list[PhaseResult]] = {name: [] for name in reads}
            ceiling_shares, ceiling_owns = [], []
            for _ in range(rounds):
                health_runs.append(phase("healthz", concurrency, seconds, [healthz]))
                mint_runs.append(phase("mint", concurrency, seconds, small))
                if ceiling is not None:  # the yardstick, in the same round
                    own = ceiling.round(seconds)
                    ceiling_owns.append(own)
                    ceiling_shares.append(mint_runs[-1].rate / health_runs[-1].rate / own)
                for name, requests in reads.items():
                    read_runs[name].append(phase(name, concurrency, seconds, requests))
            rate_ratios = [m.rate / h.rate for h, m in zip(health_runs, mint_runs, strict=True)]
            shares = {
                "ceiling_share": median(ceiling_shares) if ceiling_shares else float("nan"),
                "ceiling_own": median(ceiling_owns) if ceiling_owns else float("nan"),
            }
            p99_ratios = [
                m.percentile(99) / h.percentile(99)
                for h, m in zip(health_runs, mint_runs, strict=True)
            ]

            if args.throughput_only:
                policy.engine.dispose()
                nan = float("nan")
                return BackendReport(
                    backend=backend,
                    lines=[
                        Row.of("GET /healthz", health_runs).render(backend),
                        Row.of("POST /api/sync/token", mint_runs).render(backend),
                    ],
                    throughput_ratio=median(rate_ratios),
                    p99_ratio=median(p99_ratios),
                    scale_p50_ratio=nan,
                    scale_p99_ratio=nan,
                    scale_cpu_ratio=nan,
                    scale_norm_ratio=nan,
                    first_mint_ms=nan,
                    reads=read_ratios(health_runs, read_runs),
                    audit_ratio=nan,
                    audit_raw_ratio=nan,
                    workers=None,
                    **shares,
                )

            # 2. Latency at one client, with the data set switched small, large, small, large,
            # small, so that each large phase has a small one on either side.
            latency_seconds = max(1.0, seconds / 2)
            rng = random.Random(7)
            every = [*world.streams, *bulk_stream_ids(LARGE_STREAMS - SMALL_STREAMS)]
            large = [world.mint_request([rng.choice(every)]) for _ in range(5_000)]
            large_requests.extend(large)
            small_h: list[PhaseResult] = []
            small_m: list[PhaseResult] = []
            large_h: list[PhaseResult] = []
            large_m: list[PhaseResult] = []
            first_mints: list[float] = []
            for step in range(2 * args.scale_cycles + 1):
                is_large = step % 2 == 1
                if is_large:
                    started = time.perf_counter()
                    policy.add_rules(
                        other_rules(world.org_id, LARGE_RULES - SMALL_RULES, CANDIDATE_RULES, "l")
                    )
                    policy.add_streams(LARGE_STREAMS - SMALL_STREAMS)
                    print(
                        f"[{backend}] inserted {LARGE_STREAMS - SMALL_STREAMS} streams and "
                        f"{LARGE_RULES - SMALL_RULES} rules "
                        f"in {time.perf_counter() - started:.1f}s",
                        flush=True,
                    )
                    # The first mint after the policy changed compiles 1,000 rules.
                    first = phase("first mint after the change", 1, 30.0, [small[0]], limit=1)
                    first_mints.append(first.latencies[0] * 1000)
                elif step > 0:
                    policy.remove_bulk("l")
                tag, requests = ("large", large) if is_large else ("small", small)
                phase(f"warm-up mint ({tag})", 1, 0.5, requests)
                for _ in range(args.scale_rounds):
                    (large_h if is_large else small_h).append(
                        phase(f"healthz ({tag})", 1, latency_seconds, [healthz])
                    )
                    (large_m if is_large else small_m).append(
                        phase(f"mint ({tag})", 1, latency_seconds, requests)
                    )

            # 3. A mint with AUDIT_ROWS more rows in the audit log, each mint phase beside a
            # healthz phase: before, then after a bulk insert.
            # Several rounds on each side, as for the data-set sizes: one short phase of each
            # is at the mercy of whatever else the shared machine does in those seconds.
            def audit_rounds(tag: str) -> tuple[float, float]:
                """Medians over rounds of mint p50 / neighbouring healthz p50, and of mint p50."""
                ratios, p50s = [], []
                for _ in range(args.audit_rounds):
                    h = phase(f"healthz (audit {tag})", 1, latency_seconds, [healthz])
                    m = phase(f"mint (audit {tag})", 1, latency_seconds, small)
                    ratios.append(m.percentile(50) / h.percentile(50))
                    p50s.append(m.percentile(50))
                return median(ratios), median(p50s)

            audit_before = audit_rounds("small")
            started = time.perf_counter()
            policy.add_audit_rows(AUDIT_ROWS)
            print(
                f"[{backend}] inserted {AUDIT_ROWS} audit rows in "
                f"{time.perf_counter() - started:.1f}s",
                flush=True,
            )
            phase("warm-up mint (audit large)", 1, 0.5, small)
            audit_after = audit_rounds("large")
            audit_ratio = audit_after[0] / audit_before[0]
            audit_raw_ratio = audit_after[1] / audit_before[1]
            policy.engine.dispose()

            # 4. One worker against two, on PostgreSQL (SQLite serves with one).
            workers = None
            if backend == "postgresql" and args.workers_phase:
                workers = compare_workers(url, workdir, world, small, concurrency, seconds, phase)

    lines = [
        Row.of("GET /healthz", health_runs).render(backend),
        Row.of("POST /api/sync/token", mint_runs).render(backend),
        Row.of("GET /healthz (beside small)", small_h).render(backend),
        Row.of("mint, 100 streams, 10 rules", small_m).render(backend),
        Row.of("GET /healthz (beside large)", large_h).render(backend),
        Row.of("mint, 100,000 streams, 1,000 rules", large_m).render(backend),
        *(
            Row.of(f"{name} (c={concurrency})", runs).render(backend)
            for name, runs in read_runs.items()
        ),
    ]
    small_p50 = median([r.percentile(50) for r in small_m])
    large_p50 = median([r.percentile(50) for r in large_m])
    small_p99 = median([r.percentile(99) for r in small_m])
    large_p99 = median([r.percentile(99) for r in large_m])
    small_cpu = median([r.server_cpu_us for r in small_m])
    large_cpu = median([r.server_cpu_us for r in large_m])
    # The same ratio with each mint p50 divided by its neighbouring healthz p50 first, which
    # cancels a machine that got slower or faster between the two halves.
    small_norm = median(
        [m.percentile(50) / h.percentile(50) for h, m in zip(small_h, small_m, strict=True)]
    )
    large_norm = median(
        [m.percentile(50) / h.percentile(50) for h, m in zip(large_h, large_m, strict=True)]
    )
    return BackendReport(
        backend=backend,
        lines=lines,
        throughput_ratio=median(rate_ratios),
        p99_ratio=median(p99_ratios),
        scale_p50_ratio=large_p50 / small_p50,
        scale_p99_ratio=large_p99 / small_p99,
        scale_cpu_ratio=large_cpu / small_cpu,
        scale_norm_ratio=large_norm / small_norm,
        first_mint_ms=median(first_mints),
        reads=read_ratios(health_runs, read_runs),
        audit_ratio=audit_ratio,
        audit_raw_ratio=audit_raw_ratio,
        workers=workers,
        **shares,
    )


def read_ratios(
    health_runs: list[PhaseResult], read_runs: dict[str, list[PhaseResult]]
) -> dict[str, tuple[float, float]]:
    """Per read path: its throughput and p99 against /healthz of the same round."""
    return {
        name: (
            median([r.rate / h.rate for h, r in zip(health_runs, runs, strict=True)]),
            median(
                [
                    r.percentile(99) / h.percentile(99)
                    for h, r in zip(health_runs, runs, strict=True)
                ]
            ),
        )
        for name, runs in read_runs.items()
    }


def compare_workers(
    url: str,
    workdir: Path,
    world: World,
    small: list[bytes],
    concurrency: int,
    seconds: float,
    phase: Any,
) -> tuple[float, float]:
    """Mints/s at `concurrency` clients from `control serve --workers 2` on the same database,
    beside the one-worker server's figure of the same moment (the one-worker server idles
    meanwhile); the two alternate twice."""
    port = free_port()
    env = server_env(url, port, log_level="WARNING", key_refresh_seconds="2")
    log = (workdir / "workers-2.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "control"), "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the two-worker server did not start")
            time.sleep(0.2)
        two = [request.replace(f":{world.port}".encode(), f":{port}".encode()) for request in small]
        one_rates, two_rates = [], []
        for _ in range(2):
            one_rates.append(phase("mint, 1 worker", concurrency, seconds, small).rate)
            result = run_phase(
                "mint, 2 workers",
                port,
                lambda seq: two[seq % len(two)],
                concurrency=concurrency,
                seconds=seconds,
                max_requests=1_000_000,
                server_pid=process.pid,
                check=check_mint,
            )
            if result.errors:
                raise RuntimeError(f"two workers: non-200 responses {result.errors}")
            print(
                f"  [postgresql] mint, 2 workers              c={concurrency:<2} "
                f"{result.rate:8.0f}/s p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms",
                flush=True,
            )
            two_rates.append(result.rate)
        return median(one_rates), median(two_rates)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


class Ceiling:
    """The database-free signing endpoint (`bench/ceiling_app.py`) on the event loop, served
    beside the service for the whole run, so that each backend's throughput round measures it
    too: the mint is compared with the yardstick of its own round, not one taken minutes
    before on a machine whose speed drifts."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.port = free_port()
        self.process = ceiling_serve(self.port)
        self.health_req = get_request("/healthz", self.port)
        self.sign_req = post_request("/sign/loop", self.port, CEILING_REQUEST, "unused")
        self.round(1.0)  # warm-up

    def round(self, seconds: float) -> float:
        """One healthz phase and one signing phase: sign/healthz throughput."""
        health, sign = (
            run_phase(
                "ceiling",
                self.port,
                lambda _seq, request=request: request,
                concurrency=self.concurrency,
                seconds=seconds,
                max_requests=10_000_000,
                server_pid=self.process.pid,
            )
            for request in (self.health_req, self.sign_req)
        )
        print(
            f"  [ceiling] healthz {health.rate:8.0f}/s, sign on the loop {sign.rate:8.0f}/s "
            f"p99 {sign.p99_ms:7.2f} ms",
            flush=True,
        )
        return sign.rate / health.rate

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per phase")
    parser.add_argument(
        "--scale-cycles", type=int, default=2, help="small->large switches (small brackets each)"
    )
    parser.add_argument("--scale-rounds", type=int, default=2, help="rounds per data-set state")
    parser.add_argument(
        "--audit-rounds",
        type=int,
        default=4,
        help="rounds on each side of the audit-log bulk insert (it cannot alternate)",
    )
    parser.add_argument(
        "--no-workers", dest="workers_phase", action="store_false", help="skip 1 vs 2 workers"
    )
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the throughput rounds at --concurrency clients (for quick comparisons)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting, e.g. audit_batch_wait_ms=1 (CONTROL_ prefix implied)",
    )
    args = parser.parse_args()
    args.setting = dict(item.split("=", 1) for item in args.setting)

    cores = os.cpu_count()
    print(
        f"mint benchmark: one uvicorn worker on 127.0.0.1; {args.concurrency} keep-alive "
        f"clients; {args.rounds} alternating rounds of {args.seconds:g}s phases.\n"
        f"NOTE: the load generator (this process, {args.concurrency} threads on raw sockets) "
        f"shares this machine's {cores} cores with the server; 'cli CPU' is its cost per "
        "request.\n",
        flush=True,
    )
    ceiling = Ceiling(args.concurrency) if args.ceiling else None
    reports: list[BackendReport] = []
    try:
        for backend in args.backends.split(","):
            try:
                reports.append(bench_backend(backend.strip(), args, ceiling))
            except RuntimeError as exc:
                if backend.strip() == "postgresql" and "not reachable" in str(exc):
                    print(f"SKIPPED postgresql: {exc}")
                    continue
                raise
    finally:
        if ceiling is not None:
            ceiling.close()

    print("\nFigures (median of the rounds; srv CPU = server process CPU per request)")
    print(HEADER)
    for report in reports:
        for line in report.lines:
            print(line)
    print("\nRatios and targets (one worker; each ratio against /healthz of the same round)")
    if ceiling is not None:
        print(
            f"{'ceiling':<10} database-free signing endpoint on the event loop, measured in each "
            "backend's throughput rounds (its own sign/healthz below)"
        )
    for r in reports:
        target, p99_target = TARGET_THROUGHPUT_RATIO[r.backend], TARGET_P99_RATIO[r.backend]
        print(
            f"{r.backend:<10} mint/healthz throughput at c={args.concurrency}: "
            f"{r.throughput_ratio:6.1%}  (target >= {target:.0%}: "
            f"{verdict(r.throughput_ratio >= target)})"
        )
        print(
            f"{'':<10} mint p99 / healthz p99 at c={args.concurrency}: {r.p99_ratio:8.1f}x  "
            f"(target <= {p99_target:g}x: {verdict(r.p99_ratio <= p99_target)})"
        )
        if ceiling is not None:
            share = r.ceiling_share
            note = (
                f"(target >= {TARGET_CEILING_RATIO:.0%}: {verdict(share >= TARGET_CEILING_RATIO)})"
                if r.backend == "sqlite"
                else "(no target)"
            )
            print(
                f"{'':<10} mint / database-free signing ceiling, same rounds: {share:6.1%}  "
                f"{note}; the ceiling's own sign/healthz {r.ceiling_own:6.1%}"
            )
        # Figures of phases this run skipped (`--throughput-only`) are not measured, not missed.
        if math.isnan(r.scale_norm_ratio) and math.isnan(r.audit_ratio):
            print(f"{'':<10} large tables, audit log, first mint after a policy bump: not measured")
        else:
            print(
                f"{'':<10} mint p50 large/small (100,000 streams + 1,000 rules vs 100 + 10): "
                f"{r.scale_p50_ratio:.2f}x, normalised by healthz {r.scale_norm_ratio:.2f}x  "
                f"(target <= {TARGET_SCALE_RATIO:g}x: "
                f"{verdict(r.scale_norm_ratio <= TARGET_SCALE_RATIO)});"
                f" p99 {r.scale_p99_ratio:.2f}x, server CPU/mint {r.scale_cpu_ratio:.2f}x"
            )
            print(
                f"{'':<10} mint p50 with {AUDIT_ROWS:,} more audit rows / without: "
                f"{r.audit_raw_ratio:.2f}x, normalised by healthz {r.audit_ratio:.2f}x  "
                f"(target <= {TARGET_SCALE_RATIO:g}x: "
                f"{verdict(r.audit_ratio <= TARGET_SCALE_RATIO)})"
            )
            print(
                f"{'':<10} first mint after the bump to 1,000 rules (recompiles the policy): "
                f"{r.first_mint_ms:.1f} ms"
            )
        for name, (rate, p99) in r.reads.items():
            if name == "introspect":
                goal = f"target >= {TARGET_INTROSPECT_RATIO:.0%}: "
                goal += verdict(rate >= TARGET_INTROSPECT_RATIO)
            else:
                ok = rate >= TARGET_STATIC_RATIO and p99 <= TARGET_STATIC_P99
                goal = f"target >= {TARGET_STATIC_RATIO:.0%} and p99 <= {TARGET_STATIC_P99:g}x: "
                goal += verdict(ok)
            print(f"{'':<10} {name}/healthz throughput {rate:6.1%}, p99 {p99:.1f}x  ({goal})")
        if r.workers is not None:
            one, two = r.workers
            print(
                f"{'':<10} mints/s, 1 worker vs 2 workers ({os.cpu_count()} cores, load "
                f"generator included): {one:.0f} vs {two:.0f} ({two / one:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
