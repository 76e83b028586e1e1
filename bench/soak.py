"""Soak: sustained minting with concurrent admin changes, against a real server on PostgreSQL.

Starts `control serve` (one uvicorn process, loopback only) on a scratch PostgreSQL database,
sets up an org through the HTTP API, then for `--seconds`:

- `--clients` threads mint continuously (keep-alive clients; several members, 1-3 streams each);
- one admin thread makes a change every `--admin-interval` seconds, cycling through grant-rule
  edits (each bumps `policy_rev`), query-set edits (each bumps the version), new streams, new
  principals with credentials (and deleting older ones), jti and subject revocations, deny rules
  created and deleted, and explain calls; and rotates the signing keys every `--rotate-every`
  seconds (the publish lead is shortened so that is allowed);
- the server's resident memory (VmRSS in /proc/<pid>/status) is sampled every 2 s.

Query-set edits need a catalog that serves every version they reach: the server runs with
`CONTROL_QUERY_SET_CATALOG` naming the soak's own, the shipped catalog with `run_checkpoints`
served at as many versions as the run can make.

Then it verifies every token received against the server's JWKS, reads the whole audit log, and
reports throughput, mint latency (p50 / p99 / max), status counts per kind of request, 5xx and
connection errors, RSS growth, and `token.mint` audit events against tokens received. Exits 1
when a 5xx or a connection error was seen, a token did not verify, or the audit log does not
hold exactly one `token.mint` event per token received.

    .venv/bin/python bench/soak.py [--seconds 180] [--clients 4] [--max-mints 200000]
                                   [--admin-interval 0.5] [--rotate-every 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control.runtime import GrantVerifier, TokenRejected  # noqa: E402
from control.spacetime.catalog import CATALOG_PATH  # noqa: E402
from harness.api import Api, OrgFixture  # noqa: E402
from harness.pg import postgres_available, scratch_database  # noqa: E402
from harness.server import Server, running_server  # noqa: E402

MAX_SECONDS = 900  # tokens live 300 s and retiring keys stay published 930 s: all verifiable
MAX_CLIENTS = 16
MEMBERS = 4
STREAMS = 24
WINDOW = 30.0
# Two definitions of run_checkpoints an edit picks from: the same view, so the catalog serves both.
CHECKPOINT_QUERIES = [
    "SELECT * FROM run_checkpoint_view",
    "SELECT * FROM run_checkpoint_view WHERE seq >= 1",
]
# The admin thread's actions, taken in turn (`admin`): one in this many steps edits a query set.
ADMIN_ACTIONS = 7
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Tally:
    """Everything the load threads saw; lists and Counters updated under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    # (finished at, latency) of every successful mint
    latencies: list[tuple[float, float]] = field(default_factory=list)
    tokens: list[tuple[str, str, str]] = field(default_factory=list)  # (jti, kid, token)
    recent_jtis: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    rotations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def status(self, kind: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[(kind, response.status_code)] += 1
            if response.status_code >= 500 and len(self.problems) < 20:
                self.problems.append(f"{kind} {response.status_code} {response.text[:300]}")


@dataclass
class World:
    server: Server
    org: OrgFixture
    members: list[Api]
    member_ids: list[str]
    streams: list[str]
    extra_rule: str
    http: httpx.Client


def setup(server: Server) -> World:
    http = httpx.Client(base_url=server.base_url, timeout=TIMEOUT)
    boot = server.bootstrap("soak")
    org = OrgFixture(boot["org_id"], boot["principal_id"], Api(http, boot["api_key"]), http)
    members = [org.principal(f"member-{i}") for i in range(MEMBERS)]
    org.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
    org.query_set("run_checkpoints", ["run"], ["SELECT * FROM run_checkpoint_view"])
    streams = [f"run:soak-{i}" for i in range(STREAMS)]
    for stream in streams:
        org.stream(stream)
    org.allow(relation="org", query_sets=["run_events"], ops=["subscribe"])
    extra = org.allow(
        relation="ids", ids=streams[:4], query_sets=["run_checkpoints"], ops=["checkpoint"]
    )
    return World(
        server=server,
        org=org,
        members=members,
        member_ids=[org.principals[f"member-{i}"] for i in range(MEMBERS)],
        streams=streams,
        extra_rule=extra["id"],
        http=http,
    )


def minter(
    world: World, index: int, stop: threading.Event, tally: Tally, max_mints: int, seed: int
) -> None:
    rng = random.Random(seed)
    key = world.members[index % len(world.members)].key
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=world.server.base_url, timeout=TIMEOUT) as http:
        while not stop.is_set():
            body = {"streams": rng.sample(world.streams, rng.randint(1, 3))}
            started = time.perf_counter()
            try:
                response = http.post("/api/sync/token", json=body, headers=headers)
            except httpx.TransportError as exc:
                with tally.lock:
                    tally.transport_errors[f"mint {type(exc).__name__}"] += 1
                time.sleep(0.1)
                continue
            finished = time.perf_counter()
            tally.status("mint", response)
            if response.status_code == 200:
                minted = response.json()
                with tally.lock:
                    tally.latencies.append((finished, finished - started))
                    tally.tokens.append((minted["jti"], minted["kid"], minted["token"]))
                    tally.recent_jtis.append(minted["jti"])
                    if len(tally.tokens) >= max_mints:
                        stop.set()


def admin(
    world: World, stop: threading.Event, tally: Tally, interval: float, rotate_every: float
) -> None:
    """One admin making changes while the members mint."""
    rng = random.Random(7)
    org = world.org
    api = Api(httpx.Client(base_url=world.server.base_url, timeout=TIMEOUT), org.admin.key)
    created: deque[str] = deque()
    step = 0
    next_rotation = time.monotonic() + rotate_every

    def call(kind: str, method: str, path: str, body: Any = None) -> httpx.Response | None:
        try:
            response = api.request(method, path, body)
        except httpx.TransportError as exc:
            with tally.lock:
                tally.transport_errors[f"{kind} {type(exc).__name__}"] += 1
            return None
        tally.status(kind, response)
        return response

    def rule_edit() -> None:
        ops = ["checkpoint"] if step % 2 else ["checkpoint", "append"]
        ids = rng.sample(world.streams, 4)
        call(
            "rule.put",
            "PUT",
            f"/api/admin/grant-rules/{world.extra_rule}",
            {
                "effect": "allow",
                "subjects": {"roles": ["member"]},
                "streams": {"kind": "run", "relation": "ids", "ids": ids},
                "query_sets": ["run_checkpoints"],
                "ops": ops,
            },
        )

    def query_set_edit() -> None:
        call(
            "query_set.put",
            "PUT",
            "/api/admin/query-sets/run_checkpoints",
            {"stream_kinds": ["run"], "queries": [rng.choice(CHECKPOINT_QUERIES)]},
        )

    def stream_create() -> None:
        call("stream.create", "POST", "/api/streams", {"id": f"run:late-{step}"})

    def principal_churn() -> None:
        response = call(
            "principal.create",
            "POST",
            "/api/admin/principals",
            {"kind": "user", "name": f"p{step}"},
        )
        if response is not None and response.status_code == 201:
            principal = response.json()["id"]
            created.append(principal)
            call("credential.create", "POST", f"/api/admin/principals/{principal}/credentials", {})
        if len(created) > 8:
            call("principal.delete", "DELETE", f"/api/admin/principals/{created.popleft()}")

    def revoke() -> None:
        with tally.lock:
            jti = rng.choice(tally.recent_jtis) if tally.recent_jtis else None
        if jti is not None:
            call("revoke.jti", "POST", "/api/admin/revocations", {"kind": "jti", "value": jti})
        if created:
            call(
                "revoke.subject",
                "POST",
                "/api/admin/revocations",
                {"kind": "subject", "value": rng.choice(created)},
            )

    def deny_rule() -> None:
        if not created:
            return
        response = call(
            "rule.create",
            "POST",
            "/api/admin/grant-rules",
            {
                "effect": "deny",
                "subjects": {"principal_ids": [created[-1]]},
                "streams": {"kind": "run", "relation": "org"},
                "query_sets": ["run_events"],
                "ops": ["subscribe"],
            },
        )
        if response is not None and response.status_code == 201:
            call("rule.delete", "DELETE", f"/api/admin/grant-rules/{response.json()['id']}")

    def explain() -> None:
        call(
            "explain",
            "POST",
            "/api/admin/explain",
            {"principal_id": rng.choice(world.member_ids), "streams": rng.sample(world.streams, 3)},
        )

    actions = [
        rule_edit,
        query_set_edit,
        stream_create,
        principal_churn,
        revoke,
        deny_rule,
        explain,
    ]
    assert len(actions) == ADMIN_ACTIONS  # the soak's catalog serves versions by this count
    while not stop.wait(interval):
        if time.monotonic() >= next_rotation:
            response = call("keys.rotate", "POST", "/api/admin/keys/rotate")
            if response is not None and response.status_code == 200:
                with tally.lock:
                    tally.rotations.append(response.json()["active"])
                next_rotation = time.monotonic() + rotate_every
            else:
                next_rotation = time.monotonic() + 1  # 409: the pending key is too fresh
            continue
        actions[step % len(actions)]()
        step += 1
    api.client.close()


def audit_counts(world: World) -> tuple[Counter[str], Counter[str]]:
    """(events by action, token.mint events by jti), over the whole audit log."""
    actions: Counter[str] = Counter()
    jtis: Counter[str] = Counter()
    params: dict[str, Any] = {"limit": 500}
    while True:
        response = world.org.admin.get("/api/admin/audit", params=params)
        response.raise_for_status()
        page = response.json()
        for item in page["items"]:
            actions[item["action"]] += 1
            if item["action"] == "token.mint":
                jtis[item["detail"]["jti"]] += 1
        if not page["next_cursor"]:
            return actions, jtis
        params["cursor"] = page["next_cursor"]


def soak_catalog(args: argparse.Namespace, workdir: Path) -> Path:
    """The module catalog the soak's server enforces: the shipped one, with run_checkpoints
    served at every version the admin thread's edits can reach in `args.seconds`."""
    catalog = json.loads(CATALOG_PATH.read_text())
    catalog["catalog"] = "control-soak-module"
    edits = int(args.seconds / args.admin_interval) // ADMIN_ACTIONS + 1
    for version in range(2, edits + 2):
        catalog["query_sets"][f"run_checkpoints@{version}"] = {
            "views": ["run_checkpoint_view"],
            "stream_kinds": ["run"],
        }
    path = workdir / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    with running_server(
        database_url,
        workdir,
        key_publish_lead_seconds=str(max(1, int(args.rotate_every // 2))),
        log_level="INFO",
        query_set_catalog=str(soak_catalog(args, workdir)),
    ) as server:
        world = setup(server)
        pid = server.process.pid
        tally = Tally()
        stop = threading.Event()
        rss: list[tuple[float, int]] = []
        start = time.perf_counter()

        def sample() -> None:
            while not stop.wait(2.0):
                value = rss_kib(pid)
                if value is not None:
                    rss.append((time.perf_counter() - start, value))

        rss_setup = rss_kib(pid) or 0
        threads = [
            threading.Thread(
                target=minter, args=(world, i, stop, tally, args.max_mints, i), daemon=True
            )
            for i in range(args.clients)
        ]
        threads.append(
            threading.Thread(
                target=admin,
                args=(world, stop, tally, args.admin_interval, args.rotate_every),
                daemon=True,
            )
        )
        threads.append(threading.Thread(target=sample, daemon=True))
        for thread in threads:
            thread.start()
        print(
            f"soak: {args.seconds:.0f} s, {args.clients} minting clients, admin change every "
            f"{args.admin_interval} s, key rotation every {args.rotate_every} s; server pid {pid}"
        )
        print(f"{'t (s)':>6} {'mints':>7} {'mints/s':>8} {'p99 ms':>7} {'RSS MiB':>8} {'5xx':>4}")
        window_start = start
        seen = 0
        deadline = start + args.seconds
        while not stop.is_set() and time.perf_counter() < deadline:
            stop.wait(min(WINDOW, max(0.0, deadline - time.perf_counter())))
            now = time.perf_counter()
            with tally.lock:
                window = [lat for at, lat in tally.latencies[seen:] if at >= window_start]
                seen = len(tally.latencies)
                errors = sum(n for (_, status), n in tally.statuses.items() if status >= 500)
            current = rss_kib(pid) or 0
            print(
                f"{now - start:6.0f} {len(window):7d} {len(window) / (now - window_start):8.1f} "
                f"{percentile(window, 0.99) * 1000:7.1f} {current / 1024:8.1f} {errors:4d}"
            )
            window_start = now
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.perf_counter() - start
        rss_end = rss_kib(pid) or 0

        # Every token verifies against the JWKS (TTL leeway: the early ones may have expired).
        verified, rejected = 0, Counter[str]()
        with GrantVerifier(
            issuer=server.env["CONTROL_ISSUER"],
            audience="spacetimedb",
            jwks_url=f"{server.base_url}/.well-known/jwks.json",
            leeway=MAX_SECONDS + 60,
        ) as verifier:
            for jti, _, token in tally.tokens:
                try:
                    ok = verifier.verify(token)["jti"] == jti
                except TokenRejected as exc:
                    rejected[exc.code] += 1
                    continue
                verified += ok
        actions, mint_events = audit_counts(world)
        keys = world.org.admin.get("/api/admin/keys").json()["items"]
        world.http.close()
        log_tail = server.log()[-3000:]

    latencies = [lat for _, lat in tally.latencies]
    received = Counter(jti for jti, _, _ in tally.tokens)
    five_xx = sum(n for (_, status), n in tally.statuses.items() if status >= 500)
    after_warmup = [value for at, value in rss if at >= min(10.0, elapsed / 4)]
    half = [value for at, value in rss if at >= elapsed / 2]
    rss_warm = after_warmup[0] if after_warmup else rss_setup
    by_status: dict[str, dict[str, int]] = {}
    for (kind, status), n in sorted(tally.statuses.items()):
        by_status.setdefault(kind, {})[str(status)] = n
    report: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "mints": len(tally.tokens),
        "mints_per_second": round(len(tally.tokens) / elapsed, 1),
        "mint_latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies, default=float("nan")) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        },
        "statuses": by_status,
        "5xx": five_xx,
        "connection_errors": dict(tally.transport_errors),
        "admin_changes": sum(n for (kind, _), n in tally.statuses.items() if kind != "mint"),
        "rotations": len(tally.rotations),
        "kids_signing": len({kid for _, kid, _ in tally.tokens}),
        "keys_by_state": dict(Counter(key["state"] for key in keys)),
        "tokens_verified": verified,
        "tokens_rejected": dict(rejected),
        "audit": {
            "token.mint events": sum(mint_events.values()),
            "tokens received": len(tally.tokens),
            "received without exactly one event": sum(
                1 for jti in received if mint_events[jti] != 1
            ),
            "events without a received token": sum(
                n for jti, n in mint_events.items() if jti not in received
            ),
            "token.denied events": actions["token.denied"],
            "keys.rotate events": actions["keys.rotate"],
        },
        "rss_mib": {
            "after_setup": round(rss_setup / 1024, 1),
            "after_warmup": round(rss_warm / 1024, 1),
            "peak": round(max((v for _, v in rss), default=rss_end) / 1024, 1),
            "end": round(rss_end / 1024, 1),
            "growth_after_warmup": round((rss_end - rss_warm) / 1024, 1),
            "growth_second_half": round((rss_end - (half[0] if half else rss_end)) / 1024, 1),
        },
        "problems": tally.problems,
    }
    if five_xx or tally.transport_errors:
        report["server_log_tail"] = log_tail
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-mints", type=int, default=200_000)
    parser.add_argument("--admin-interval", type=float, default=0.5)
    parser.add_argument("--rotate-every", type=float, default=20.0)
    args = parser.parse_args()
    args.seconds = min(max(args.seconds, 5.0), MAX_SECONDS)
    args.clients = min(max(args.clients, 1), MAX_CLIENTS)
    args.max_mints = max(args.max_mints, 1)
    args.admin_interval = max(args.admin_interval, 0.05)
    args.rotate_every = max(args.rotate_every, 2.0)
    reason = postgres_available()
    if reason is not None:
        print(f"soak: needs PostgreSQL: {reason}", file=sys.stderr)
        return 2
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="control-soak-") as tmp:
        report = run(args, url, Path(tmp))
    print(json.dumps(report, indent=2))
    audit = report["audit"]
    failures = [
        f"{report['5xx']} responses with a 5xx status" if report["5xx"] else "",
        f"connection errors {report['connection_errors']}" if report["connection_errors"] else "",
        f"{report['mints'] - report['tokens_verified']} tokens did not verify"
        if report["tokens_verified"] != report["mints"]
        else "",
        "the audit log does not hold exactly one token.mint event per token received"
        if audit["received without exactly one event"] or audit["events without a received token"]
        else "",
    ]
    failures = [failure for failure in failures if failure]
    mib = report["rss_mib"]
    print(
        f"\nsoak: {report['mints']} tokens in {report['seconds']} s "
        f"({report['mints_per_second']}/s), mint p99 {report['mint_latency_ms']['p99']} ms, "
        f"{report['admin_changes']} admin requests, {report['rotations']} rotations "
        f"({report['kids_signing']} keys signed), {report['tokens_verified']} tokens verified, "
        f"{audit['token.mint events']} token.mint events for {audit['tokens received']} tokens, "
        f"5xx {report['5xx']}, RSS {mib['after_warmup']} -> {mib['end']} MiB "
        f"(+{mib['growth_after_warmup']} after warm-up, +{mib['growth_second_half']} in the "
        f"second half)"
    )
    for failure in failures:
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
