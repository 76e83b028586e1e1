"""Typed FastAPI dependencies: the unit of work, the replica state and the caller."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control.kit.db import end_unit_of_work
from control.state import AppState
from control.views import OrgView


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
            # Nothing begun, or the endpoint's worker thread ended the unit already (see
            # `commit_on_its_thread`): closing holds no connection, so it needs no thread.
            session.close()
    finally:
        if lock is not None:
            lock.release()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def commit_on_its_thread(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A plain-`def` endpoint that takes the request's session (directly or through a view),
    made to end its unit of work on the worker thread it ran on.

    FastAPI runs such endpoints on its thread pool; committing there, rather than in one more
    hop from `get_session` after the endpoint returns, saves about 300 us of server CPU per
    request at 16 clients (`bench/ceiling.py`). The commit still comes before the response, and
    an exception still reaches `get_session`, which rolls the unit back.
    """
    if inspect.iscoroutinefunction(endpoint):
        return endpoint
    signature = inspect.signature(endpoint, eval_str=True)
    holders = [
        name
        for name, parameter in signature.parameters.items()
        if get_origin(parameter.annotation) is Annotated
        and _holds_session(get_args(parameter.annotation)[0])
    ]
    if not holders:
        return endpoint

    @functools.wraps(endpoint)
    def run_and_commit(**values: Any) -> Any:
        result = endpoint(**values)
        holder = values[holders[0]]
        end_unit_of_work(holder if isinstance(holder, Session) else holder.session, False)
        return result

    # Resolved annotations: FastAPI reads them from here, not from this module's globals.
    run_and_commit.__signature__ = signature  # type: ignore[attr-defined]
    return run_and_commit


def _holds_session(kind: Any) -> bool:
    return kind is Session or kind is OrgView
