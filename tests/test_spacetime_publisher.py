"""The runtime's write path, end to end: `control.runtime.SpacetimePublisher` appends through the
module's `append_batch` reducer on the SpacetimeDB stand-in (`harness/spacetime_standin.py`),
with a sync token carrying `append` from a real `control serve`. Retries never duplicate an
event, `(stream_id, seq)` stays gap-free and in order, memory stays bounded while SpacetimeDB is
down. Also: the stand-in's module model holds to the shared vectors the module is tested on, and
its route answers as SpacetimeDB's does."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.client import SyncTokenSource
from control.runtime import PublisherFull, SpacetimePublisher
from harness.server import Server, free_port, running_server
from harness.spacetime_standin import Database, Refused, Session, SpacetimeStandIn

VECTORS = Path(__file__).resolve().parent / "vectors"
DATABASE = "sync"


@dataclass
class World:
    server: Server
    standin: SpacetimeStandIn
    org_id: str
    writer_key: str
    reader_key: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("publisher")
    port = free_port()
    with SpacetimeStandIn.running(f"http://127.0.0.1:{port}") as standin:
        standin.add_database(DATABASE)
        with running_server(f"sqlite:///{workdir}/control.db", workdir, port) as server:
            boot = server.bootstrap("acme")
            headers = {"Authorization": f"Bearer {boot['api_key']}"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as admin:

                def ok(path: str, body: dict[str, Any]) -> dict[str, Any]:
                    response = admin.post(path, json=body)
                    assert response.status_code == 201, response.text
                    return dict(response.json())

                ok(
                    "/api/admin/query-sets",
                    {
                        "name": "run_events",
                        "stream_kinds": ["run"],
                        "queries": ["SELECT * FROM run_event_view"],
                    },
                )
                keys = {}
                for name, ops in (("writer", ["subscribe", "append"]), ("reader", ["subscribe"])):
                    principal = ok(
                        "/api/admin/principals",
                        {"kind": "service", "name": name, "roles": ["member"]},
                    )
                    keys[name] = ok(f"/api/admin/principals/{principal['id']}/credentials", {})[
                        "key"
                    ]
                    ok(
                        "/api/admin/grant-rules",
                        {
                            "effect": "allow",
                            "subjects": {"principal_ids": [principal["id"]]},
                            "streams": {"kind": "run", "relation": "org"},
                            "query_sets": ["run_events"],
                            "ops": ops,
                        },
                    )
            yield World(server, standin, boot["org_id"], keys["writer"], keys["reader"])


def tokens(world: World, key: str, ops: list[str]) -> SyncTokenSource:
    # A kind-wide grant: every run stream of the org, registered or not (the module appends to
    # any stream its kind-wide `append` grant covers).
    return SyncTokenSource(base_url=world.server.base_url, api_key=key, streams=["run:*"], ops=ops)


def events_of(world: World, stream: str) -> list[tuple[int, str, str]]:
    with world.standin.lock:
        return world.standin.databases[DATABASE].stream_events(world.org_id, stream)


def fresh_stream() -> str:
    return f"run:{secrets.token_hex(6)}"


def assert_gap_free(events: list[tuple[int, str, str]]) -> None:
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))


def test_events_arrive_in_order_through_failures(world: World) -> None:
    a, b = fresh_stream(), fresh_stream()
    source = tokens(world, world.writer_key, ["append"])
    publisher = SpacetimePublisher(
        world.standin.url, DATABASE, source, batch_size=7, backoff=0.05, max_backoff=0.5
    )
    try:
        # Some calls fail before applying, some after (the response is lost): all are retried.
        world.standin.fail(2, 503)
        world.standin.fail(2, 500, after_apply=True)
        sent: dict[str, list[str]] = {a: [], b: []}
        for n in range(40):
            stream = a if n % 3 else b
            payload = json.dumps({"n": n})
            publisher.append(stream, payload, timeout=None)
            sent[stream].append(payload)
        assert publisher.flush(timeout=60)
    finally:
        publisher.close()
    for stream in (a, b):
        events = events_of(world, stream)
        assert_gap_free(events)
        assert [payload for _, _, payload in events] == sent[stream]
        assert len({key for _, key, _ in events}) == len(events)
    assert publisher.failures == []


def test_an_append_retried_with_the_same_key_appends_once(world: World) -> None:
    stream = fresh_stream()
    source = tokens(world, world.writer_key, ["append"])
    with SpacetimePublisher(world.standin.url, DATABASE, source) as publisher:
        publisher.append(stream, "first", key="order-17")
        publisher.append(stream, "again", key="order-17")
        publisher.append(stream, "next", key="order-18")
        assert publisher.flush(timeout=30)
    assert events_of(world, stream) == [(1, "order-17", "first"), (2, "order-18", "next")]


def test_memory_stays_bounded_while_spacetimedb_is_down(world: World) -> None:
    stream = fresh_stream()
    source = tokens(world, world.writer_key, ["append"])
    world.standin.fail(10_000, 503)
    publisher = SpacetimePublisher(
        world.standin.url, DATABASE, source, max_buffered=5, backoff=0.05, max_backoff=0.2
    )
    try:
        keys = [publisher.append(stream, f"e{n}") for n in range(5)]
        with pytest.raises(PublisherFull):
            publisher.append(stream, "one too many")
        with pytest.raises(PublisherFull):
            publisher.append(stream, "one too many", timeout=0.2)
        assert publisher.pending == 5
        assert not publisher.flush(timeout=0.3)
        with world.standin.lock:
            world.standin._faults.clear()
        assert publisher.flush(timeout=30)
    finally:
        publisher.close()
    assert [key for _, key, _ in events_of(world, stream)] == keys


def test_a_refused_batch_is_dropped_and_reported(world: World) -> None:
    granted, other = fresh_stream(), "job:x"
    source = tokens(world, world.writer_key, ["append"])
    failed: list[Any] = []
    with SpacetimePublisher(
        world.standin.url, DATABASE, source, on_error=failed.append
    ) as publisher:
        publisher.append(other, "not granted")
        publisher.append(granted, "fine")
        assert publisher.flush(timeout=30)
    assert [(f.stream_id, f.status, f.message.split(":")[0]) for f in failed] == [
        (other, 530, "stream_not_granted")
    ]
    assert [p for _, _, p in events_of(world, granted)] == ["fine"]


def test_a_token_without_append_writes_nothing(world: World) -> None:
    stream = fresh_stream()
    source = tokens(world, world.reader_key, ["subscribe"])
    failed: list[Any] = []
    with SpacetimePublisher(world.standin.url, DATABASE, source, on_error=failed.append) as p:
        p.append(stream, "nope")
        assert p.flush(timeout=30)
    assert [f.message.split(":")[0] for f in failed] == ["op_not_granted"]
    assert events_of(world, stream) == []


def test_the_standin_route_answers_as_spacetimedb_does(world: World) -> None:
    url = f"{world.standin.url}/v1/database/{DATABASE}/call/append"
    stream = fresh_stream()
    token = tokens(world, world.writer_key, ["append"]).token()
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as http:
        assert http.post(url, content=b"[]", headers=bearer).status_code == 415
        assert http.post(url, json=[stream, "p", "k"]).status_code == 403  # anonymous
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert http.post(url, json=[stream, "p", "k"], headers={
            "Authorization": f"Bearer {forged}"}).status_code == 401  # fmt: skip
        assert http.post(url, json=[stream, "p"], headers=bearer).status_code == 400
        missing = f"{world.standin.url}/v1/database/nope/call/append"
        assert http.post(missing, json=[stream, "p", "k"], headers=bearer).status_code == 404
        # Only the control plane's Identity may revoke: 530, the reducer's error.
        revoke = f"{world.standin.url}/v1/database/{DATABASE}/call/revoke_jti"
        refused = http.post(revoke, json=[world.org_id, "x"], headers=bearer)
        assert refused.status_code == 530 and refused.text.startswith("forbidden")
        assert http.post(url, json=[stream, "p", "k"], headers=bearer).status_code == 200


# --- the stand-in's module model, on the module's own vectors --------------------------------


@pytest.mark.parametrize(
    "case",
    json.loads((VECTORS / "revocations.json").read_text())["effects"],
    ids=lambda c: c["name"],
)
def test_standin_revocations_follow_the_module_vectors(case: dict[str, Any]) -> None:
    database = Database("iss", "aud", "cp")
    for s in case["sessions"]:
        database.sessions[s["connection_id"]] = Session(
            s["connection_id"], s["subject"], s["jti"], s["org_id"], s["issued_at"], s["expires_at"]
        )
    for push in case["pushes"]:
        args = push["args"]
        if push["reducer"] == "revoke_subject":
            database.revoke(args[0], "subject", args[1], args[2], case["now"])
        else:
            database.revoke(args[0], "jti", args[1], 0, case["now"])
    assert sorted(database.dropped) == case["dropped"]
    assert len(database.revocations) == case["recorded"]


@pytest.mark.parametrize(
    "case", json.loads((VECTORS / "appends.json").read_text())["cases"], ids=lambda c: c["name"]
)
def test_standin_appends_follow_the_module_vectors(case: dict[str, Any]) -> None:
    database = Database("iss", "aud", "cp")
    for call, expected in zip(case["calls"], case["results"], strict=True):
        out = database.append(
            "org", "run:A", list(zip(call["keys"], call["payloads"], strict=True))
        )
        assert [list(r) for r in out] == expected
    assert [list(e) for e in database.stream_events("org", "run:A")] == case["events"]
    with pytest.raises(Refused):
        database.append("org", "run:A", [("bad key", "p")])
    _ = time
