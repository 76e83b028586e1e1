"""Group commit of the token route's audit events (`control.audit.writer`).

- Concurrent writes share a commit, and a batch never exceeds its bound.
- A batch whose commit fails fails every write in it, keeps none of its events, and the next
  batch commits as usual; through the app, such a mint answers 503 and hands out no token.
- A real server killed with SIGKILL while clients mint: every token a client received has its
  `token.mint` event in the database (on SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from control.audit.models import AuditEvent
from control.audit.writer import AuditWriteFailed, AuditWriter, SideWrite
from control.kit.db import (
    AsyncDatabase,
    InlineWriter,
    make_async_database,
    make_engine,
    make_sessionmaker,
)
from control.migrate import upgrade
from control.state import AppState
from tests.factories import RUN_EVENTS_QUERIES, OrgFixture, member_of_new_org
from tests.fleet import TIMEOUT, bearer
from tests.pg import reachable_postgres, scratch_database
from tests.server import running_server

POISON = "test.poison"
# What the module's catalog opens for run_events@1.
STREAM = "run:killed"


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    url = f"sqlite:///{tmp_path}/audit.db"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        # A row the database refuses: one poisoned event fails its whole batch.
        connection.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_events "
                f"WHEN NEW.action = '{POISON}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    yield engine, make_sessionmaker(engine)
    engine.dispose()


def event(action: str, index: int) -> dict[str, Any]:
    return {
        "at": datetime.now(UTC),
        "actor": "prn_TEST",
        "action": action,
        "target": f"target-{index}",
        "org_id": "org_TEST",
        "detail": {"index": index},
    }


def stored(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT target FROM audit_events"))]


async def write_all(
    writer: AuditWriter, events: list[dict[str, Any]]
) -> list[BaseException | None]:
    results = await asyncio.gather(*(writer.write(e) for e in events), return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


# SQLite's three ways to commit a batch: on the event loop through the driver's connection
# (`InlineWriter`, as a served replica does), on the loop through SQLAlchemy, on a thread.
WAYS = ["on-the-driver", "on-the-loop", "on-a-thread"]


def sqlite_writer(engine: Engine, sessions: sessionmaker[Session], way: str, **kw: Any) -> Any:
    inline_writer = InlineWriter(engine) if way == "on-the-driver" else None
    return AuditWriter(sessions, inline=way != "on-a-thread", inline_writer=inline_writer, **kw)


@pytest.mark.parametrize("way", WAYS)
def test_concurrent_writes_share_bounded_commits(
    sqlite_sessions: tuple[Engine, sessionmaker[Session]], way: str
) -> None:
    engine, sessions = sqlite_sessions
    writer = sqlite_writer(engine, sessions, way, max_batch=8)

    async def run() -> list[BaseException | None]:
        try:
            return await write_all(writer, [event("token.mint", i) for i in range(50)])
        finally:
            await writer.close()

    assert asyncio.run(run()) == [None] * 50
    assert sorted(stored(engine)) == sorted(f"target-{i}" for i in range(50))
    assert writer.events == 50
    # Fewer commits than events, none over the bound: 50 events in batches of at most 8.
    assert 7 <= writer.batches < 50


@pytest.mark.parametrize("way", WAYS)
def test_a_failed_commit_fails_every_write_in_it(
    sqlite_sessions: tuple[Engine, sessionmaker[Session]], way: str
) -> None:
    engine, sessions = sqlite_sessions
    writer = sqlite_writer(engine, sessions, way)

    async def run() -> tuple[list[BaseException | None], list[BaseException | None]]:
        try:
            batch = [event("token.mint", i) for i in range(10)]
            batch[4] = event(POISON, 4)
            failed = await write_all(writer, batch)
            after = await write_all(writer, [event("token.mint", i) for i in range(10, 13)])
            return failed, after
        finally:
            await writer.close()

    failed, after = asyncio.run(run())
    # One batch, refused as a whole: every write raised, and no event of it was kept.
    assert all(isinstance(result, AuditWriteFailed) for result in failed), failed
    assert writer.batches == 1
    # The writer goes on: the next batch commits.
    assert after == [None] * 3
    assert sorted(stored(engine)) == ["target-10", "target-11", "target-12"]


@pytest.fixture
def postgres_writer_database() -> Iterator[tuple[Engine, AsyncDatabase]]:
    """A scratch PostgreSQL database with the poison trigger, and its asyncio engines."""
    reachable_postgres("(the group commit through the asyncio driver)")
    with scratch_database() as url:
        upgrade(url)
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.action = '{POISON}' THEN RAISE EXCEPTION 'refused'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
        database = make_async_database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        assert database is not None
        try:
            yield engine, database
        finally:
            engine.dispose()


def test_the_asyncio_group_commit_keeps_every_invariant(
    postgres_writer_database: tuple[Engine, AsyncDatabase],
) -> None:
    """PostgreSQL's batches commit through the asyncio driver, on the event loop: concurrent
    writes share bounded commits, a refused batch fails every write in it and keeps none of
    its events, and the writer goes on."""
    engine, database = postgres_writer_database
    writer = AuditWriter(make_sessionmaker(engine), max_batch=8, async_engine=database.writes)

    async def run() -> tuple[list[BaseException | None], ...]:
        try:
            shared = await write_all(writer, [event("token.mint", i) for i in range(30)])
            batches = writer.batches
            poisoned = [event("token.mint", i) for i in range(30, 36)]
            poisoned[2] = event(POISON, 32)
            failed = await write_all(writer, poisoned)
            assert writer.batches == batches  # the refused batch is not counted
            after = await write_all(writer, [event("token.mint", i) for i in range(40, 42)])
            return shared, failed, after
        finally:
            await writer.close()
            await database.dispose()

    shared, failed, after = asyncio.run(run())
    assert shared == [None] * 30
    assert 4 <= writer.batches - 1 < 30  # bounded by 8, fewer commits than events
    assert all(isinstance(result, AuditWriteFailed) for result in failed), failed
    assert after == [None] * 2
    expected = [f"target-{i}" for i in (*range(30), 40, 41)]
    assert sorted(stored(engine)) == sorted(expected)


def test_a_writer_stopped_mid_batch_fails_the_writes_in_it(
    sqlite_sessions: tuple[Engine, sessionmaker[Session]],
) -> None:
    """A writer cancelled while its batch waits (for SQLite's write lock here) answers every
    write of that batch with the failure: none is left waiting forever."""
    engine, sessions = sqlite_sessions
    lock = asyncio.Lock()
    writer = AuditWriter(sessions, inline=True, write_lock=lambda: lock)

    async def run() -> None:
        await lock.acquire()
        waiting = asyncio.ensure_future(writer.write(event("token.mint", 1)))
        await asyncio.sleep(0.05)  # the batch has left the queue and waits for the lock
        assert writer._task is not None
        writer._task.cancel()
        with pytest.raises(AuditWriteFailed):
            await asyncio.wait_for(waiting, 5)
        lock.release()

    asyncio.run(run())
    assert stored(engine) == []


@pytest.mark.parametrize("way", WAYS[:2])
def test_a_side_write_alone_rides_a_batch(
    sqlite_sessions: tuple[Engine, sessionmaker[Session]], way: str
) -> None:
    """A read-only request's side write (an API key's `last_used_at`, from introspection)
    commits in a batch without an event of its own."""
    engine, sessions = sqlite_sessions
    writer = sqlite_writer(engine, sessions, way)
    marker = text(
        "INSERT INTO audit_events (at, actor, action, target, org_id, detail) "
        "VALUES (:at, 'prn_TEST', 'side', 'side-write', 'org_TEST', '{}')"
    )

    async def run() -> None:
        try:
            await asyncio.gather(
                writer.write(None, SideWrite(marker, {"at": "2026-01-01 00:00:00.000000"})),
                writer.write(event("token.mint", 1)),
            )
        finally:
            await writer.close()

    asyncio.run(run())
    assert sorted(stored(engine)) == ["side-write", "target-1"]
    assert writer.events == 1


def test_the_driver_writes_the_rows_sqlalchemy_writes(
    sqlite_sessions: tuple[Engine, sessionmaker[Session]],
) -> None:
    """An event written through the driver's connection reads back exactly as one written
    through SQLAlchemy: the same stored text, the same values."""
    engine, sessions = sqlite_sessions
    at = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    detail = {"jti": "j", "grants": ["run:a run_events@1 subscribe"], "n": 1.5, "none": None}
    stored_rows = {}
    for way in ("on-the-driver", "on-the-loop"):
        writer = sqlite_writer(engine, sessions, way)
        row = {**event("token.mint", 0), "at": at, "detail": detail, "target": way}

        async def run(writer: AuditWriter = writer, row: dict[str, Any] = row) -> None:
            try:
                await writer.write(row)
            finally:
                await writer.close()

        asyncio.run(run())
        with engine.connect() as connection:
            raw = connection.execute(
                text(
                    "SELECT at, actor, action, org_id, detail FROM audit_events WHERE target = :t"
                ),
                {"t": way},
            ).one()
        with sessions() as session:
            orm = session.scalars(select(AuditEvent).where(AuditEvent.target == way)).one()
            stored_rows[way] = (tuple(raw), orm.at, orm.detail)
    assert stored_rows["on-the-driver"] == stored_rows["on-the-loop"]
    assert stored_rows["on-the-driver"][1] == at
    assert stored_rows["on-the-driver"][2] == detail


def refuse_mint_events(state: AppState, backend: str) -> None:
    """Make the database refuse `token.mint` audit rows, in the test's transaction."""
    with state.sessions() as session:
        if backend == "sqlite":
            session.execute(
                text(
                    "CREATE TRIGGER refuse_mints BEFORE INSERT ON audit_events "
                    "WHEN NEW.action = 'token.mint' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:
            session.execute(
                text(
                    "CREATE FUNCTION refuse_mints() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER refuse_mints BEFORE INSERT ON audit_events FOR EACH ROW "
                    "WHEN (NEW.action = 'token.mint') EXECUTE FUNCTION refuse_mints()"
                )
            )
        session.commit()


def test_a_mint_whose_audit_fails_is_not_answered_with_a_token(
    state: AppState, client: TestClient, org_a: OrgFixture, backend: str
) -> None:
    alice = org_a.principal("alice")
    org_a.query_set("run_events", ["run"], RUN_EVENTS_QUERIES)
    org_a.stream("run:audited", owner_id=org_a.principals["alice"])
    org_a.allow(relation="owner", query_sets=["run_events"], ops=["subscribe"])
    assert alice.post("/api/sync/token", {"streams": ["run:audited"]}).status_code == 200
    refuse_mint_events(state, backend)
    response = alice.post("/api/sync/token", {"streams": ["run:audited"]})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "unavailable"
    assert "token" not in response.json() and "eyJ" not in response.text
    # A refusal is audited under another action, and still answers (the trigger spares it).
    refused = alice.post("/api/sync/token", {"streams": ["run:unknown"]})
    assert refused.status_code == 403, refused.text


# --- SIGKILL mid-batch --------------------------------------------------------------------

MINTERS = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def killable_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    reachable_postgres("(the kill test runs a real server on PostgreSQL)")
    with scratch_database() as url:
        yield url


def test_sigkill_mid_batch_loses_no_answered_mint(killable_database: str, tmp_path: Path) -> None:
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with running_server(killable_database, tmp_path) as server:
        _, alice_key = member_of_new_org(server, "killed", STREAM)

        def minter() -> None:
            with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
                while not stop.is_set():
                    try:
                        response = http.post(
                            "/api/sync/token", json={"streams": [STREAM]}, headers=bearer(alice_key)
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 200:
                        with lock:
                            received.append(response.json()["jti"])

        threads = [threading.Thread(target=minter) for _ in range(MINTERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(received) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert len(received) >= 300, "the clients minted too few tokens before the kill"
        # Every token a client received has its event, read straight from the database.
        url = server.env["CONTROL_DATABASE_URL"]
        engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT detail FROM audit_events WHERE action = 'token.mint'")
                ).all()
        finally:
            engine.dispose()
    audited = {(row[0] if isinstance(row[0], dict) else json.loads(row[0]))["jti"] for row in rows}
    missing = [jti for jti in received if jti not in audited]
    assert not missing, f"{len(missing)} of {len(received)} answered mints have no audit event"
    assert len(set(received)) == len(received)


def test_the_token_route_answers_through_the_group_commit(
    state: AppState, client: TestClient, org_a: OrgFixture
) -> None:
    alice = org_a.principal("alice")
    org_a.query_set("run_events", ["run"], RUN_EVENTS_QUERIES)
    org_a.stream("run:grouped", owner_id=org_a.principals["alice"])
    org_a.allow(relation="owner", query_sets=["run_events"], ops=["subscribe"])
    before = state.audit_writer.events
    for _ in range(3):
        assert alice.post("/api/sync/token", {"streams": ["run:grouped"]}).status_code == 200
    assert state.audit_writer.events == before + 3
