"""Where a mint's server time goes: one uvicorn worker under yappi (every thread, CPU clock),
driven by the load generator at 16 clients, then the functions that cost the most.

Sets up the bench's world through a real `control serve`, stops it, serves the same database
from this script's child process under the profiler, mints for `--seconds`, and prints the
child's top functions by total and by own time.

    .venv/bin/python bench/profile_mint.py [--backend sqlite] [--seconds 5] [--path mint|introspect]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from loadgen import database, make_world, post_request, run_phase, serving

from harness.server import free_port, server_env

HERE = Path(__file__).resolve().parent

CHILD = """
import os, signal, sys, yappi, uvicorn
from control.app import create_app
from control.settings import load_settings
yappi.set_clock_type("cpu")
app = create_app(load_settings())
def dump(*_):
    yappi.stop()
    stats = yappi.get_func_stats()
    for key, title in (("ttot", "total"), ("tsub", "own")):
        print(f"--- top by {title} time (CPU) ---", flush=True)
        stats.sort(key, "desc")
        for row in list(stats)[:45]:
            name = f"{row.module.rsplit('/site-packages/', 1)[-1]}:{row.lineno} {row.name}"
            print(f"{row.ncall:>9} {row.ttot:9.3f} {row.tsub:9.3f}  {name[-110:]}", flush=True)
    os._exit(0)
signal.signal(signal.SIGUSR1, dump)
yappi.start(builtins=False)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def asgi(url: str, raw: bytes, count: int) -> int:
    """Requests handed to the ASGI app in this process, one at a time, under cProfile (on
    SQLite the mint runs wholly on the event loop): the app's CPU per request, no sockets."""
    import asyncio
    import cProfile
    import pstats

    os.environ.update(server_env(url, 1, log_level="WARNING"))
    from control.app import create_app
    from control.settings import load_settings

    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")[1:]
    headers = [(n.lower(), v) for n, v in (line.split(b": ", 1) for line in lines)]
    app = create_app(load_settings(), background=False)

    async def call(target: Any, method: str, path: str, hdrs: list[Any], body: bytes) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": hdrs, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "scheme": "http", "root_path": "", "state": {},
        }  # fmt: skip
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await target(scope, receive, send)
        return status

    import ceiling_app
    from ceiling import REQUEST as CEILING_REQUEST

    json_headers = [(b"content-type", b"application/json")]
    ceiling_body = json.dumps(CEILING_REQUEST).encode()

    async def run() -> None:
        async with app.router.lifespan_context(app):
            cpu: dict[str, float] = {}
            for name, target, method, path, hdrs, body in (
                ("healthz", app, "GET", "/healthz", [], b""),
                ("mint", app, "POST", "/api/sync/token", headers, payload),
                ("ceiling healthz", ceiling_app.app, "GET", "/healthz", [], b""),
                ("ceiling sign", ceiling_app.app, "POST", "/sign/loop", json_headers, ceiling_body),
            ):
                for _ in range(300):
                    assert await call(target, method, path, hdrs, body) == 200
                began = time.process_time()
                for _ in range(count):
                    await call(target, method, path, hdrs, body)
                cpu[name] = (time.process_time() - began) / count * 1e6
                print(f"{name}: {cpu[name]:.0f} us CPU per request", flush=True)
            # The bench's mint/ceiling figure from CPU alone: (healthz/mint) / (healthz/sign).
            share = (cpu["healthz"] / cpu["mint"]) / (cpu["ceiling healthz"] / cpu["ceiling sign"])
            print(f"mint / ceiling, by CPU per request (no sockets): {share:.1%}", flush=True)
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(count):
                await call(app, "POST", "/api/sync/token", headers, payload)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
            if os.environ.get("PROFILE_CALLERS"):
                pstats.Stats(profile).print_callers(os.environ["PROFILE_CALLERS"])

    asyncio.run(run())
    return 0


def inline(url: str, key: str, streams: list[str], count: int) -> int:
    """`mint_by_key` alone, `count` times, under cProfile: the mint's own CPU, no HTTP."""
    import cProfile
    import pstats

    from control.state import AppState
    from control.tokens.fastpath import mint_by_key
    from control.tokens.schemas import TokenRequest

    os.environ.update(server_env(url, 1))
    from control.app import prepare
    from control.settings import load_settings

    state = AppState.build(load_settings())
    prepare(state)
    bodies = [TokenRequest(streams=[stream]) for stream in streams]

    def one(index: int) -> None:
        with state.engine.connect() as connection:
            mint_by_key(
                connection,
                pepper=state.credential_pepper,
                presented=key,
                body=bodies[index % len(bodies)],
                roles=frozenset({"member"}),
                admit=lambda caller: None,
                settings=state.settings,
                keys=state.keyring.snapshot,
                policies=state.policies,
            )

    for index in range(200):
        one(index)
    began = time.process_time()
    for index in range(count):
        one(index)
    print(f"mint_by_key: {(time.process_time() - began) / count * 1e6:.0f} us CPU each")
    profile = cProfile.Profile()
    profile.enable()
    for index in range(count):
        one(index)
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(35)
    state.engine.dispose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--path", default="mint", choices=["mint", "introspect"])
    parser.add_argument(
        "--asgi", type=int, default=0, help="instead: this many requests straight into the app"
    )
    parser.add_argument(
        "--inline", type=int, default=0, help="instead: this many mints in-process, cProfiled"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="control-profile-") as tmp:
        workdir = Path(tmp)
        with database(args.backend, workdir) as url:
            with serving(url, workdir) as server:
                world = make_world(server, 100)
                service = world.admin(
                    "POST", "/api/admin/principals", {"kind": "service", "name": "s"}
                )
                service_key = world.admin(
                    "POST", f"/api/admin/principals/{service['id']}/credentials", {}
                )["key"]
                token = httpx.post(
                    f"{server.base_url}/api/sync/token",
                    json={"streams": [world.streams[0]]},
                    headers={"Authorization": f"Bearer {world.member_key}"},
                ).json()["token"]
            if args.asgi:
                return asgi(url, world.mint_request([world.streams[0]]), args.asgi)
            if args.inline:
                return inline(url, world.member_key, world.streams, args.inline)
            port = free_port()
            env = server_env(url, port, log_level="WARNING", key_refresh_seconds="2")
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], env=env, cwd=workdir)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            world.port = port
            if args.path == "mint":
                requests = [world.mint_request([stream]) for stream in world.streams]
            else:
                body = {"token": token, "stream": world.streams[0], "query_set": "run_events"}
                requests = [post_request("/api/sync/introspect", port, body, service_key)]
            result = run_phase(
                args.path,
                port,
                lambda seq: requests[seq % len(requests)],
                concurrency=args.concurrency,
                seconds=args.seconds,
                max_requests=1_000_000,
                server_pid=child.pid,
            )
            print(
                f"{args.path}: {result.rate:.0f}/s p50 {result.p50_ms:.2f} ms "
                f"p99 {result.p99_ms:.2f} ms; errors {result.errors}; "
                f"{len(result.latencies)} requests",
                flush=True,
            )
            os.kill(child.pid, signal.SIGUSR1)
            child.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
