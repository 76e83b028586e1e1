"""The main flow end to end over the ASGI app: bootstrap, policy, mint."""

from __future__ import annotations

from tests.factories import OrgFixture


def test_member_mints_a_granted_stream(org_a: OrgFixture) -> None:
    member = org_a.principal("alice")
    org_a.query_set("run_events", ["run"])
    org_a.stream("run:01J9ZK")
    org_a.allow(query_sets=["run_events"])
    response = member.post("/api/sync/token", {"streams": ["run:01J9ZK"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["grants"] == [
        {"stream": "run:01J9ZK", "query_sets": ["run_events@1"], "ops": ["subscribe"]}
    ]
    assert response.headers["cache-control"] == "no-store"
