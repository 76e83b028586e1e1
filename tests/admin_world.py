"""A populated org for route-table-generated admin tests: one row of every org-owned kind,
the path parameters that name them, and a valid body for every write route.

Tests that walk `ROUTES` fill templated paths from `Seeded.param` and bodies from
`valid_body`; both fail loudly for a route they do not know, so a new route cannot slip past
the isolation and bad-input tests unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from control.identity.models import Org
from control.kit.routing import Route, Status
from control.routes import ROUTES
from tests.factories import Api, OrgFixture, database_text, table_counts

ACTIVE = [route for route in ROUTES if route.status is Status.ACTIVE]
PATH_PARAM = re.compile(r"\{([^}]+)\}")


def route_id(route: Route) -> str:
    return f"{route.method} {route.path}"


def path_params(route: Route) -> list[str]:
    return PATH_PARAM.findall(route.path)


@dataclass
class Seeded:
    """One org with one row of each kind the admin API manages, and callers of each role."""

    org: OrgFixture
    tag: str
    principal_id: str  # a user principal ("worker"), holding `member`
    credential_id: str  # the worker's credential
    service_id: str
    stream_id: str  # owned by the worker
    query_set: str  # applies to `run` streams
    rule_id: str  # allow members `subscribe` on the org's run streams
    issuer_id: str  # a trusted upstream OIDC issuer
    member: Api
    service: Api
    token: str = ""  # a sync token minted by the worker

    @property
    def org_id(self) -> str:
        return self.org.org_id

    @property
    def admin(self) -> Api:
        return self.org.admin

    # Path parameter name -> the row of this org it names. Extend it with every new kind of
    # path parameter; `fill` refuses a path it cannot fill.
    def param(self, name: str) -> str | None:
        return {
            "principal_id": self.principal_id,
            "credential_id": self.credential_id,
            "stream_id": self.stream_id,
            "name": self.query_set,
            "rule_id": self.rule_id,
            "issuer_id": self.issuer_id,
        }.get(name)

    def fill(self, route: Route) -> str:
        path = route.path
        for name in path_params(route):
            value = self.param(name)
            if value is None:
                pytest.fail(
                    f"{route_id(route)}: path parameter {{{name}}} names no seeded row; add it "
                    "to Seeded.param in tests/admin_world.py so the admin tests cover this route"
                )
            path = path.replace(f"{{{name}}}", value)
        return path

    def ids(self) -> list[str]:
        """Every id and name this org's rows are known by."""
        return [
            self.org_id,
            self.org.admin_id,
            self.principal_id,
            self.credential_id,
            self.service_id,
            self.stream_id,
            self.query_set,
            self.rule_id,
            self.issuer_id,
        ]

    def caller_for(self, route: Route) -> Api:
        """A credential of this org allowed to call `route` (the admin when it may)."""
        roles = route.access.roles
        if "admin" in roles:
            return self.admin
        if "member" in roles:
            return self.member
        if "service" in roles:
            return self.service
        pytest.fail(f"{route_id(route)}: no seeded caller holds any of {sorted(roles)}")


def seed(org: OrgFixture, tag: str) -> Seeded:
    admin = org.admin
    worker = admin.ok("POST", "/api/admin/principals", {"kind": "user", "name": f"{tag} worker"})
    credential = admin.ok("POST", f"/api/admin/principals/{worker['id']}/credentials", {})
    service = admin.ok("POST", "/api/admin/principals", {"kind": "service", "name": f"{tag} svc"})
    service_key = admin.ok("POST", f"/api/admin/principals/{service['id']}/credentials", {})
    query_set = f"{tag}_events"
    org.query_set(query_set, ["run"], ["SELECT * FROM run_event_view"])
    stream_id = f"run:{tag}-1"
    org.stream(stream_id, owner_id=worker["id"])
    rule = org.allow(query_sets=[query_set])
    issuer = admin.ok(
        "POST",
        "/api/admin/trusted-issuers",
        {"issuer": f"https://idp.{tag}.example", "audiences": [f"{tag}-app"]},
    )
    seeded = Seeded(
        org=org,
        tag=tag,
        principal_id=worker["id"],
        credential_id=credential["id"],
        service_id=service["id"],
        stream_id=stream_id,
        query_set=query_set,
        rule_id=rule["id"],
        issuer_id=issuer["id"],
        member=Api(org.client, credential["key"]),
        service=Api(org.client, service_key["key"]),
    )
    # Use every key once now: `last_used_at` is refreshed at most once a minute, so later
    # requests write nothing and "no row changed" can be checked byte for byte.
    # (A rejected request rolls back, so only successful calls count.)
    admin.ok("GET", "/api/admin/audit")
    minted = seeded.member.ok("POST", "/api/sync/token", {"streams": [stream_id]}, status=200)
    seeded.token = minted["token"]
    seeded.service.ok("POST", "/api/streams", {"id": f"run:{tag}-svc"})
    return seeded


def _rule_body(s: Seeded) -> dict[str, Any]:
    return {
        "effect": "allow",
        "subjects": {"principal_ids": [s.principal_id], "roles": ["member"], "kinds": ["user"]},
        "streams": {"kind": "run", "relation": "ids", "ids": [s.stream_id]},
        "query_sets": [s.query_set],
        "ops": ["subscribe"],
        "max_ttl_seconds": 300,
        "description": "valid rule",
    }


# operation id -> a body the route accepts for the seeded org (every field set).
VALID_BODIES: dict[str, Callable[[Seeded], dict[str, Any]]] = {
    "mint_sync_token": lambda s: {
        "streams": [s.stream_id],
        "query_sets": [s.query_set],
        "ops": ["subscribe"],
        "ttl_seconds": 300,
        "device_id": "dev-1",
        "allow_partial": False,
    },
    "register_stream": lambda s: {
        "id": f"run:{s.tag}-new",
        "owner_id": s.principal_id,
        "labels": {"env": "test"},
    },
    "create_principal": lambda s: {"kind": "user", "name": "new principal", "roles": ["member"]},
    "update_principal": lambda s: {"roles": ["member"], "disabled": False},
    "create_credential": lambda s: {"name": "laptop", "expires_at": "2099-01-01T00:00:00Z"},
    "create_query_set": lambda s: {
        "name": f"{s.tag}_new",
        "stream_kinds": ["run"],
        "queries": ["SELECT * FROM run_event_view WHERE level = 'info'"],
        "description": "valid query set",
    },
    "update_query_set": lambda s: {
        "stream_kinds": ["run"],
        "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
        "description": "valid query set",
    },
    "create_grant_rule": _rule_body,
    "update_grant_rule": _rule_body,
    "introspect_sync_token": lambda s: {
        "token": s.token,
        "stream": s.stream_id,
        "query_set": s.query_set,
        "op": "subscribe",
    },
    "create_trusted_issuer": lambda s: {
        "issuer": f"https://login.{s.tag}.example/tenant",
        "audiences": [f"{s.tag}-web"],
        "default_roles": ["member"],
        "role_claim": "groups",
        "role_map": {"ops": ["admin"]},
        "algorithms": ["RS256"],
    },
    "update_trusted_issuer": lambda s: {
        "issuer": f"https://idp.{s.tag}.example",
        "audiences": [f"{s.tag}-app", f"{s.tag}-cli"],
        "default_roles": ["member"],
        "role_claim": "groups",
        "role_map": {"ops": ["admin"]},
        "algorithms": ["ES256"],
    },
    "create_revocation": lambda s: {"kind": "jti", "value": "jti-0001", "reason": "lost laptop"},
    "explain": lambda s: {
        "principal_id": s.principal_id,
        "streams": [s.stream_id],
        "query_sets": [s.query_set],
        "ops": ["subscribe"],
    },
    # A dry run of an empty document: every change reported, none made.
    "apply_policy": lambda s: {"document": {"version": 1}, "dry_run": True},
}


def valid_body(route: Route, seeded: Seeded) -> dict[str, Any]:
    make = VALID_BODIES.get(route.operation_id)
    if make is None:
        pytest.fail(
            f"{route_id(route)} takes a body but VALID_BODIES in tests/admin_world.py has none "
            "for it; add one so the admin tests cover this route"
        )
    return make(seeded)


@dataclass(frozen=True)
class Snapshot:
    """Everything a rejected request must leave untouched."""

    counts: dict[str, int]
    policy_revs: dict[str, int]
    text: str

    @property
    def audit_events(self) -> int:
        return self.counts["audit_events"]

    def diff(self, other: Snapshot) -> str:
        parts = []
        if self.counts != other.counts:
            changed = {
                table: (n, other.counts.get(table))
                for table, n in self.counts.items()
                if other.counts.get(table) != n
            }
            parts.append(f"row counts changed {changed}")
        if self.policy_revs != other.policy_revs:
            parts.append(f"policy_rev changed {self.policy_revs} -> {other.policy_revs}")
        if self.text != other.text:
            parts.append("row contents changed")
        return "; ".join(parts)


def snapshot(session: Session) -> Snapshot:
    revs = {
        str(org_id): int(rev) for org_id, rev in session.execute(select(Org.id, Org.policy_rev))
    }
    return Snapshot(table_counts(session), revs, database_text(session))


def rollback_blocks(
    connection: Connection, session: Session
) -> Callable[[], AbstractContextManager[None]]:
    """Blocks whose writes are rolled back afterwards: each is a savepoint on the test's
    connection, which the app's sessions join, so one seeded world serves many checks."""
    snapshot(session)  # the test's own session begins its transaction outside every block

    @contextmanager
    def block() -> Iterator[None]:
        savepoint = connection.begin_nested()
        try:
            yield
        finally:
            savepoint.rollback()

    return block
