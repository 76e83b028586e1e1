"""Several replicas on one database: racing rotations, racing maintenance, racing first starts,
and a replica's refresher picking up a rotation made elsewhere.

These need committed data seen from separate connections, so each test gets its own scratch
database (a PostgreSQL database, and a SQLite file for the embedded default) migrated with the
real migrations, instead of the rolled-back transaction the other tests share.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control.app import create_app, prepare
from control.errors import Conflict
from control.keys import service
from control.keys.crypto import KeyCipher
from control.keys.models import KeyState, SigningKey
from control.kit.db import make_engine, make_sessionmaker, unit_of_work, utcnow
from control.settings import Settings
from control.state import AppState
from tests.conftest import make_settings, migrated_database

RACERS = 8
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
def committed_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database whose commits every connection sees."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


def cipher_of(settings: Settings) -> KeyCipher:
    return KeyCipher(settings.key_encryption_key_bytes())


def race(settings: Settings, work: Callable[[Session], T]) -> list[T | Conflict]:
    """Run `work` in RACERS threads at once, each on its own engine and connection, each in
    its own committed transaction; a 409 is returned as the `Conflict` it raised."""
    engines = [make_engine(settings.sqlalchemy_url) for _ in range(RACERS)]
    barrier = threading.Barrier(RACERS)

    def run(index: int) -> T | Conflict:
        engine = engines[index]
        with engine.connect():  # connected before the start line, so nobody is late
            pass
        barrier.wait(timeout=30)
        try:
            with unit_of_work(make_sessionmaker(engine)) as session:
                return work(session)
        except Conflict as exc:
            return exc

    try:
        with ThreadPoolExecutor(RACERS) as pool:
            return list(pool.map(run, range(RACERS)))
    finally:
        for engine in engines:
            engine.dispose()


def rows(settings: Settings) -> list[SigningKey]:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(SigningKey).order_by(SigningKey.created_at)))
    finally:
        engine.dispose()


def states(settings: Settings) -> dict[str, str]:
    return {row.kid: row.state for row in rows(settings)}


def count(settings: Settings, state: KeyState) -> int:
    return sum(1 for value in states(settings).values() if value == state)


def first_start(settings: Settings) -> dict[str, str]:
    """What the first replica does: create the active and pending keys, committed."""
    state = AppState.build(settings)
    try:
        prepare(state)
    finally:
        state.engine.dispose()
    return states(settings)


def edit(settings: Settings, *statements: Any) -> None:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            for statement in statements:
                session.execute(statement)
    finally:
        engine.dispose()


def test_racing_rotations_end_with_exactly_one_active_key(committed_url: str) -> None:
    settings = make_settings(committed_url, key_publish_lead_seconds=0)
    initial = first_start(settings)
    first_active = next(kid for kid, state in initial.items() if state == "active")
    cipher = cipher_of(settings)

    results = race(settings, lambda session: service.rotate(session, settings, cipher))

    done = [result for result in results if isinstance(result, dict)]
    refused = [result for result in results if isinstance(result, Conflict)]
    assert len(done) + len(refused) == RACERS
    assert done, "at least the first rotation goes through"
    final = states(settings)
    assert count(settings, KeyState.ACTIVE) == 1
    assert count(settings, KeyState.PENDING) == 1
    assert count(settings, KeyState.RETIRING) == len(done)
    assert len(final) == 2 + len(done)
    # The rotations went one after another: each retired the key the previous one activated,
    # so no key was activated twice and none was skipped.
    by_activation = {row.kid: row.activated_at for row in rows(settings)}
    chain = sorted(done, key=lambda result: by_activation[result["active"]] or utcnow())
    assert chain[0]["retiring"] == first_active
    for previous, following in itertools.pairwise(chain):
        assert following["retiring"] == previous["active"]
        assert following["active"] == previous["pending"]
    assert final[chain[-1]["active"]] == "active"
    assert final[chain[-1]["pending"]] == "pending"


def test_racing_rotations_with_a_lead_time_rotate_once(committed_url: str) -> None:
    """Operators clicking rotate at once: one rotation, the others 409 (the new pending key is
    too fresh), never two active keys."""
    settings = make_settings(committed_url)  # the default 600 s lead time
    first_start(settings)
    edit(
        settings,
        update(SigningKey).values(created_at=utcnow() - timedelta(seconds=3600)),
    )
    cipher = cipher_of(settings)

    results = race(settings, lambda session: service.rotate(session, settings, cipher))

    done = [result for result in results if isinstance(result, dict)]
    refused = [result for result in results if isinstance(result, Conflict)]
    assert len(done) == 1
    assert len(refused) == RACERS - 1
    assert all(exc.code == "conflict" for exc in refused)
    assert sorted(states(settings).values()) == ["active", "pending", "retiring"]


def test_racing_automatic_rotations_rotate_once(committed_url: str) -> None:
    """Every replica's refresher finds the rotation due at once; whichever gets there first
    rotates, the others see it done."""
    settings = make_settings(committed_url, key_rotation_interval_seconds=3600)
    first_start(settings)
    past = utcnow() - timedelta(seconds=7200)
    edit(
        settings,
        update(SigningKey).values(created_at=past),
        update(SigningKey).where(SigningKey.state == KeyState.ACTIVE).values(activated_at=past),
    )
    cipher = cipher_of(settings)

    results = race(settings, lambda session: service.maintain(session, settings, cipher))

    assert not [result for result in results if isinstance(result, Conflict)]
    assert sorted(states(settings).values()) == ["active", "pending", "retiring"]


def test_racing_first_starts_create_one_active_and_one_pending_key(committed_url: str) -> None:
    settings = make_settings(committed_url)
    cipher = cipher_of(settings)
    assert states(settings) == {}

    results = race(settings, lambda session: service.ensure_keys(session, settings, cipher))

    assert results == [None] * RACERS
    assert sorted(states(settings).values()) == ["active", "pending"]


def test_two_active_keys_are_refused_by_the_database(committed_url: str) -> None:
    """The partial unique index backs the lock: even an edit bypassing it cannot commit a
    second active key."""
    settings = make_settings(committed_url)
    initial = first_start(settings)
    pending = next(kid for kid, state in initial.items() if state == "pending")
    with pytest.raises(IntegrityError):
        edit(
            settings,
            update(SigningKey).where(SigningKey.kid == pending).values(state=KeyState.ACTIVE),
        )
    assert states(settings) == initial


def ready_kid(client: TestClient, within: float = 10.0) -> str:
    """The active kid `/readyz` names once the replica is ready. With a refresh period of 50 ms
    a snapshot is stale after 150 ms, which a loaded machine's scheduling alone can exceed now
    and then; the replica is ready again at its next refresh, which is what this waits for."""
    deadline = time.monotonic() + within
    while True:
        ready = client.get("/readyz")
        if ready.status_code == 200 or time.monotonic() > deadline:
            assert ready.status_code == 200, ready.text
            return str(ready.json()["active_kid"])
        time.sleep(0.02)


def test_replicas_pick_up_a_rotation_without_restart(committed_url: str) -> None:
    """Replica A serves with its background refresher; replica B rotates; A follows within
    a few refresh periods, and its JWKS holds the new signing key all along."""
    settings = make_settings(committed_url, key_publish_lead_seconds=0, key_refresh_seconds=0.05)
    replica_a = AppState.build(settings)
    try:
        with TestClient(create_app(state=replica_a, background=True)) as client:
            before = ready_kid(client)
            published = [key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]]
            assert before in published
            assert len(published) == 2

            replica_b = AppState.build(settings)
            try:
                with unit_of_work(replica_b.sessions) as session:
                    result = service.rotate(session, settings, replica_b.keyring.cipher)
            finally:
                replica_b.engine.dispose()
            assert result["active"] in published  # published before it signs anything

            deadline = time.monotonic() + 2.0
            active = before
            while active == before and time.monotonic() < deadline:
                time.sleep(0.02)
                active = ready_kid(client)
            assert active == result["active"]
            jwks = client.get("/.well-known/jwks.json").json()
            assert {key["kid"] for key in jwks["keys"]} == {
                result["active"],
                result["retiring"],
                result["pending"],
            }
    finally:
        replica_a.engine.dispose()
