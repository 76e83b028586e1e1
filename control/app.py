"""The app factory: routes from the table, state from the lifespan, errors as problem+json."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from control import __version__
from control.api.auth import guard_for
from control.api.deps import commit_on_its_thread
from control.errors import install_error_handlers
from control.keys.service import ensure_keys
from control.kit.db import unit_of_work
from control.kit.middleware import BodyLimitMiddleware, RequestIdMiddleware
from control.kit.openapi import build_openapi
from control.kit.routing import Status, mount_routes
from control.observability import metrics, tracing
from control.observability.middleware import ObservabilityMiddleware
from control.routes import ROUTES, TOKEN_ROUTE
from control.settings import Settings
from control.spacetime.delivery import Deliverer
from control.state import AppState

log = logging.getLogger("control.app")

API_TITLE = "control"
API_DESCRIPTION = (
    "Control plane for a SpacetimeDB-first sync fabric: short-lived sync tokens carrying "
    "stream / query-set grants, OIDC discovery and JWKS, and the grant policy behind them."
)
# The token endpoint's operation ids: their answers are counted as mints and denials.
TOKEN_OPERATIONS = tuple(
    r.operation_id for r in ROUTES if r.path == TOKEN_ROUTE and r.status is Status.ACTIVE
)


async def _refresh_keys_forever(state: AppState) -> None:
    """Pick up rotations done by any replica, and do due maintenance, every few seconds."""
    while True:
        await asyncio.sleep(state.settings.key_refresh_seconds)
        try:
            await asyncio.to_thread(state.keyring.refresh, state.sessions)
            metrics.pool_status(state.engine.pool)  # each worker's share, between scrapes
        except Exception:  # keep serving with the last good snapshot; say so loudly
            log.exception("signing key refresh failed; serving the previous key snapshot")


def _start_push(state: AppState) -> asyncio.Task[None] | None:
    """The replica's deliverer of revocations into SpacetimeDB, when push is configured; said
    once either way, so an operator reading the startup log knows whether revocations reach
    SpacetimeDB before tokens expire."""
    targets = state.settings.spacetimedb_targets()
    if not targets:
        log.info(
            "SpacetimeDB push is off (CONTROL_SPACETIMEDB_URL and CONTROL_SPACETIMEDB_DATABASES "
            "unset): revocations are recorded in the outbox but not pushed"
        )
        return None
    log.info("SpacetimeDB push is on: revocations go to %d database(s)", len(targets))
    deliverer = Deliverer(
        state.settings, state.sessions, lambda: state.keyring.snapshot, state.replica_id
    )
    return asyncio.create_task(deliverer.run_forever())


def prepare(state: AppState) -> None:
    """Make the replica ready to serve: keys exist and the active one decrypts."""
    with unit_of_work(state.sessions) as session:
        ensure_keys(session, state.settings, state.keyring.cipher)
    with unit_of_work(state.sessions) as session:
        state.keyring.load(session)


# FastAPI's own OpenTelemetry (in the releases that have it) stays off: the service instruments
# itself (`control.observability`), and FastAPI's would add a second server span to every
# request when tracing is on, and environment lookups to every request when it is not.
FASTAPI_OPTIONS: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)


def create_app(
    settings: Settings | None = None,
    *,
    state: AppState | None = None,
    background: bool = True,
) -> FastAPI:
    """Build the app. `state` lets tests supply their own database binding; otherwise it is
    built in the lifespan, so importing this module never touches a database."""
    if settings is None:
        settings = state.settings if state is not None else Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_state = state is None
        current = state if state is not None else AppState.build(settings)
        app.state.control = current
        current.keys_refreshing = background
        tracing.instrument_engine(current.engine)
        if background and own_state:
            # A serving process (the app built its own state: `control serve`), not an app
            # embedded in another program: what startup built lives as long as it does. Frozen
            # out of the collector's generations, full collections stop walking it on every
            # pass, so their pauses (which land in some requests' latency) stay short. Before
            # the keys load, so the one long collection does not age the first snapshot.
            gc.collect()
            gc.freeze()
        await asyncio.to_thread(prepare, current)
        task = asyncio.create_task(_refresh_keys_forever(current)) if background else None
        beats = asyncio.create_task(current.heartbeat_forever()) if background else None
        pruning = (
            asyncio.create_task(current.prune_forever())
            if background and settings.prune_interval_seconds > 0
            else None
        )
        pushes = _start_push(current) if background else None
        try:
            yield
        finally:
            if pushes is not None:
                pushes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pushes
            if beats is not None:  # says goodbye: the other replicas take its rate share
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await current.audit_writer.close()  # what is queued commits before the engine goes
            if own_state:
                if current.inline_reads is not None:
                    current.inline_reads.close()
                current.engine.dispose()
                if current.async_db is not None:
                    await current.async_db.dispose()

    app = FastAPI(
        title=API_TITLE,
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,  # served by the table's own route, identical to the committed spec
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # a trailing slash is another path: 404, never an empty 307
        **FASTAPI_OPTIONS,
    )
    app.state.keys_refreshing = background  # readiness judges the key ring's age only then
    metrics.set_enabled(settings.metrics_enabled)
    install_error_handlers(app)
    mount_routes(app, ROUTES, guard_for, prepare=commit_on_its_thread)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware, token_routes=TOKEN_OPERATIONS)
    app.add_middleware(RequestIdMiddleware)
    if tracing.configure():  # only when the OTEL_* environment asks for traces
        tracing.instrument_app(app)
    return app


__all__ = ["build_openapi", "create_app", "guard_for", "prepare"]
