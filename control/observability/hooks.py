"""What domain and HTTP code call to be observed: one call per thing worth counting or logging.

Everything here is cheap when metrics are off, and what depends on a commit (a revocation, a
rotation, a role change) is counted and logged only once its transaction commits.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from control.observability import metrics
from control.observability.logs import security_event
from control.observability.tracing import traced

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "audit_write",
    "auto_revoked",
    "federation_fetch",
    "federation_fetch_skipped",
    "introspected",
    "key_rotated",
    "principal_changed",
    "revoked",
    "traced",
]


def revoked(session: Session, kind: str, value: str) -> None:
    """A revocation row was written. The log names its target only when that is a principal or
    credential id: a `jti` value is whatever an admin typed, which could be a pasted token."""
    target = value if kind in ("subject", "credential") else None

    def done() -> None:
        if metrics.enabled():
            metrics.REVOCATIONS.labels(kind).inc()
        security_event("revocation", kind=kind, target=target)

    metrics.on_commit(session, done)


def auto_revoked(session: Session, cause: str, subjects: int) -> None:
    """`subjects` principals' tokens were revoked by a change, not by a revocation request:
    `policy` (rules, query sets, streams), `principal` (roles narrowed, disabled), `issuer`."""
    if subjects <= 0 or not metrics.enabled():
        return
    metrics.on_commit(session, lambda: metrics.AUTO_REVOCATIONS.labels(cause).inc(subjects))


def key_rotated(session: Session, *, active: str, pending: str) -> None:
    """The pending key was promoted (`active`) and a new one published (`pending`); key ids are
    public (they are in the JWKS)."""

    def done() -> None:
        if metrics.enabled():
            metrics.KEY_ROTATIONS.inc()
        security_event("key.rotated", active_kid=active, pending_kid=pending)

    metrics.on_commit(session, done)


def principal_changed(
    session: Session, principal_id: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """A role change or a (re-)enabling, from a principal's summaries before and after."""
    roles_before, roles_after = list(before["roles"]), list(after["roles"])
    if roles_before != roles_after:
        metrics.on_commit(
            session,
            lambda: security_event(
                "principal.roles_changed",
                target=principal_id,
                roles_before=",".join(roles_before),
                roles_after=",".join(roles_after),
            ),
        )
    if before["disabled"] != after["disabled"]:
        disabled = bool(after["disabled"])
        metrics.on_commit(
            session,
            lambda: security_event(
                "principal.disabled" if disabled else "principal.enabled", target=principal_id
            ),
        )


def introspected(active: bool, reason: str | None, allowed: bool | None) -> None:
    if not metrics.enabled():
        return
    if not active:
        outcome = "inactive"
    elif allowed is None:
        outcome = "active"
    else:
        outcome = "allowed" if allowed else "not_allowed"
    metrics.INTROSPECTIONS.labels(outcome, metrics.label_value(reason)).inc()


def federation_fetch(function: Callable[P, R]) -> Callable[P, R]:
    """Count each fetch of an issuer's documents by how it ended: `ok`, or `failed` (raised)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = function(*args, **kwargs)
        except BaseException:
            if metrics.enabled():
                metrics.FEDERATION_FETCHES.labels("failed").inc()
            raise
        if metrics.enabled():
            metrics.FEDERATION_FETCHES.labels("ok").inc()
        return result

    return wrapper


def federation_fetch_skipped() -> None:
    """A fetch not made: the issuer is in its back-off after failures."""
    if metrics.enabled():
        metrics.FEDERATION_FETCHES.labels("backoff").inc()


def audit_write(function: Callable[P, R]) -> Callable[P, R]:
    """Time each audit write (the latency histogram), in a span of its own when traces are on."""
    spanned = traced("audit.write")(function)

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not metrics.enabled():
            return spanned(*args, **kwargs)
        started = time.perf_counter()
        try:
            return spanned(*args, **kwargs)
        finally:
            metrics.AUDIT_WRITE.observe(time.perf_counter() - started)

    return wrapper
