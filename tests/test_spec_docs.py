"""The spec explains itself: every operation has a summary and a description saying who may call
it, every JSON request body and every JSON success response has an example, every property of
the request and response models has a description, and every example is valid for its model.

Walks the spec generated from the route table, as `control openapi export` writes it."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from control.cli import render_spec
from control.kit.routing import Route, Status
from control.routes import ROUTES

ACTIVE = [route for route in ROUTES if route.status is Status.ACTIVE]
JSON = "application/json"
Spec = dict[str, Any]


def route_id(route: Route) -> str:
    return f"{route.method} {route.path}"


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Spec:
    with pytest.MonkeyPatch.context() as patch:
        # Settings built without secrets must not write dev secrets into the working tree.
        patch.setenv("CONTROL_DEV_SECRETS_FILE", str(tmp_path_factory.mktemp("spec") / "s.json"))
        patch.delenv("CONTROL_DATABASE_URL", raising=False)
        document: Spec = json.loads(render_spec())
    return document


def operation_of(spec: Spec, route: Route) -> Spec:
    operation: Spec = spec["paths"][route.path][route.method.lower()]
    return operation


def resolve(spec: Spec, schema: Spec) -> Spec:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def examples_of(spec: Spec, media: Spec) -> list[Any]:
    """The examples a reader (and Swagger UI) sees for a media type: its own `example` and
    `examples`, or else those of its schema."""
    found: list[Any] = []
    if "example" in media:
        found.append(media["example"])
    found += [example["value"] for example in media.get("examples", {}).values()]
    found += resolve(spec, media.get("schema", {})).get("examples", [])
    return found


def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation names, at any depth (`list[X]`, `X | None`, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in typing.get_args(annotation):
        yield from models_in(argument)


def documented_models() -> list[type[BaseModel]]:
    """Every model a route's request or response is made of, nested ones included."""
    seen: dict[type[BaseModel], None] = {}
    pending = [
        model
        for route in ACTIVE
        for annotation in (route.request_model, route.response_model)
        for model in models_in(annotation)
    ]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen[model] = None
        for field in model.model_fields.values():
            pending += models_in(field.annotation)
    return list(seen)


MODELS = documented_models()


def schema_name(model: type[BaseModel]) -> str:
    # FastAPI names a component after the model's title: `Page[X]` becomes `Page_X_`.
    title = model.model_json_schema(ref_template="{model}").get("title", model.__name__)
    return str(title).replace("[", "_").replace("]", "_").replace(", ", "__")


def model_examples(model: type[BaseModel]) -> list[Any]:
    examples: list[Any] = model.model_json_schema().get("examples", [])
    return examples


def valid(adapter: TypeAdapter[Any], example: Any) -> None:
    # As a client sends it and a reader copies it: JSON text, not Python objects.
    adapter.validate_json(json.dumps(example))


# --- operations ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ACTIVE, ids=route_id)
def test_operation_has_summary_and_description(route: Route, spec: Spec) -> None:
    operation = operation_of(spec, route)
    assert operation.get("summary") == route.summary
    description = operation.get("description", "")
    assert len(description.split()) >= 15, f"{route_id(route)}: describe the operation"
    assert description.strip() != route.summary
    # Who may call it, in the words of the table's access declaration.
    if route.access.public:
        assert "no credential" in description.lower(), f"{route_id(route)}: say who may call"
    for role in route.access.roles:
        assert f"`{role}`" in description, f"{route_id(route)}: name the `{role}` role"


@pytest.mark.parametrize("route", [r for r in ACTIVE if r.request_model], ids=route_id)
def test_json_request_body_has_a_valid_example(route: Route, spec: Spec) -> None:
    media = operation_of(spec, route)["requestBody"]["content"][JSON]
    examples = examples_of(spec, media)
    assert examples, f"{route_id(route)}: the JSON request body has no example"
    assert route.request_model is not None
    adapter: TypeAdapter[Any] = TypeAdapter(route.request_model)
    for example in examples:
        valid(adapter, example)


@pytest.mark.parametrize("route", ACTIVE, ids=route_id)
def test_json_success_response_has_a_valid_example(route: Route, spec: Spec) -> None:
    responses = operation_of(spec, route)["responses"]
    successes = {status: r for status, r in responses.items() if status.startswith("2")}
    assert successes, f"{route_id(route)}: no success response"
    for status, response in successes.items():
        media = response.get("content", {}).get(JSON)
        if media is None:
            assert status == "204", f"{route_id(route)}: {status} has no JSON body"
            continue
        examples = examples_of(spec, media)
        assert examples, f"{route_id(route)}: the {status} response has no example"
        adapter: TypeAdapter[Any] = TypeAdapter(route.response_model)
        for example in examples:
            valid(adapter, example)


# --- models -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_property_is_described(model: type[BaseModel], spec: Spec) -> None:
    components = spec["components"]["schemas"]
    # One component, or one per direction when a model reads differently in and out.
    name = schema_name(model)
    schemas = [components[n] for n in (name, f"{name}-Input", f"{name}-Output") if n in components]
    assert schemas, f"{model.__name__} is not in the spec as {name}"
    missing = {
        prop_name
        for schema in schemas
        for prop_name, prop in schema.get("properties", {}).items()
        if not str(prop.get("description", "")).strip()
    }
    assert not missing, f"{model.__name__}: describe {', '.join(sorted(missing))}"


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_model_examples_are_valid(model: type[BaseModel]) -> None:
    for example in model_examples(model):
        valid(TypeAdapter(model), example)
    for field in model.model_fields.values():
        if not field.examples:
            continue
        # A field's own examples, against the field's type and constraints.
        annotation: Any = field.annotation
        if field.metadata:
            annotation = typing.Annotated[(annotation, *field.metadata)]
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        for example in field.examples:
            valid(adapter, example)


def test_the_walk_finds_the_policy_models() -> None:
    names = {model.__name__ for model in MODELS}
    assert {
        "QuerySetCreate",
        "StreamCreate",
        "GrantRuleCreate",
        "RuleSubjects",
        "RuleStreams",
        "ExplainRequest",
        "ExplainResponse",
        "TokenRequest",
        "TokenResponse",
        "PrincipalCreate",
        "CredentialCreate",
        "RevocationCreate",
        "TrustedIssuerBody",
        "PolicyDocument",
    } <= names
