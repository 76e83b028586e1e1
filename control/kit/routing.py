"""The route-table mechanism: routes as data, and the one function that mounts them.

`control/routes.py` holds the table; this module turns each entry into a FastAPI route with its
auth guard, its documented problem responses and, for retired entries, a 410 answer that names
the successor and never reaches the spec. Nothing else in the project calls `add_api_route`.
"""

from __future__ import annotations

import copy
import email.message
import enum
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

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
class ParsedBody:
    """A JSON request body read and checked against its route's `request_model` as FastAPI's
    own handler does: `value`, the model, when it is valid; else `errors`, FastAPI's, located
    under `body`."""

    value: Any
    errors: list[dict[str, Any]]

    def refusal(self) -> RequestValidationError:
        """The 422 FastAPI answers with for this body."""
        return RequestValidationError(self.errors)


BodyReader = Callable[[Request], Awaitable[ParsedBody]]
DirectEndpoint = Callable[[Request, BodyReader], Awaitable[Response]]


def without_body(endpoint: Callable[[Request], Awaitable[Response]]) -> DirectEndpoint:
    """A GET `endpoint` that answers from the request alone, as a `Route.direct`."""

    async def serve(request: Request, _read_body: BodyReader) -> Response:
        return await endpoint(request)

    return serve


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
    # A route on the hot path may be served by `direct(request, read_body)` in place of FastAPI's
    # handler for `endpoint`, which solves the endpoint's dependencies and guard anew for each
    # request: on the token route, as much CPU as the mint itself. `read_body` reads the body as
    # FastAPI does (one that is not JSON is refused at once, as FastAPI refuses it); `direct`
    # applies its guard's checks in the guard's order and calls `endpoint` with the model, so
    # the answers are those FastAPI gives. `endpoint` and `request_model` stay the spec's source.
    # Bodies of `media_endpoints` types still go to those. A public GET of fixed bytes (the JWKS,
    # discovery) may be direct too (`without_body`): it has no guard, no model and no body.
    direct: DirectEndpoint | None = None
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
    every other request to the entry's `direct` handler when it names one, else to the route's
    FastAPI handler, exactly as if there were neither."""

    entry: Route | None = None
    # The path's text before its first parameter: no path without it can match.
    literal: str | None = None
    # The entry's place in the table, which the spec follows whatever order routes match in.
    position: int = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # The app's router tries its routes in order, and FastAPI's and Starlette's matching of
        # one (scope lookups and the path's regex) costs as much as a small endpoint on the
        # token route, eleventh in the table: routes the path cannot reach are turned away on
        # their literal text first. (Only under no `root_path`, where the path is the route's
        # path, and never for a route of an included router: the table mounts none.)
        literal = self.literal
        if literal is not None and scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if not path.startswith(literal) or (literal == self.path and path != literal):
                return Match.NONE, {}
        return super().matches(scope)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def dispatch(request: Request) -> Response:
            return await self._serve(request, handler)

        return dispatch

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A direct route's request goes straight to its handler: FastAPI's per-request wrapper
        # (exit stacks for dependencies it will not solve, and its own pass of the exception
        # handlers, which the app's exception middleware applies all the same) is skipped.
        entry = self.entry
        methods = self.methods or ()
        if entry is not None and entry.direct is not None and scope["method"] in methods:
            response = await self._serve(Request(scope, receive, send), None)
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    async def _serve(
        self, request: Request, handler: Callable[[Request], Awaitable[Response]] | None
    ) -> Response:
        # The entry is read per request: it is attached after FastAPI builds the handler.
        entry = self.entry
        if entry is not None:
            if entry.media_endpoints:
                endpoint = entry.media_endpoints.get(media_type(request))
                if endpoint is not None:
                    return await endpoint(request)
            if entry.direct is not None:
                return await entry.direct(request, self.read_body)
        assert handler is not None, "only a direct route is served without FastAPI's handler"
        return await handler(request)

    async def read_body(self, request: Request) -> ParsedBody:
        """The body as FastAPI's handler reads and validates a route's one model parameter
        (`fastapi.routing.get_request_handler`): JSON under a JSON media type (and only there;
        a body without a `Content-Type` stays bytes), refused at once when it does not parse;
        bytes under any other; missing when empty."""
        raw = await request.body()
        value: Any = _MISSING
        if raw:
            value = raw
            content_type = request.headers.get("content-type")
            if content_type and _names_json(content_type):
                try:
                    # The standard parser, as FastAPI's: orjson reads integers past 64 bits
                    # as floats, and some bodies as other values.
                    value = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body", exc.pos),
                                "msg": "JSON decode error",
                                "input": {},
                                "ctx": {"error": exc.msg},
                            }
                        ],
                        body=exc.doc,
                    ) from exc
                except Exception as exc:  # invalid UTF-8, nesting too deep: as FastAPI
                    raise HTTPException(400, "There was an error parsing the body") from exc
        field = self.body_field
        assert field is not None, "a direct route takes a request model"
        if value is _MISSING:
            if not field.field_info.is_required():
                return ParsedBody(copy.deepcopy(field.default), [])
            missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            return ParsedBody(None, [missing])
        model, errors = field.validate(value, {}, loc=("body",))
        return ParsedBody(model, list(errors))


# A body that is empty (FastAPI's `Undefined`).
_MISSING = object()


def _names_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this `Content-Type` as JSON: `application/json` or
    `application/*+json`, parsed as the `email` package parses the header."""
    if content_type == "application/json":  # nearly every request: no parsing needed
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


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
        if route.direct is not None and route.request_model is None and route.method != "GET":
            raise ValueError(f"{route.operation_id}: a direct route reads a request model")
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
    `prepare(endpoint)` what is mounted for an endpoint.

    FastAPI analyses each endpoint's signature and models when a route is built, which for the
    whole table costs a quarter of a second; the built routes hold nothing of the app they
    serve, so each table is built once per process and every app built after shares them
    (`app.dependency_overrides` does not reach shared routes; nothing here uses it)."""
    key = (id(routes), guard, prepare)
    built = _BUILT.get(key)
    if built is None or built[0] is not routes:
        # The cache holds `routes` itself, so its id cannot name another table while cached.
        built = (routes, _build_routes(routes, guard, prepare))
        _BUILT[key] = built
    app.router.routes.extend(built[1])


def _matching_order(mounted: list[BaseRoute]) -> list[BaseRoute]:
    """The routes in the order the router tries them: the table's, but for the direct routes
    (the hot ones: the token endpoint, introspection, the JWKS and discovery), first. The router
    stops at the first route that matches a request, so this answers every request as the
    table's order does: a direct route's path has no parameters and no other route can match
    it (checked here)."""
    direct = [
        route
        for route in mounted
        if isinstance(route, TableRoute) and route.entry is not None and route.entry.direct
    ]
    for route in direct:
        others = [
            other
            for other in mounted
            if other is not route
            and isinstance(other, APIRoute)
            and other.path_regex.match(route.path)
        ]
        if "{" in route.path or others:
            raise ValueError(
                f"{route.path}: a direct route must be the only route its path can reach"
            )
    return direct + [route for route in mounted if route not in direct]


_BUILT: dict[tuple[int, object, object], tuple[Sequence[Route], tuple[BaseRoute, ...]]] = {}


def _build_routes(
    routes: Sequence[Route],
    guard: Callable[[Access], Callable[..., Any]],
    prepare: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> tuple[BaseRoute, ...]:
    check_table(routes)
    router = APIRouter(redirect_slashes=False)
    for route in routes:
        if route.status is Status.RETIRED:
            router.add_api_route(
                route.path,
                _retired_endpoint(route),
                methods=[route.method],
                include_in_schema=False,
            )
            continue
        assert route.endpoint is not None
        bearer = not route.access.public and route.status is not Status.CONSOLE
        dependencies = [Depends(guard(route.access))] if bearer else []
        router.add_api_route(
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
        mounted = router.routes[-1]
        assert isinstance(mounted, TableRoute)
        mounted.entry = route
        mounted.literal = route.path.split("{", 1)[0]
        mounted.position = len(router.routes) - 1
    return tuple(_matching_order(router.routes))
