"""Group commit for the audit log: concurrent requests hand their events to one writer, which
inserts a batch with one statement and commits it once; each request waits for the commit that
carries its event before it answers.

What stays true: an event is durable before the request that made it answers (its `write`
returns only after the commit); a batch whose commit fails fails every request in it (each
`write` raises) and none of its events is kept; a batch is at most `max_batch` events, and the
writer waits at most `max_wait` seconds for a batch to fill (0: it takes what has queued while
the previous commit ran, which is what makes batches under load and costs nothing idle).

Besides events, a batch carries the side writes a request would otherwise have committed on
its own: an API key's `last_used_at` (`touches`), applied in the same transaction; a read-only
request (introspection) hands over such a write alone, without an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Executable
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

from control.audit.repository import INSERT_EVENT
from control.kit.db import InlineWriter, end_unit_of_work
from control.observability import metrics

log = logging.getLogger("control.audit")


@dataclass(frozen=True, slots=True)
class SideWrite:
    """One more statement a batch runs for a request, with its parameters."""

    statement: Executable
    params: dict[str, Any]


@dataclass(slots=True)
class _Pending:
    event: dict[str, Any] | None
    side: SideWrite | None
    done: asyncio.Future[None]


class AuditWriteFailed(Exception):
    """The batch carrying this request's event did not commit; its cause is chained."""


class AuditWriter:
    """One per process and event loop; `write` from any request on that loop."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_batch: int = 256,
        max_wait: float = 0.0,
        write_lock: Callable[[], asyncio.Lock | None] = lambda: None,
        inline: bool = False,
        async_engine: AsyncEngine | None = None,
        inline_writer: InlineWriter | None = None,
    ) -> None:
        # Units of work, as every request's (and the tests' transaction) are made.
        self.sessions = sessions
        self.max_batch = max_batch
        self.max_wait = max_wait
        # SQLite's one writer: the batch takes the same lock as requests that write, so it
        # queues on the event loop instead of in SQLite's busy handler.
        self._write_lock = write_lock
        # Commit on the event loop rather than on a worker thread: for SQLite, whose commit of
        # a batch costs less CPU than the hop to a thread and back (`bench/profile_mint.py`).
        self.inline = inline
        # SQLite: the batch's statements on a driver connection of their own (`InlineWriter`).
        self.inline_writer = inline_writer
        # PostgreSQL: commit through the asyncio driver, on the event loop without a thread hop.
        self.async_engine = async_engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Batches committed and events written, for the benchmark and tests.
        self.batches = 0
        self.events = 0

    async def write(self, event: dict[str, Any] | None, side: SideWrite | None = None) -> None:
        """Queue `event` (the columns of one audit row; None for a side write alone) and
        return once it is committed; raise `AuditWriteFailed` when its batch fails."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        assert self._wake is not None
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Pending(event, side, done))
        self._wake.set()
        # Shielded: a request cancelled while it waits (its client went away) leaves its
        # event in the batch, which commits or fails for the others all the same.
        await asyncio.shield(done)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new loop (a test client's, or after a restart of the loop): what was queued on the
        # old one can never be written from here; its requests are gone with that loop.
        self._loop = loop
        self._pending = []
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        task = self._task
        if task is None:
            return
        # The task stays this writer's while it drains: a write arriving meanwhile joins the
        # queue being drained rather than starting a writer that would drop it.
        while self._pending:
            await self._flush()
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.inline_writer is not None:  # reconnects if the writer is used again
            self.inline_writer.close()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                if self.max_wait > 0 and len(self._pending) < self.max_batch:
                    await asyncio.sleep(self.max_wait)
                await self._flush()

    async def _flush(self) -> None:
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        if not batch:
            return
        lock = self._write_lock()
        try:
            if lock is not None:
                await lock.acquire()
            try:
                started = time.perf_counter()
                if self.async_engine is not None:
                    await self._commit_async(self.async_engine, batch)
                elif self.inline:
                    self._commit(batch)
                else:
                    await asyncio.to_thread(self._commit, batch)
                elapsed = time.perf_counter() - started
            finally:
                if lock is not None:
                    lock.release()
        except BaseException as exc:  # every request of the batch answers with the failure
            log.warning(
                "audit batch of %d events failed to commit: %s", len(batch), type(exc).__name__
            )
            for pending in batch:
                if not pending.done.done():
                    failure = AuditWriteFailed("the audit log could not be written")
                    failure.__cause__ = exc
                    pending.done.set_exception(failure)
            if not isinstance(exc, Exception):  # the writer is being cancelled: it stops
                raise
            return
        self.batches += 1
        events = sum(pending.event is not None for pending in batch)
        self.events += events
        if events and metrics.enabled():  # a batch of side writes alone writes no audit
            metrics.AUDIT_WRITE.observe(elapsed)
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    def _commit(self, batch: list[_Pending]) -> None:
        """One transaction: the events in one statement, then the side writes."""
        bind = self.sessions.kw.get("bind")
        if self.inline_writer is not None and isinstance(bind, Engine):
            self.inline_writer.run(_statements(batch))
            return
        if isinstance(bind, Engine):
            # A connection's own transaction: a session would cost more than the commit.
            with bind.begin() as connection:
                self._execute(connection, batch)
            return
        with self.sessions() as session:  # units of work bound elsewhere (a test's transaction)
            self._execute(session.connection(), batch)
            end_unit_of_work(session, False)

    @staticmethod
    async def _commit_async(engine: AsyncEngine, batch: list[_Pending]) -> None:
        async with engine.begin() as connection:
            for statement, rows in _statements(batch):
                await connection.execute(statement, rows)

    @staticmethod
    def _execute(connection: Connection, batch: list[_Pending]) -> None:
        for statement, rows in _statements(batch):
            connection.execute(statement, rows)


def _statements(batch: list[_Pending]) -> list[tuple[Executable, list[dict[str, Any]]]]:
    """What a batch's transaction runs, in order: its events in one insert, then each side
    write, each statement with its sets of parameters."""
    events = [pending.event for pending in batch if pending.event is not None]
    work: list[tuple[Executable, list[dict[str, Any]]]] = [(INSERT_EVENT, events)] if events else []
    work += [(p.side.statement, [p.side.params]) for p in batch if p.side is not None]
    return work
