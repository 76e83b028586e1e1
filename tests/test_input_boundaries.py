"""Input at the edges of what a client can send: pagination cursors that decode to text no
database can bind, request bodies streamed past the size limit, configuration that cannot run
the service, weak key material in prod, and numbers or booleans sent as strings.

Each must be refused with a clear answer (a problem document, or one line per problem from the
CLI), change nothing, never answer 5xx, and never echo a secret.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from control.errors import PROBLEM_MEDIA_TYPE
from control.identity.schemas import PrincipalUpdate
from control.policy.schemas import GrantRuleCreate
from control.settings import SettingsError, load_settings
from control.tokens.schemas import TokenRequest
from tests.admin_world import ACTIVE, Seeded, route_id, seed
from tests.cli import control_in_process, control_process
from tests.factories import OrgFixture, database_text
from tests.server import Server, running_server

LIST_ROUTES = [
    route
    for route in ACTIVE
    if route.method == "GET" and getattr(route.response_model, "__name__", "").startswith("Page[")
]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    return body


# --- pagination cursors --------------------------------------------------------------------


def raw_cursor(json_text: str) -> str:
    """A cursor whose decoded JSON text is exactly `json_text` (escapes kept as written)."""
    return base64.urlsafe_b64encode(json_text.encode()).decode().rstrip("=")


# JSON escapes that decode to lone UTF-16 surrogates: valid JSON, but a Python str that cannot
# be encoded as UTF-8, so no database driver can bind it.
SURROGATE_CURSORS = [
    raw_cursor('"\\ud800"'),
    raw_cursor('"\\udfff"'),
    raw_cursor('"prn_\\ud83d"'),
    raw_cursor('"\\ude00prn_"'),
    raw_cursor('"a\\udc80b"'),
]


@pytest.fixture
def seeded(org_a: OrgFixture) -> Seeded:
    return seed(org_a, "alpha")


def test_every_list_route_is_covered() -> None:
    assert {route.operation_id for route in LIST_ROUTES} >= {
        "list_principals",
        "list_credentials",
        "list_streams",
        "list_query_sets",
        "list_grant_rules",
        "list_trusted_issuers",
        "list_audit",
    }


def test_cursor_with_a_lone_surrogate_is_422_on_every_list_route(
    seeded: Seeded, session: Session, subtests: pytest.Subtests
) -> None:
    before = database_text(session)
    for route in LIST_ROUTES:
        path = seeded.fill(route)
        for cursor in SURROGATE_CURSORS:
            with subtests.test(msg=route_id(route), cursor=cursor):
                response = seeded.caller_for(route).get(path, params={"cursor": cursor})
                body = problem(response, 422, "invalid_request")
                assert body["detail"] == "`cursor` is not a cursor this service issued"
    assert database_text(session) == before


def test_issued_cursors_still_page(seeded: Seeded, subtests: pytest.Subtests) -> None:
    """The refusal is of cursors the service never issues: the ones it does issue still work."""
    for route in LIST_ROUTES:
        with subtests.test(msg=route_id(route)):
            api, path = seeded.caller_for(route), seeded.fill(route)
            first = api.ok("GET", f"{path}?limit=1", status=200)
            if first["next_cursor"] is None:
                continue
            rest = api.get(path, params={"cursor": first["next_cursor"]})
            assert rest.status_code == 200, rest.text
            assert first["items"][0] not in rest.json()["items"]


# --- request bodies over the limit -----------------------------------------------------------

LIMIT = 64 * 1024  # the default `max_body_bytes`
CHUNK = 8 * 1024


def chunked(body: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """A generator body: httpx sends it with `Transfer-Encoding: chunked`, no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def oversized_json() -> bytes:
    return b'{"name": "' + b"x" * (LIMIT + 1) + b'"}'


def test_chunked_body_over_the_limit_is_413_on_every_route(
    seeded: Seeded, session: Session, subtests: pytest.Subtests
) -> None:
    before = database_text(session)
    for route in ACTIVE:
        with subtests.test(msg=route_id(route)):
            # The 413 comes before authentication; a caller who may call the route shows
            # that it is the body alone that is refused.
            roles = route.access.roles
            own = route.access.public or roles & {"admin", "operator"}
            api = seeded.admin if own else seeded.caller_for(route)
            response = api.client.request(
                route.method,
                seeded.fill(route),
                content=chunked(oversized_json()),
                headers={**api.headers(), "content-type": "application/json"},
            )
            assert "content-length" not in response.request.headers
            assert response.request.headers["transfer-encoding"] == "chunked"
            body = problem(response, 413, "payload_too_large")
            assert body["detail"] == f"the request body exceeds {LIMIT} bytes"
    assert database_text(session) == before


def test_chunked_body_within_the_limit_still_works(seeded: Seeded) -> None:
    body = b'{"kind": "user", "name": "' + b"n" * 150 + b'"}'
    response = seeded.admin.client.post(
        "/api/admin/principals",
        content=chunked(body, size=16),
        headers={**seeded.admin.headers(), "content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "n" * 150


@pytest.fixture(scope="module")
def server(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(fresh_database_url, tmp_path_factory.mktemp("server")) as server:
        yield server


def test_real_server_answers_413_to_a_chunked_body_over_the_limit(server: Server) -> None:
    boot = server.bootstrap("acme")
    headers = {"authorization": f"Bearer {boot['api_key']}", "content-type": "application/json"}
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for path in ("/api/admin/principals", "/api/sync/token", "/api/admin/query-sets"):
            response = http.post(path, content=chunked(oversized_json()), headers=headers)
            assert response.request.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in response.request.headers
            problem(response, 413, "payload_too_large")
        # A declared length over the limit is refused the same way, before any body is read.
        declared = http.post("/api/admin/principals", content=oversized_json(), headers=headers)
        problem(declared, 413, "payload_too_large")
        # A chunked body within the limit reaches the handler whole.
        small = b'{"kind": "service", "name": "' + b"s" * 100 + b'"}'
        created = http.post(
            "/api/admin/principals", content=chunked(small, size=7), headers=headers
        )
        assert created.status_code == 201, created.text
        listed = http.get("/api/admin/principals", headers=headers, params={"limit": 500})
        names = [item["name"] for item in listed.json()["items"]]
        assert names.count("s" * 100) == 1
        assert not any(name.startswith("xxx") for name in names)


# --- configuration errors from the CLI -------------------------------------------------------

# Fake secrets, recognizable in any output. The first is not base64url: 25 alphabet characters
# and two that are not.
NOT_BASE64_SECRET = "zq7FAKESECRETx9vKp2wLm4Q7!!"
PASTED_SECRET = "Wk9FAKEPASTEDSECRETn3Rt8"

# Every command, as an operator would run it; none may act on a configuration that cannot run.
COMMANDS: list[tuple[str, ...]] = [
    ("serve", "--port", "0"),
    ("db", "upgrade"),
    ("openapi", "export", "--path", "spec.json"),
    ("openapi", "check", "--path", "spec.json"),
    ("keys", "rotate"),
    ("admin", "bootstrap", "--org", "acme"),
    ("token", "mint", "--principal", "prn_x", "--stream", "run:a"),
]
SECRET_COMMANDS = [c for c in COMMANDS if c[0] in {"serve", "keys", "admin", "token"}]
PREFIX = "control: configuration error: "


def random_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass
class Config:
    label: str
    env: dict[str, str]
    lines: list[str]  # exactly the lines the CLI must print, in order
    commands: list[tuple[str, ...]]
    secrets: tuple[str, ...] = ()
    # Its first command runs as a real `control` process (the rest, and other configs' commands,
    # run as `main` in the test's process: the same code, without a process start each).
    real_process: bool = False


CONFIGS = [
    Config(
        "a bad integer",
        {"CONTROL_TOKEN_TTL_MAX_SECONDS": "nine hundred"},
        [
            "CONTROL_TOKEN_TTL_MAX_SECONDS: input should be a valid integer, "
            "unable to parse string as an integer"
        ],
        COMMANDS,
    ),
    Config(
        "a secret pasted into an integer setting",
        {"CONTROL_MINT_BURST": PASTED_SECRET},
        [
            "CONTROL_MINT_BURST: input should be a valid integer, "
            "unable to parse string as an integer"
        ],
        COMMANDS,
        (PASTED_SECRET,),
        real_process=True,
    ),
    Config(
        "a key-encryption key that is not base64 (dev)",
        {"CONTROL_KEY_ENCRYPTION_KEY": NOT_BASE64_SECRET},
        ["CONTROL_KEY_ENCRYPTION_KEY is not valid base64url"],
        SECRET_COMMANDS,
        (NOT_BASE64_SECRET,),
    ),
    Config(
        "a key-encryption key that is not base64 (prod)",
        {
            "CONTROL_ENV": "prod",
            "CONTROL_ISSUER": "https://control.example.com",
            "CONTROL_KEY_ENCRYPTION_KEY": NOT_BASE64_SECRET,
            "CONTROL_CREDENTIAL_PEPPER": random_secret(),
        },
        ["CONTROL_KEY_ENCRYPTION_KEY is not valid base64url"],
        COMMANDS,
        (NOT_BASE64_SECRET,),
    ),
    Config(
        "prod without an https issuer",
        {
            "CONTROL_ENV": "prod",
            "CONTROL_ISSUER": "http://control.example.com",
            "CONTROL_KEY_ENCRYPTION_KEY": random_secret(),
            "CONTROL_CREDENTIAL_PEPPER": random_secret(),
        },
        ["CONTROL_ISSUER must be an https URL when CONTROL_ENV=prod"],
        COMMANDS,
    ),
    Config(
        "an all-zero key-encryption key in prod",
        {
            "CONTROL_ENV": "prod",
            "CONTROL_ISSUER": "https://control.example.com",
            "CONTROL_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(32)).decode(),
            "CONTROL_CREDENTIAL_PEPPER": random_secret(),
        },
        [
            "CONTROL_KEY_ENCRYPTION_KEY is not random key material (fewer than 8 distinct byte "
            "values); set 32 random bytes, base64url-encoded, when CONTROL_ENV=prod"
        ],
        [("serve", "--port", "0"), ("db", "upgrade"), ("admin", "bootstrap", "--org", "acme")],
    ),
    Config(
        "several problems in prod",
        {
            "CONTROL_ENV": "prod",
            "CONTROL_ISSUER": "http://control.example.com/",
            "CONTROL_TOKEN_TTL_MIN_SECONDS": "600",
            "CONTROL_KEY_ENCRYPTION_KEY": NOT_BASE64_SECRET,
        },
        [
            "CONTROL_ISSUER must not end with '/'",
            "CONTROL_TOKEN_TTL_MIN_SECONDS <= CONTROL_TOKEN_TTL_DEFAULT_SECONDS <= "
            "CONTROL_TOKEN_TTL_MAX_SECONDS must hold",
            "CONTROL_ISSUER must be an https URL when CONTROL_ENV=prod",
            "CONTROL_KEY_ENCRYPTION_KEY is not valid base64url",
            "CONTROL_CREDENTIAL_PEPPER (or CONTROL_CREDENTIAL_PEPPER_FILE) is required "
            "when CONTROL_ENV=prod",
        ],
        COMMANDS,
        (NOT_BASE64_SECRET,),
        real_process=True,
    ),
]


def windows(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
def test_configuration_errors_are_one_value_free_line_per_problem(
    config: Config, tmp_path: Path, subtests: pytest.Subtests, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("CONTROL_")}
    # One working directory per command, each with its own database and dev secrets file, so
    # "it touched nothing" is checked for each command alone. A `real_process` config's first
    # command runs as a real `control` process (that the installed command exits the same way);
    # every other command runs as `main` in this process, with the same environment and working
    # directory (sparing a process start each).
    for index, args in enumerate(config.commands):
        cwd = tmp_path / "-".join(args[:2])
        cwd.mkdir()
        env = {
            **base,
            "CONTROL_DATABASE_URL": f"sqlite:///{cwd / 'control.db'}",
            "CONTROL_DEV_SECRETS_FILE": str(cwd / "secrets.json"),
            **config.env,
        }
        with subtests.test(msg=" ".join(args)):
            if index == 0 and config.real_process:
                result = control_process(args, env, cwd)
            else:
                result = control_in_process(monkeypatch, args, env, cwd)
            output = result.stdout + result.stderr
            assert result.returncode == 2, output
            assert "Traceback" not in output
            assert result.stdout == ""
            assert result.stderr.splitlines() == [PREFIX + line for line in config.lines]
            for secret in config.secrets:
                leaked = [part for part in windows(secret) if part in output]
                assert not leaked, f"part of a secret was printed: {leaked}"
            assert sorted(path.name for path in cwd.iterdir()) == [], "the command acted"


# --- weak key material in prod -------------------------------------------------------------

SECRET_SETTINGS = ["key_encryption_key", "credential_pepper"]
WEAK_KEYS = {
    "all zeros": bytes(32),
    "one repeated byte": b"k" * 32,
    "two byte values": b"\x00\xff" * 16,
    "seven byte values": (b"abcdefg" * 5)[:32],
}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def prod_settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "_env_file": None,
        "env": "prod",
        "issuer": "https://control.example.com",
        "key_encryption_key": random_secret(),
        "credential_pepper": random_secret(),
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize("name", SECRET_SETTINGS)
@pytest.mark.parametrize("weak", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_prod_refuses_weak_key_material(name: str, weak: bytes, tmp_path: Path) -> None:
    setting = f"CONTROL_{name.upper()}"
    with pytest.raises(SettingsError) as inline:
        load_settings(**prod_settings(**{name: b64(weak)}))
    assert inline.value.problems == (
        f"{setting} is not random key material (fewer than 8 distinct byte values); "
        "set 32 random bytes, base64url-encoded, when CONTROL_ENV=prod",
    )
    assert b64(weak).rstrip("=") not in str(inline.value)

    path = tmp_path / "weak.key"
    path.write_text(b64(weak))
    with pytest.raises(SettingsError) as from_file:
        load_settings(**prod_settings(**{name: None, f"{name}_file": path}))
    [line] = from_file.value.problems
    assert line.startswith(f"{setting}_FILE is not random key material")
    assert str(path) not in line and b64(weak).rstrip("=") not in line


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_prod_accepts_random_key_material(name: str) -> None:
    raw = secrets.token_bytes(32)
    settings = load_settings(**prod_settings(**{name: b64(raw)}))
    assert getattr(settings, f"{name}_bytes")() == raw
    # The threshold itself: eight distinct byte values are enough.
    eight = bytes(range(8)) * 4
    assert getattr(load_settings(**prod_settings(**{name: b64(eight)})), f"{name}_bytes")() == eight


def test_dev_keeps_accepting_test_keys() -> None:
    settings = load_settings(
        _env_file=None, key_encryption_key=b64(b"k" * 32), credential_pepper=b64(bytes(32))
    )
    assert settings.env == "dev"
    assert settings.key_encryption_key_bytes() == b"k" * 32
    assert settings.credential_pepper_bytes() == bytes(32)


def test_unreadable_secret_file_is_named_without_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "kek"
    with pytest.raises(SettingsError) as refused:
        load_settings(**prod_settings(key_encryption_key=None, key_encryption_key_file=missing))
    assert refused.value.problems == (
        "CONTROL_KEY_ENCRYPTION_KEY_FILE cannot be read: No such file or directory",
    )


# --- numbers and booleans sent as strings --------------------------------------------------


TOKEN = "/api/sync/token"
RULE: dict[str, Any] = {
    "effect": "allow",
    "subjects": {"roles": ["member"]},
    "streams": {"kind": "run", "relation": "org"},
    "ops": ["subscribe"],
}
NOT_INTEGERS: list[Any] = ["300", "300.0", 300.0, True]
NOT_BOOLEANS: list[Any] = ["true", "false", "1", "0", "yes", "off", 1, 0]


@dataclass
class Coerced:
    method: str
    path: Callable[[Seeded], str]
    field: str
    bad: Any
    base: Callable[[Seeded], dict[str, Any]]  # a valid body, before `field` is set to `bad`

    @property
    def label(self) -> str:
        return f"{self.method} {self.field}={self.bad!r}"


def coerced_cases() -> list[Coerced]:
    def token(s: Seeded) -> dict[str, Any]:
        return {"streams": [s.stream_id]}

    def rule(s: Seeded) -> dict[str, Any]:
        return {**RULE, "query_sets": [s.query_set]}

    def principal(s: Seeded) -> str:
        return f"/api/admin/principals/{s.principal_id}"

    cases: list[Coerced] = []
    for bad in NOT_INTEGERS:
        cases += [
            Coerced("POST", lambda s: TOKEN, "ttl_seconds", bad, token),
            Coerced("POST", lambda s: "/api/admin/grant-rules", "max_ttl_seconds", bad, rule),
            Coerced("PUT", lambda s: f"/api/admin/grant-rules/{s.rule_id}", "max_ttl_seconds",
                    bad, rule),
        ]  # fmt: skip
    for bad in NOT_BOOLEANS:
        cases += [
            Coerced("POST", lambda s: TOKEN, "allow_partial", bad, token),
            Coerced("PATCH", principal, "disabled", bad, lambda s: {}),
        ]
    return cases


def test_numbers_and_booleans_sent_otherwise_are_422_and_change_nothing(
    seeded: Seeded, session: Session, subtests: pytest.Subtests
) -> None:
    before = database_text(session)
    for case in coerced_cases():
        with subtests.test(msg=case.label):
            path = case.path(seeded)
            api = seeded.member if path == TOKEN else seeded.admin
            response = api.request(case.method, path, {**case.base(seeded), case.field: case.bad})
            body = problem(response, 422, "invalid_request")
            assert [error["loc"] for error in body["errors"]] == [["body", case.field]], body
    assert database_text(session) == before


def test_json_numbers_and_booleans_are_still_accepted(seeded: Seeded) -> None:
    body = {"streams": [seeded.stream_id], "ttl_seconds": 120, "allow_partial": True}
    assert seeded.member.ok("POST", TOKEN, body, status=200)["expires_in"] == 120
    rule = {**RULE, "query_sets": [seeded.query_set], "max_ttl_seconds": 300}
    assert seeded.admin.ok("POST", "/api/admin/grant-rules", rule)["max_ttl_seconds"] == 300
    path = f"/api/admin/principals/{seeded.principal_id}"
    assert seeded.admin.ok("PATCH", path, {"disabled": True}, status=200)["disabled"] is True


@pytest.mark.parametrize(
    ("model", "field", "bad", "base"),
    [
        (TokenRequest, "ttl_seconds", "300", {"streams": ["run:a"]}),
        (TokenRequest, "allow_partial", "true", {"streams": ["run:a"]}),
        (TokenRequest, "allow_partial", 1, {"streams": ["run:a"]}),
        (PrincipalUpdate, "disabled", "false", {}),
        (GrantRuleCreate, "max_ttl_seconds", "300", RULE),
    ],
)
def test_request_models_refuse_coercion_in_both_validation_modes(
    model: type[BaseModel], field: str, bad: Any, base: dict[str, Any]
) -> None:
    """The models themselves refuse, given parsed JSON (as the app does) or JSON text."""
    body = {**base, field: bad}
    with pytest.raises(ValidationError) as python_mode:
        model.model_validate(body)
    with pytest.raises(ValidationError) as json_mode:
        model.model_validate_json(json.dumps(body))
    for refused in (python_mode, json_mode):
        assert [error["loc"] for error in refused.value.errors()] == [(field,)]
