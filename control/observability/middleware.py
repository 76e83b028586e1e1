"""One middleware for the request's metrics, its log line, its security events and its span.

It opens the request's context (`control.observability.context`), lets the app answer, then
records what the answer was: the route-table operation id the router matched (never the raw
path), the status, and for an error the problem code read from the answer's own JSON body.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.observability import logs, metrics, tracing
from control.observability.context import CURRENT, RequestContext

# An error body is read for its code only up to this size; the service's own are far smaller.
MAX_ERROR_BODY = 64 * 1024


def _json_error(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return b"json" in value
    return False


class ObservabilityMiddleware:
    """`token_routes`: the operation ids of the token endpoint, whose answers count as mints
    (200) or denials (a problem, by its code)."""

    def __init__(self, app: ASGIApp, token_routes: Iterable[str] = ()) -> None:
        self.app = app
        self.token_routes = frozenset(token_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(scope.get("request_id", ""), scope["method"], scope)
        reset = CURRENT.set(context)
        tracing_on = tracing.enabled()
        if tracing_on:
            tracing.tag_request(context.request_id)
        started = time.perf_counter()
        status = 500
        error_body: bytearray | None = None

        async def observed_send(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
                if tracing_on:  # now: the server span ends with the response's last byte
                    tracing.redact_target(getattr(scope.get("route"), "path", None))
                if status >= 400 and _json_error(message.get("headers", ())):
                    error_body = bytearray()
            elif (
                error_body is not None
                and message["type"] == "http.response.body"
                and len(error_body) < MAX_ERROR_BODY
            ):
                error_body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            try:
                self._record(context, status, seconds, error_body)
            finally:
                CURRENT.reset(reset)

    def _record(
        self, context: RequestContext, status: int, seconds: float, error_body: bytearray | None
    ) -> None:
        body: dict[str, Any] = {}
        if error_body:
            try:
                parsed = json.loads(error_body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
        # Problem documents carry `code`; OAuth-style errors carry `error`.
        problem = metrics.label_value(str(body.get("code") or body.get("error") or ""))
        route = context.route
        if metrics.enabled():
            metrics.REQUESTS.observe(route, status, problem, seconds)
            if route in self.token_routes:
                if status == 200:
                    metrics.TOKEN_MINTS.inc()
                elif status >= 400:
                    metrics.TOKEN_DENIALS.labels(problem or f"http_{status}").inc()
                    for denial in body.get("denied") or ():
                        if isinstance(denial, dict):
                            reason = metrics.label_value(str(denial.get("reason") or ""))
                            metrics.STREAM_DENIALS.labels(reason or "other").inc()
            if problem == "rate_limited":
                metrics.RATE_LIMITED.labels(route).inc()
        level = logging.WARNING if status >= 500 else logging.INFO
        if logs.ACCESS.isEnabledFor(level):
            logs.access(
                level,
                request_id=context.request_id,
                method=context.method,
                route=route,
                status=status,
                seconds=seconds,
                problem=problem,
                org_id=context.org_id,
                principal_id=context.principal_id,
            )
        if status == 401:
            logs.security_event(
                "authentication.failed",
                logging.WARNING,
                credential=context.credential or "none",
                reason=metrics.label_value(str(body.get("reason") or "")) or None,
            )
        elif status in (403, 429):
            logs.security_event("access.denied", logging.WARNING, problem=problem)
