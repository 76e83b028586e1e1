"""OpenTelemetry traces: FastAPI, SQLAlchemy and httpx, plus spans of the service's own.

Off unless the environment asks for it the way the OpenTelemetry SDK reads it:
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (OTLP over HTTP/protobuf),
or `OTEL_TRACES_EXPORTER` (`otlp`, `console`); `OTEL_SDK_DISABLED=true` keeps it off. The SDK,
exporter and instrumentations are the optional `otel` extra (`pip install 'control[otel]'`);
without them a request for traces is logged once and everything here stays a no-op. Off, a
`traced` function costs one extra call.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger("control.tracing")

P = ParamSpec("P")
R = TypeVar("R")

REQUEST_ID_ATTRIBUTE = "control.request_id"
# Attributes the HTTP instrumentation fills from the raw request target, which may carry
# anything a client typed (a key pasted into a path or a query): replaced by the route template.
_TARGET_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")

_tracer: Any = None


def requested_by_environment() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return True
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return exporter not in ("", "none")


def enabled() -> bool:
    return _tracer is not None


def _exporter_from_environment() -> Any:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; exporting with otlp", kind)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers and timeout from the OTEL_* environment


def configure(exporter: Any = None) -> bool:
    """Start tracing for this process when the environment asks for it (or with `exporter`);
    True when traces are on. Idempotent: the tracer provider is process-wide."""
    global _tracer
    if _tracer is not None:
        return True
    if exporter is None and not requested_by_environment():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "traces were requested (OTEL_* environment) but the OpenTelemetry SDK is not "
            "installed: install the `otel` extra; serving without traces"
        )
        return False
    service = os.environ.get("OTEL_SERVICE_NAME", "control")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter or _exporter_from_environment()))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument()
    _tracer = trace.get_tracer("control")
    log.info("tracing on: service.name=%s", service)
    return True


def instrument_app(app: Any) -> None:
    if _tracer is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Scrapes and probes would be most of the spans and say nothing.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="/metrics,/healthz,/readyz")


def instrument_engine(engine: Any) -> None:
    if _tracer is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # Its declared range stops short of SQLAlchemy 2.1, whose engine events it uses unchanged.
    SQLAlchemyInstrumentor().instrument(engine=engine, skip_dep_check=True)


def tag_request(request_id: str) -> None:
    """Put the request id on the request's server span (the span the instrumentation opened)."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def redact_target(route_template: str | None) -> None:
    """Replace the raw request target on the server span with the matched route's template."""
    from opentelemetry import trace

    span = trace.get_current_span()
    attributes = getattr(span, "attributes", None) or {}
    for name in _TARGET_ATTRIBUTES:
        if name in attributes:
            span.set_attribute(name, "" if name == "url.query" else route_template or "")


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A span named `name` around every call of the decorated function, when traces are on."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer = _tracer
            if tracer is None:
                return function(*args, **kwargs)
            with tracer.start_as_current_span(name):
                return function(*args, **kwargs)

        return wrapper

    return decorate
