"""How fast could any mint be on this stack? Two bounds, each measured beside /healthz.

1. The ceiling app (`bench/ceiling_app.py`: the service's middleware, request and response
   models and ES256 signing; no database, credential lookup, policy or audit), served with one
   uvicorn worker on a loopback port and driven like `bench/mint.py` drives the service: GET
   /healthz and two signing endpoints in alternating phases at 16 keep-alive clients.
2. The database floor: the statements a mint runs (the caller by key hash, `policy_rev`, the
   requested streams, the subject's revocation floor, the audit insert) and its commit, executed
   directly through SQLAlchemy against a database the service set up, with no HTTP and no
   framework; CPU per mint of this process, which is what the service's process would pay.

A real mint does all of (1) and all of (2), so each bounds the service's mint ratios from above.

    .venv/bin/python bench/ceiling.py [--seconds 3] [--rounds 3] [--concurrency 16]
                                      [--backends sqlite,postgresql] [--mints 2000]
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from loadgen import (
    PhaseResult,
    database,
    get_request,
    make_world,
    median,
    post_request,
    run_phase,
    serving,
)
from sqlalchemy.orm import sessionmaker

from control.audit.repository import INSERT_EVENT
from control.identity.repository import CALLER_BY_KEY_HASH
from control.identity.secrets import hash_api_key
from control.kit.db import make_engine
from control.policy.repository import POLICY_REV, STREAMS_BY_ID
from control.revocations.repository import SUBJECT_NOT_BEFORE
from harness.keys import PEPPER
from harness.pg import postgres_available
from harness.server import free_port

HERE = Path(__file__).resolve().parent
REQUEST = {"streams": ["run:01J9ZK3F6Y0000000000000000"], "query_sets": ["run_events@1"]}
PHASES = (
    ("GET /healthz", "/healthz"),
    ("sign, thread pool (as the service)", "/sign/thread"),
    ("sign, event loop (no hop)", "/sign/loop"),
)


def serve(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--app-dir", str(HERE),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the ceiling app did not start")


def database_floor(backend: str, mints: int) -> float:
    """Microseconds of this process's CPU per mint for a mint's statements and commit alone."""
    with tempfile.TemporaryDirectory(prefix="control-ceiling-") as tmp:
        workdir = Path(tmp)
        with database(backend, workdir) as url, serving(url, workdir) as server:
            world = make_world(server, 100)
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            engine = make_engine(url)
            sessions = sessionmaker(bind=engine, expire_on_commit=False)
            key_hash = hash_api_key(base64.urlsafe_b64decode(PEPPER), world.member_key)

            def one_mint(index: int) -> None:
                with sessions() as session:
                    caller = session.execute(CALLER_BY_KEY_HASH, {"key_hash": key_hash}).one()
                    params = {"org_id": caller.org_id}
                    session.execute(POLICY_REV, params).scalar()
                    stream = world.streams[index % len(world.streams)]
                    rows = session.execute(STREAMS_BY_ID, {**params, "ids": [stream]}).all()
                    assert rows, "the stream is registered"
                    session.execute(
                        SUBJECT_NOT_BEFORE,
                        {"subject": caller.principal_id, "org_id": caller.org_id},
                    )
                    session.execute(
                        INSERT_EVENT,
                        {
                            "at": datetime.now(UTC),
                            "actor": caller.principal_id,
                            "action": "token.mint",
                            "target": caller.principal_id,
                            "org_id": caller.org_id,
                            "detail": {"jti": secrets.token_urlsafe(16), "grants": [stream]},
                        },
                    )
                    session.commit()

            for index in range(200):  # warm the statement caches and the pool
                one_mint(index)
            began = time.process_time()
            for index in range(mints):
                one_mint(index)
            cpu = time.process_time() - began
            engine.dispose()
    return cpu / mints * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--mints", type=int, default=2000, help="mints for the database floor")
    args = parser.parse_args()

    port = free_port()
    process = serve(port)
    results: dict[str, list[PhaseResult]] = {name: [] for name, _ in PHASES}
    try:
        requests = {
            "/healthz": get_request("/healthz", port),
            "/sign/thread": post_request("/sign/thread", port, REQUEST, "unused"),
            "/sign/loop": post_request("/sign/loop", port, REQUEST, "unused"),
        }
        for round_number in range(args.rounds + 1):  # round 0 warms up
            for name, path in PHASES:
                result = run_phase(
                    name,
                    port,
                    lambda _seq, request=requests[path]: request,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    max_requests=10_000_000,
                    server_pid=process.pid,
                )
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors}")
                label = "warm-up " if round_number == 0 else ""
                print(
                    f"  {label}{name:<36} {result.rate:8.0f}/s  p50 {result.p50_ms:6.2f} ms  "
                    f"p99 {result.p99_ms:6.2f} ms  server {result.server_cpu_us:5.0f} us/req",
                    flush=True,
                )
                if round_number:
                    results[name].append(result)
    finally:
        process.terminate()
        process.wait(10)

    health = results[PHASES[0][0]]
    health_cpu = median([h.server_cpu_us for h in health])
    floors: dict[str, float] = {}
    for backend in (b.strip() for b in args.backends.split(",") if b.strip()):
        unreachable = postgres_available() if backend == "postgresql" else None
        if unreachable:
            print(f"  database floor on postgresql: SKIPPED, {unreachable}")
            continue
        floors[backend] = database_floor(backend, args.mints)

    print(
        f"\nCeiling of a mint on one uvicorn worker, {args.concurrency} clients, median of "
        f"{args.rounds} rounds ({os.cpu_count()} shared cores):"
    )
    for name, _ in PHASES[1:]:
        phase = results[name]
        throughput = median([s.rate / h.rate for s, h in zip(phase, health, strict=True)])
        p99 = median([s.p99_ms / h.p99_ms for s, h in zip(phase, health, strict=True)])
        cpu = median([s.server_cpu_us for s in phase])
        print(
            f"  {name:<36} throughput {throughput:6.1%} of healthz, p99 {p99:5.1f}x, "
            f"server {cpu:5.0f} us/req"
        )
    print(f"  GET /healthz: server {health_cpu:5.0f} us/req")
    for backend, floor in floors.items():
        # mint/healthz throughput <= healthz cost / (healthz cost + this floor), and the floor
        # leaves out the request itself, the policy decision and the signature.
        bound = health_cpu / (health_cpu + floor)
        print(
            f"  database floor, {backend:<10} {floor:5.0f} us of CPU per mint (statements and "
            f"commit alone): mint/healthz throughput can be at most {bound:5.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
