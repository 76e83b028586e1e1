"""How fast could any mint be on this stack? The mint/healthz ratios of `bench/ceiling_app.py`.

Serves the ceiling app (the service's middleware, request and response models and ES256
signing; no database, credential lookup, policy or audit) with one uvicorn worker on a loopback
port, and drives GET /healthz and the two signing endpoints in alternating phases at 16
keep-alive clients, as `bench/mint.py` drives the service. The ratios bound the service's mint
ratios from above: a real mint does all of this and more.

    .venv/bin/python bench/ceiling.py [--seconds 3] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from loadgen import PhaseResult, get_request, median, post_request, run_phase

from tests.server import free_port

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
