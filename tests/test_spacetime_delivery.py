"""Revocations pushed into SpacetimeDB, end to end: real `control serve` processes deliver the
outbox to the SpacetimeDB stand-in (`harness/spacetime_standin.py`: the `call` route's contract
and a model of the module's reducers; no SpacetimeDB server runs in these tests). Each revocation
reaches every configured database, through 500s, a hang, a crash of the delivering replica, and
with two replicas delivering at once; the module state shows each revocation once."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.spacetime.delivery import CONTROL_PLANE_SUBJECT
from control.tokens.spacetime_identity import spacetimedb_identity
from harness.server import Server, bootstrap, free_port, migrate, running_server
from harness.spacetime_standin import SpacetimeStandIn
from tests.fleet import postgres_database, replicas

pytestmark = pytest.mark.e2e

DATABASES = ("alpha", "beta")
# Replicas beat every half second, so a crashed replica's lease passes on within 1.5 s.
SETTINGS = {
    "replica_heartbeat_seconds": "0.5",
    "spacetimedb_databases": ",".join(DATABASES),
    # Shorter than the stand-in's hangs below, so a hung call times out sooner than the
    # default 5 s would.
    "spacetimedb_timeout_seconds": "2",
}
# Bounds, not timings: how long a test waits before it calls a push lost.
DELIVERY_BOUND = 30.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DELIVERY_BOUND) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


@dataclass
class Plane:
    server: Server
    standin: SpacetimeStandIn
    admin: httpx.Client
    org_id: str

    def principal(self, name: str) -> str:
        created = self.admin.post("/api/admin/principals", json={"kind": "user", "name": name})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def revoke(self, principal_id: str) -> dict[str, Any]:
        made = self.admin.post(
            "/api/admin/revocations", json={"kind": "subject", "value": principal_id}
        )
        assert made.status_code == 201, made.text
        return dict(made.json())


def recorded(standin: SpacetimeStandIn, database: str, org_id: str, subject: str) -> int:
    """How many times the module holds a revocation of `subject` (one, once delivered)."""
    with standin.lock:
        return sum(
            1
            for (org, kind, value, _nb) in standin.databases[database].revocations
            if (org, kind, value) == (org_id, "subject", subject)
        )


def delivered_everywhere(standin: SpacetimeStandIn, org_id: str, subjects: list[str]) -> bool:
    return all(
        recorded(standin, database, org_id, subject) == 1
        for database in DATABASES
        for subject in subjects
    )


@contextmanager
def plane(database_url: str, workdir: Path, port: int | None = None) -> Iterator[Plane]:
    port = port or free_port()
    with SpacetimeStandIn.running(f"http://127.0.0.1:{port}") as standin:
        for database in DATABASES:
            standin.add_database(database)
        with running_server(
            database_url, workdir, port, spacetimedb_url=standin.url, **SETTINGS
        ) as server:
            # The database is shared by this module's tests: each has an org of its own.
            boot = server.bootstrap(f"acme-{secrets.token_hex(4)}")
            headers = {"Authorization": f"Bearer {boot['api_key']}"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as admin:
                yield Plane(server, standin, admin, boot["org_id"])


@pytest.fixture(scope="module")
def operator(fresh_database_url: str) -> dict[str, str]:
    """The headers of the operator org's admin: the first org of the module's database. Every
    test here that serves `fresh_database_url` asks for it, even one that never reads the
    status, so it is made before any test's own org whichever test runs first, and no test's
    org is the operator org."""
    migrate(fresh_database_url)
    return {"Authorization": f"Bearer {bootstrap(fresh_database_url, 'operator')['api_key']}"}


def test_a_revocation_reaches_every_database(
    fresh_database_url: str, operator: dict[str, str], tmp_path: Path
) -> None:
    with plane(fresh_database_url, tmp_path) as p:
        ada = p.principal("ada")
        p.revoke(ada)
        wait_for(lambda: delivered_everywhere(p.standin, p.org_id, [ada]), "the push")
        # Called as the control plane's own Identity, which the module was configured with.
        identity = spacetimedb_identity(p.server.base_url, CONTROL_PLANE_SUBJECT)
        calls = p.standin.calls_to("alpha", 200)
        assert {c.reducer for c in calls} == {"revoke_subject"}
        assert {c.identity for c in calls} == {identity}
        status = wait_for(
            lambda: (s := status_of(p, operator))["databases"][0]["backlog"] == 0 and s,
            "an empty backlog",
        )
        assert status["push"] is True and status["identity"] == identity
        assert [d["database"] for d in status["databases"]] == list(DATABASES)
        assert all(d["last_error"] is None for d in status["databases"])
        ready = httpx.get(f"{p.server.base_url}/readyz").json()
        assert ready["spacetimedb"] == {"push": True, "backlog": 0, "lag_seconds": 0.0}
        assert "SpacetimeDB push is on" in p.server.log()


def status_of(p: Plane, operator: dict[str, str]) -> dict[str, Any]:
    """`GET /api/admin/spacetimedb`, as the operator."""
    answer = httpx.get(f"{p.server.base_url}/api/admin/spacetimedb", headers=operator)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_delivery_rides_out_500s_and_a_hang(
    fresh_database_url: str, operator: dict[str, str], tmp_path: Path
) -> None:
    with plane(fresh_database_url, tmp_path) as p:
        ada, bob, cy = p.principal("ada"), p.principal("bob"), p.principal("cy")
        # This org is not the operator org: the outbox spans every org, so its status is not
        # this admin's to read.
        assert p.admin.get("/api/admin/spacetimedb").status_code == 403
        p.standin.fail(3, 500)
        p.revoke(ada)
        wait_for(lambda: delivered_everywhere(p.standin, p.org_id, [ada]), "the push after 500s")
        assert len(p.standin.calls_to("alpha", 500) + p.standin.calls_to("beta", 500)) == 3
        # Answered 500 after applying it (a lost response): delivered again, applied once.
        p.standin.fail(1, 500, after_apply=True)
        p.revoke(bob)
        wait_for(lambda: delivered_everywhere(p.standin, p.org_id, [bob]), "the push after 500")
        # Longer than the deliverer's timeout (CONTROL_SPACETIMEDB_TIMEOUT_SECONDS, 2 s here):
        # the call times out, and is made again.
        p.standin.hang(3.5)
        p.revoke(cy)
        wait_for(lambda: "failed (timeout)" in p.server.log(), "a timed-out attempt")
        p.standin.hang(0)
        wait_for(lambda: delivered_everywhere(p.standin, p.org_id, [cy]), "the push after a hang")
        for database in DATABASES:
            assert len(p.standin.databases[database].revocations) == 3


def test_a_replica_that_dies_mid_delivery_loses_nothing(
    fresh_database_url: str, operator: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with plane(fresh_database_url, tmp_path, port) as p:
        ada = p.principal("ada")
        p.standin.hang(3.0)
        p.revoke(ada)
        wait_for(lambda: p.server.log().count("\n") > 0 and _in_flight(p.standin), "a call")
        p.server.process.kill()  # dies with the call in flight and nothing committed
        p.server.process.wait(timeout=10)
        p.standin.hang(0)
        with running_server(
            fresh_database_url, tmp_path, port, spacetimedb_url=p.standin.url, **SETTINGS
        ):
            wait_for(lambda: delivered_everywhere(p.standin, p.org_id, [ada]), "the redelivery")
            with p.standin.lock:
                sent = [c for c in p.standin.calls if c.reducer == "revoke_subject"]
            # Both databases got it. The call the crash cut short may have finished in the
            # stand-in too (then the restarted replica made it again, harmlessly), or been
            # dropped with its connection: either way nothing is lost.
            assert {c.database for c in sent} == set(DATABASES)
            assert len(sent) >= len(DATABASES)


def _in_flight(standin: SpacetimeStandIn) -> bool:
    return standin.in_flight > 0


def test_two_replicas_deliver_every_entry_to_every_database(tmp_path: Path) -> None:
    with postgres_database() as url:
        migrate(url)
        ports = [free_port(), free_port()]
        issuer = f"http://127.0.0.1:{ports[0]}"
        with SpacetimeStandIn.running(issuer) as standin:
            for database in DATABASES:
                standin.add_database(database)
            # Both replicas sign as one issuer, as a fleet does behind one name.
            settings = {**SETTINGS, "spacetimedb_url": standin.url, "issuer": issuer}
            with replicas(url, tmp_path, ports, **settings) as (a, b):
                boot = a.bootstrap("acme")
                headers = {"Authorization": f"Bearer {boot['api_key']}"}
                subjects: list[str] = []
                clients = [
                    httpx.Client(base_url=s.base_url, headers=headers, timeout=30) for s in (a, b)
                ]
                try:
                    for n in range(12):
                        http = clients[n % 2]
                        made = http.post(
                            "/api/admin/principals", json={"kind": "user", "name": f"p{n}"}
                        )
                        subjects.append(made.json()["id"])
                        revoked = http.post(
                            "/api/admin/revocations",
                            json={"kind": "subject", "value": subjects[-1]},
                        )
                        assert revoked.status_code == 201, revoked.text
                    wait_for(
                        lambda: delivered_everywhere(standin, boot["org_id"], subjects),
                        "every push on every database",
                    )
                finally:
                    for http in clients:
                        http.close()
                for database in DATABASES:
                    # In outbox order, each entry's first arrival.
                    seen: list[str] = []
                    for call in standin.calls_to(database, 200):
                        if call.args[1] not in seen:
                            seen.append(call.args[1])
                    assert seen == subjects
