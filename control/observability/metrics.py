"""The service's Prometheus metrics: their definitions, and the exposition of one scrape.

Label values come from small fixed sets: a route-table operation id (never a raw path), a
status, a problem code, a reason or kind the service itself defines. No principal, org, jti,
stream or key material is ever a label.

With several worker processes, set `PROMETHEUS_MULTIPROC_DIR` (an empty directory, the same for
every worker, wiped before they start) in the environment of the processes: counters and
histograms then live in files there and any worker's scrape adds up all of them. It is read
when `prometheus_client` is first imported, so it must be set before the process starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

# No `_created` series: they double the series count and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Request latency: a mint is a few milliseconds; the upper buckets catch queueing and outages.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An audit write is one INSERT in a transaction that is already open.
AUDIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

HTTP_REQUESTS = Counter(
    "control_http_requests_total",
    "HTTP requests answered, by route-table operation id, status and problem code",
    ["route", "code", "problem"],
)
HTTP_DURATION = Histogram(
    "control_http_request_duration_seconds",
    "Time from a request's arrival to the last byte of its answer, by operation id",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
TOKEN_MINTS = Counter("control_token_mints_total", "Sync tokens issued by the token endpoint")
TOKEN_DENIALS = Counter(
    "control_token_denials_total",
    "Token requests answered without a token, by problem code",
    ["reason"],
)
STREAM_DENIALS = Counter(
    "control_token_stream_denials_total",
    "Streams the policy refused in refused token requests, by the policy's reason",
    ["reason"],
)
RATE_LIMITED = Counter(
    "control_rate_limited_total", "Requests refused by a rate limit, by operation id", ["route"]
)
INTROSPECTIONS = Counter(
    "control_introspections_total",
    "Introspection answers: active, allowed, not_allowed or inactive, and why",
    ["outcome", "reason"],
)
REVOCATIONS = Counter("control_revocations_total", "Revocations committed, by kind", ["kind"])
AUTO_REVOCATIONS = Counter(
    "control_auto_revocations_total",
    "Subjects whose tokens a change of policy, of a principal or of a trusted issuer revoked",
    ["cause"],
)
KEY_ROTATIONS = Counter("control_key_rotations_total", "Signing key rotations committed")
FEDERATION_FETCHES = Counter(
    "control_federation_fetches_total",
    "Fetches of a trusted issuer's discovery document and JWKS, by outcome",
    ["outcome"],
)
AUDIT_WRITE = Histogram(
    "control_audit_write_duration_seconds",
    "Time to write one audit event in its transaction",
    buckets=AUDIT_BUCKETS,
)
DB_POOL = Gauge(
    "control_db_pool_connections",
    "Database connections of this process's pool, by state (checked_out, idle, overflow) "
    "and the pool's size",
    ["state"],
    multiprocess_mode="livesum",
)

# Seen in every scrape from the start, so dashboards and `rate()` have a zero to begin from.
for _kind in ("jti", "subject", "credential"):
    REVOCATIONS.labels(_kind)
for _cause in ("policy", "principal", "issuer"):
    AUTO_REVOCATIONS.labels(_cause)
for _outcome in ("ok", "failed", "backoff"):
    FEDERATION_FETCHES.labels(_outcome)

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Metrics on or off for this process (`CONTROL_METRICS_ENABLED`)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


_LABEL_VALUE = re.compile(r"[a-z0-9_]{1,48}")


def label_value(value: str | None) -> str:
    """A code from a response body as a label: a short identifier, or `other`. Bodies are the
    service's own, but a label must never be able to grow without bound."""
    if not value:
        return ""
    return value if _LABEL_VALUE.fullmatch(value) else "other"


class RequestMetrics:
    """The per-request series, with the labelled children cached: the hot path does a dict
    lookup, an increment and an observation, nothing more."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    def observe(self, route: str, status: int, problem: str, seconds: float) -> None:
        key = (route, status, problem)
        children = self._children.get(key)
        if children is None:
            children = (
                HTTP_REQUESTS.labels(route, str(status), problem),
                HTTP_DURATION.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


REQUESTS = RequestMetrics()


# --- counting what commits ------------------------------------------------------------------

_PENDING = "control.observability.on_commit"


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` when `session`'s transaction commits; never, if it rolls back.

    A revocation or a rotation is counted (and logged) when it is durable: a unit of work that
    fails after writing one must not show up as one in the metrics.
    """
    pending: list[Callable[[], None]] | None = session.info.get(_PENDING)
    if pending is None:
        session.info[_PENDING] = [action]
    else:
        pending.append(action)


@event.listens_for(Session, "after_commit")
def _run_pending(session: Session) -> None:
    for action in session.info.pop(_PENDING, ()):
        action()


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous: SessionTransaction) -> None:
    # A savepoint rolled back leaves the outer transaction, and what it will commit, alone.
    if previous.parent is None:
        session.info.pop(_PENDING, None)


# --- a scrape -------------------------------------------------------------------------------


def pool_status(pool: Any) -> None:
    """Record a SQLAlchemy pool's use (QueuePool; other pools report what they can)."""
    for state, method in (
        ("checked_out", "checkedout"),
        ("idle", "checkedin"),
        ("overflow", "overflow"),
        ("size", "size"),
    ):
        reader = getattr(pool, method, None)
        if callable(reader):
            DB_POOL.labels(state).set(max(0, int(reader())))


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(collectors: Iterable[Collector] = ()) -> bytes:
    """One scrape: this process's metrics (or, with `PROMETHEUS_MULTIPROC_DIR`, every worker's)
    and the families `collectors` compute now, from this replica's state."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    extra = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        extra.register(collector)
    return body + generate_latest(extra)
