"""What metrics cost the mint path: throughput and server CPU with metrics on and off.

Two `control serve` processes share one database and one org (a member, a query set, 100 run
streams, an allow rule): one with metrics on (the default), one with `CONTROL_METRICS_ENABLED
=false`. Phases of `--seconds` at `--concurrency` keep-alive clients minting one stream each
alternate between them, the order flipping every round so drift in the machine's load falls on
both alike. Only one server is under load at a time; the other idles.

Printed: per round, each arm's mints/s and server CPU per mint; then the medians, the
throughput ratio (on / off) and the cost (1 - ratio), against a target of under 5 %.

    .venv/bin/python bench/metrics_cost.py [--backends sqlite,postgresql] [--seconds 4]
                                           [--rounds 6] [--concurrency 16]
                                           [--log-format text|json --log-level INFO]

With `--log-level INFO` both arms also write one access line per request (in `--log-format`),
which shows what the request log costs on top; the default (WARNING) measures metrics alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from loadgen import PhaseResult, database, make_world, median, run_phase, serving

TARGET_COST = 0.05
STREAMS = 100


def check_mint(body: bytes) -> None:
    minted = json.loads(body)
    assert minted["token"].count(".") == 2 and minted["grants"], body


def bench_backend(backend: str, args: argparse.Namespace) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="control-metrics-cost-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        url = stack.enter_context(database(backend, workdir))
        logging = {"log_level": args.log_level, "log_format": args.log_format}
        servers = {
            "on": stack.enter_context(serving(url, workdir, **logging)),
            "off": stack.enter_context(serving(url, workdir, metrics_enabled="false", **logging)),
        }
        world = make_world(servers["on"], STREAMS)
        ports = {arm: int(server.base_url.rsplit(":", 1)[1]) for arm, server in servers.items()}
        # The same member's key, sent to each server's port.
        requests = {
            arm: [
                request.replace(f"127.0.0.1:{world.port}".encode(), f"127.0.0.1:{port}".encode())
                for request in (world.mint_request([stream]) for stream in world.streams)
            ]
            for arm, port in ports.items()
        }
        print(
            f"[{backend}] metrics on: pid {servers['on'].process.pid}, "
            f"off: pid {servers['off'].process.pid}",
            flush=True,
        )

        def phase(arm: str, seconds: float) -> PhaseResult:
            mints = requests[arm]
            result = run_phase(
                f"mint, metrics {arm}",
                ports[arm],
                lambda seq: mints[seq % len(mints)],
                concurrency=args.concurrency,
                seconds=seconds,
                max_requests=args.max_requests,
                server_pid=servers[arm].process.pid,
                check=check_mint,
            )
            if result.errors:
                raise RuntimeError(f"{backend} metrics {arm}: non-200 responses {result.errors}")
            return result

        for arm in ("on", "off"):  # connections, statement caches, the compiled policy
            phase(arm, 1.0)
        results: dict[str, list[PhaseResult]] = {"on": [], "off": []}
        for round_ in range(args.rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            line = []
            for arm in order:
                result = phase(arm, args.seconds)
                results[arm].append(result)
                line.append(
                    f"{arm:>3}: {result.rate:7.0f}/s {result.server_cpu_us:6.0f} us/mint "
                    f"p99 {result.p99_ms:6.2f} ms"
                )
            print(f"  [{backend}] round {round_ + 1}: " + " | ".join(line), flush=True)
        rate = {arm: median([r.rate for r in results[arm]]) for arm in results}
        # Per round, the two arms next to each other in time: the ratios least moved by drift.
        pairs = list(zip(results["on"], results["off"], strict=True))
        rate_ratio = median([on.rate / off.rate for on, off in pairs])
        cpu_ratio = median([on.server_cpu_us / off.server_cpu_us for on, off in pairs])
        return rate["on"], rate["off"], rate_ratio, cpu_ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    started = time.perf_counter()
    verdicts = []
    for backend in args.backends.split(","):
        on, off, ratio, cpu_ratio = bench_backend(backend, args)
        cost = 1 - ratio
        ok = cost < TARGET_COST
        verdicts.append(ok)
        print(
            f"{backend}: mints/s with metrics on {on:.0f}, off {off:.0f}; "
            f"throughput ratio on/off {ratio:.3f} (cost {cost * 100:+.1f} %, target < "
            f"{TARGET_COST * 100:.0f} %: {'met' if ok else 'NOT met'}); "
            f"server CPU per mint on/off {cpu_ratio:.3f}",
            flush=True,
        )
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
