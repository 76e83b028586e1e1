"""`GET /metrics`: the Prometheus exposition, with gauges computed from this replica's state.

Who may scrape: with `CONTROL_METRICS_TOKEN` set, whoever presents it as a bearer token (and
nobody else, loopback included); without it, loopback clients only, and in prod nobody. A
replica behind a proxy on the same host sees every client as loopback: set the token there.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator

from fastapi import Request, Response
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control import __version__
from control.api.deps import StateDep
from control.api.system import keys_refreshing, readiness
from control.errors import Forbidden, NotFound, Unauthorized
from control.keys.models import KeyState
from control.kit.db import utcnow
from control.observability import metrics
from control.settings import Settings
from control.state import AppState


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_access(request: Request, settings: Settings) -> None:
    token = settings.metrics_token
    if token is not None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected):
            raise Unauthorized("`/metrics` needs `Authorization: Bearer` with the metrics token")
        return
    if settings.env == "prod":
        raise Forbidden("set CONTROL_METRICS_TOKEN to serve `/metrics` in prod")
    if not _loopback(request.client.host if request.client else None):
        raise Forbidden(
            "`/metrics` serves loopback clients only unless CONTROL_METRICS_TOKEN is set"
        )


class ReplicaCollector(Collector):
    """Gauges read at scrape time from the replica's key ring and readiness."""

    def __init__(self, state: AppState, *, refreshing: bool) -> None:
        self.state = state
        self.refreshing = refreshing

    def collect(self) -> Iterator[Metric]:
        state = self.state
        now = utcnow()
        report = readiness(state, refreshing=self.refreshing)
        yield GaugeMetricFamily(
            "control_ready", "1 when this replica's /readyz answers 200", value=int(report.ready)
        )
        checks = GaugeMetricFamily(
            "control_readiness_check_ok",
            "Each readiness check: 1 passing, 0 failing",
            labels=["check"],
        )
        for name, ok in report.checks().items():
            checks.add_metric([name], int(ok))
        yield checks
        build = GaugeMetricFamily("control_build_info", "The running release", labels=["version"])
        build.add_metric([__version__], 1)
        yield build

        by_state = GaugeMetricFamily(
            "control_signing_keys",
            "Published signing keys in this replica's key ring, by state",
            labels=["state"],
        )
        info = GaugeMetricFamily(
            "control_signing_key_info",
            "One series per published key id and its state (key ids are public, in the JWKS)",
            labels=["kid", "state"],
        )
        counts = {KeyState.ACTIVE.value: 0, KeyState.PENDING.value: 0, KeyState.RETIRING.value: 0}
        if not state.keyring.loaded:
            for name, count in counts.items():
                by_state.add_metric([name], count)
            yield by_state
            yield info
            return
        snapshot = state.keyring.snapshot
        settings = state.settings
        retire_after = settings.token_ttl_max_seconds + settings.token_leeway_seconds
        active_age: float | None = None
        pending_age: float | None = None
        retiring_left: float | None = None
        for kid, key_state, created_at, activated_at, retiring_at in snapshot.key_states:
            counts[key_state] = counts.get(key_state, 0) + 1
            info.add_metric([kid, key_state], 1)
            if key_state == KeyState.ACTIVE and activated_at is not None:
                active_age = (now - activated_at).total_seconds()
            elif key_state == KeyState.PENDING:
                age = (now - created_at).total_seconds()
                pending_age = age if pending_age is None else min(pending_age, age)
            elif key_state == KeyState.RETIRING and retiring_at is not None:
                left = retiring_at.timestamp() + retire_after - now.timestamp()
                retiring_left = left if retiring_left is None else min(retiring_left, left)
        for name, count in counts.items():
            by_state.add_metric([name], count)
        yield by_state
        yield info
        for name, doc, value in (
            ("control_signing_key_active_age_seconds",
             "Seconds since the active key started signing", active_age),
            ("control_signing_key_pending_published_seconds",
             "Seconds the pending key has been published (it may sign once past the lead)",
             pending_age),
            ("control_signing_key_retiring_remaining_seconds",
             "Seconds until the next retiring key leaves the JWKS", retiring_left),
            ("control_key_ring_age_seconds",
             "Seconds since this replica last loaded the signing keys",
             (now - snapshot.loaded_at).total_seconds()),
            ("control_key_ring_stale_after_seconds",
             "Key ring age past which this replica is not ready", report.keys_stale_after),
            ("control_key_publish_lead_seconds",
             "Configured publish lead of a new signing key", settings.key_publish_lead_seconds),
        ):  # fmt: skip
            # No key in that state: the family is still described, with no sample.
            family = GaugeMetricFamily(name, doc)
            if value is not None:
                family.add_metric([], max(0.0, float(value)))
            yield family


def serve_metrics(request: Request, state: StateDep) -> Response:
    if not metrics.enabled():
        raise NotFound("metrics (CONTROL_METRICS_ENABLED is false)")
    check_access(request, state.settings)
    metrics.pool_status(state.engine.pool)
    body = metrics.exposition([ReplicaCollector(state, refreshing=keys_refreshing(request.app))])
    return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})
