"""SQLite's prebuilt reads (`control.kit.db.InlineReader`) give the rows SQLAlchemy gives, for
the token routes' statements: same columns, same values and types (datetimes with their zone,
JSON, booleans), for every shape of list parameter; they see what another connection has
committed since the previous read; and a failure reads as SQLAlchemy's `OperationalError`. The
same for PostgreSQL's prebuilt reads on psycopg's async pool (`AsyncDatabase.all`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError

from control.identity.models import Credential
from control.identity.secrets import hash_api_key
from control.identity.service import bootstrap_org
from control.kit.db import (
    InlineReader,
    make_async_database,
    make_engine,
    make_sessionmaker,
    unit_of_work,
)
from control.migrate import upgrade
from control.policy.models import Stream
from control.revocations.models import Revocation
from control.tokens.repository import INTROSPECT_READ, MINT_READ
from tests.pg import reachable_postgres, scratch_database

PEPPER = b"p" * 32


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Engine, dict[str, str]]]:
    url = f"sqlite:///{tmp_path}/reads.db"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with unit_of_work(sessions) as session:
        created = bootstrap_org(session, PEPPER, "reads")
        org, admin = created["org_id"], created["principal_id"]
        for index in range(3):
            session.add(Stream(id=f"run:r{index}", kind="run", org_id=org, owner_id=admin))
        session.add(
            Revocation(
                org_id=org,
                kind="subject",
                value=admin,
                not_before=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            )
        )
        session.add(Revocation(org_id=org, kind="jti", value="jti-1", not_before=datetime.now(UTC)))
        session.flush()
        session.execute(
            update(Credential)
            .where(Credential.principal_id == admin)
            .values(last_used_at=datetime.now(UTC), expires_at=datetime.now(UTC) + timedelta(1))
        )
    yield engine, {"org": org, "admin": admin, "hash": hash_api_key(PEPPER, created["api_key"])}
    engine.dispose()


def _sqlalchemy_rows(engine: Engine, statement: Any, params: dict[str, Any]) -> list[Any]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(statement, params).all()]


def test_rows_match_sqlalchemys(seeded: tuple[Engine, dict[str, str]]) -> None:
    engine, seed = seeded
    reader = InlineReader(engine)
    cases = [
        (MINT_READ, {"key_hash": seed["hash"], "ids": ids})
        for ids in (
            [],
            ["run:r0"],
            ["run:r2", "run:r0", "run:none"],
            ["run:r0", "run:r1", "run:r2"],
        )
    ]
    cases += [
        (MINT_READ, {"key_hash": "unknown", "ids": ["run:r0"]}),
        (
            INTROSPECT_READ,
            {
                "key_hash": seed["hash"],
                "jti": "jti-1",
                "subject": seed["admin"],
                "stream": "run:r1",
            },
        ),
        (INTROSPECT_READ, {"key_hash": seed["hash"], "jti": None, "subject": None, "stream": None}),
        (
            INTROSPECT_READ,
            {"key_hash": seed["hash"], "jti": "x", "subject": "y", "stream": "run:x"},
        ),
    ]
    for statement, params in cases:
        expected = _sqlalchemy_rows(engine, statement, params)
        got = reader.all(statement, params)
        assert sorted(map(tuple, got), key=repr) == sorted(expected, key=repr), params
        for row in got:  # by name, as the callers read them
            assert row.id is not None
            assert isinstance(row.roles, list)
            assert row.last_used_at.tzinfo is not None
            assert isinstance(row.disabled, bool)
    reader.close()


def test_a_read_sees_what_was_committed_since(seeded: tuple[Engine, dict[str, str]]) -> None:
    engine, seed = seeded
    reader = InlineReader(engine)
    params = {"key_hash": seed["hash"], "ids": []}
    assert reader.all(MINT_READ, params)[0].revoked_at is None
    with engine.begin() as connection:
        connection.execute(update(Credential).values(revoked_at=datetime.now(UTC)))
    assert reader.all(MINT_READ, params)[0].revoked_at is not None
    reader.close()


def test_a_failure_is_sqlalchemys_operational_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")  # no tables
    reader = InlineReader(engine)
    with pytest.raises(OperationalError):
        reader.all(MINT_READ, {"key_hash": "x", "ids": []})
    engine.dispose()


def test_postgresql_prebuilt_reads_match_sqlalchemys() -> None:
    """The same on PostgreSQL, through psycopg's async pool (`AsyncDatabase.all`)."""
    reachable_postgres("(the prebuilt reads on PostgreSQL)")
    with scratch_database() as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with unit_of_work(sessions) as session:
            created = bootstrap_org(session, PEPPER, "reads")
            org, admin = created["org_id"], created["principal_id"]
            session.add(Stream(id="run:r0", kind="run", org_id=org, owner_id=admin))
            session.add(
                Revocation(org_id=org, kind="subject", value=admin, not_before=datetime.now(UTC))
            )
        key_hash = hash_api_key(PEPPER, created["api_key"])
        database = make_async_database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        assert database is not None
        cases = [
            (MINT_READ, {"key_hash": key_hash, "ids": ids})
            for ids in ([], ["run:r0"], ["run:r0", "run:none"])
        ]
        cases.append(
            (
                INTROSPECT_READ,
                {"key_hash": key_hash, "jti": "j", "subject": admin, "stream": "run:r0"},
            )
        )

        async def read_all() -> list[list[Any]]:
            try:
                return [await database.all(statement, params) for statement, params in cases]
            finally:
                await database.dispose()

        got = asyncio.run(read_all())
        for (statement, params), rows in zip(cases, got, strict=True):
            assert sorted(map(tuple, rows), key=repr) == sorted(
                _sqlalchemy_rows(engine, statement, params), key=repr
            )
            assert rows and rows[0].last_used_at is None and isinstance(rows[0].roles, list)
        engine.dispose()
