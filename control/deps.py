"""Typed FastAPI dependencies: the unit of work, the replica state and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.kit.db import end_unit_of_work
from control.state import AppState


# Dependencies that do no I/O are `async def`: FastAPI runs sync ones on the thread pool,
# a hop per dependency on every request.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.control
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[Session]:
    """One unit of work per request: commit on success, roll back on error.

    scope="function" (below) ends it before the response is sent, so a failed commit becomes
    the response instead of vanishing after a 2xx went out. On SQLite, requests of this process
    queue on an asyncio lock (no thread is held while waiting) rather than in SQLite's busy
    handler, whose sleeps of up to 100 ms make the tail latency of concurrent writes.
    """
    lock = state.request_lock
    if lock is not None:
        await lock.acquire()
    try:
        session = state.sessions()
        try:
            yield session
        except BaseException:
            await run_in_threadpool(end_unit_of_work, session, True)
            raise
        if session.in_transaction():
            await run_in_threadpool(end_unit_of_work, session, False)
        else:
            # Nothing begun, or the endpoint ended the unit on its own worker thread (minting
            # does, to save a hop): closing holds no connection, so it needs no thread.
            session.close()
    finally:
        if lock is not None:
            lock.release()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
