"""Org isolation and role gates, generated from the route table.

For every admin read route, org B's admin never sees org A's rows: lists leave them out and
reads answer 404, exactly as for a row that does not exist; the same holds for every admin
write on a row. For every route that needs the admin (or operator) role, member, device and
service credentials get 403 `forbidden` and no credential gets 401. Each route is a subtest
over one seeded pair of orgs, so adding a route to the table is enough to bring it under these
tests (and a path parameter they cannot fill fails them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control.errors import PROBLEM_MEDIA_TYPE
from control.kit.routing import Access, Route
from tests.admin_world import (
    ACTIVE,
    Seeded,
    path_params,
    route_id,
    snapshot,
    valid_body,
)
from tests.factories import Api, OrgFixture

# Operator-only routes (signing keys) are issuer-wide: they hold no org's rows.
ORG_ROUTES = [r for r in ACTIVE if "admin" in r.access.roles]
ADMIN_READS = [r for r in ORG_ROUTES if r.method == "GET"]
ADMIN_WRITES_ON_A_ROW = [r for r in ORG_ROUTES if r.method != "GET" and path_params(r)]
GATED = [r for r in ACTIVE if r.access.roles & {"admin", "operator"}]
MISSING = "zz-missing-row-0"
ADMIN = Access.role("admin")


def missing_path(route: Route, value: str = MISSING) -> str:
    path = route.path
    for name in path_params(route):
        path = path.replace(f"{{{name}}}", value)
    return path


# Ids no row can have: each still reads as missing, never as a 500 (PostgreSQL refuses NUL in
# text, so such a key must not reach it).
UNBINDABLE = ["a%00b", "x" * 300, "%F0%9F%99%82", "run:a%00"]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    return body


def test_the_route_table_has_admin_routes() -> None:
    # Guards the loops below against silently becoming empty.
    assert {r.operation_id for r in ADMIN_READS} >= {
        "list_principals",
        "get_principal",
        "list_credentials",
        "list_streams",
        "get_stream",
        "list_query_sets",
        "get_query_set",
        "list_grant_rules",
        "get_grant_rule",
        "list_audit",
    }
    assert {r.operation_id for r in ADMIN_WRITES_ON_A_ROW} >= {
        "update_principal",
        "delete_principal",
        "create_credential",
        "revoke_credential",
        "delete_stream",
        "update_query_set",
        "delete_query_set",
        "update_grant_rule",
        "delete_grant_rule",
    }
    assert {"list_keys", "rotate_keys", "create_principal", "register_stream"} <= {
        r.operation_id for r in GATED
    }


def test_a_path_parameter_without_a_seeded_row_fails_loudly(client: TestClient) -> None:
    org = OrgFixture("org_1", "prn_1", Api(client, None), client)
    a = Seeded(org, "alpha", "prn_2", "cred_1", "prn_3", "run:x", "qs", "rule_1", "tis_1",
               Api(client, None), Api(client, None))  # fmt: skip
    new_route = Route("GET", "/api/admin/widgets/{widget_id}", "get_widget", "", "x", ADMIN)
    with pytest.raises(pytest.fail.Exception, match=r"\{widget_id\} names no seeded row"):
        a.fill(new_route)


def test_admin_never_reads_another_orgs_rows(
    seeded_orgs: tuple[Seeded, Seeded], subtests: pytest.Subtests
) -> None:
    a, b = seeded_orgs
    for route in ADMIN_READS:
        with subtests.test(msg=route_id(route)):
            if path_params(route):
                check_read_of_a_row(route, a, b)
            else:
                check_list(route, a, b)


def check_read_of_a_row(route: Route, a: Seeded, b: Seeded) -> None:
    path_a = a.fill(route)
    # Positive control: the path names a real row, which its own org's admin can read.
    own = a.admin.get(path_a)
    assert own.status_code == 200, (path_a, own.text)
    foreign = b.admin.get(path_a)
    problem = assert_problem(foreign, 404, "not_found")
    # Indistinguishable from a row that does not exist.
    missing = b.admin.get(missing_path(route))
    assert_problem(missing, 404, "not_found")
    assert problem == missing.json()
    for value in UNBINDABLE:
        assert assert_problem(b.admin.get(missing_path(route, value)), 404, "not_found") == problem
    leaked = [value for value in a.ids() if value in foreign.text]
    assert not leaked, leaked


def check_list(route: Route, a: Seeded, b: Seeded) -> None:
    listed = b.admin.get(route.path, params={"limit": 500})
    assert listed.status_code == 200, listed.text
    page = listed.json()
    leaked = [value for value in a.ids() if value in listed.text]
    assert not leaked, f"{route_id(route)} shows org B's admin org A's {leaked}"
    if "items" in page:
        assert page["items"], f"org B's own {route.path} is empty: the check would prove nothing"
        assert page["next_cursor"] is None
        assert all(item.get("org_id", b.org_id) == b.org_id for item in page["items"])
    else:  # a whole document of the org (the policy export): it holds org B's own rows
        assert any(value in listed.text for value in b.ids()), listed.text
    # Positive control: org A's admin sees its own rows through the same route.
    own = a.admin.get(route.path, params={"limit": 500})
    assert own.status_code == 200
    assert any(value in own.text for value in a.ids())


def test_admin_never_writes_another_orgs_rows(
    seeded_orgs: tuple[Seeded, Seeded],
    session: Session,
    undo: Callable[[], AbstractContextManager[None]],
    subtests: pytest.Subtests,
) -> None:
    a, b = seeded_orgs
    for route in ADMIN_WRITES_ON_A_ROW:
        with subtests.test(msg=route_id(route)):
            body = valid_body(route, b) if route.request_model is not None else None
            before = snapshot(session)
            foreign = b.admin.request(route.method, a.fill(route), body)
            problem = assert_problem(foreign, 404, "not_found")
            after = snapshot(session)
            assert after == before, before.diff(after)
            missing = b.admin.request(route.method, missing_path(route), body)
            assert missing.json() == problem
            for value in UNBINDABLE:
                odd = b.admin.request(route.method, missing_path(route, value), body)
                assert assert_problem(odd, 404, "not_found") == problem
            # Positive control, undone afterwards: org A's admin finds the row, so the 404
            # was the org filter (deleting a query set a rule uses is a 409: also found).
            with undo():
                own_body = valid_body(route, a) if body is not None else None
                own = a.admin.request(route.method, a.fill(route), own_body)
                assert own.status_code in (200, 201, 204, 409), own.text
            assert snapshot(session) == before


def test_role_gate(
    org_a: OrgFixture,
    org_b: OrgFixture,
    client: TestClient,
    session: Session,
    subtests: pytest.Subtests,
) -> None:
    callers: dict[str, tuple[Api, set[str]]] = {
        "member": (org_a.principal("member", "user"), {"member"}),
        "device": (org_a.principal("device", "device"), {"member"}),
        "service": (org_a.principal("service", "service"), {"service"}),
        "admin of a non-operator org": (org_b.admin, {"admin"}),
    }
    before = snapshot(session)
    for route in GATED:
        with subtests.test(msg=route_id(route)):
            body = {} if route.request_model is not None else None
            path = missing_path(route)
            refused = []
            for who, (api, roles) in callers.items():
                if roles & route.access.roles:
                    continue  # allowed; what it may do is tested elsewhere
                response = api.request(route.method, path, body)
                assert_problem(response, 403, "forbidden")
                assert "www-authenticate" not in response.headers
                refused.append(who)
            if "admin" in route.access.roles and route.access.roles <= {"admin", "operator"}:
                assert {"member", "device", "service"} <= set(refused), refused
            anonymous = client.request(route.method, path, json=body)
            assert_problem(anonymous, 401, "unauthorized")
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
    after = snapshot(session)
    assert (after.counts, after.policy_revs) == (before.counts, before.policy_revs)


def test_audit_of_one_org_never_names_another(seeded_orgs: tuple[Seeded, Seeded]) -> None:
    a, b = seeded_orgs
    events = b.admin.ok("GET", "/api/admin/audit?limit=500", status=200)["items"]
    assert events
    assert {event["org_id"] for event in events} == {b.org_id}
    text = json.dumps(events)
    assert not [value for value in a.ids() if value in text]
