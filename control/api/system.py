"""Liveness, readiness and the spec.

`/healthz` says the process serves HTTP, nothing more: an orchestrator restarts a replica only
when it fails. `/readyz` says whether this replica should get traffic: the database answers, the
key ring is fresh (see `key_ring_stale_after`) and the database schema is not behind the code.
An orchestrator takes a replica that is not ready out of rotation and waits; every check
recovers by itself once its cause is gone (docs/operations.md).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine

from control.api.deps import StateDep
from control.errors import ProblemError
from control.keys.service import stale_after
from control.kit.db import unit_of_work, utcnow
from control.kit.openapi import build_openapi
from control.migrate import migrations_dir
from control.settings import Settings
from control.spacetime.delivery import status as delivery_status
from control.state import AppState

# How long a replica trusts its last look at the database's schema revision while that look
# found it ready: long enough that a probe every second costs one query in five. A replica whose
# schema is behind looks again at every probe, so it is ready at the first one after the upgrade.
SCHEMA_CHECK_SECONDS = 5.0
# Seconds an orchestrator or client should wait before asking again.
NOT_READY_RETRY = 5


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = Field("ok", description="Always `ok`: the process serves HTTP")


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "database": "ok",
                    "active_kid": "4wBU0qT85oWOI5iUr8UTX_bStfDKS8Bsqgqs4bBoZFA",
                    "schema_revision": "0007",
                    "keys_age_seconds": 12.48,
                    "spacetimedb": {"push": True, "backlog": 0, "lag_seconds": 0.0},
                }
            ]
        }
    )

    status: Literal["ready"] = Field("ready", description="Always `ready` (otherwise 503)")
    database: Literal["ok"] = Field("ok", description="Always `ok`: the database answered")
    active_kid: str = Field(description="The id of the key this replica signs tokens with")
    schema_revision: str | None = Field(
        default=None, description="The database's migration revision"
    )
    keys_age_seconds: float = Field(
        description="Seconds since this replica last loaded the signing keys"
    )
    spacetimedb: SpacetimePush | None = Field(
        default=None, description="Revocations pushed into SpacetimeDB (never a readiness check)"
    )


class SpacetimePush(BaseModel):
    """How far revocations have reached SpacetimeDB, over every configured database. A backlog
    does not make the replica unready: SpacetimeDB being down must not stop token service."""

    push: bool = Field(
        description="Whether revocations are pushed (CONTROL_SPACETIMEDB_URL and "
        "CONTROL_SPACETIMEDB_DATABASES set)"
    )
    backlog: int | None = Field(
        default=None,
        description="The most outbox entries any configured database has yet to receive; null "
        "when push is off or the database could not be asked",
    )
    lag_seconds: float | None = Field(
        default=None,
        description="How long the oldest entry not yet received by some database has waited "
        "(0 when none waits); null when push is off or unknown",
    )


def spacetime_push(state: AppState) -> SpacetimePush:
    targets = state.settings.spacetimedb_targets()
    if not targets:
        return SpacetimePush(push=False)
    try:
        with unit_of_work(state.sessions) as session:
            found = delivery_status(session, targets)
    except Exception:  # readiness never fails on this detail
        return SpacetimePush(push=True)
    return SpacetimePush(
        push=True,
        backlog=max(item.backlog for item in found),
        lag_seconds=max(item.lag_seconds for item in found),
    )


async def healthz() -> Health:
    """Liveness: 200 `{"status": "ok"}` whenever the process serves HTTP; it checks nothing else.
    An orchestrator should restart a replica only when this fails, and use `GET /readyz` to decide
    whether to send it traffic. Anyone may call it; no credential.
    """
    return Health()


def key_ring_stale_after(settings: Settings) -> float:
    """The bound on the key snapshot's age (`control.keys.service.stale_after`)."""
    return stale_after(settings)


class SchemaCheck:
    """Is the database's Alembic revision the head this code ships? Cached briefly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heads: frozenset[str] | None = None
        self._known: frozenset[str] = frozenset()
        self._cached: tuple[float, str, str | None] | None = None

    def _load_script(self) -> frozenset[str]:
        if self._heads is None:
            script = ScriptDirectory(str(migrations_dir()))
            self._known = frozenset(rev.revision for rev in script.walk_revisions())
            self._heads = frozenset(script.get_heads())
        return self._heads

    def status(self, connection: Connection) -> tuple[str, str | None]:
        """(`ok` | `behind` | `ahead`, the database's revision)."""
        now = time.monotonic()
        with self._lock:
            cached = self._cached
            if cached is not None and now - cached[0] < SCHEMA_CHECK_SECONDS:
                return cached[1], cached[2]  # never `behind`: that verdict is not kept
            heads = self._load_script()
        revisions = set(MigrationContext.configure(connection).get_current_heads())
        if revisions and revisions <= heads:
            verdict = "ok"
        elif revisions and not revisions <= self._known:
            # A revision this code does not know: a newer release migrated the database. Older
            # replicas keep serving through a rolling upgrade (migrations only add).
            verdict = "ahead"
        else:
            verdict = "behind"
        revision = ",".join(sorted(revisions)) or None
        with self._lock:
            self._cached = (now, verdict, revision) if verdict != "behind" else None
        return verdict, revision


_schema_checks: weakref.WeakKeyDictionary[Engine, SchemaCheck] = weakref.WeakKeyDictionary()
_schema_checks_lock = threading.Lock()


def _schema_check(engine: Engine) -> SchemaCheck:
    with _schema_checks_lock:
        check = _schema_checks.get(engine)
        if check is None:
            check = _schema_checks[engine] = SchemaCheck()
        return check


@dataclass(frozen=True)
class ReadinessReport:
    database: Literal["ok", "unreachable"]
    keys: Literal["ok", "not_loaded", "stale"]
    schema: Literal["ok", "behind", "ahead", "unknown"]
    schema_revision: str | None
    keys_age_seconds: float | None
    keys_stale_after: float

    @property
    def ready(self) -> bool:
        return self.database == "ok" and self.keys == "ok" and self.schema in ("ok", "ahead")

    def checks(self) -> dict[str, bool]:
        return {
            "database": self.database == "ok",
            "keys": self.keys == "ok",
            "schema": self.schema in ("ok", "ahead"),
        }

    def problems(self) -> list[str]:
        found = []
        if self.database != "ok":
            found.append("the database is not reachable")
        if self.keys == "not_loaded":
            found.append("no active signing key is loaded yet")
        elif self.keys == "stale":
            found.append(
                f"the signing keys were last loaded {self.keys_age_seconds:.0f} s ago "
                f"(more than {self.keys_stale_after:g} s)"
            )
        if self.schema == "behind":
            found.append(
                f"the database schema ({self.schema_revision or 'none'}) is behind this "
                "release: run `control db upgrade`"
            )
        return found


def keys_refreshing(app: FastAPI) -> bool:
    """Whether a key refresher runs in this app: without one (tests, one-off tools), nothing
    refreshes the snapshot and its age says nothing."""
    return bool(getattr(app.state, "keys_refreshing", False))


def readiness(state: AppState, *, refreshing: bool) -> ReadinessReport:
    database: Literal["ok", "unreachable"] = "ok"
    schema: Literal["ok", "behind", "ahead", "unknown"] = "unknown"
    revision: str | None = None
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            verdict, revision = _schema_check(state.engine).status(connection)
            schema = "ok" if verdict == "ok" else "ahead" if verdict == "ahead" else "behind"
    except Exception:  # any failure to ask is the answer: not reachable
        database = "unreachable"
    stale_after = key_ring_stale_after(state.settings)
    keys: Literal["ok", "not_loaded", "stale"] = "not_loaded"
    age: float | None = None
    if state.keyring.loaded:
        age = max(0.0, (utcnow() - state.keyring.snapshot.loaded_at).total_seconds())
        keys = "stale" if refreshing and age > stale_after else "ok"
    return ReadinessReport(database, keys, schema, revision, age, stale_after)


def readyz(request: Request, state: StateDep) -> Readiness:
    """Readiness: 200 when this replica should get traffic: the database answers, the signing keys
    were loaded recently, and the database schema is not behind this release. Otherwise 503
    `unavailable` with `Retry-After`, a `detail` naming each failing check and `checks`
    (`database`, `keys`, `schema`: true or false). Each check recovers by itself once its cause is
    gone. Anyone may call it; no credential. `spacetimedb` says how far revocations have been
    pushed into SpacetimeDB (backlog and lag, over all configured databases); it is detail only.
    """
    report = readiness(state, refreshing=keys_refreshing(request.app))
    if not report.ready:
        raise ProblemError(
            "unavailable",
            "not ready: " + "; ".join(report.problems()),
            headers={"Retry-After": str(NOT_READY_RETRY)},
            retry_after=NOT_READY_RETRY,
            checks=report.checks(),
        )
    return Readiness(
        active_kid=state.keyring.snapshot.active.kid,
        schema_revision=report.schema_revision,
        keys_age_seconds=round(report.keys_age_seconds or 0.0, 3),
        spacetimedb=spacetime_push(state),
    )


def openapi_document(request: Request) -> JSONResponse:
    """This OpenAPI 3.1 document, generated from the service's route table: every operation, its
    request and response schemas with examples, and the problem codes it may answer with.
    `GET /docs` shows it interactively. Anyone may call it; no credential.
    """
    return JSONResponse(build_openapi(request.app))


OpenAPIDocument = Annotated[
    dict[str, Any],
    Field(
        examples=[
            {
                "openapi": "3.1.0",
                "info": {"title": "control", "version": "0.1.0"},
                "paths": {"/healthz": {"get": {"operationId": "healthz", "summary": "Liveness"}}},
                "components": {"schemas": {}},
            }
        ]
    ),
]
