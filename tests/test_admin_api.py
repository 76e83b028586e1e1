"""The admin API's behaviour: principals, credentials, streams, query sets, grant rules, the
org's policy_rev, the audit log and cursor pagination (DESIGN.md, "Admin and runtime API")."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from control.errors import PROBLEM_MEDIA_TYPE
from control.identity import service as identity_service
from control.identity.models import Org
from control.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT, encode_cursor
from control.kit.routing import Route
from tests.admin_world import ACTIVE, Seeded, route_id, seed, snapshot
from tests.factories import Api, OrgFixture

KEY_SHAPE = re.compile(r"^ctl_[A-Za-z0-9_-]{43,}$")  # 32 random bytes, base64url: 256 bits
LIST_ROUTES = [
    r
    for r in ACTIVE
    if r.method == "GET"
    and "admin" in r.access.roles
    and getattr(r.response_model, "__name__", "").startswith("Page[")
]


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def policy_rev(session: Session, org_id: str) -> int:
    return int(session.scalar(select(Org.policy_rev).where(Org.id == org_id)) or 0)


def all_items(api: Api, path: str, limit: int = MAX_LIMIT) -> list[dict[str, Any]]:
    """Every item of a list route, following `next_cursor` to the end."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = api.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert page["items"], "a page with a next cursor must not be empty"
    raise AssertionError("pagination never ended")


def audit_events(api: Api) -> list[dict[str, Any]]:
    return all_items(api, "/api/admin/audit")


def new_principal(org: OrgFixture, name: str, kind: str = "user", **extra: Any) -> Any:
    return org.admin.ok("POST", "/api/admin/principals", {"kind": kind, "name": name, **extra})


def new_key(org: OrgFixture, principal_id: str, **body: Any) -> Any:
    return org.admin.ok("POST", f"/api/admin/principals/{principal_id}/credentials", body)


# --- principals ---------------------------------------------------------------------------


def test_principal_create_read_list(org_a: OrgFixture) -> None:
    user = new_principal(org_a, "alice")
    assert user == {
        "id": user["id"],
        "kind": "user",
        "name": "alice",
        "org_id": org_a.org_id,
        "roles": ["member"],
        "disabled": False,
    }
    assert new_principal(org_a, "laptop", "device")["roles"] == ["member"]
    assert new_principal(org_a, "runtime", "service")["roles"] == ["service"]
    both = new_principal(org_a, "bob", roles=["member", "admin", "member"])
    assert both["roles"] == ["admin", "member"]
    assert org_a.admin.ok("GET", f"/api/admin/principals/{user['id']}", status=200) == user
    listed = all_items(org_a.admin, "/api/admin/principals")
    assert user in listed
    assert {p["id"] for p in listed} >= {org_a.admin_id, user["id"], both["id"]}


def test_principal_update_and_delete(org_a: OrgFixture, session: Session) -> None:
    alice = new_principal(org_a, "alice")
    key = Api(org_a.client, new_key(org_a, alice["id"])["key"])
    path = f"/api/admin/principals/{alice['id']}"
    rev = policy_rev(session, org_a.org_id)
    updated = org_a.admin.ok("PATCH", path, {"roles": ["member", "admin"]}, status=200)
    assert updated["roles"] == ["admin", "member"]
    assert updated["disabled"] is False
    assert policy_rev(session, org_a.org_id) == rev + 1
    # The new role takes effect on the principal's own key.
    assert key.get("/api/admin/principals").status_code == 200

    events = len(audit_events(org_a.admin))
    assert org_a.admin.ok("PATCH", path, {}, status=200) == updated  # nothing to change
    assert org_a.admin.ok("PATCH", path, {"roles": ["admin", "member"]}, status=200) == updated
    assert policy_rev(session, org_a.org_id) == rev + 1
    assert len(audit_events(org_a.admin)) == events

    assert org_a.admin.delete(path).status_code == 204
    problem(org_a.admin.get(path), 404, "not_found")
    problem(org_a.admin.delete(path), 404, "not_found")
    problem(key.get("/api/admin/principals"), 401, "unauthorized")  # its keys died with it
    assert policy_rev(session, org_a.org_id) == rev + 2


def test_principal_cannot_delete_itself(org_a: OrgFixture) -> None:
    response = org_a.admin.delete(f"/api/admin/principals/{org_a.admin_id}")
    problem(response, 409, "conflict")
    assert org_a.admin.get(f"/api/admin/principals/{org_a.admin_id}").status_code == 200


def test_only_an_operator_grants_operator(org_a: OrgFixture, org_b: OrgFixture) -> None:
    body = {"kind": "user", "name": "root", "roles": ["admin", "operator"]}
    problem(org_b.admin.post("/api/admin/principals", body), 403, "forbidden")
    plain = new_principal(org_b, "plain")
    path = f"/api/admin/principals/{plain['id']}"
    problem(org_b.admin.patch(path, {"roles": ["operator"]}), 403, "forbidden")
    assert org_b.admin.ok("GET", path, status=200)["roles"] == ["member"]
    # The operator org's first admin holds operator, and may hand it on.
    assert org_a.admin.ok("POST", "/api/admin/principals", body)["roles"] == ["admin", "operator"]


# --- credentials --------------------------------------------------------------------------


def test_credential_is_shown_once(org_a: OrgFixture) -> None:
    alice = new_principal(org_a, "alice", roles=["admin"])
    path = f"/api/admin/principals/{alice['id']}/credentials"
    response = org_a.admin.post(path, {"name": "laptop"})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    issued = response.json()
    assert set(issued) == {"id", "key", "prefix", "created_at"}
    key = issued["key"]
    assert KEY_SHAPE.match(key), key
    assert issued["prefix"] == key[: len(issued["prefix"])]
    assert len(issued["prefix"]) < len(key) - 32  # the prefix gives away little of the key
    other = org_a.admin.ok("POST", path, {})
    assert other["key"] != key
    listed = all_items(org_a.admin, path)
    assert [c["id"] for c in listed] == sorted([issued["id"], other["id"]])
    for credential in listed:
        assert set(credential) == {
            "id",
            "principal_id",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        }
        assert credential["principal_id"] == alice["id"]
    text = org_a.admin.get(path).text + org_a.admin.get(f"/api/admin/principals/{alice['id']}").text
    assert key not in text
    assert key[len(issued["prefix"]) :] not in text
    # The key works.
    assert Api(org_a.client, key).get("/api/admin/principals").status_code == 200


def test_credential_last_used_at(org_a: OrgFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = new_principal(org_a, "alice", roles=["admin"])
    issued = new_key(org_a, alice["id"])
    api = Api(org_a.client, issued["key"])
    path = f"/api/admin/principals/{alice['id']}/credentials"

    def last_used() -> datetime | None:
        (row,) = org_a.admin.ok("GET", path, status=200)["items"]
        value = row["last_used_at"]
        return datetime.fromisoformat(value) if value else None

    assert last_used() is None
    before = datetime.now(UTC)
    assert api.get("/api/admin/streams").status_code == 200
    first = last_used()
    assert first is not None
    assert before - timedelta(seconds=1) <= first <= datetime.now(UTC) + timedelta(seconds=1)
    assert api.get("/api/admin/streams").status_code == 200
    assert last_used() == first  # refreshed at most once a minute, not on every request
    later = datetime.now(UTC) + timedelta(minutes=5)
    monkeypatch.setattr(identity_service, "utcnow", lambda: later)
    assert api.get("/api/admin/streams").status_code == 200
    assert last_used() == later


def test_expired_credential_is_401(org_a: OrgFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = new_principal(org_a, "alice", roles=["admin"])
    expires = datetime.now(UTC) + timedelta(hours=1)
    issued = new_key(org_a, alice["id"], expires_at=expires.isoformat())
    api = Api(org_a.client, issued["key"])
    assert api.get("/api/admin/principals").status_code == 200
    (listed,) = all_items(org_a.admin, f"/api/admin/principals/{alice['id']}/credentials")
    assert datetime.fromisoformat(listed["expires_at"]) == expires
    monkeypatch.setattr(identity_service, "utcnow", lambda: expires + timedelta(seconds=1))
    response = api.get("/api/admin/principals")
    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    # The holder learns what to do: the key expired, and when.
    assert response.json()["reason"] == "expired_credential"
    stamp = expires.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert f"expired at {stamp}" in response.json()["detail"]


def test_credential_expiry_must_be_a_future_rfc3339_time(
    org_a: OrgFixture, session: Session, subtests: pytest.Subtests
) -> None:
    path = f"/api/admin/principals/{org_a.admin_id}/credentials"
    before = snapshot(session)
    for expires_at in ["2000-01-01T00:00:00Z", "2099-01-01T00:00:00", "tomorrow", 12, "", None]:
        with subtests.test(expires_at=expires_at):
            body = {"expires_at": expires_at} if expires_at is not None else {"name": None, "x": 1}
            problem(org_a.admin.post(path, body), 422, "invalid_request")
            assert snapshot(session) == before


def test_revoked_credential_is_401(org_a: OrgFixture) -> None:
    alice = new_principal(org_a, "alice", roles=["admin"])
    first = new_key(org_a, alice["id"])
    second = new_key(org_a, alice["id"])
    assert org_a.admin.delete(f"/api/admin/credentials/{first['id']}").status_code == 204
    problem(Api(org_a.client, first["key"]).get("/api/admin/principals"), 401, "unauthorized")
    # Only that credential: the principal's other key still works.
    assert Api(org_a.client, second["key"]).get("/api/admin/principals").status_code == 200
    listed = {
        c["id"]: c
        for c in all_items(org_a.admin, f"/api/admin/principals/{alice['id']}/credentials")
    }
    assert listed[first["id"]]["revoked_at"] is not None
    assert listed[second["id"]]["revoked_at"] is None
    event = audit_events(org_a.admin)[-1]
    assert (event["action"], event["target"], event["actor"]) == (
        "credential.revoke",
        first["id"],
        org_a.admin_id,
    )
    problem(org_a.admin.delete("/api/admin/credentials/cred_unknown"), 404, "not_found")


def test_disabled_principal_is_401(org_a: OrgFixture) -> None:
    alice = new_principal(org_a, "alice", roles=["admin"])
    api = Api(org_a.client, new_key(org_a, alice["id"])["key"])
    path = f"/api/admin/principals/{alice['id']}"
    assert org_a.admin.ok("PATCH", path, {"disabled": True}, status=200)["disabled"] is True
    problem(api.get("/api/admin/principals"), 401, "unauthorized")
    org_a.admin.ok("PATCH", path, {"disabled": False}, status=200)
    assert api.get("/api/admin/principals").status_code == 200


def test_unknown_or_malformed_key_is_401(org_a: OrgFixture, subtests: pytest.Subtests) -> None:
    for header in [
        "Bearer ctl_" + "A" * 43,  # well-formed, unknown
        "Bearer ctl_",
        "Bearer not-a-key",
        "Bearer ctl_" + "x" * 300,
        "Bearer " + org_a.admin.headers()["Authorization"][len("Bearer ") :][:-1],
        "Basic Y3RsXzE6Mg==",
        "Bearer",
        "",
    ]:
        with subtests.test(header=header[:20]):
            response = org_a.client.get("/api/admin/principals", headers={"Authorization": header})
            problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")


# --- streams ------------------------------------------------------------------------------


def test_stream_owner_defaults_to_the_caller(org_a: OrgFixture) -> None:
    alice = new_principal(org_a, "alice")
    service = org_a.principal("runtime", "service")
    service_id = org_a.principals["runtime"]
    by_admin = org_a.stream("run:01J9ZK")
    assert by_admin == {
        "id": "run:01J9ZK",
        "kind": "run",
        "org_id": org_a.org_id,
        "owner_id": org_a.admin_id,
        "labels": {},
        "created_at": by_admin["created_at"],
    }
    by_service = service.ok("POST", "/api/streams", {"id": "worker:w-7", "labels": {"a": "b"}})
    assert (by_service["kind"], by_service["owner_id"]) == ("worker", service_id)
    assert by_service["labels"] == {"a": "b"}
    named = org_a.stream("thread:t.42", owner_id=alice["id"])
    assert named["owner_id"] == alice["id"]
    assert org_a.admin.ok("GET", "/api/admin/streams/thread:t.42", status=200) == named
    ids = [s["id"] for s in all_items(org_a.admin, "/api/admin/streams")]
    assert ids == sorted(["run:01J9ZK", "worker:w-7", "thread:t.42"])


def test_duplicate_stream_is_409(org_a: OrgFixture, org_b: OrgFixture, session: Session) -> None:
    org_a.stream("run:01J9ZK")
    before = snapshot(session)
    problem(org_a.admin.post("/api/streams", {"id": "run:01J9ZK"}), 409, "conflict")
    # Stream ids are global (the module keys data by id alone): another org cannot take it.
    problem(org_b.admin.post("/api/streams", {"id": "run:01J9ZK"}), 409, "conflict")
    assert snapshot(session) == before


def test_stream_owner_must_be_of_the_org(org_a: OrgFixture, org_b: OrgFixture) -> None:
    body = {"id": "run:x1", "owner_id": org_b.admin_id}
    problem(org_a.admin.post("/api/streams", body), 422, "invalid_request")


def test_delete_stream(org_a: OrgFixture) -> None:
    org_a.stream("run:gone")
    assert org_a.admin.delete("/api/admin/streams/run:gone").status_code == 204
    problem(org_a.admin.get("/api/admin/streams/run:gone"), 404, "not_found")
    problem(org_a.admin.delete("/api/admin/streams/run:gone"), 404, "not_found")
    event = audit_events(org_a.admin)[-1]
    assert (event["action"], event["target"]) == ("stream.delete", "run:gone")


# --- query sets ---------------------------------------------------------------------------


def test_query_set_create_and_put_bumps_version(org_a: OrgFixture, session: Session) -> None:
    rev = policy_rev(session, org_a.org_id)
    created = org_a.admin.ok(
        "POST",
        "/api/admin/query-sets",
        {
            "name": "run_events",
            "stream_kinds": ["run", "job", "run"],
            "queries": ["SELECT * FROM run_event_view"],
            "description": "events",
        },
    )
    assert {k: created[k] for k in ("name", "version", "ref", "stream_kinds", "queries")} == {
        "name": "run_events",
        "version": 1,
        "ref": "run_events@1",
        "stream_kinds": ["job", "run"],
        "queries": ["SELECT * FROM run_event_view"],
    }
    assert created["org_id"] == org_a.org_id
    assert created["description"] == "events"
    assert policy_rev(session, org_a.org_id) == rev + 1
    path = "/api/admin/query-sets/run_events"
    body = {
        "stream_kinds": ["run"],
        "queries": [
            "SELECT * FROM run_event_view",
            "select * from run_checkpoint_view where seq >= 10 and kind = 'full'",
        ],
    }
    updated = org_a.admin.ok("PUT", path, body, status=200)
    assert (updated["version"], updated["ref"]) == (2, "run_events@2")
    assert updated["queries"] == body["queries"]
    assert updated["description"] is None
    assert org_a.admin.ok("GET", path, status=200) == updated
    assert org_a.admin.ok("PUT", path, body, status=200)["version"] == 3
    assert policy_rev(session, org_a.org_id) == rev + 3
    event = audit_events(org_a.admin)[-1]
    assert event["action"] == "query_set.update"
    assert event["detail"]["before"]["version"] == 2
    assert event["detail"]["after"]["version"] == 3


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_bad_query_is_422_naming_it(org_a: OrgFixture, session: Session, method: str) -> None:
    org_a.query_set("run_events", ["run"])
    body: dict[str, Any] = {
        "stream_kinds": ["run"],
        "queries": ["SELECT * FROM ok_view", "SELECT * FROM t; DROP TABLE principals"],
    }
    path = "/api/admin/query-sets/run_events"
    if method == "POST":
        body["name"] = "other"
        path = "/api/admin/query-sets"
    before = snapshot(session)
    detail = problem(org_a.admin.request(method, path, body), 422, "invalid_request")
    assert "query 1" in detail["detail"]
    assert "query 0" not in detail["detail"]
    assert detail["errors"][0]["loc"] == ["body", "queries", "1"]
    assert snapshot(session) == before
    assert org_a.admin.ok("GET", "/api/admin/query-sets/run_events", status=200)["version"] == 1


def test_duplicate_query_set_is_409(org_a: OrgFixture, org_b: OrgFixture) -> None:
    org_a.query_set("run_events", ["run"])
    body = {
        "name": "run_events",
        "stream_kinds": ["run"],
        "queries": ["SELECT * FROM run_event_view"],
    }
    problem(org_a.admin.post("/api/admin/query-sets", body), 409, "conflict")
    # Names are per org: another org may use the same one.
    assert org_b.admin.ok("POST", "/api/admin/query-sets", body)["org_id"] == org_b.org_id


def test_query_set_in_use_cannot_go(org_a: OrgFixture) -> None:
    org_a.query_set("run_events", ["run", "job"])
    rule = org_a.allow(query_sets=["run_events"])
    path = "/api/admin/query-sets/run_events"
    problem(org_a.admin.delete(path), 409, "conflict")
    narrowed = {"stream_kinds": ["job"], "queries": ["SELECT * FROM run_event_view"]}
    problem(org_a.admin.put(path, narrowed), 409, "conflict")
    assert org_a.admin.delete(f"/api/admin/grant-rules/{rule['id']}").status_code == 204
    assert org_a.admin.delete(path).status_code == 204
    problem(org_a.admin.get(path), 404, "not_found")


# --- grant rules --------------------------------------------------------------------------


def test_grant_rule_crud(org_a: OrgFixture, session: Session) -> None:
    org_a.query_set("run_events", ["run"])
    org_a.query_set("run_admin", ["run"])
    alice = new_principal(org_a, "alice")
    body: dict[str, Any] = {
        "effect": "allow",
        "subjects": {"principal_ids": [alice["id"]], "roles": ["member"], "kinds": ["device"]},
        "streams": {"kind": "run", "relation": "owner"},
        "query_sets": ["run_events"],
        "ops": ["subscribe", "append"],
        "max_ttl_seconds": 120,
        "description": "owners read and write their runs",
    }
    rule = org_a.rule(**body)
    assert rule["policy_rev"] == policy_rev(session, org_a.org_id)
    assert rule["org_id"] == org_a.org_id
    assert rule["subjects"] == body["subjects"]
    assert rule["streams"] == {"kind": "run", "relation": "owner", "ids": []}
    assert (rule["query_sets"], rule["ops"]) == (["run_events"], ["append", "subscribe"])
    assert rule["max_ttl_seconds"] == 120
    path = f"/api/admin/grant-rules/{rule['id']}"
    assert org_a.admin.ok("GET", path, status=200) == rule
    assert [r["id"] for r in all_items(org_a.admin, "/api/admin/grant-rules")] == [rule["id"]]

    body.update(query_sets=["run_events", "run_admin"], ops=["subscribe"])
    updated = org_a.admin.ok("PUT", path, body, status=200)
    assert updated["policy_rev"] == rule["policy_rev"] + 1
    assert (updated["query_sets"], updated["ops"]) == (["run_admin", "run_events"], ["subscribe"])
    assert org_a.admin.ok("GET", path, status=200)["policy_rev"] == updated["policy_rev"]

    assert org_a.admin.delete(path).status_code == 204
    problem(org_a.admin.get(path), 404, "not_found")
    assert policy_rev(session, org_a.org_id) == updated["policy_rev"] + 1


def test_grant_rule_naming_an_unknown_query_set_is_422(org_a: OrgFixture, session: Session) -> None:
    before = snapshot(session)
    response = org_a.admin.post(
        "/api/admin/grant-rules",
        {
            "effect": "allow",
            "subjects": {"roles": ["member"]},
            "streams": {"kind": "run", "relation": "org"},
            "query_sets": ["nope_events"],
            "ops": ["subscribe"],
        },
    )
    assert "nope_events" in problem(response, 422, "invalid_request")["detail"]
    assert snapshot(session) == before


# --- policy_rev and the audit log ---------------------------------------------------------


def test_every_change_is_audited_and_policy_changes_bump_policy_rev(
    org_a: OrgFixture, session: Session
) -> None:
    admin = org_a.admin
    state: dict[str, Any] = {}

    def remember(key: str, value: Any) -> Any:
        state[key] = value
        return value

    # (what, does it change policy, audit action, target, detail keys, the call)
    steps: list[tuple[str, bool, str, Any, set[str], Any]] = [
        ("create principal", True, "principal.create", lambda: state["p"]["id"], {"after"},
         lambda: remember("p", admin.ok("POST", "/api/admin/principals",
                                        {"kind": "user", "name": "alice"}))),
        ("update principal", True, "principal.update", lambda: state["p"]["id"],
         {"before", "after"},
         lambda: admin.ok("PATCH", f"/api/admin/principals/{state['p']['id']}",
                          {"roles": ["member", "ops"]}, status=200)),
        ("issue credential", False, "credential.create", lambda: state["c"]["id"], {"after"},
         lambda: remember("c", admin.ok("POST",
                                        f"/api/admin/principals/{state['p']['id']}/credentials",
                                        {}))),
        ("revoke credential", False, "credential.revoke", lambda: state["c"]["id"],
         {"before", "after"},
         lambda: admin.ok("DELETE", f"/api/admin/credentials/{state['c']['id']}", status=204)),
        ("register stream", False, "stream.register", lambda: "run:r1", {"after"},
         lambda: admin.ok("POST", "/api/streams", {"id": "run:r1"})),
        ("create query set", True, "query_set.create", lambda: "run_events", {"after"},
         lambda: org_a.query_set("run_events", ["run"])),
        ("update query set", True, "query_set.update", lambda: "run_events",
         {"before", "after"},
         lambda: admin.ok("PUT", "/api/admin/query-sets/run_events",
                          {"stream_kinds": ["run"],
                           "queries": ["SELECT * FROM run_checkpoint_view"]},
                          status=200)),
        ("create rule", True, "grant_rule.create", lambda: state["r"]["id"], {"after"},
         lambda: remember("r", org_a.allow(query_sets=["run_events"]))),
        ("update rule", True, "grant_rule.update", lambda: state["r"]["id"],
         {"before", "after"},
         lambda: admin.ok("PUT", f"/api/admin/grant-rules/{state['r']['id']}",
                          {"effect": "allow", "subjects": {"roles": ["ops"]},
                           "streams": {"kind": "run", "relation": "org"},
                           "query_sets": ["run_events"], "ops": ["subscribe"]},
                          status=200)),
        ("delete rule", True, "grant_rule.delete", lambda: state["r"]["id"], {"before"},
         lambda: admin.ok("DELETE", f"/api/admin/grant-rules/{state['r']['id']}", status=204)),
        ("delete query set", True, "query_set.delete", lambda: "run_events", {"before"},
         lambda: admin.ok("DELETE", "/api/admin/query-sets/run_events", status=204)),
        ("delete stream", True, "stream.delete", lambda: "run:r1", {"before"},
         lambda: admin.ok("DELETE", "/api/admin/streams/run:r1", status=204)),
        ("delete principal", True, "principal.delete", lambda: state["p"]["id"], {"before"},
         lambda: admin.ok("DELETE", f"/api/admin/principals/{state['p']['id']}", status=204)),
    ]  # fmt: skip
    for what, changes_policy, action, target, detail_keys, call in steps:
        rev = policy_rev(session, org_a.org_id)
        seen = {event["id"] for event in audit_events(admin)}
        started = datetime.now(UTC) - timedelta(seconds=1)
        call()
        new = [event for event in audit_events(admin) if event["id"] not in seen]
        assert len(new) == 1, (what, new)
        (event,) = new
        assert event["action"] == action, what
        assert event["actor"] == org_a.admin_id, what
        assert event["target"] == target(), what
        assert event["org_id"] == org_a.org_id, what
        assert started <= datetime.fromisoformat(event["at"]) <= datetime.now(UTC), what
        assert detail_keys <= set(event["detail"]), (what, event["detail"])
        expected_rev = rev + 1 if changes_policy else rev
        assert policy_rev(session, org_a.org_id) == expected_rev, what
        if changes_policy:
            assert event["detail"]["policy_rev"] == expected_rev, what
    # before/after summaries say what changed.
    events = {e["action"]: e for e in audit_events(admin)}
    update = events["principal.update"]["detail"]
    assert (update["before"]["roles"], update["after"]["roles"]) == (["member"], ["member", "ops"])
    revoke = events["credential.revoke"]["detail"]
    assert revoke["before"]["revoked_at"] is None
    assert revoke["after"]["revoked_at"] is not None
    assert events["stream.register"]["detail"]["after"]["owner_id"] == org_a.admin_id


def test_audit_is_append_only_over_the_api() -> None:
    audit_routes = [r for r in ACTIVE if r.path.startswith("/api/admin/audit")]
    assert [(r.method, r.path) for r in audit_routes] == [("GET", "/api/admin/audit")]


def test_audit_event_shape(org_a: OrgFixture) -> None:
    (event,) = audit_events(org_a.admin)
    assert set(event) == {"id", "at", "actor", "action", "target", "org_id", "detail"}
    assert (event["action"], event["actor"], event["org_id"]) == (
        "org.bootstrap",
        "cli",
        org_a.org_id,
    )


# --- pagination ---------------------------------------------------------------------------


def test_pagination_walks_every_page(org_a: OrgFixture, org_b: OrgFixture) -> None:
    created = [new_principal(org_a, f"p{i}")["id"] for i in range(7)]
    new_principal(org_b, "elsewhere")
    everything = [org_a.admin_id, *created]
    pages: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = org_a.admin.get("/api/admin/principals", params=params)
        assert response.status_code == 200
        page = response.json()
        pages.append([p["id"] for p in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    flat = [i for p in pages for i in p]
    assert flat == sorted(everything)


def test_default_limit_and_max(org_a: OrgFixture) -> None:
    for i in range(DEFAULT_LIMIT + 2):
        new_principal(org_a, f"p{i}")
    page = org_a.admin.ok("GET", "/api/admin/principals", status=200)
    assert len(page["items"]) == DEFAULT_LIMIT
    assert page["next_cursor"]
    rest = org_a.admin.ok("GET", f"/api/admin/principals?cursor={page['next_cursor']}", status=200)
    assert len(rest["items"]) == 3
    assert rest["next_cursor"] is None
    assert len(org_a.admin.ok("GET", "/api/admin/principals?limit=500", status=200)["items"]) == 53


@pytest.fixture
def stocked(org_a: OrgFixture) -> Seeded:
    """An org with at least three rows in every list."""
    seeded = seed(org_a, "alpha")
    # Query sets only of names the module's catalog serves (tests/catalog.json).
    for i, query_set in enumerate(["run_events", "run_checkpoints"]):
        new_key(org_a, seeded.principal_id, name=f"k{i}")
        org_a.stream(f"run:alpha-extra{i}")
        org_a.query_set(query_set, ["run"])
        org_a.allow(query_sets=[query_set])
        org_a.admin.ok(
            "POST",
            "/api/admin/trusted-issuers",
            {"issuer": f"https://idp{i}.alpha.example", "audiences": [f"alpha-{i}"]},
        )
    return seeded


def list_path(route: Route, seeded: Seeded) -> str:
    return seeded.fill(route)


def test_every_list_route_pages(stocked: Seeded, subtests: pytest.Subtests) -> None:
    assert {r.operation_id for r in LIST_ROUTES} >= {
        "list_principals",
        "list_credentials",
        "list_streams",
        "list_query_sets",
        "list_grant_rules",
        "list_audit",
    }
    for route in LIST_ROUTES:
        with subtests.test(msg=route_id(route)):
            path = list_path(route, stocked)
            whole = all_items(stocked.admin, path)
            assert len(whole) >= 3, f"seed more rows for {route_id(route)}"
            assert all_items(stocked.admin, path, limit=1) == whole
            assert all_items(stocked.admin, path, limit=2) == whole
            default = stocked.admin.ok("GET", path, status=200)
            assert default["items"] == whole[:DEFAULT_LIMIT]


def _bad_page_params(route: Route) -> list[dict[str, Any]]:
    key_is_int = route.operation_id == "list_audit"
    wrong_type = encode_cursor("prn_x" if key_is_int else 5)
    return [
        {"limit": MAX_LIMIT + 1},
        {"limit": 0},
        {"limit": -1},
        {"limit": "ten"},
        {"limit": 10**30},
        {"cursor": "!!!"},
        {"cursor": "%%%"},
        {"cursor": "x" * 600},
        {"cursor": wrong_type},
        {"cursor": encode_cursor([1])},
        {"cursor": encode_cursor({"id": 1})},
        {"cursor": encode_cursor(True)},
        {"cursor": encode_cursor(None)},
        {"cursor": encode_cursor(1.5)},
        {"cursor": encode_cursor(10**30)},
        {"cursor": encode_cursor("a\x00b")},
    ]


def test_bad_limit_or_cursor_is_422(stocked: Seeded, subtests: pytest.Subtests) -> None:
    for route in LIST_ROUTES:
        path = list_path(route, stocked)
        for params in _bad_page_params(route):
            with subtests.test(msg=route_id(route), params=params):
                response = stocked.admin.get(path, params=params)
                problem(response, 422, "invalid_request")
        with subtests.test(msg=route_id(route), params="limit=500"):
            assert stocked.admin.get(path, params={"limit": MAX_LIMIT}).status_code == 200


def test_revocation_feed_cursor_beyond_64_bits_is_not_a_500(org_a: OrgFixture) -> None:
    service = org_a.principal("runtime", "service")
    response = service.get("/api/sync/revocations", params={"after": "9" * 20})
    assert response.status_code < 500, response.text
