"""Shared pieces of the benchmarks: a lean keep-alive HTTP/1.1 load generator, a real server
to point it at, and the policy fixture both benchmarks mint against.

The load generator writes requests on raw loopback sockets and parses only the status line and
`content-length`, so that the client, which shares the machine's cores with the server, spends
as little CPU per request as possible and the figures are the server's, not the client's.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.pg import postgres_available, scratch_database  # noqa: E402
from harness.server import Server, running_server  # noqa: E402

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
QUERY_SET = "run_events"

# A request factory: called with the request's sequence number, returns the raw bytes to send.
RequestFactory = Callable[[int], bytes]


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
        head = buffer[:end].lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError(f"no content-length in response: {head!r}")
        length = int(head[at + 17 : head.find(b"\r\n", at + 2)])
        body_end = end + 4 + length
        while len(buffer) < body_end:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
        self.buffer = buffer[body_end:]
        return status, buffer[end + 4 : body_end]

    def close(self) -> None:
        self.sock.close()


def get_request(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def post_request(path: str, port: int, body: Any, bearer: str) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


@dataclass
class PhaseResult:
    name: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    server_cpu: float  # CPU seconds the server process used during the phase
    client_cpu: float  # CPU seconds this (load generator) process used during the phase
    errors: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, max(0, round(p / 100 * len(self.latencies)) - 1))
        return self.latencies[index]

    @property
    def p50_ms(self) -> float:
        return self.percentile(50) * 1000

    @property
    def p99_ms(self) -> float:
        return self.percentile(99) * 1000

    @property
    def server_cpu_us(self) -> float:
        """Server CPU per request, in microseconds: the least noise-sensitive cost figure."""
        return self.server_cpu / max(1, self.requests) * 1e6

    @property
    def client_cpu_us(self) -> float:
        return self.client_cpu / max(1, self.requests) * 1e6


def run_phase(
    name: str,
    port: int,
    make_request: RequestFactory,
    *,
    concurrency: int,
    seconds: float,
    max_requests: int,
    server_pid: int,
    check: Callable[[bytes], None] | None = None,
    on_body: Callable[[bytes], None] | None = None,
) -> PhaseResult:
    """`concurrency` keep-alive clients send requests back to back for `seconds` (at most
    `max_requests` in all). Every response must be 200; `check` inspects the first body and
    `on_body` (called under a lock) sees every 200 body."""
    connections = [Connection(port) for _ in range(concurrency)]
    # Open every connection before the clock starts.
    for connection in connections:
        status, body = connection.exchange(get_request("/healthz", port))
        assert status == 200, body
    latencies: list[list[float]] = [[] for _ in connections]
    errors: dict[int, int] = {}
    first_body: list[bytes] = []
    counter = iter(range(max_requests))
    counter_lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)
    deadline = 0.0
    failures: list[BaseException] = []

    def client(index: int) -> None:
        connection = connections[index]
        mine = latencies[index]
        start_gate.wait()
        try:
            while time.perf_counter() < deadline:
                with counter_lock:
                    sequence = next(counter, None)
                if sequence is None:
                    return
                request = make_request(sequence)
                began = time.perf_counter()
                status, body = connection.exchange(request)
                mine.append(time.perf_counter() - began)
                if status != 200:
                    with counter_lock:
                        errors[status] = errors.get(status, 0) + 1
                        if errors[status] == 1:
                            print(f"  {name}: HTTP {status}: {body[:300]!r}", file=sys.stderr)
                else:
                    if not first_body:
                        first_body.append(body)
                    if on_body is not None:
                        with counter_lock:
                            on_body(body)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    server_before = process_cpu_seconds(server_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    start_gate.wait()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - started
    server_cpu = process_cpu_seconds(server_pid) - server_before
    client_cpu = time.process_time() - client_before
    for connection in connections:
        connection.close()
    if failures:
        raise RuntimeError(f"{name}: a client failed") from failures[0]
    if check is not None and first_body:
        check(first_body[0])
    flat = sorted(latency for per_client in latencies for latency in per_client)
    ok = len(flat) - sum(errors.values())
    return PhaseResult(name, concurrency, ok, elapsed, flat, server_cpu, client_cpu, errors)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the server and the policy it mints under -------------------------------------------------


@dataclass
class World:
    server: Server
    port: int
    http: httpx.Client
    org_id: str
    admin_id: str
    admin_key: str
    member_id: str
    member_key: str
    streams: list[str]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {self.admin_key}"}
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def mint_request(self, streams: list[str]) -> bytes:
        return post_request("/api/sync/token", self.port, {"streams": streams}, self.member_key)


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/control.db"
        return
    reason = postgres_available()
    if reason is not None:
        raise RuntimeError(reason)
    with scratch_database() as url:
        yield url


@contextmanager
def serving(database_url: str, workdir: Path, **settings: str) -> Iterator[Server]:
    # tests/server.py tunes these for tests (DEBUG logs, keys re-read every 0.5 s); serve with
    # the service's defaults instead.
    settings.setdefault("log_level", "WARNING")
    settings.setdefault("key_refresh_seconds", "2")
    with running_server(database_url, workdir, **settings) as server:
        yield server


def make_world(server: Server, streams: int, allow: bool = True) -> World:
    """Bootstrap an org; a member with a key; a query set; `streams` run streams; one rule
    allowing members every run stream of the org, all through the HTTP API."""
    boot = server.bootstrap("bench")
    port = int(server.base_url.rsplit(":", 1)[1])
    http = httpx.Client(base_url=server.base_url, timeout=30)
    world = World(
        server=server,
        port=port,
        http=http,
        org_id=boot["org_id"],
        admin_id=boot["principal_id"],
        admin_key=boot["api_key"],
        member_id="",
        member_key="",
        streams=[],
    )
    member = world.admin("POST", "/api/admin/principals", {"kind": "user", "name": "m"})
    world.member_id = member["id"]
    world.member_key = world.admin("POST", f"/api/admin/principals/{member['id']}/credentials", {})[
        "key"
    ]
    world.admin(
        "POST",
        "/api/admin/query-sets",
        {
            "name": QUERY_SET,
            "stream_kinds": ["run"],
            # Exactly the views the module's catalog opens for run_events@1.
            "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
        },
    )
    for index in range(1, streams + 1):
        stream_id = f"run:s{index}"
        world.admin("POST", "/api/streams", {"id": stream_id, "owner_id": world.member_id})
        world.streams.append(stream_id)
    if allow:
        world.admin(
            "POST",
            "/api/admin/grant-rules",
            {
                "effect": "allow",
                "subjects": {"roles": ["member"]},
                "streams": {"kind": "run", "relation": "org"},
                "query_sets": [QUERY_SET],
                "ops": ["subscribe"],
            },
        )
    return world
