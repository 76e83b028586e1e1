"""The route-table mechanism: routes as data, and the one function that mounts them.

`control/routes.py` holds the table; this module turns each entry into a FastAPI route with its
auth guard, its documented problem responses and, for retired entries, a 410 answer that names
the successor and never reaches the spec. Nothing else in the project calls `add_api_route`.
"""

from __future__ import annotations

import copy
import enum
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from control.errors import ERROR_CODES, PROBLEM_MEDIA_TYPE, problem_response


class Status(enum.StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    # Served for operators' tools (a Prometheus scrape), not part of the clients' API: like a
    # retired route, never in the spec.
    OPERATIONS = "operations"
    # A page for people (the interactive API docs and their assets): served beside the API,
    # never part of it, so never in the spec.
    PAGE = "page"
    # A page of the admin console (`control/console/`): never in the spec. Its caller is the
    # console session of its cookie, not a bearer credential: the console checks the entry's
    # `access` against that session's caller itself, so no bearer guard is mounted.
    CONSOLE = "console"


@dataclass(frozen=True)
class Access:
    """Who may call a route: nobody needs a credential (`public`), or any of `roles`, presenting
    one of the credential kinds in `accepts` (names the authentication layer gives meaning)."""

    roles: frozenset[str] = frozenset()
    public: bool = False
    accepts: frozenset[str] = frozenset({"api_key"})

    @classmethod
    def anyone(cls) -> Access:
        return cls(public=True, accepts=frozenset())

    @classmethod
    def role(cls, *roles: str, accepts: tuple[str, ...] = ("api_key",)) -> Access:
        return cls(roles=frozenset(roles), accepts=frozenset(accepts))


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    access: Access
    endpoint: Callable[..., Any] | None = None
    request_model: type[BaseModel] | None = None
    response_model: Any = None
    status_code: int = 200
    # Problem codes this route answers with beyond those its access and body imply.
    errors: tuple[str, ...] = ()
    status: Status = Status.ACTIVE
    successor: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # Request bodies of other media types than the JSON `request_model`, each answered by its
    # own `endpoint(request)`. Such an endpoint runs without the route's guard and dependencies:
    # it authenticates, opens its unit of work and shapes its answers itself, as the protocol
    # behind that media type says, and reads the entry's `access` to apply the same rule.
    media_endpoints: dict[str, Callable[[Request], Awaitable[Response]]] = field(
        default_factory=dict
    )
    # Merged into the route's OpenAPI operation (FastAPI's `openapi_extra`): where the spec
    # documents what the model-driven parts cannot say, such as the `media_endpoints` bodies.
    openapi_extra: dict[str, Any] | None = None

    @property
    def documented_errors(self) -> tuple[str, ...]:
        """Every problem code the route may answer with, derived from what it is."""
        codes: list[str] = []
        if not self.access.public:
            codes += ["unauthorized", "forbidden"]
        if self.request_model is not None:
            codes += ["payload_too_large", "invalid_request"]
        if "{" in self.path:
            codes.append("not_found")
        codes += self.errors
        if not self.access.public or self.request_model is not None:
            codes.append("unavailable")
        return tuple(dict.fromkeys(codes))

    @property
    def documented_statuses(self) -> tuple[int, ...]:
        return tuple(sorted({ERROR_CODES[code][0] for code in self.documented_errors}))


def media_type(request: Request) -> str:
    """The request body's media type, without parameters, lower-cased."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class TableRoute(APIRoute):
    """A mounted route that knows its table entry, so a dependency can read the entry's
    declaration (`request.scope["route"].entry`) without a lookup of its own.

    A request whose body is of one of the entry's `media_endpoints` goes to that endpoint;
    every other request to the route's FastAPI handler, exactly as if there were none."""

    entry: Route | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def dispatch(request: Request) -> Response:
            # Read per request: the entry is attached after FastAPI builds the handler.
            alternates = self.entry.media_endpoints if self.entry is not None else None
            if alternates:
                endpoint = alternates.get(media_type(request))
                if endpoint is not None:
                    return await endpoint(request)
            return await handler(request)

        return dispatch


def table_entry(scope: Mapping[str, Any]) -> Route | None:
    """The route-table entry of the request whose ASGI scope this is, once routed."""
    route = scope.get("route")
    return route.entry if isinstance(route, TableRoute) else None


def _problem_responses(route: Route) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for code in route.documented_errors:
        status = ERROR_CODES[code][0]
        entry = responses.setdefault(
            status,
            {
                "description": "",
                "content": {
                    PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            },
        )
        entry["description"] = (
            f"{entry['description']}, `{code}`" if entry["description"] else f"`{code}`"
        )
    for entry in responses.values():
        entry["description"] = "Problem: " + entry["description"]
    return responses


def _retired_endpoint(route: Route) -> Callable[..., Any]:
    successor = route.successor

    async def retired(_: Request) -> JSONResponse:
        return problem_response(
            "route_retired",
            f"{route.method} {route.path} is retired; use {successor}",
            successor=successor,
        )

    retired.__name__ = route.operation_id
    return retired


def check_table(routes: Sequence[Route]) -> None:
    """Refuse a table that could not describe one coherent API."""
    seen_ids: set[str] = set()
    seen_paths: set[tuple[str, str]] = set()
    for route in routes:
        key = (route.method, route.path)
        if route.operation_id in seen_ids or key in seen_paths:
            raise ValueError(f"duplicate route {route.method} {route.path} ({route.operation_id})")
        seen_ids.add(route.operation_id)
        seen_paths.add(key)
        if route.status is Status.RETIRED:
            if not route.successor:
                raise ValueError(f"retired route {route.path} names no successor")
            continue
        if route.endpoint is None:
            raise ValueError(f"active route {route.path} has no endpoint")
        for media in route.media_endpoints:
            if media != media.strip().lower() or ";" in media or media == "application/json":
                raise ValueError(f"{route.operation_id}: {media!r} cannot name another body")
        if route.request_model is not None:
            # `Annotated[Model, Body(...)]` takes the model too (a body with a default).
            annotations = [
                get_args(p.annotation)[0] if get_origin(p.annotation) is Annotated else p.annotation
                for p in inspect.signature(route.endpoint, eval_str=True).parameters.values()
            ]
            if route.request_model not in annotations:
                raise ValueError(
                    f"{route.operation_id}: the endpoint does not take {route.request_model}"
                )


def mount_routes(
    app: FastAPI,
    routes: Sequence[Route],
    guard: Callable[[Access], Callable[..., Any]],
    prepare: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda endpoint: endpoint,
) -> None:
    """Mount every entry of the table on `app`; `guard(access)` makes the auth dependency and
    `prepare(endpoint)` what is mounted for an endpoint."""
    check_table(routes)
    for route in routes:
        if route.status is Status.RETIRED:
            app.add_api_route(
                route.path,
                _retired_endpoint(route),
                methods=[route.method],
                include_in_schema=False,
            )
            continue
        assert route.endpoint is not None
        bearer = not route.access.public and route.status is not Status.CONSOLE
        dependencies = [Depends(guard(route.access))] if bearer else []
        app.router.add_api_route(
            route.path,
            prepare(route.endpoint),
            methods=[route.method],
            operation_id=route.operation_id,
            summary=route.summary,
            tags=[route.tag],
            response_model=route.response_model,
            status_code=route.status_code,
            responses=_problem_responses(route),
            dependencies=dependencies,
            # A copy: FastAPI merges it into each spec it builds, sharing what it adds.
            openapi_extra=copy.deepcopy(route.openapi_extra),
            include_in_schema=route.status is Status.ACTIVE,
            route_class_override=TableRoute,
        )
        mounted = app.router.routes[-1]
        assert isinstance(mounted, TableRoute)
        mounted.entry = route
