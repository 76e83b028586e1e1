"""Boundaries between roles and between orgs: who may act on a principal, whose revocations a
token reads, what deleting a stream ends, and what a session id may claim.

Each test here names the boundary it holds; each failed on the service before that boundary was
drawn (an admin could take over the operator, revoke another org's tokens, re-bind a deleted
stream id to another org).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from control.identity.models import Principal
from control.migrate import upgrade
from tests.factories import Api, OrgFixture

# --- one rule for acting on principals ----------------------------------------------------


@pytest.fixture
def plain_admin(org_a: OrgFixture) -> Api:
    """An admin of the operator org who is not an operator."""
    return org_a.principal("plain admin", roles=["admin"])


def test_a_non_operator_admin_cannot_take_over_the_operator(
    org_a: OrgFixture, plain_admin: Api
) -> None:
    operator = org_a.admin_id
    attempts = [
        ("POST", f"/api/admin/principals/{operator}/credentials", {}),
        ("PATCH", f"/api/admin/principals/{operator}", {"disabled": True}),
        ("PATCH", f"/api/admin/principals/{operator}", {"roles": ["admin"]}),
        ("DELETE", f"/api/admin/principals/{operator}", None),
        ("POST", "/api/admin/revocations", {"kind": "subject", "value": operator}),
    ]
    for method, path, body in attempts:
        response = plain_admin.request(method, path, body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden"
        assert "operator" in response.json()["detail"]
    # Nor revoke the operator's own key.
    listed = org_a.admin.ok("GET", f"/api/admin/principals/{operator}/credentials")
    credential = listed["items"][0]["id"]
    response = plain_admin.delete(f"/api/admin/credentials/{credential}")
    assert response.status_code == 403
    response = plain_admin.post(
        "/api/admin/revocations", {"kind": "credential", "value": credential}
    )
    assert response.status_code == 403
    # The operator is untouched and still works; reading it is allowed.
    assert org_a.admin.ok("GET", "/api/admin/keys")["items"]
    assert plain_admin.ok("GET", f"/api/admin/principals/{operator}")["disabled"] is False


def test_an_operator_may_act_on_the_operator_and_admins_on_admins(
    org_a: OrgFixture, plain_admin: Api
) -> None:
    other_admin = org_a.admin.ok(
        "POST", "/api/admin/principals", {"kind": "user", "name": "second", "roles": ["admin"]}
    )
    # An admin holds `admin`, so it may act on another admin ...
    plain_admin.ok("POST", f"/api/admin/principals/{other_admin['id']}/credentials", {}, 201)
    plain_admin.ok("PATCH", f"/api/admin/principals/{other_admin['id']}", {"disabled": True})
    # ... and on members and services, whose roles only the org's rules give meaning.
    service = plain_admin.ok("POST", "/api/admin/principals", {"kind": "service", "name": "svc"})
    plain_admin.ok("POST", f"/api/admin/principals/{service['id']}/credentials", {}, 201)
    # But grants neither `operator` nor, to itself, anything it lacks.
    for roles in (["operator"], ["admin", "operator"]):
        response = plain_admin.patch(f"/api/admin/principals/{other_admin['id']}", {"roles": roles})
        assert response.status_code == 403
    # The operator may do all of it.
    org_a.admin.ok("PATCH", f"/api/admin/principals/{other_admin['id']}", {"roles": ["operator"]})


def test_a_member_or_admin_of_another_org_holding_operator_does_not_act_as_one(
    org_a: OrgFixture, org_b: OrgFixture, session: Any
) -> None:
    # However a principal outside the operator org came to hold `operator` (rows written before
    # the rule, a database edit), it never acts as an operator.
    principal = session.get(Principal, org_b.admin_id)
    principal.roles = ["admin", "operator"]
    session.commit()
    assert org_b.admin.get("/api/admin/keys").status_code == 403
    assert org_b.admin.post("/api/admin/keys/rotate").status_code == 403
    # Nor may it act on principals holding `operator` in its own org.
    target = org_b.admin.ok("POST", "/api/admin/principals", {"kind": "user", "name": "t"})
    session.get(Principal, target["id"]).roles = ["member", "operator"]
    session.commit()
    assert (
        org_b.admin.post(f"/api/admin/principals/{target['id']}/credentials", {}).status_code == 403
    )


# --- revocations belong to an org ---------------------------------------------------------


# The query set `_world` grants (a name the module's catalog serves, tests/catalog.json).
WORLD_QUERY_SET = "run_events"


def _world(org: OrgFixture, stream: str, *, relation: str = "org") -> tuple[Api, Api, str]:
    """A member with a token for `stream`, and a service to introspect it (once per org)."""
    member = org.principal(f"member {stream}")
    service = org.principal(f"service {stream}", kind="service")
    org.query_set(WORLD_QUERY_SET, ["run"])
    org.stream(stream, owner_id=org.principals[f"member {stream}"])
    org.allow(relation=relation, query_sets=[WORLD_QUERY_SET])
    token = member.ok("POST", "/api/sync/token", {"streams": [stream]}, 200)["token"]
    return member, service, token


def _introspect(service: Api, token: str, stream: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"token": token}
    if stream is not None:
        body["stream"] = stream
    return service.ok("POST", "/api/sync/introspect", body, 200)  # type: ignore[no-any-return]


def _feed(service: Api) -> list[dict[str, Any]]:
    return service.ok("GET", "/api/sync/revocations")["items"]  # type: ignore[no-any-return]


def test_another_orgs_admin_cannot_revoke_a_token(org_a: OrgFixture, org_b: OrgFixture) -> None:
    _member, service, token = _world(org_a, "run:rv-a")
    jti = _introspect(service, token)["jti"]
    before_feed = _feed(service)

    revoked = org_b.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": jti}, 201)

    # A scoped no-op: B's revocation is B's, and A's tokens never read it.
    assert _introspect(service, token)["active"] is True
    assert _feed(service) == before_feed
    b_service = org_b.principal("b service", kind="service")
    assert [item["cursor"] for item in _feed(b_service)] == [revoked["cursor"]]
    # A's own revocation of the same jti does end it.
    org_a.admin.ok("POST", "/api/admin/revocations", {"kind": "jti", "value": jti}, 201)
    assert _introspect(service, token) == {"active": False, "reason": "revoked"}
    # And B cannot name A's principals or credentials at all.
    for kind, value in (("subject", org_a.principals["member run:rv-a"]), ("credential", "x")):
        response = org_b.admin.post("/api/admin/revocations", {"kind": kind, "value": value})
        assert response.status_code == 422


# --- stream lifecycle ---------------------------------------------------------------------


def test_deleting_a_stream_ends_every_grant_on_it(org_a: OrgFixture) -> None:
    member, service, token = _world(org_a, "run:gone")
    member_id = org_a.principals["member run:gone"]
    assert _introspect(service, token, "run:gone")["allowed"] is True

    org_a.admin.ok("DELETE", "/api/admin/streams/run:gone", status=204)

    assert _introspect(service, token, "run:gone") == {"active": False, "reason": "revoked"}
    assert any(item["kind"] == "subject" and item["value"] == member_id for item in _feed(service))
    # A token minted after the delete cannot name it; the audit says what ended.
    response = member.post("/api/sync/token", {"streams": ["run:gone"]})
    assert response.status_code == 403
    events = org_a.admin.ok("GET", "/api/admin/audit")["items"]
    deleted = next(e for e in events if e["action"] == "stream.delete")
    assert deleted["detail"]["revoked_subjects"] == 1


def test_a_grant_on_a_stream_the_org_no_longer_holds_is_not_allowed(
    org_a: OrgFixture, session: Any
) -> None:
    _member, service, token = _world(org_a, "run:raw")
    # Even a deletion that bypassed the API (no revocation written) allows nothing: the
    # registry has the last word.
    session.execute(text("DELETE FROM streams WHERE id = 'run:raw'"))
    session.commit()
    answer = _introspect(service, token, "run:raw")
    assert answer["active"] is True and answer["allowed"] is False
    assert answer["reason"] == "stream_not_found"


def test_a_deleted_stream_id_is_never_bound_to_another_org(
    org_a: OrgFixture, org_b: OrgFixture
) -> None:
    _world(org_a, "run:taken")
    org_a.admin.ok("DELETE", "/api/admin/streams/run:taken", status=204)

    response = org_b.admin.post("/api/streams", {"id": "run:taken"})
    assert response.status_code == 409
    # Said as for any taken id: nothing names the org that held it.
    assert org_a.org_id not in response.text
    assert response.json()["detail"] == "stream run:taken is already registered"
    # Its own org may register it again, and delete it again.
    org_a.admin.ok("POST", "/api/streams", {"id": "run:taken"}, 201)
    org_a.admin.ok("DELETE", "/api/admin/streams/run:taken", status=204)
    assert org_b.admin.post("/api/streams", {"id": "run:taken"}).status_code == 409


def test_deleting_a_stream_revokes_only_who_could_hold_it(org_a: OrgFixture) -> None:
    owner = org_a.principal("owner")
    other = org_a.principal("other")
    service = org_a.principal("svc", kind="service")
    org_a.query_set("owned", ["run"])
    org_a.stream("run:mine", owner_id=org_a.principals["owner"])
    org_a.stream("run:theirs", owner_id=org_a.principals["other"])
    org_a.allow(relation="owner", query_sets=["owned"])
    mine = owner.ok("POST", "/api/sync/token", {"streams": ["run:mine"]}, 200)["token"]
    theirs = other.ok("POST", "/api/sync/token", {"streams": ["run:theirs"]}, 200)["token"]

    org_a.admin.ok("DELETE", "/api/admin/streams/run:mine", status=204)

    assert _introspect(service, mine)["active"] is False
    assert _introspect(service, theirs)["active"] is True


def test_changing_a_query_set_ends_the_tokens_granted_it(org_a: OrgFixture) -> None:
    member, service, token = _world(org_a, "run:qs")
    name = WORLD_QUERY_SET
    # Only the description: what the query set opens is unchanged, nothing is revoked.
    current = org_a.admin.ok("GET", f"/api/admin/query-sets/{name}")
    same = {"stream_kinds": current["stream_kinds"], "queries": current["queries"]}
    org_a.admin.ok("PUT", f"/api/admin/query-sets/{name}", {**same, "description": "d"})
    assert _introspect(service, token)["active"] is True
    org_a.admin.ok(
        "PUT",
        f"/api/admin/query-sets/{name}",
        {**same, "queries": ["SELECT * FROM run_checkpoint_view"]},
    )
    assert _introspect(service, token) == {"active": False, "reason": "revoked"}
    fresh = member.ok("POST", "/api/sync/token", {"streams": ["run:qs"]}, 200)
    assert fresh["grants"][0]["query_sets"] == [f"{name}@3"]


# --- session ids --------------------------------------------------------------------------


def test_a_session_id_may_not_name_another_principal(org_a: OrgFixture) -> None:
    member, _, _ = _world(org_a, "run:sid")
    member_id = org_a.principals["member run:sid"]
    body = {"streams": ["run:sid"], "device_id": org_a.admin_id}
    response = member.post("/api/sync/token", body)
    assert response.status_code == 403
    assert "another principal" in response.json()["detail"]
    for own in (member_id, "laptop-1"):
        minted = member.ok("POST", "/api/sync/token", {**body, "device_id": own}, 200)
        assert minted["token"]


# --- data written before the rule ---------------------------------------------------------


def test_the_migration_strips_operator_outside_the_operator_org(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0005")
    engine = create_engine(url)
    with engine.begin() as connection:
        for org, is_operator in (("org_op", True), ("org_b", False)):
            connection.execute(
                text(
                    "INSERT INTO orgs (id, name, policy_rev, is_operator, created_at) "
                    "VALUES (:id, :id, 1, :op, '2026-01-01 00:00:00')"
                ),
                {"id": org, "op": is_operator},
            )
        for principal, org in (("prn_op", "org_op"), ("prn_b", "org_b")):
            connection.execute(
                text(
                    "INSERT INTO principals (id, org_id, kind, name, roles, disabled, "
                    "created_at, updated_at) VALUES (:id, :org, 'user', :id, "
                    """'["admin", "operator"]', 0, '2026-01-01 00:00:00', """
                    "'2026-01-01 00:00:00')"
                ),
                {"id": principal, "org": org},
            )
        connection.execute(
            text(
                "INSERT INTO trusted_issuers (id, org_id, issuer, audiences, default_roles, "
                "role_map, algorithms, created_at, updated_at) VALUES ('tis_b', 'org_b', "
                """'https://idp.example', '["a"]', '["member", "operator"]', """
                """'{"ops": ["operator", "admin"]}', '["RS256"]', '2026-01-01 00:00:00', """
                "'2026-01-01 00:00:00')"
            )
        )
    upgrade(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, roles FROM principals")).all()
        roles = {row.id: row.roles for row in rows}
        issuer = connection.execute(
            text("SELECT default_roles, role_map FROM trusted_issuers")
        ).one()
    engine.dispose()
    assert roles == {"prn_op": '["admin", "operator"]', "prn_b": '["admin"]'}
    assert issuer == ('["member"]', '{"ops": ["admin"]}')
