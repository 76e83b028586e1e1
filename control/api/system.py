"""Liveness, readiness and the spec."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from control.api.deps import StateDep
from control.errors import Unavailable
from control.kit.openapi import build_openapi


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    database: Literal["ok"] = "ok"
    active_kid: str


async def healthz() -> Health:
    return Health()


def readyz(state: StateDep) -> Readiness:
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable("the database is not reachable") from exc
    if not state.keyring.loaded:
        raise Unavailable("no active signing key is loaded yet")
    return Readiness(active_kid=state.keyring.snapshot.active.kid)


def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(build_openapi(request.app))


OpenAPIDocument = dict[str, Any]
