"""Group reads on PostgreSQL: concurrent reads of one statement answered by one statement.

A hot read whose parameters are all scalars (the token route's `MINT_READ_GROUPED`,
introspection's `INTROSPECT_READ`) costs the service more in the driver and the pool than in
the database: a connection checked out, a query sent, its answer parsed, for each request.
`ReadGroup` turns the reads that arrive while one is in flight into the next one: the requests'
parameters travel as arrays, `unnest(...) WITH ORDINALITY` makes them rows, and the statement
runs `LATERAL` once per row, in one round trip, one snapshot, one checkout. Each row comes back
tagged with its request's ordinal.

What a reader relies on still holds: a group is sent only after every one of its requests
arrived, so each request's read begins after it did (a change committed before a request
arrived is seen by its read, on any replica). A failed group fails every read in it, as the
single read would have failed; so a caller groups only values the database accepts (the token
routes bind stream ids, key hashes and token claims already checked as bindable: no NUL). With
no read in flight, a request's read goes at once, alone: grouping adds no wait at low load.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

# The most requests one group carries: past it, the rest make the next group.
MAX_GROUP = 64
# The name the requests' rows go by in the grouped statement.
_BATCH = "batch"


@dataclass(frozen=True)
class RowReader:
    """How to read a statement's rows fetched on the driver's own connection so that they are
    the rows SQLAlchemy would give: each column's result processor (datetimes, JSON, booleans),
    and a row type with the columns' names."""

    processors: tuple[Any, ...]
    row: type[Any]

    @classmethod
    def of(cls, statement: Any, dialect: Any) -> RowReader:
        columns = list(statement.selected_columns)
        processors = tuple(
            column.type._cached_result_processor(dialect, None) for column in columns
        )
        row = namedtuple("Row", [column.key for column in columns])  # type: ignore[misc]
        return cls(processors, row)

    def __call__(self, raw: Any) -> Any:
        return self.row(
            *[
                value if p is None else p(value)
                for p, value in zip(self.processors, raw, strict=True)
            ]
        )


@dataclass(frozen=True)
class GroupedStatement:
    """A statement rewritten to read for many requests at once: its SQL, the scalar
    parameters it takes per request (`names`, each sent as an array `<name>_batch`), its
    constants, and how to read its rows (the ordinal first, then the statement's columns)."""

    sql: str
    names: tuple[str, ...]
    constants: dict[str, Any]
    reader: RowReader

    def parameters(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        arrays = {f"{name}_{_BATCH}": [params[name] for params in group] for name in self.names}
        return {**self.constants, **arrays}

    def rows_by_request(self, fetched: list[Any], size: int) -> list[list[Any]]:
        """The rows of each of the group's `size` requests, in the group's order."""
        answers: list[list[Any]] = [[] for _ in range(size)]
        reader = self.reader
        for ordinal, *values in fetched:
            answers[ordinal - 1].append(reader(values))
        return answers


def group_statement(statement: Any, dialect: Any) -> GroupedStatement:
    """`statement` (a SELECT whose required bind parameters are scalars) as a grouped read."""
    types: dict[str, Any] = {}
    for element in visitors.iterate(statement):
        if isinstance(element, BindParameter) and element.required:
            types[element.key] = element.type
    names = tuple(sorted(types))
    batch = (
        func.unnest(*(bindparam(f"{name}_{_BATCH}", type_=ARRAY(types[name])) for name in names))
        .table_valued(*names, with_ordinality="ordinal")
        .render_derived(name=_BATCH)
    )

    def per_request(element: Any, **_: Any) -> Any:
        # Each parameter becomes the request row's column. By its text: a column object of the
        # batch would not correlate through the scalar subqueries nested in the statement.
        if isinstance(element, BindParameter) and element.key in types:
            return literal_column(f"{_BATCH}.{element.key}", type_=types[element.key])
        return None

    found = visitors.replacement_traverse(statement, {}, per_request).lateral("found")
    grouped = select(batch.c.ordinal, found).select_from(batch.join(found, true()))
    compiled = grouped.compile(dialect=dialect)
    arrays = {f"{name}_{_BATCH}" for name in names}
    constants = {
        key: value
        for key, value in compiled.construct_params(_check=False).items()
        if key not in arrays
    }
    return GroupedStatement(compiled.string, names, constants, RowReader.of(statement, dialect))


# Runs a grouped statement's SQL with its parameters: the fetched rows.
Execute = Callable[[str, dict[str, Any]], Awaitable[list[Any]]]


@dataclass
class _Waiting:
    params: dict[str, Any]
    answer: asyncio.Future[list[Any]]


class ReadGroup:
    """The reads of one grouped statement: at most one group in flight; the requests that
    arrive meanwhile wait for it and go together in the next."""

    def __init__(self, statement: GroupedStatement, execute: Execute) -> None:
        self.statement = statement
        self._execute = execute
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None
        # How many groups were sent, and how many reads they carried (for tests and diagnosis).
        self.groups = 0
        self.reads = 0

    async def read(self, params: dict[str, Any]) -> list[Any]:
        """This request's rows, read after it arrived."""
        loop = asyncio.get_running_loop()
        if self._sender is not None and self._sender.get_loop() is not loop:
            # The sender of an event loop that has stopped (the app is served again on another
            # loop): it will never run again, and its waiters went with it.
            self._sender, self._waiting = None, []
        waiting = _Waiting(params, loop.create_future())
        self._waiting.append(waiting)
        if self._sender is None:
            # The groups are sent by a task of their own: a request that goes away (its client
            # disconnected) cannot take the others' read with it.
            self._sender = asyncio.create_task(self._send())
        return await waiting.answer

    async def _send(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                statement = self.statement
                try:
                    fetched = await self._execute(
                        statement.sql, statement.parameters([w.params for w in group])
                    )
                    answers = statement.rows_by_request(fetched, len(group))
                except BaseException as exc:
                    for waiting in group:
                        if not waiting.answer.done():
                            waiting.answer.set_exception(exc)
                    if not isinstance(exc, Exception):  # cancelled: the sender stops
                        raise
                    continue
                self.groups += 1
                self.reads += len(group)
                for waiting, rows in zip(group, answers, strict=True):
                    if not waiting.answer.done():
                        waiting.answer.set_result(rows)
        finally:
            self._sender = None
            for waiting in self._waiting:  # only when cancelled: nothing is left hanging
                waiting.answer.cancel()
            self._waiting = []
