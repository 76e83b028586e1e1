"""Invalid input on every write route leaves no trace.

Table-driven over every route in `ROUTES` with a request model: a corpus of bad bodies (wrong
types, nulls, extra and missing fields, huge strings, unicode and NUL, invalid JSON, empty
bodies, oversized and deeply nested payloads) generated from each route's valid body, plus the
domain cases (bad stream ids, topic-style ids, bad queries, unknown query sets, duplicate names,
cross-org references). Each must answer 4xx `application/problem+json` with a known `code`,
and leave row counts, every org's policy_rev, the audit log and every row's contents unchanged.
Nothing may answer 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from control.errors import ERROR_CODES, PROBLEM_MEDIA_TYPE
from control.kit.routing import Route
from tests.admin_world import (
    ACTIVE,
    Seeded,
    Snapshot,
    route_id,
    snapshot,
    valid_body,
)
from tests.factories import Api, database_text

WRITE_ROUTES = [r for r in ACTIVE if r.request_model is not None]
JSON_HEADERS = {"content-type": "application/json"}

# --- the generic corpus ---------------------------------------------------------------------

HUGE = "x" * 5000
ODD_UNICODE = "\u202e\U0001f642\u200b\ufeff\u0301"
# Bad values by the type of the field's valid value: wrong types, null, NUL, huge, odd unicode.
BAD_VALUES: dict[type, list[Any]] = {
    str: [None, 12345, [], "a\x00b", HUGE, ODD_UNICODE],
    bool: [None, "text", []],
    int: [None, "text", 2**70, 1.5],
    list: [None, "text", [None], [12345], ["a\x00b"], [HUGE], ["a"] * 2000],
    dict: [None, [], {"a\x00": "v"}, {"k": None}],
}
RAW_BODIES: list[tuple[str, bytes | None, dict[str, str]]] = [
    ("no body", None, {}),
    ("empty body", b"", JSON_HEADERS),
    ("truncated JSON", b'{"a": ', JSON_HEADERS),
    ("single quotes", b"{'a': 1}", JSON_HEADERS),
    ("trailing garbage", b"{} {}", JSON_HEADERS),
    ("array", b"[]", JSON_HEADERS),
    ("null", b"null", JSON_HEADERS),
    ("number", b"42", JSON_HEADERS),
    ("string", b'"text"', JSON_HEADERS),
    ("invalid UTF-8", b'{"a": "\xff\xfe"}', JSON_HEADERS),
    ("NaN", b'{"a": NaN}', JSON_HEADERS),
    ("lone surrogate key", b'{"\\ud800": 1}', JSON_HEADERS),
    ("NUL byte", b'{"a\x00": 1}', JSON_HEADERS),
    ("deeply nested", b"[" * 30000 + b"]" * 30000, JSON_HEADERS),
    ("deeply nested object", b'{"a":' * 20000 + b"1" + b"}" * 20000, JSON_HEADERS),
    ("oversized", b'{"a": "' + b"x" * 70000 + b'"}', JSON_HEADERS),
    ("form encoded", b"a=1&b=2", {"content-type": "application/x-www-form-urlencoded"}),
    ("plain text", b"hello", {"content-type": "text/plain"}),
]


@dataclass
class Case:
    label: str
    content: bytes | None
    headers: dict[str, str]
    # True: the route's own request model rejects it, so the service must answer 4xx.
    # False: the model accepts it (e.g. an optional field set to null); it may succeed, but a
    # 4xx must still leave no trace and nothing may answer 5xx.
    must_fail: bool


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def _model_rejects(model: type[BaseModel], content: bytes | None) -> bool:
    try:
        model.model_validate_json(content or b"")
    except ValidationError:
        return True
    return False


def _mutations(
    body: dict[str, Any], model: type[BaseModel], top: bool = True
) -> Iterator[tuple[str, Any]]:
    """(label, mutated body) for each field of `body`, and one level into nested objects."""
    yield "extra field", {**body, "unexpected": 1}
    if top:
        yield "empty object", {}
    for name, value in body.items():
        field = model.model_fields[name]
        if field.is_required():
            yield f"{name} missing", {k: v for k, v in body.items() if k != name}
        for bad in BAD_VALUES[type(value)]:
            yield f"{name}={bad!r:.40}", {**body, name: bad}
        nested = field.annotation
        if isinstance(value, dict) and isinstance(nested, type) and issubclass(nested, BaseModel):
            for inner, mutated in _mutations(value, nested, top=False):
                yield f"{name}.{inner}", {**body, name: mutated}


NO_BODY = ("no body", "empty body")


def corpus(route: Route, body: dict[str, Any]) -> list[Case]:
    assert route.request_model is not None
    model = route.request_model
    # A route whose every field is optional takes no body at all as `{}` (a credential).
    optional_body = all(not field.is_required() for field in model.model_fields.values())
    cases = [
        Case(label, content, headers, must_fail=not (optional_body and label in NO_BODY))
        for label, content, headers in RAW_BODIES
    ]
    cases.append(Case("valid JSON as text/plain", _encode(body), {"content-type": "text/plain"},
                      must_fail=False))  # fmt: skip
    for label, mutated in _mutations(body, model):
        content = _encode(mutated)
        cases.append(Case(label, content, JSON_HEADERS, _model_rejects(model, content)))
    return cases


# --- the domain cases ----------------------------------------------------------------------


@dataclass
class Domain:
    """A body the request model accepts but the service must refuse."""

    label: str
    build: Callable[[Seeded, Seeded], dict[str, Any]]  # (org A, org B) -> body
    status: int
    code: str
    path: Callable[[Seeded, Seeded], str] | None = None  # default: org A's row
    as_org_b_admin: bool = False
    detail_mentions: str | None = None


def _rule(a: Seeded, **changes: Any) -> dict[str, Any]:
    body = {
        "effect": "allow",
        "subjects": {"roles": ["member"]},
        "streams": {"kind": "run", "relation": "org"},
        "query_sets": [a.query_set],
        "ops": ["subscribe"],
    }
    body.update(changes)
    return body


BAD_STREAM_IDS = [
    "run",
    "run:",
    ":abc",
    "Run:abc",
    "run:a b",
    "run:a/b",
    "run:a:b",
    "org:acme:workers",
    "run:01J9ZK:events",
    "worker:w-7/lifecycle",
    "1run:x",
    "r" * 33 + ":x",
    "run:" + "k" * 129,
    "run:x;DROP TABLE streams",
    " run:x",
    "run:x\n",
    "run:\x00",
    "run:é",
]
BAD_QUERIES = [
    "SELECT * FROM t;",
    "SELECT * FROM t; DROP TABLE principals",
    "SELECT * FROM t -- comment",
    "SELECT * FROM t /* comment */",
    "/* c */ SELECT * FROM t",
    "DELETE FROM t",
    "DROP TABLE t",
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "SELECT a FROM t",
    "SELECT * FROM a, b",
    "SELECT * FROM a JOIN b ON a.x = b.y",
    "SELECT * FROM t UNION SELECT * FROM u",
    "SELECT * FROM t WHERE a = (SELECT 1)",
    "SELECT * FROM t WHERE a = 1 OR b = 2",
    "SELECT * FROM t WHERE a = 'x' ; --'",
    "SELECT * FROM t WHERE a = 'it''s'",
    'SELECT * FROM "t"',
    "SELECT * FROM t\x00",
    "SELECT *",
    "   ",
]


def _stream_cases() -> list[Domain]:
    cases = [
        Domain(f"id {bad!r}", lambda a, b, bad=bad: {"id": bad}, 422, "invalid_request")
        for bad in BAD_STREAM_IDS
    ]
    cases += [
        Domain("duplicate id", lambda a, b: {"id": a.stream_id}, 409, "conflict"),
        Domain("another org's id", lambda a, b: {"id": b.stream_id}, 409, "conflict"),
        Domain("unknown owner", lambda a, b: {"id": "run:n1", "owner_id": "prn_nobody"}, 422,
               "invalid_request"),
        Domain("owner of another org", lambda a, b: {"id": "run:n1", "owner_id": b.principal_id},
               422, "invalid_request"),
    ]  # fmt: skip
    return cases


def _query_set_cases(create: bool) -> list[Domain]:
    def body(a: Seeded, **changes: Any) -> dict[str, Any]:
        # A definition the catalog serves (tests/catalog.json): only what each case changes
        # makes it refused.
        base: dict[str, Any] = {
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_event_view"],
        }
        if create:
            base["name"] = "run_checkpoints"  # not defined in the seeded org
        return {**base, **changes}

    cases = [
        Domain(
            f"query {bad!r}",
            lambda a, b, bad=bad: body(a, queries=["SELECT * FROM run_event_view", bad]),
            422,
            "invalid_request",
            detail_mentions="query 1",
        )
        for bad in BAD_QUERIES
    ]
    cases += [
        Domain(f"stream kind {kind!r}", lambda a, b, kind=kind: body(a, stream_kinds=[kind]),
               422, "invalid_request")
        for kind in ["Run", "run:1", "r" * 33, "", "1run"]
    ]  # fmt: skip
    if create:
        cases += [
            Domain(f"name {name!r}", lambda a, b, name=name: body(a, name=name), 422,
                   "invalid_request")
            for name in ["Run-Events", "run events", "x@1", "", "1run", "n" * 65, "run_events\n"]
        ]  # fmt: skip
        cases.append(
            Domain("duplicate name", lambda a, b: body(a, name=a.query_set), 409, "conflict")
        )
    else:
        cases += [
            Domain("unknown name", lambda a, b: body(a), 404, "not_found",
                   path=lambda a, b: "/api/admin/query-sets/nope_set"),
            Domain("another org's name", lambda a, b: body(a), 404, "not_found",
                   path=lambda a, b: f"/api/admin/query-sets/{b.query_set}"),
            Domain("drops a kind a rule uses", lambda a, b: body(a, stream_kinds=["job"]), 409,
                   "conflict"),
        ]  # fmt: skip
    return cases


def _rule_cases(update: bool) -> list[Domain]:
    cases = [
        Domain("unknown query set", lambda a, b: _rule(a, query_sets=["nope_events"]), 422,
               "invalid_request", detail_mentions="nope_events"),
        Domain("another org's query set", lambda a, b: _rule(a, query_sets=[b.query_set]), 422,
               "invalid_request", detail_mentions=None),
        Domain("query set of another stream kind",
               lambda a, b: _rule(a, streams={"kind": "worker", "relation": "org"}), 422,
               "invalid_request"),
        Domain("ids relation without ids",
               lambda a, b: _rule(a, streams={"kind": "run", "relation": "ids"}), 422,
               "invalid_request"),
        Domain("org relation with ids",
               lambda a, b: _rule(a, streams={"kind": "run", "relation": "org",
                                              "ids": [a.stream_id]}), 422, "invalid_request"),
        Domain("id of another kind",
               lambda a, b: _rule(a, streams={"kind": "run", "relation": "ids",
                                              "ids": ["worker:w-7"]}), 422, "invalid_request"),
        Domain("unknown principal",
               lambda a, b: _rule(a, subjects={"principal_ids": ["prn_nobody"]}), 422,
               "invalid_request"),
        Domain("another org's principal",
               lambda a, b: _rule(a, subjects={"principal_ids": [b.principal_id]}), 422,
               "invalid_request"),
        Domain("no subjects", lambda a, b: _rule(a, subjects={}), 422, "invalid_request"),
        Domain("allow without ops", lambda a, b: _rule(a, ops=[]), 422, "invalid_request"),
        Domain("deny with a TTL", lambda a, b: _rule(a, effect="deny", max_ttl_seconds=120), 422,
               "invalid_request"),
        Domain("TTL below the minimum", lambda a, b: _rule(a, max_ttl_seconds=59), 422,
               "invalid_request"),
        Domain("TTL above the maximum", lambda a, b: _rule(a, max_ttl_seconds=901), 422,
               "invalid_request"),
        Domain("unknown op", lambda a, b: _rule(a, ops=["publish"]), 422, "invalid_request"),
        Domain("unknown effect", lambda a, b: _rule(a, effect="maybe"), 422, "invalid_request"),
        Domain("unknown relation",
               lambda a, b: _rule(a, streams={"kind": "run", "relation": "team"}), 422,
               "invalid_request"),
    ]  # fmt: skip
    cases += [
        Domain(f"stream id {bad!r}",
               lambda a, b, bad=bad: _rule(a, streams={"kind": "run", "relation": "ids",
                                                       "ids": [bad]}), 422, "invalid_request")
        for bad in BAD_STREAM_IDS
    ]  # fmt: skip
    if update:
        cases += [
            Domain("unknown rule", lambda a, b: _rule(a), 404, "not_found",
                   path=lambda a, b: "/api/admin/grant-rules/rule_nope"),
            Domain("another org's rule", lambda a, b: _rule(a), 404, "not_found",
                   path=lambda a, b: f"/api/admin/grant-rules/{b.rule_id}"),
        ]  # fmt: skip
    return cases


DOMAIN_CASES: dict[str, list[Domain]] = {
    "register_stream": _stream_cases(),
    "create_principal": [
        Domain("unknown kind", lambda a, b: {"kind": "robot", "name": "r"}, 422,
               "invalid_request"),
        Domain("bad role", lambda a, b: {"kind": "user", "name": "r", "roles": ["Admin"]}, 422,
               "invalid_request"),
        Domain("empty name", lambda a, b: {"kind": "user", "name": ""}, 422, "invalid_request"),
        Domain("control character in name", lambda a, b: {"kind": "user", "name": "a\nb"}, 422,
               "invalid_request"),
        Domain("operator from a non-operator",
               lambda a, b: {"kind": "user", "name": "r", "roles": ["operator"]}, 403,
               "forbidden", as_org_b_admin=True),
    ],
    "update_principal": [
        Domain("bad role", lambda a, b: {"roles": ["bad role"]}, 422, "invalid_request"),
        Domain("operator from a non-operator", lambda a, b: {"roles": ["operator"]}, 403,
               "forbidden", as_org_b_admin=True,
               path=lambda a, b: f"/api/admin/principals/{b.principal_id}"),
        Domain("unknown principal", lambda a, b: {"disabled": True}, 404, "not_found",
               path=lambda a, b: "/api/admin/principals/prn_nobody"),
        Domain("another org's principal", lambda a, b: {"disabled": True}, 404, "not_found",
               path=lambda a, b: f"/api/admin/principals/{b.principal_id}"),
    ],
    "create_credential": [
        Domain("expiry in the past", lambda a, b: {"expires_at": "2001-01-01T00:00:00Z"}, 422,
               "invalid_request"),
        Domain("expiry without a timezone", lambda a, b: {"expires_at": "2099-01-01T00:00:00"},
               422, "invalid_request"),
        Domain("unknown principal", lambda a, b: {}, 404, "not_found",
               path=lambda a, b: "/api/admin/principals/prn_nobody/credentials"),
        Domain("another org's principal", lambda a, b: {}, 404, "not_found",
               path=lambda a, b: f"/api/admin/principals/{b.principal_id}/credentials"),
    ],
    "create_query_set": _query_set_cases(create=True),
    "update_query_set": _query_set_cases(create=False),
    "create_grant_rule": _rule_cases(update=False),
    "update_grant_rule": _rule_cases(update=True),
    "explain": [
        Domain("unknown principal", lambda a, b: {"principal_id": "prn_x", "streams": ["run:a"]},
               404, "not_found"),
        Domain("another org's principal",
               lambda a, b: {"principal_id": b.principal_id, "streams": ["run:a"]}, 404,
               "not_found"),
        Domain("no streams", lambda a, b: {"principal_id": a.principal_id, "streams": []}, 422,
               "invalid_request"),
        Domain("too many streams",
               lambda a, b: {"principal_id": a.principal_id,
                             "streams": [f"run:s{i}" for i in range(65)]}, 422,
               "too_many_streams"),
        Domain("topic-style stream",
               lambda a, b: {"principal_id": a.principal_id, "streams": ["org:acme:workers"]},
               422, "invalid_request"),
        Domain("bad query set name",
               lambda a, b: {"principal_id": a.principal_id, "streams": ["run:a"],
                             "query_sets": ["Bad Name"]}, 422, "invalid_request"),
    ],
    "mint_sync_token": [
        Domain("no streams", lambda a, b: {"streams": []}, 422, "invalid_request"),
        Domain("too many streams", lambda a, b: {"streams": [f"run:s{i}" for i in range(65)]},
               422, "too_many_streams"),
        Domain("topic-style stream", lambda a, b: {"streams": ["org:acme:workers"]}, 422,
               "invalid_request"),
        Domain("TTL too short", lambda a, b: {"streams": [a.stream_id], "ttl_seconds": 59}, 422,
               "invalid_request"),
        Domain("TTL too long", lambda a, b: {"streams": [a.stream_id], "ttl_seconds": 901}, 422,
               "invalid_request"),
        Domain("unknown op", lambda a, b: {"streams": [a.stream_id], "ops": ["publish"]}, 422,
               "invalid_request"),
        Domain("bad query set ref", lambda a, b: {"streams": [a.stream_id],
                                                  "query_sets": [f"{a.query_set}@0"]}, 422,
               "invalid_request"),
        Domain("bad device id", lambda a, b: {"streams": [a.stream_id], "device_id": "a b"},
               422, "invalid_request"),
    ],
    "create_trusted_issuer": [
        Domain("duplicate issuer", lambda a, b: {"issuer": f"https://idp.{a.tag}.example",
                                                 "audiences": ["other"]}, 409, "conflict"),
        Domain("not a URL", lambda a, b: {"issuer": "idp.example", "audiences": ["x"]}, 422,
               "invalid_request"),
        Domain("symmetric algorithm", lambda a, b: {"issuer": "https://n.example",
                                                    "audiences": ["x"], "algorithms": ["HS256"]},
               422, "invalid_request"),
    ],
    "update_trusted_issuer": [
        Domain("another org's issuer", lambda a, b: {"issuer": "https://n.example",
                                                     "audiences": ["x"]}, 404, "not_found",
               path=lambda a, b: f"/api/admin/trusted-issuers/{b.issuer_id}"),
    ],
    "create_revocation": [
        Domain("unknown kind", lambda a, b: {"kind": "token", "value": "x"}, 422,
               "invalid_request"),
        Domain("another org's subject", lambda a, b: {"kind": "subject", "value": b.principal_id},
               422, "invalid_request"),
        Domain("another org's credential",
               lambda a, b: {"kind": "credential", "value": b.credential_id}, 422,
               "invalid_request"),
    ],
    "apply_policy": [
        Domain("a rule naming another org's principal", lambda a, b: {"document": {
            "grant_rules": [{"effect": "allow", "subjects": {"principal_ids": [b.principal_id]},
                             "streams": {"kind": "run", "relation": "org"},
                             "query_sets": [], "ops": ["subscribe"]}]}}, 422, "invalid_request"),
        Domain("an owner of another org", lambda a, b: {"document": {
            "streams": [{"id": "run:other-owner", "owner_id": b.principal_id}]}}, 422,
               "invalid_request"),
    ],
}  # fmt: skip


# --- the tests -----------------------------------------------------------------------------


def send(api: Api, route: Route, path: str, case: Case) -> httpx.Response:
    headers = {**api.headers(), **case.headers}
    return api.client.request(route.method, path, content=case.content, headers=headers)


def check_refusal(response: httpx.Response) -> str | None:
    """Why `response` is not a proper 4xx problem, or None."""
    if not 400 <= response.status_code < 500:
        return f"answered {response.status_code}: {response.text[:300]}"
    if response.headers.get("content-type") != PROBLEM_MEDIA_TYPE:
        return f"content-type {response.headers.get('content-type')}"
    body = response.json()
    if body.get("code") not in ERROR_CODES or body.get("status") != response.status_code:
        return f"not a problem document: {body}"
    if ERROR_CODES[body["code"]][0] != response.status_code:
        return f"code {body['code']} with status {response.status_code}"
    return None


def check_oauth_refusal(response: httpx.Response) -> str | None:
    """Why `response` is not a proper RFC 6749 error (the token route's form bodies), or None."""
    if not 400 <= response.status_code < 500:
        return f"answered {response.status_code}: {response.text[:300]}"
    if response.headers.get("content-type") == PROBLEM_MEDIA_TYPE:
        return check_refusal(response)  # 413 and 429 stay problems: OAuth has no codes for them
    if not isinstance(response.json().get("error"), str):
        return f"not an OAuth error: {response.text[:300]}"
    return None


def verdict(case: Case, response: httpx.Response, route: Route | None = None) -> list[str]:
    """What is wrong with the service's answer to a bad body (nothing: an empty list)."""
    if response.status_code >= 500:
        return [f"{case.label}: {response.status_code} {response.text[:200]}"]
    media = case.headers.get("content-type", "").split(";")[0]
    oauth = route is not None and media in route.media_endpoints
    if case.must_fail or response.status_code >= 400:
        why = check_oauth_refusal(response) if oauth else check_refusal(response)
        if why is not None:
            return [f"{case.label}: {why}"]
    return []


def test_revocation_value_with_nul_is_not_a_500(seeded_orgs: tuple[Seeded, Seeded]) -> None:
    a, _ = seeded_orgs
    response = a.admin.post("/api/admin/revocations", {"kind": "jti", "value": "a\x00b"})
    assert response.status_code < 500, response.text


def test_every_write_route_is_covered() -> None:
    assert len(WRITE_ROUTES) >= 10
    uncovered = [route_id(r) for r in WRITE_ROUTES if r.operation_id not in DOMAIN_CASES]
    # Introspection answers any well-formed request (an unknown token is `active: false`), so
    # it has no domain refusals; every other write route must list some.
    assert uncovered == ["POST /api/sync/introspect"], uncovered


def test_valid_bodies_are_accepted(
    seeded_orgs: tuple[Seeded, Seeded],
    undo: Callable[[], AbstractContextManager[None]],
    subtests: pytest.Subtests,
) -> None:
    """The baseline the corpus mutates really is valid, so each refusal is the mutation's."""
    a, _ = seeded_orgs
    for route in WRITE_ROUTES:
        with subtests.test(msg=route_id(route)), undo():
            response = a.caller_for(route).request(
                route.method, a.fill(route), valid_body(route, a)
            )
            assert response.status_code in (200, 201), response.text


def test_bad_bodies_change_nothing(
    seeded_orgs: tuple[Seeded, Seeded],
    session: Session,
    undo: Callable[[], AbstractContextManager[None]],
    subtests: pytest.Subtests,
) -> None:
    a, _ = seeded_orgs
    for route in WRITE_ROUTES:
        api, path = a.caller_for(route), a.fill(route)
        cases = list(corpus(route, valid_body(route, a)))
        with subtests.test(msg=route_id(route)), undo():
            failures: list[str] = []
            # The text of every row covers row counts, policy_rev and the audit log at once
            # (the domain cases below also compare them one by one). Bodies the model refuses
            # must all leave it unchanged; only when they do not is each one checked alone.
            refused = [case for case in cases if case.must_fail]
            before = database_text(session)
            for case in refused:
                failures += verdict(case, send(api, route, path, case), route)
            if database_text(session) != before:
                culprits = []
                for case in refused:
                    text = database_text(session)
                    send(api, route, path, case)
                    if database_text(session) != text:
                        culprits.append(f"{case.label}: rows changed")
                failures += culprits or ["a refused body changed rows (not reproducible alone)"]
            # Bodies the model accepts may succeed; a refusal among them must change nothing.
            for case in cases:
                if not case.must_fail:
                    text = database_text(session)
                    response = send(api, route, path, case)
                    failures += verdict(case, response, route)
                    if response.status_code >= 400 and database_text(session) != text:
                        failures.append(f"{case.label}: refused, but rows changed")
            assert not failures, "\n".join(failures)


def test_domain_refusals_change_nothing(
    seeded_orgs: tuple[Seeded, Seeded],
    session: Session,
    undo: Callable[[], AbstractContextManager[None]],
    subtests: pytest.Subtests,
) -> None:
    a, b = seeded_orgs
    routes = {route.operation_id: route for route in WRITE_ROUTES}
    for operation_id, cases in DOMAIN_CASES.items():
        route = routes[operation_id]
        before: Snapshot | None = None
        with undo():
            for case in cases:
                with subtests.test(msg=f"{route_id(route)}: {case.label}"):
                    start = before if before is not None else snapshot(session)
                    before = None
                    api = b.admin if case.as_org_b_admin else a.caller_for(route)
                    path = case.path(a, b) if case.path else a.fill(route)
                    response = api.request(route.method, path, case.build(a, b))
                    # The next case starts from this one's end state (normally unchanged).
                    before = after = snapshot(session)
                    why = check_refusal(response)
                    assert why is None, why
                    problem = response.json()
                    assert (response.status_code, problem["code"]) == (case.status, case.code), (
                        problem
                    )
                    if case.detail_mentions:
                        assert case.detail_mentions in problem["detail"], problem
                    assert after.counts == start.counts, start.diff(after)
                    assert after.policy_revs == start.policy_revs, start.diff(after)
                    assert after.audit_events == start.audit_events
                    assert after == start, start.diff(after)
