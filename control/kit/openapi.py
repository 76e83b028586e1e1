"""The OpenAPI document, generated from the routes the table mounted: deterministic, and cached
on the app once built."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from control.errors import Problem


def build_openapi(app: FastAPI) -> dict[str, Any]:
    cached: dict[str, Any] | None = getattr(app.state, "openapi_spec", None)
    if cached is not None:
        return cached
    # Apps built from one table share its routes (`mount_routes`), and so their document:
    # built once per process for the same routes and texts, which it holds so their ids stay
    # theirs.
    routes = tuple(app.routes)
    key = (app.title, app.version, app.description, tuple(id(route) for route in routes))
    shared = _SHARED.get(key)
    if shared is None:
        shared = (routes, _generate(app, routes))
        _SHARED[key] = shared
    app.state.openapi_spec = shared[1]
    return shared[1]


_SHARED: dict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, Any]]] = {}


def _generate(app: FastAPI, routes: tuple[Any, ...]) -> dict[str, Any]:
    # In the table's order, whatever order the router tries them in (`mount_routes`).
    # (Routes outside the table, retired ones, are never in the document: they go first.)
    ordered = sorted(routes, key=lambda route: getattr(route, "position", -1))
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=ordered
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema()
    for schema in schemas.values():
        for example in schema.get("examples", ()):
            _restore_nulls(schemas, schema, example)
    return spec


def _restore_nulls(schemas: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Put back the nulls FastAPI drops from a model's examples when it encodes the document
    (`exclude_none`): a required property an example object lacks was null in the model's
    example, since the model's examples are valid for it."""
    while True:
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
            continue
        # `X | None`: the value, not null, is an X.
        branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
        if len(branches) != 1:
            break
        schema = branches[0]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _restore_nulls(schemas, schema["items"], item)
    if not isinstance(value, dict):
        return
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value and _nullable(properties.get(name, {})):
            value[name] = None
    for name, item in value.items():
        if name in properties:
            _restore_nulls(schemas, properties[name], item)
        elif isinstance(schema.get("additionalProperties"), dict):
            _restore_nulls(schemas, schema["additionalProperties"], item)


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        branch.get("type") == "null" for branch in schema.get("anyOf", ())
    )
