"""The request being served, as its log lines and metrics see it.

The middleware opens one `RequestContext` per request in a context variable; authentication
fills in who is calling. Threads that FastAPI runs sync endpoints and dependencies on copy the
context, and with it this same object, so what a worker thread records is what the middleware
logs when the response is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# The route label of a request no route-table entry matched: one series, never the raw path.
UNMATCHED = "unmatched"


def route_name(scope: Mapping[str, Any]) -> str:
    """The operation id of the route that answers: table routes carry it, retired ones are
    named by it; anything else is one `unmatched` series."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    name = getattr(route, "operation_id", None) or getattr(route, "name", None)
    return str(name) if name else UNMATCHED


@dataclass(slots=True)
class RequestContext:
    request_id: str
    method: str
    # The ASGI scope: the router writes the matched route into it once it has matched.
    scope: Mapping[str, Any] = field(default_factory=dict, repr=False)
    org_id: str | None = None
    principal_id: str | None = None
    # What was presented, as far as a log may say: an API key's display prefix (shown in the
    # admin API by design; the rest of the key is the secret) or the kind of credential.
    credential: str | None = None

    @property
    def route(self) -> str:
        return route_name(self.scope)


CURRENT: ContextVar[RequestContext | None] = ContextVar("control_request", default=None)


def current() -> RequestContext | None:
    return CURRENT.get()


def identify(org_id: str, principal_id: str) -> None:
    """The request's caller is known: its log lines carry the org and principal from now on."""
    context = CURRENT.get()
    if context is not None:
        context.org_id = org_id
        context.principal_id = principal_id


def credential_presented(display: str) -> None:
    """What a failed authentication of this request may name: a display prefix or a kind."""
    context = CURRENT.get()
    if context is not None:
        context.credential = display
