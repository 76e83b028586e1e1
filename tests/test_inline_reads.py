"""SQLite's prebuilt reads (`control.kit.db.InlineReader`) give the rows SQLAlchemy gives, for
the token routes' statements: same columns, same values and types (datetimes with their zone,
JSON, booleans), for every shape of list parameter; they see what another connection has
committed since the previous read; and a failure reads as SQLAlchemy's `OperationalError`. The
same for PostgreSQL's prebuilt reads on psycopg's async pool (`AsyncDatabase.all`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError, OperationalError

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
from control.tokens.fastpath import grouped_mint_params
from control.tokens.repository import INTROSPECT_READ, MINT_READ, MINT_READ_GROUPED
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


@contextmanager
def _postgres_org(why: str) -> Iterator[tuple[str, Engine, dict[str, str]]]:
    """A migrated scratch PostgreSQL database (its URL and an engine) holding an org with the
    stream `run:r0` and a revocation of its admin; the org as `bootstrap_org` made it."""
    reachable_postgres(why)
    with scratch_database() as url:
        upgrade(url)
        engine = make_engine(url)
        with unit_of_work(make_sessionmaker(engine)) as session:
            created = bootstrap_org(session, PEPPER, "reads")
            org, admin = created["org_id"], created["principal_id"]
            session.add(Stream(id="run:r0", kind="run", org_id=org, owner_id=admin))
            session.add(
                Revocation(org_id=org, kind="subject", value=admin, not_before=datetime.now(UTC))
            )
        try:
            yield url, engine, created
        finally:
            engine.dispose()


def test_postgresql_prebuilt_reads_match_sqlalchemys() -> None:
    """The same on PostgreSQL, through psycopg's async pool (`AsyncDatabase.all`)."""
    with _postgres_org("(the prebuilt reads on PostgreSQL)") as (url, engine, created):
        admin = created["principal_id"]
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


def test_postgresql_grouped_reads_answer_each_request_as_its_own_read() -> None:
    """The token route's and introspection's reads on PostgreSQL go grouped
    (`AsyncDatabase.grouped`): concurrent reads travel as one statement, and each request still
    gets exactly the rows its own read gives; a change committed before a read arrives is seen
    by it; a group the database refuses fails every read in it, and the next group reads
    again."""
    with _postgres_org("(the grouped reads on PostgreSQL)") as (url, engine, created):
        org, admin = created["org_id"], created["principal_id"]
        with unit_of_work(make_sessionmaker(engine)) as session:
            other = bootstrap_org(session, PEPPER, "other")
            session.add(
                Stream(
                    id="run:o0", kind="run", org_id=other["org_id"], owner_id=other["principal_id"]
                )
            )
            session.add(
                Revocation(org_id=org, kind="jti", value="jti-1", not_before=datetime.now(UTC))
            )
        key_hash = hash_api_key(PEPPER, created["api_key"])
        other_hash = hash_api_key(PEPPER, other["api_key"])
        cases = [
            {"key_hash": key, "jti": jti, "subject": subject, "stream": stream}
            for key in (key_hash, other_hash, "unknown")
            for jti in ("jti-1", "jti-2", None)
            for subject in (admin, None)
            for stream in ("run:r0", "run:o0", None)
        ]
        expected = [_sqlalchemy_rows(engine, INTROSPECT_READ, params) for params in cases]
        database = make_async_database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        assert database is not None

        async def scenario() -> tuple[list[list[Any]], int, int, list[Any], bool]:
            try:
                got = await asyncio.gather(
                    *(database.grouped(INTROSPECT_READ, params) for params in cases)
                )
                # The mint's read, grouped, gives `MINT_READ`'s rows.
                got_mints = await asyncio.gather(
                    *(
                        database.grouped(MINT_READ_GROUPED, grouped_mint_params(params))
                        for params in mints
                    )
                )
                for params, rows, want in zip(mints, got_mints, mints_expected, strict=True):
                    assert sorted(map(tuple, rows), key=repr) == sorted(want, key=repr), params
                group = database._groups[id(INTROSPECT_READ)]
                groups, reads = group.groups, group.reads
                # A value the database refuses (NUL) fails its whole group...
                bad = {**cases[0], "jti": "a\x00b"}
                outcomes = await asyncio.gather(
                    database.grouped(INTROSPECT_READ, cases[0]),
                    database.grouped(INTROSPECT_READ, bad),
                    return_exceptions=True,
                )
                # ...and the next group reads, seeing what was committed before it arrived.
                with engine.begin() as connection:
                    connection.execute(update(Credential).values(revoked_at=datetime.now(UTC)))
                after = await database.grouped(INTROSPECT_READ, cases[0])
                return list(got), groups, reads, outcomes, after[0].revoked_at is not None
            finally:
                await database.dispose()

        mints = [
            {"key_hash": key, "ids": ids}
            for key in (key_hash, other_hash, "unknown")
            for ids in ([], ["run:r0"], ["run:o0", "run:r0", "run:none"])
        ]
        mints_expected = [_sqlalchemy_rows(engine, MINT_READ, params) for params in mints]
        got, groups, reads, outcomes, seen = asyncio.run(scenario())
        for params, rows, want in zip(cases, got, expected, strict=True):
            assert sorted(map(tuple, rows), key=repr) == sorted(want, key=repr), params
            for row in rows:
                assert isinstance(row.roles, list) and isinstance(row.disabled, bool)
        assert reads == len(cases) and groups < reads  # the reads went together
        assert all(isinstance(outcome, DBAPIError) for outcome in outcomes), outcomes
        assert seen
