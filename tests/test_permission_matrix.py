"""The permission matrix, derived from the route table: every active route against every kind
of caller, on both databases.

What each (route, caller) pair must answer is computed from the route's `Access` and its path
parameters, never listed per route, so a route added to `control/routes.py` is walked here with
no edit to this file (and one whose body or path ids the seeded world cannot supply fails
loudly). Each route is one test over a freshly seeded org; each caller's request runs in a
savepoint rolled back afterwards, so every caller meets the same rows and a delete by one cannot
starve the next.

The rule over principals: an admin may issue or revoke credentials for, disable, delete or
change the roles of a principal only when it holds every privileged role (`admin`, `operator`)
that principal holds. An admin without `operator` pointed at the operator's own principal is
therefore refused those writes, while still reading it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control.errors import ERROR_CODES, PROBLEM_MEDIA_TYPE
from control.kit.routing import Route
from tests.admin_world import (
    ACTIVE,
    Seeded,
    Snapshot,
    path_params,
    route_id,
    seed,
    snapshot,
    valid_body,
)
from tests.factories import Api, OrgFixture

# Breadth, not reach: every (route, caller) pair walks lines the focused tests cover, so the
# matrix runs outside coverage's tracer (harness/measurement.py).
pytestmark = pytest.mark.unmeasured

PRIVILEGED = frozenset({"admin", "operator"})
# The roles each kind of caller holds. `lesser_admin` is the same kind of caller as `admin`
# but aims its path ids at the operator's principal.
HOLDS: dict[str, frozenset[str]] = {
    "anonymous": frozenset(),
    "member": frozenset({"member"}),
    "device": frozenset({"member"}),
    "service": frozenset({"service"}),
    "admin": frozenset({"admin"}),
    "operator": frozenset({"admin", "operator"}),
    "other_org_admin": frozenset({"admin"}),
    "lesser_admin": frozenset({"admin"}),
}
ROLES = tuple(HOLDS)
# Path parameters that name a principal, or a credential (which belongs to one and is its only
# way in): a route taking one reads or acts on that principal.
PRINCIPAL_PARAMS = frozenset({"principal_id", "credential_id"})
# The seeded org's tag, which names its rows.
OWN_ORG_TAG = "alpha"

# (route, role) -> times walked (once per backend): read by the terminal summary in conftest.
CASES_RUN: dict[tuple[str, str], int] = {}


def names_a_principal(route: Route) -> bool:
    return bool(PRINCIPAL_PARAMS & set(path_params(route)))


def acts_on_a_principal(route: Route) -> bool:
    return route.method != "GET" and names_a_principal(route)


@dataclass(frozen=True)
class Expected:
    """An exact refusal (`status`, `code`), an exact success (`status` alone), or, with
    neither, any answer the route may give a caller it admits."""

    status: int | None = None
    code: str | None = None

    @property
    def refusal(self) -> bool:
        return self.code is not None


ADMITTED = Expected()


def expected(route: Route, role: str) -> Expected:
    """What `role` must get from `route`, from the route's access declaration alone."""
    access = route.access
    if access.public:
        return ADMITTED
    if role == "anonymous":
        return Expected(401, "unauthorized")
    if not HOLDS[role] & access.roles:
        return Expected(403, "forbidden")
    if role == "other_org_admin" and path_params(route):
        # Another org's row reads exactly like a missing one, for reads and writes alike.
        return Expected(404, "not_found")
    if role == "lesser_admin" and names_a_principal(route):
        if acts_on_a_principal(route):
            return Expected(403, "forbidden")
        return Expected(200)
    return ADMITTED


@dataclass
class World:
    """One seeded org (the operator org), and a credential of each kind of caller with the
    world whose ids it puts in paths and bodies."""

    seeded: Seeded
    callers: dict[str, tuple[Api, Seeded]]
    ids: dict[str, str]  # caller kind -> its principal id


@pytest.fixture
def world(org_a: OrgFixture, org_b: OrgFixture, client: TestClient) -> World:
    s = seed(org_a, OWN_ORG_TAG)
    device = org_a.principal("a device", "device")
    plain_admin = org_a.principal("plain admin", "user", roles=["admin"])
    operator_credentials = org_a.admin.ok(
        "GET", f"/api/admin/principals/{org_a.admin_id}/credentials", status=200
    )["items"]
    assert len(operator_credentials) == 1, operator_credentials
    # The seeded world with its principal ids swapped for the operator's own principal and
    # its bootstrap credential.
    operator_target = dataclasses.replace(
        s, principal_id=org_a.admin_id, credential_id=operator_credentials[0]["id"]
    )
    callers = {
        "anonymous": (Api(client, None), s),
        "member": (s.member, s),
        "device": (device, s),
        "service": (s.service, s),
        "admin": (plain_admin, s),
        "operator": (org_a.admin, s),
        "other_org_admin": (org_b.admin, s),
        "lesser_admin": (plain_admin, operator_target),
    }
    ids = {
        "member": s.principal_id,
        "device": org_a.principals["a device"],
        "service": s.service_id,
        "admin": org_a.principals["plain admin"],
        "operator": org_a.admin_id,
        "other_org_admin": org_b.admin_id,
        "lesser_admin": org_a.principals["plain admin"],
    }
    return World(seeded=s, callers=callers, ids=ids)


def body_for(route: Route, role: str, world: World) -> dict[str, Any] | None:
    if route.request_model is None:
        return None
    body = valid_body(route, world.callers[role][1])
    if role == "device" and "device_id" in body:
        # A device labels its sessions with its own id only; any other label is a 403 about
        # the body, not about the device's roles.
        body["device_id"] = world.ids["device"]
    return body


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.json()["code"] == code, response.text


def assert_admitted(route: Route, response: httpx.Response) -> None:
    status = response.status_code
    assert status not in (401, 403), response.text
    if 200 <= status < 300:
        assert status == route.status_code, (status, route.status_code, response.text)
        return
    assert status in route.documented_statuses, (status, route.documented_statuses, response.text)
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE, response.text
    code = response.json()["code"]
    assert code in route.documented_errors and ERROR_CODES[code][0] == status, response.text


def test_the_matrix_reaches_every_outcome() -> None:
    # Guards the derivation against quietly collapsing (a renamed path parameter or role would
    # otherwise turn refusals into "admitted" without failing anything).
    outcomes = {(role, expected(route, role)) for route in ACTIVE for role in ROLES}
    assert ("anonymous", Expected(401, "unauthorized")) in outcomes
    for role in ("member", "device", "service", "admin", "other_org_admin", "lesser_admin"):
        assert (role, Expected(403, "forbidden")) in outcomes, role
    assert ("other_org_admin", Expected(404, "not_found")) in outcomes
    assert ("lesser_admin", Expected(200)) in outcomes
    assert {
        "PATCH /api/admin/principals/{principal_id}",
        "DELETE /api/admin/principals/{principal_id}",
        "POST /api/admin/principals/{principal_id}/credentials",
    } <= {route_id(r) for r in ACTIVE if acts_on_a_principal(r)}
    assert all(any(expected(r, role) == ADMITTED for role in ROLES) for r in ACTIVE), (
        "every route has a caller it admits"
    )


def test_callers_hold_the_roles_the_matrix_assumes(world: World) -> None:
    for role, principal_id in world.ids.items():
        api = world.callers[role][0]
        # Each admin reads itself; the others are read by the operator, in their org.
        reader = api if HOLDS[role] & PRIVILEGED else world.seeded.admin
        held = reader.ok("GET", f"/api/admin/principals/{principal_id}", status=200)["roles"]
        assert frozenset(held) == HOLDS[role], (role, held)
    assert world.callers["lesser_admin"][1].principal_id == world.ids["operator"]


@pytest.mark.parametrize("route", ACTIVE, ids=route_id)
def test_permission_matrix(
    route: Route,
    world: World,
    session: Session,
    undo: Callable[[], AbstractContextManager[None]],
    subtests: pytest.Subtests,
) -> None:
    baseline = snapshot(session)
    for role in ROLES:
        with subtests.test(msg=role):
            with undo():
                check(route, role, world, session, baseline)
            after = snapshot(session)
            assert after == baseline, f"not undone: {baseline.diff(after)}"


def check(route: Route, role: str, world: World, session: Session, baseline: Snapshot) -> None:
    want = expected(route, role)
    api, target = world.callers[role]
    response = api.request(route.method, target.fill(route), body_for(route, role, world))
    key = (route_id(route), role)
    CASES_RUN[key] = CASES_RUN.get(key, 0) + 1
    assert response.status_code < 500, response.text
    if want.refusal:
        assert want.status is not None and want.code is not None
        assert_problem(response, want.status, want.code)
        if want.status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert "www-authenticate" not in response.headers
        after = snapshot(session)
        assert after == baseline, f"a refused request wrote: {baseline.diff(after)}"
    elif want.status is not None:
        assert response.status_code == want.status, (response.status_code, response.text)
    else:
        assert_admitted(route, response)
