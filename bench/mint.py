"""Mint throughput and latency against a real uvicorn, on SQLite and on PostgreSQL.

For each backend: start `control serve` (one uvicorn worker) on a loopback port, set up an org
through the HTTP API (a member with an API key, a query set, 100 run streams, an allow rule and 9
rules that do not match the member), then

1. throughput at 16 concurrent keep-alive clients: GET /healthz and POST /api/sync/token in
   alternating phases, several rounds; mints/s, p50/p99, and mint/healthz ratios per round;
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
import os
import random
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen import (
    QUERY_SET,
    PhaseResult,
    World,
    database,
    get_request,
    make_world,
    median,
    run_phase,
    serving,
)
from sqlalchemy import Engine, delete, text, update

from control.kit.db import make_engine
from control.models import metadata

SMALL_STREAMS = 100
LARGE_STREAMS = 100_000
SMALL_RULES = 10
LARGE_RULES = 1_000
# Of the large case's extra rules, this many name the member's role and the run kind, so the
# engine must look at them on every mint, but they list other stream ids and so never match.
CANDIDATE_RULES = 10
BULK_STREAM_PREFIX = "run:b"

TARGET_THROUGHPUT_RATIO = 0.50
TARGET_P99_RATIO = 3.0
TARGET_SCALE_RATIO = 1.5


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


def bench_backend(backend: str, args: argparse.Namespace) -> BackendReport:
    seconds, rounds, concurrency = args.seconds, args.rounds, args.concurrency
    cap = args.max_requests
    with tempfile.TemporaryDirectory(prefix="control-bench-") as tmp:
        workdir = Path(tmp)
        with database(backend, workdir) as url, serving(url, workdir) as server:
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

            def phase(
                name: str, conc: int, secs: float, requests: list[bytes], limit: int = cap
            ) -> PhaseResult:
                is_health = requests[0] is healthz
                result = run_phase(
                    name,
                    world.port,
                    lambda seq: requests[seq % len(requests)],
                    concurrency=conc,
                    seconds=secs,
                    max_requests=limit,
                    server_pid=pid,
                    check=check_healthz if is_health else check_mint,
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

            # Warm up both paths (connections, statement caches, the compiled policy).
            phase("warm-up healthz", concurrency, 1.0, [healthz])
            phase("warm-up mint", concurrency, 1.0, small)

            # 1. Throughput at `concurrency` clients, alternating.
            health_runs, mint_runs = [], []
            for _ in range(rounds):
                health_runs.append(phase("healthz", concurrency, seconds, [healthz]))
                mint_runs.append(phase("mint", concurrency, seconds, small))
            rate_ratios = [m.rate / h.rate for h, m in zip(health_runs, mint_runs, strict=True)]
            p99_ratios = [
                m.percentile(99) / h.percentile(99)
                for h, m in zip(health_runs, mint_runs, strict=True)
            ]

            # 2. Latency at one client, with the data set switched small, large, small, large,
            # small, so that each large phase has a small one on either side.
            latency_seconds = max(1.0, seconds / 2)
            rng = random.Random(7)
            every = [*world.streams, *bulk_stream_ids(LARGE_STREAMS - SMALL_STREAMS)]
            large = [world.mint_request([rng.choice(every)]) for _ in range(5_000)]
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
            policy.engine.dispose()

    lines = [
        Row.of("GET /healthz", health_runs).render(backend),
        Row.of("POST /api/sync/token", mint_runs).render(backend),
        Row.of("GET /healthz (beside small)", small_h).render(backend),
        Row.of("mint, 100 streams, 10 rules", small_m).render(backend),
        Row.of("GET /healthz (beside large)", large_h).render(backend),
        Row.of("mint, 100,000 streams, 1,000 rules", large_m).render(backend),
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
    )


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
    args = parser.parse_args()

    cores = os.cpu_count()
    print(
        f"mint benchmark: one uvicorn worker on 127.0.0.1; {args.concurrency} keep-alive "
        f"clients; {args.rounds} alternating rounds of {args.seconds:g}s phases.\n"
        f"NOTE: the load generator (this process, {args.concurrency} threads on raw sockets) "
        f"shares this machine's {cores} cores with the server; 'cli CPU' is its cost per "
        "request.\n",
        flush=True,
    )
    reports: list[BackendReport] = []
    for backend in args.backends.split(","):
        try:
            reports.append(bench_backend(backend.strip(), args))
        except RuntimeError as exc:
            if backend.strip() == "postgresql" and "not reachable" in str(exc):
                print(f"SKIPPED postgresql: {exc}")
                continue
            raise

    print("\nFigures (median of the rounds; srv CPU = server process CPU per request)")
    print(HEADER)
    for report in reports:
        for line in report.lines:
            print(line)
    print("\nRatios and targets (one worker)")
    for r in reports:
        print(
            f"{r.backend:<10} mint/healthz throughput at c={args.concurrency}: "
            f"{r.throughput_ratio:6.1%}  (target >= {TARGET_THROUGHPUT_RATIO:.0%}: "
            f"{verdict(r.throughput_ratio >= TARGET_THROUGHPUT_RATIO)})"
        )
        print(
            f"{'':<10} mint p99 / healthz p99 at c={args.concurrency}: {r.p99_ratio:8.1f}x  "
            f"(target <= {TARGET_P99_RATIO:g}x: {verdict(r.p99_ratio <= TARGET_P99_RATIO)})"
        )
        print(
            f"{'':<10} mint p50 large/small (100,000 streams + 1,000 rules vs 100 + 10): "
            f"{r.scale_p50_ratio:.2f}x  (target <= {TARGET_SCALE_RATIO:g}x: "
            f"{verdict(r.scale_p50_ratio <= TARGET_SCALE_RATIO)}); p99 {r.scale_p99_ratio:.2f}x, "
            f"server CPU/mint {r.scale_cpu_ratio:.2f}x, p50 normalised by healthz "
            f"{r.scale_norm_ratio:.2f}x"
        )
        print(
            f"{'':<10} first mint after the bump to 1,000 rules (recompiles the policy): "
            f"{r.first_mint_ms:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
