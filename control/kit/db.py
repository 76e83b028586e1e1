"""Database plumbing: the declarative base, engines and the per-request unit of work."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import DateTime, MetaData, create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from control.kit.readgroup import ReadGroup, RowReader, group_statement

# Named constraints keep Alembic's diffs stable and identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; the busy timeout queues writers instead of
    # failing them; NORMAL sync is durable across process crashes in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, pool_pre_ping=True, **kwargs)


# An outage answers fast: a connection attempt gives up after this many seconds, and a request
# waits at most this long for a pooled connection, rather than holding its client.
ASYNC_CONNECT_TIMEOUT_SECONDS = 3
ASYNC_POOL_TIMEOUT_SECONDS = 5.0
ASYNC_READ_POOL_SIZE = 20


class AsyncDatabase:
    """The same PostgreSQL database for asyncio, so that the token routes' reads and the audit
    group commit run on the event loop without a thread hop.

    Reads: `PrebuiltReads` on psycopg 3's own async connection pool, each statement its own
    transaction (autocommit: one round trip, no `BEGIN` before it or `ROLLBACK` after, and its
    snapshot begins when it runs). `writes`: SQLAlchemy's asyncio engine, for transactions of
    several statements (the group commit)."""

    def __init__(self, url: str) -> None:
        self.writes = create_async_engine(
            url,
            # One batch commits at a time; a second connection covers a reconnect.
            pool_size=2,
            max_overflow=2,
            # No ping before each checkout (a round trip): a connection the database dropped
            # fails its batch (503) and SQLAlchemy then replaces every pooled connection.
            pool_timeout=ASYNC_POOL_TIMEOUT_SECONDS,
            connect_args={"connect_timeout": ASYNC_CONNECT_TIMEOUT_SECONDS},
        )
        self.dialect = self.writes.dialect
        self.prebuilt = PrebuiltReads(self.dialect)
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._reads = AsyncConnectionPool(
            conninfo,
            min_size=2,
            max_size=ASYNC_READ_POOL_SIZE,
            # An outage answers fast: a request waits this long for a connection, at most.
            timeout=ASYNC_POOL_TIMEOUT_SECONDS,
            kwargs={"autocommit": True, "connect_timeout": ASYNC_CONNECT_TIMEOUT_SECONDS},
            open=False,
        )
        self._opened = False
        self._groups: dict[int, ReadGroup] = {}

    async def all(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of one read-only statement (`PrebuiltReads`)."""
        prebuilt = self.prebuilt.get(statement, params)
        return prebuilt.rows(await self._fetch(prebuilt.sql, prebuilt.parameters(params)))

    async def grouped(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of one read-only statement whose parameters are all scalars, read with the
        concurrent reads of the same statement in one round trip (`ReadGroup`)."""
        group = self._groups.get(id(statement))
        if group is None:
            group = ReadGroup(group_statement(statement, self.dialect), self._fetch)
            self._groups[id(statement)] = group
        return await group.read(params)

    async def _fetch(self, sql: str, parameters: Any) -> list[Any]:
        """The raw rows of `sql`, on a pooled connection, in a transaction of its own."""
        dbapi_error = self.dialect.loaded_dbapi.Error
        try:
            if not self._opened:
                self._opened = True
                await self._reads.open(wait=False)
            async with self._reads.connection() as connection:
                cursor = await connection.execute(sql, parameters)
                return await cursor.fetchall()
        except PoolTimeout as exc:
            raise SQLAlchemyTimeoutError("no database connection in time") from exc
        except dbapi_error as exc:
            # As SQLAlchemy reports a driver's errors: a database gone is a 503. (A connection
            # the database dropped is discarded by the pool on its return.)
            raise DBAPIError.instance(sql, None, exc, dbapi_error, dialect=self.dialect) from exc

    async def dispose(self) -> None:
        if self._opened:
            await self._reads.close()
        await self.writes.dispose()


def make_async_database(url: str) -> AsyncDatabase | None:
    """The `AsyncDatabase` of a PostgreSQL URL; None for SQLite, whose statements run inline."""
    if not url.startswith("postgresql+psycopg://"):
        return None
    return AsyncDatabase(url)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def end_unit_of_work(session: Session, failed: bool) -> None:
    """Commit (or, when the work failed or the commit does, roll back) and close: the one
    place a transaction ends, for `unit_of_work` and the per-request session alike."""
    try:
        if failed:
            session.rollback()
        else:
            try:
                session.commit()
            except BaseException:
                session.rollback()
                raise
    finally:
        session.close()


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
    except BaseException:
        end_unit_of_work(session, failed=True)
        raise
    end_unit_of_work(session, failed=False)


class _Slot:
    """Where a request's parameter goes in a prebuilt statement: `name`, or its `index`th item
    when the parameter is a list (an expanding `IN`)."""

    __slots__ = ("index", "name")

    def __init__(self, name: str, index: int | None) -> None:
        self.name, self.index = name, index

    def value(self, params: dict[str, Any]) -> Any:
        value = params[self.name]
        return value if self.index is None else value[self.index]


@dataclass(frozen=True)
class _Prebuilt:
    sql: str
    # Per placeholder (by position, or by name for a driver of named parameters): a request
    # parameter's slot, or a constant of the statement.
    positional: tuple[Any, ...] | None
    named: dict[str, Any]
    reader: RowReader

    def parameters(self, params: dict[str, Any]) -> Any:
        if self.positional is not None:
            return [v.value(params) if isinstance(v, _Slot) else v for v in self.positional]
        return {k: v.value(params) if isinstance(v, _Slot) else v for k, v in self.named.items()}

    def rows(self, fetched: list[Any]) -> list[Any]:
        reader = self.reader
        return [reader(raw) for raw in fetched]


class PrebuiltReads:
    """A few hot read-only statements run on the driver's own connection, without SQLAlchemy's
    per-execution machinery, which costs several times the read itself on SQLite
    (`bench/profile_mint.py`).

    Each statement is compiled once per shape (the lengths of its list parameters) into SQL
    text and the result processors of its columns, so its rows read exactly as SQLAlchemy
    would give them (datetimes, JSON, booleans), under the same column names."""

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        self._prebuilt: dict[tuple[int, tuple[tuple[str, int], ...]], _Prebuilt] = {}

    def get(self, statement: Any, params: dict[str, Any]) -> _Prebuilt:
        shape = tuple(sorted((k, len(v)) for k, v in params.items() if isinstance(v, list)))
        prebuilt = self._prebuilt.get((id(statement), shape))
        if prebuilt is None:
            prebuilt = self._prebuild(statement, params)
            self._prebuilt[(id(statement), shape)] = prebuilt
        return prebuilt

    def _prebuild(self, statement: Any, params: dict[str, Any]) -> _Prebuilt:
        slots = {
            name: [_Slot(name, i) for i in range(len(value))]
            if isinstance(value, list)
            else _Slot(name, None)
            for name, value in params.items()
        }
        expanded = statement.compile(dialect=self.dialect).construct_expanded_state(slots)
        bound = expanded.parameters
        positional = (
            tuple(bound[name] for name in expanded.positiontup)
            if expanded.positiontup is not None
            else None
        )
        reader = RowReader.of(statement, self.dialect)
        return _Prebuilt(expanded.statement, positional, dict(bound), reader)


class InlineReader:
    """SQLite: `PrebuiltReads` run on the event loop, on one connection of the engine's (with
    its pragmas) held by the process, outside any transaction: each statement reads the
    latest committed state (WAL), as a fresh transaction would. Only from one thread at a time
    (the event loop's); a failure surfaces as SQLAlchemy's `OperationalError` (503), and the
    connection is replaced."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw: Any = None
        self._prebuilt = PrebuiltReads(engine.dialect)

    def all(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        prebuilt = self._prebuilt.get(statement, params)
        try:
            if self._raw is None:
                self._raw = self.engine.raw_connection()
            cursor = self._raw.driver_connection.execute(prebuilt.sql, prebuilt.parameters(params))
            fetched = cursor.fetchall()
        except sqlite3.Error as exc:
            self.close()
            raise OperationalError(prebuilt.sql, None, exc) from exc
        return prebuilt.rows(fetched)

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with suppress(Exception):
                raw.close()


class InlineWriter:
    """SQLite: one transaction of a few statements, each with one or more sets of parameters,
    run on a driver connection of the engine's (with its pragmas) held by the process, without
    SQLAlchemy's per-execution machinery, which costs more than the inserts of a group commit
    (`bench/profile_mint.py`). Each statement is compiled once per set of parameter names, with
    the bind processors of its columns, so the rows written are those SQLAlchemy would write.
    Only from one thread at a time (the event loop's); a failure rolls the transaction back,
    surfaces as SQLAlchemy's `OperationalError`, and the connection is replaced."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw: Any = None
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[str, tuple[Any, ...]]] = {}

    def run(self, work: Sequence[tuple[Any, Sequence[dict[str, Any]]]]) -> None:
        """Execute each statement with each of its parameter sets, then commit."""
        sql = ""
        try:
            if self._raw is None:
                self._raw = self.engine.raw_connection()
            driver = self._raw.driver_connection
            for statement, rows in work:
                sql, binds = self._prebuilt(statement, rows[0])
                driver.executemany(
                    sql,
                    [
                        [row[name] if p is None else p(row[name]) for name, p in binds]
                        for row in rows
                    ],
                )
            driver.commit()
        except sqlite3.Error as exc:
            self.close()  # closing a connection rolls back what it had not committed
            raise OperationalError(sql, None, exc) from exc

    def _prebuilt(self, statement: Any, params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        names = tuple(params)
        prebuilt = self._compiled.get((id(statement), names))
        if prebuilt is None:
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=list(names))
            processors = compiled._bind_processors
            order = compiled.positiontup or ()
            prebuilt = (compiled.string, tuple((name, processors.get(name)) for name in order))
            self._compiled[(id(statement), names)] = prebuilt
        return prebuilt

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with suppress(Exception):
                raw.close()
