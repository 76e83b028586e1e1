"""Typed FastAPI dependencies: the unit of work, the replica state and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from control.kit.db import unit_of_work
from control.state import AppState


# Dependencies that do no I/O are `async def`: FastAPI runs sync ones on the thread pool,
# a hop per dependency on every request.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.control
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    # scope="function" (below) ends the unit of work before the response is sent, so a failed
    # commit becomes the response instead of vanishing after a 2xx went out.
    with unit_of_work(state.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
