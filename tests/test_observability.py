"""Operators can see the service: `/metrics`, JSON logs, traces and readiness, on real servers.

The centre is one scripted run per backend against a real `control serve` with JSON logs:
bootstrap, principals and keys, mints and every kind of refusal, introspections, a rotation,
revocations of each kind and by policy, federation with a live and a dead identity provider.
Every client request is tallied; the tests then hold the server's metrics, log lines and
secrecy to that tally.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from control.api.system import SCHEMA_CHECK_SECONDS
from control.app import create_app
from control.audit.models import AuditEvent
from control.keys.crypto import KeyCipher
from control.keys.models import SigningKey
from control.kit.db import make_engine
from control.kit.routing import Status
from control.migrate import migrations_dir
from control.routes import ROUTES
from control.settings import Settings
from control.state import AppState
from harness.keys import KEK, PEPPER
from tests.idp import IdentityProvider, running_idp
from tests.pg import ADMIN_URL, reachable_postgres, scratch_database
from tests.server import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
METRICS_TOKEN = "mt_" + "7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c4e"
TOKEN = "/api/sync/token"
RATE_BURST = 15
MAX_STREAMS = 3
# The script's principals holding `member` (alice, bob, carol, dave, erin): a deny rule for
# members revokes each one's tokens.
MEMBERS = 5

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(exposition: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def moved(before: Samples, after: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """How each series of `name` moved between two scrapes (series that did not, left out)."""
    changes = {}
    for (sample, labels), value in after.items():
        if sample == name and value != before.get((sample, labels), 0.0):
            changes[labels] = value - before.get((sample, labels), 0.0)
    return changes


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


# --- the scripted run -------------------------------------------------------------------------


@dataclass
class Call:
    route: str
    status: int
    problem: str
    request_id: str
    who: tuple[str, str] | None


@dataclass
class Run:
    server: Server
    database_url: str
    before: Samples
    after: Samples
    calls: list[Call]
    secrets: dict[str, str]
    stream_denials: Counter[str]
    introspections: Counter[tuple[str, str]]
    audit_written: int
    rotation: dict[str, Any]
    bad_key: str
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def log_lines(self) -> list[str]:
        return [line for line in self.server.log().splitlines() if line.strip()]


class Script:
    """A client that tallies every request: route operation id, status, problem code, request
    id, and whose org and principal the server should have logged."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.calls: list[Call] = []

    def call(
        self,
        route: str,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        who: tuple[str, str] | None = None,
        expect: int | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        response = self.http.request(method, path, json=body, headers=sent)
        problem = ""
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            answer = response.json()
            problem = str(answer.get("code") or answer.get("error") or "")
        self.calls.append(
            Call(route, response.status_code, problem, response.headers["x-request-id"], who)
        )
        if expect is not None:
            assert response.status_code == expect, (route, response.status_code, response.text)
        return response

    def scrape(self) -> Samples:
        response = self.call(
            "metrics", "GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return parse_samples(response.text)


def audit_rows(database_url: str) -> int:
    engine = make_engine(Settings(_env_file=None, database_url=database_url).sqlalchemy_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    finally:
        engine.dispose()


def private_key_material(database_url: str) -> dict[str, str]:
    """Every signing key's private scalar (as a JWK `d`) and PKCS#8 DER, decrypted with the
    server's key-encryption key: what must never reach a log."""
    cipher = KeyCipher(base64.urlsafe_b64decode(KEK))
    engine = make_engine(Settings(_env_file=None, database_url=database_url).sqlalchemy_url)
    found = {}
    try:
        with engine.connect() as connection:
            for kid, blob in connection.execute(
                select(SigningKey.kid, SigningKey.private_key_encrypted)
            ):
                key = cipher.decrypt(kid, blob)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                scalar = key.private_numbers().private_value.to_bytes(32, "big")
                found[f"signing key {kid} d"] = (
                    base64.urlsafe_b64encode(scalar).decode().rstrip("=")
                )
                der = key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                found[f"signing key {kid} der"] = base64.b64encode(der).decode()
    finally:
        engine.dispose()
    return found


def scripted_run(server: Server, database_url: str) -> Run:
    boot = server.bootstrap("acme")
    org, admin_id, admin_key = boot["org_id"], boot["principal_id"], boot["api_key"]
    admin = (org, admin_id)
    s = Script(server.base_url)
    before = s.scrape()
    audit_before = audit_rows(database_url)
    secrets: dict[str, str] = {"admin key": admin_key, "metrics token": METRICS_TOKEN}
    ids: dict[str, str] = {"org": org, "admin": admin_id}

    def principal(name: str, kind: str = "user", roles: list[str] | None = None) -> str:
        body: dict[str, Any] = {"kind": kind, "name": name}
        if roles is not None:
            body["roles"] = roles
        created = s.call(
            "create_principal", "POST", "/api/admin/principals", key=admin_key, body=body,
            who=admin, expect=201,
        ).json()  # fmt: skip
        issued = s.call(
            "create_credential", "POST", f"/api/admin/principals/{created['id']}/credentials",
            key=admin_key, body={}, who=admin, expect=201,
        ).json()  # fmt: skip
        ids[name], ids[f"{name} credential"] = created["id"], issued["id"]
        secrets[f"{name} key"] = issued["key"]
        return str(issued["key"])

    alice, bob, carol, dave, erin = (
        principal(n) for n in ("alice", "bob", "carol", "dave", "erin")
    )
    runtime = principal("runtime", kind="service")
    s.call(
        "create_query_set", "POST", "/api/admin/query-sets", key=admin_key,
        body={
            "name": "run_events",
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_event_view"],
        },
        who=admin, expect=201,
    )  # fmt: skip
    for stream in ("run:a", "run:b", "run:c", "run:d"):
        s.call(
            "register_stream", "POST", "/api/streams", key=admin_key, body={"id": stream},
            who=admin, expect=201,
        )  # fmt: skip

    def rule(body: dict[str, Any]) -> str:
        base = {"query_sets": ["run_events"], "ops": ["subscribe"]}
        return str(
            s.call(
                "create_grant_rule", "POST", "/api/admin/grant-rules", key=admin_key,
                body=base | body, who=admin, expect=201,
            ).json()["id"]
        )  # fmt: skip

    rule(
        {
            "effect": "allow",
            "subjects": {"roles": ["member"]},
            "streams": {"kind": "run", "relation": "ids", "ids": ["run:a", "run:b", "run:c"]},
        }
    )
    rule(
        {
            "effect": "deny",
            "subjects": {"roles": ["member"]},
            "streams": {"kind": "run", "relation": "ids", "ids": ["run:c"]},
        }
    )
    daves_rule = rule(
        {
            "effect": "allow",
            "subjects": {"principal_ids": [ids["dave"]]},
            "streams": {"kind": "run", "relation": "ids", "ids": ["run:d"]},
        }
    )

    # Mints and refusals of every kind, at the token endpoint.
    stream_denials: Counter[str] = Counter()

    def mint(key: str, body: dict[str, Any], who: tuple[str, str] | None) -> httpx.Response:
        response = s.call("mint_sync_token", "POST", TOKEN, key=key, body=body, who=who)
        if response.status_code == 200:
            secrets[f"token {len(secrets)}"] = response.json()["token"]
        elif response.json().get("code") == "stream_not_granted":
            stream_denials.update(d["reason"] for d in response.json()["denied"])
        return response

    as_alice = (org, ids["alice"])
    token_a = mint(alice, {"streams": ["run:a"]}, as_alice).json()
    token_ab = mint(alice, {"streams": ["run:a", "run:b"]}, as_alice).json()
    assert mint(alice, {"streams": ["run:a", "run:zz"], "allow_partial": True},
                as_alice).json()["denied"]  # fmt: skip
    for refused in (
        {"streams": ["run:zz"]},
        {"streams": ["run:c"]},
        {"streams": ["run:d"]},
        {"streams": ["run:a"], "query_sets": ["elsewhere"]},
        {"streams": ["run:a"], "ops": ["append"]},
    ):
        assert mint(alice, refused, as_alice).status_code == 403
    assert len(stream_denials) >= 4, stream_denials  # the policy's reasons, several of them
    assert (
        mint(alice, {"streams": ["run:a", "run:b", "run:c", "run:d"]}, as_alice).status_code == 422
    )
    assert mint(alice, {"streams": ["run:a"], "ttl_seconds": 5}, as_alice).status_code == 422
    bad_key = "ctl_" + "Zq" * 20  # the shape of a key, known to nobody
    secrets["presented bad key"] = bad_key
    assert mint(bad_key, {"streams": ["run:a"]}, None).status_code == 401
    assert mint(runtime, {"streams": ["run:a"]}, (org, ids["runtime"])).status_code == 403
    for _ in range(RATE_BURST):
        assert mint(bob, {"streams": ["run:a"]}, (org, ids["bob"])).status_code == 200
    limited = mint(bob, {"streams": ["run:a"]}, (org, ids["bob"]))
    assert limited.status_code == 429 and limited.headers["retry-after"]

    # Federation: a live identity provider, and one that is gone.
    with running_idp() as idp:
        s.call(
            "create_trusted_issuer", "POST", "/api/admin/trusted-issuers", key=admin_key,
            body={"issuer": idp.issuer, "audiences": ["desktop-app"]}, who=admin, expect=201,
        )  # fmt: skip
        id_token = idp.id_token("user-fed")
        secrets["id token"] = id_token
        fed = mint(id_token, {"streams": ["run:a"]}, None)
        assert fed.status_code == 200, fed.text
        ids["federated"] = fed.json()["subject"]
        s.calls[-1].who = (org, ids["federated"])
    with running_idp() as gone:
        pass
    gone_idp: IdentityProvider = gone
    s.call(
        "create_trusted_issuer", "POST", "/api/admin/trusted-issuers", key=admin_key,
        body={"issuer": gone_idp.issuer, "audiences": ["desktop-app"]}, who=admin, expect=201,
    )  # fmt: skip
    for attempt in range(2):  # a failed fetch, then the back-off
        gone_token = gone_idp.id_token("user-gone")
        secrets[f"gone id token {attempt}"] = gone_token
        assert mint(gone_token, {"streams": ["run:a"]}, None).status_code == 503

    # Introspection, as the runtime sees tokens.
    introspections: Counter[tuple[str, str]] = Counter()

    def introspect(body: dict[str, Any]) -> dict[str, Any]:
        answer = s.call(
            "introspect_sync_token", "POST", "/api/sync/introspect", key=runtime, body=body,
            who=(org, ids["runtime"]), expect=200,
        ).json()  # fmt: skip
        if not answer["active"]:
            outcome = "inactive"
        elif "allowed" not in answer:
            outcome = "active"
        else:
            outcome = "allowed" if answer["allowed"] else "not_allowed"
        introspections[(outcome, answer.get("reason") or "")] += 1
        return dict(answer)

    assert introspect({"token": token_a["token"]})["active"]
    assert introspect({"token": token_a["token"], "stream": "run:a"})["allowed"]
    assert not introspect({"token": token_a["token"], "stream": "run:b"})["allowed"]
    assert not introspect({"token": "not.a.token"})["active"]

    # Discovery and JWKS, fresh and revalidated.
    for route, path in (("jwks", "/.well-known/jwks.json"),
                        ("openid_configuration", "/.well-known/openid-configuration")):  # fmt: skip
        etag = s.call(route, "GET", path, expect=200).headers["etag"]
        s.call(route, "GET", path, headers={"If-None-Match": etag}, expect=304)

    # A rotation, revocations of every kind, and revocations by change.
    rotation = s.call(
        "rotate_keys", "POST", "/api/admin/keys/rotate", key=admin_key, who=admin, expect=200
    ).json()
    # The replica picks the rotation up on its next key refresh (every 0.5 s here).
    deadline = time.monotonic() + 15
    while s.call("readyz", "GET", "/readyz", expect=200).json()["active_kid"] != rotation["active"]:
        assert time.monotonic() < deadline, "the rotation never reached the key ring"
        time.sleep(0.1)
    s.call(
        "create_revocation", "POST", "/api/admin/revocations", key=admin_key,
        body={"kind": "jti", "value": token_ab["jti"]}, who=admin, expect=201,
    )  # fmt: skip
    assert introspect({"token": token_ab["token"]})["reason"] == "revoked"
    s.call(
        "create_revocation", "POST", "/api/admin/revocations", key=admin_key,
        body={"kind": "subject", "value": ids["bob"]}, who=admin, expect=201,
    )  # fmt: skip
    s.call(
        "create_revocation", "POST", "/api/admin/revocations", key=admin_key,
        body={"kind": "credential", "value": ids["carol credential"]}, who=admin, expect=201,
    )  # fmt: skip
    s.call(
        "delete_grant_rule", "DELETE", f"/api/admin/grant-rules/{daves_rule}", key=admin_key,
        who=admin, expect=204,
    )  # fmt: skip
    s.call(
        "update_principal", "PATCH", f"/api/admin/principals/{ids['erin']}", key=admin_key,
        body={"disabled": True}, who=admin, expect=200,
    )  # fmt: skip
    s.call(
        "update_principal", "PATCH", f"/api/admin/principals/{ids['bob']}", key=admin_key,
        body={"roles": ["admin", "member"]}, who=admin, expect=200,
    )  # fmt: skip

    # A key pasted into a URL, a path no route has, a scrape without the token.
    s.call("get_principal", "GET", f"/api/admin/principals/{dave}", key=admin_key, who=admin,
           expect=404)  # fmt: skip
    s.call("unmatched", "GET", f"/no/such/path/{erin}?key={carol}", expect=404)
    s.call("metrics", "GET", "/metrics", expect=401)

    after = s.scrape()
    audit_after = audit_rows(database_url)
    secrets |= private_key_material(database_url)
    secrets |= {"key-encryption key": KEK, "credential pepper": PEPPER}
    return Run(
        server=server,
        database_url=database_url,
        before=before,
        after=after,
        calls=s.calls,
        secrets=secrets,
        stream_denials=stream_denials,
        introspections=introspections,
        audit_written=audit_after - audit_before,
        rotation=rotation,
        bad_key=bad_key,
        ids=ids,
    )


@pytest.fixture(scope="module")
def run(fresh_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with running_server(
        fresh_database_url,
        tmp_path_factory.mktemp("observed"),
        log_format="json",
        metrics_token=METRICS_TOKEN,
        key_publish_lead_seconds="0",
        mint_rate_per_second="0.001",
        mint_burst=str(RATE_BURST),
        max_streams_per_token=str(MAX_STREAMS),
        upstream_jwks_min_refetch_seconds="0",
    ) as server:
        yield scripted_run(server, fresh_database_url)


# --- metrics ----------------------------------------------------------------------------------


def test_request_counters_and_latency_match_every_request(run: Run) -> None:
    # Between the two scrapes: every request of the script, the first scrape included (its own
    # answer was counted after it was rendered), by operation id, status and problem code.
    expected = Counter(
        labels(route=c.route, code=str(c.status), problem=c.problem) for c in run.calls[1:-1]
    )
    expected[labels(route="metrics", code="200", problem="")] += 1
    got = moved(run.before, run.after, "control_http_requests_total")
    assert got == {key: float(n) for key, n in expected.items()}
    per_route = Counter(labels(route=c.route) for c in run.calls[:-1])
    assert moved(run.before, run.after, "control_http_request_duration_seconds_count") == {
        key: float(n) for key, n in per_route.items()
    }
    # Routes are operation ids from the table (or `unmatched`): never a raw path.
    table = {route.operation_id for route in ROUTES} | {"unmatched"}
    assert {dict(key)["route"] for key in got} <= table


def test_token_counters_match_what_was_answered(run: Run) -> None:
    token_calls = [c for c in run.calls if c.route == "mint_sync_token"]
    minted = sum(1 for c in token_calls if c.status == 200)
    assert minted == 3 + RATE_BURST + 1
    assert moved(run.before, run.after, "control_token_mints_total") == {(): float(minted)}
    denials = Counter(c.problem for c in token_calls if c.status != 200)
    assert set(denials) == {
        "stream_not_granted", "too_many_streams", "invalid_request", "unauthorized",
        "forbidden", "rate_limited", "issuer_unavailable",
    }  # fmt: skip
    assert moved(run.before, run.after, "control_token_denials_total") == {
        labels(reason=reason): float(n) for reason, n in denials.items()
    }
    assert moved(run.before, run.after, "control_token_stream_denials_total") == {
        labels(reason=reason): float(n) for reason, n in run.stream_denials.items()
    }
    assert moved(run.before, run.after, "control_rate_limited_total") == {
        labels(route="mint_sync_token"): 1.0
    }
    assert moved(run.before, run.after, "control_introspections_total") == {
        labels(outcome=outcome, reason=reason): float(n)
        for (outcome, reason), n in run.introspections.items()
    }
    assert moved(run.before, run.after, "control_federation_fetches_total") == {
        labels(outcome="ok"): 1.0,
        labels(outcome="failed"): 1.0,
        labels(outcome="backoff"): 1.0,
    }


def test_revocation_rotation_and_audit_counters(run: Run) -> None:
    # jti: one; credential: the credential, and its principal as a subject; subject: the five
    # members when the deny rule for members was added, bob, carol (with her credential), dave
    # (his rule deleted), erin (disabled).
    assert moved(run.before, run.after, "control_revocations_total") == {
        labels(kind="jti"): 1.0,
        labels(kind="subject"): float(MEMBERS + 4),
        labels(kind="credential"): 1.0,
    }
    assert moved(run.before, run.after, "control_auto_revocations_total") == {
        labels(cause="policy"): float(MEMBERS + 1),
        labels(cause="principal"): 1.0,
    }
    assert moved(run.before, run.after, "control_key_rotations_total") == {(): 1.0}
    assert run.audit_written > 20
    assert moved(run.before, run.after, "control_audit_write_duration_seconds_count") == {
        (): float(run.audit_written)
    }


def test_key_and_readiness_gauges_after_the_rotation(run: Run) -> None:
    after = run.after
    for state in ("active", "pending", "retiring"):
        assert after[("control_signing_keys", labels(state=state))] == 1.0
    info = {dict(key)["kid"]: dict(key)["state"] for (name, key) in after
            if name == "control_signing_key_info"}  # fmt: skip
    assert info == {
        run.rotation["active"]: "active",
        run.rotation["pending"]: "pending",
        run.rotation["retiring"]: "retiring",
    }
    assert 0 <= after[("control_signing_key_active_age_seconds", ())] < 120
    assert 0 <= after[("control_signing_key_pending_published_seconds", ())] < 120
    # The retiring key leaves the JWKS once its last token has expired: max TTL + leeway.
    remaining = after[("control_signing_key_retiring_remaining_seconds", ())]
    assert 900 - 120 < remaining <= 900 + 30
    assert (
        after[("control_key_ring_age_seconds", ())]
        < after[("control_key_ring_stale_after_seconds", ())]
    )
    assert after[("control_ready", ())] == 1.0
    for check in ("database", "keys", "schema"):
        assert after[("control_readiness_check_ok", labels(check=check))] == 1.0
    assert after[("control_db_pool_connections", labels(state="size"))] >= 1


def test_no_label_carries_an_id_or_a_secret(run: Run) -> None:
    values = {value for _, key in run.after for _, value in key}
    kids = {run.rotation["active"], run.rotation["pending"], run.rotation["retiring"]}
    for name, value in run.ids.items():
        assert value not in values, name
    for name, secret in run.secrets.items():
        assert not any(secret in value for value in values - kids), name


# --- logs -------------------------------------------------------------------------------------


def test_every_log_line_is_json_and_each_request_has_its_line(run: Run) -> None:
    lines = [json.loads(line) for line in run.log_lines]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    access = {line["request_id"]: line for line in lines if line["logger"] == "control.access"}
    for call in run.calls:
        line = access[call.request_id]
        assert line["route"] == call.route, (call, line)
        assert line["status"] == call.status
        assert line["method"] in ("GET", "POST", "PATCH", "DELETE")
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
        assert line.get("problem", "") == call.problem
        if call.who is not None:
            assert (line["org_id"], line["principal_id"]) == call.who, (call, line)
        else:
            assert "org_id" not in line and "principal_id" not in line, line
    assert len([1 for line in lines if line["logger"] == "control.access"]) >= len(run.calls)


def test_security_events_have_one_line_each(run: Run) -> None:
    events = [json.loads(line) for line in run.log_lines]
    events = [line for line in events if line["logger"] == "control.security"]
    by_event = Counter(line["event"] for line in events)
    statuses = Counter(c.status for c in run.calls)
    assert by_event["authentication.failed"] == statuses[401]
    assert by_event["access.denied"] == statuses[403] + statuses[429]
    assert by_event["revocation"] == MEMBERS + 6
    assert by_event["key.rotated"] == 1
    assert by_event["principal.roles_changed"] == 1
    assert by_event["principal.disabled"] == 1

    failed_mint = next(
        line for line in events
        if line["event"] == "authentication.failed" and line["route"] == "mint_sync_token"
        and line.get("credential", "").startswith("ctl_")
    )  # fmt: skip
    assert failed_mint["credential"] == run.bad_key[:12]
    assert failed_mint["reason"] == "invalid_credential"
    assert failed_mint["level"] == "warning"
    rotated = next(line for line in events if line["event"] == "key.rotated")
    assert rotated["active_kid"] == run.rotation["active"]
    assert rotated["pending_kid"] == run.rotation["pending"]
    assert rotated["principal_id"] == run.ids["admin"]
    revocations = Counter(line["kind"] for line in events if line["event"] == "revocation")
    assert revocations == {"subject": MEMBERS + 4, "jti": 1, "credential": 1}
    assert all("target" not in line for line in events if line.get("kind") == "jti")
    roles = next(line for line in events if line["event"] == "principal.roles_changed")
    assert (roles["target"], roles["roles_before"], roles["roles_after"]) == (
        run.ids["bob"], "member", "admin,member",
    )  # fmt: skip
    limited = [line for line in events if line.get("problem") == "rate_limited"]
    assert len(limited) == 1 and limited[0]["principal_id"] == run.ids["bob"]


def test_no_secret_the_run_created_is_in_the_logs(run: Run) -> None:
    log = run.server.log()
    leaked = []
    for name, secret in run.secrets.items():
        parts = [secret]
        if secret.startswith("ctl_"):
            parts.append(secret[12:])  # all of a key but the display prefix
        if secret.count(".") == 2:
            parts.append(secret.rsplit(".", 1)[1])  # a token's signature alone
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)) if name in (
            "key-encryption key", "credential pepper") else b""  # fmt: skip
        if raw:
            parts += [raw.decode("latin-1"), raw.hex()]
        leaked += [name for part in parts if part in log]
    assert leaked == []
    # Positive controls: the log is there, and says what it may.
    assert run.bad_key[:12] in log and run.ids["alice"] in log
    assert len(run.secrets) > 30


# --- access to /metrics, and its place outside the spec ---------------------------------------


def app_with(state: AppState, **overrides: Any) -> Any:
    settings = state.settings.model_copy(update=overrides)
    return create_app(state=dataclasses.replace(state, settings=settings), background=False)


def test_metrics_route_is_in_the_table_and_not_in_the_spec(client: TestClient) -> None:
    (entry,) = [route for route in ROUTES if route.path == "/metrics"]
    assert entry.status is Status.OPERATIONS and entry.access.public
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_token_is_required_when_set(state: AppState) -> None:
    from pydantic import SecretStr

    app = app_with(state, metrics_token=SecretStr(METRICS_TOKEN))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
        good = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert good.status_code == 200 and "control_http_requests_total" in good.text


def test_metrics_open_on_loopback_only_and_never_in_prod_without_a_token(
    state: AppState,
) -> None:
    with TestClient(app_with(state), client=("127.0.0.1", 50000)) as client:
        assert client.get("/metrics").status_code == 200
    with TestClient(app_with(state), client=("::ffff:127.0.0.1", 50000)) as client:
        assert client.get("/metrics").status_code == 200
    with TestClient(app_with(state), client=("10.1.2.3", 50000)) as client:
        response = client.get("/metrics")
        assert response.status_code == 403 and "CONTROL_METRICS_TOKEN" in response.json()["detail"]
    prod = app_with(state, env="prod")
    with TestClient(prod, client=("127.0.0.1", 50000)) as client:
        assert client.get("/metrics").status_code == 403


def test_metrics_off_counts_nothing_and_serves_nothing(state: AppState) -> None:
    from prometheus_client import REGISTRY

    def healthz_count() -> float:
        value = REGISTRY.get_sample_value(
            "control_http_requests_total", {"route": "healthz", "code": "200", "problem": ""}
        )
        return value or 0.0

    try:
        with TestClient(app_with(state, metrics_enabled=False), client=("127.0.0.1", 1)) as c:
            before = healthz_count()
            assert c.get("/healthz").status_code == 200
            assert healthz_count() == before
            assert c.get("/metrics").status_code == 404
    finally:
        create_app(state=state, background=False)  # metrics back on for this process


def test_revocations_count_when_committed_and_never_when_rolled_back(
    state: AppState, org_a: Any
) -> None:
    from prometheus_client import REGISTRY

    from control.kit.db import unit_of_work
    from control.revocations.service import revoke

    def count() -> float:
        return REGISTRY.get_sample_value("control_revocations_total", {"kind": "jti"}) or 0.0

    def revoke_then_fail() -> None:
        with unit_of_work(state.sessions) as session:
            revoke(session, org_id=org_a.org_id, kind="jti", value="jti-rolled-back")
            raise RuntimeError("the work failed after the revocation was written")

    before = count()
    with pytest.raises(RuntimeError):
        revoke_then_fail()
    assert count() == before
    with unit_of_work(state.sessions) as session:
        revoke(session, org_id=org_a.org_id, kind="jti", value="jti-committed")
        assert count() == before  # written, not yet committed
    assert count() == before + 1


def test_traces_requested_without_the_otel_extra_are_a_logged_no_op(tmp_path: Path) -> None:
    # A process where the OpenTelemetry SDK cannot be imported, as without the `otel` extra.
    program = """
import logging, sys
for name in ("opentelemetry.sdk", "opentelemetry.sdk.trace", "opentelemetry.sdk.resources"):
    sys.modules[name] = None
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from control.observability import tracing
assert tracing.requested_by_environment()
assert tracing.configure() is False and not tracing.enabled()
@tracing.traced("a.span")
def double(x: int) -> int:
    return 2 * x
assert double(21) == 42
print("no-op ok")
"""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "no-op ok" in result.stdout
    assert "install the `otel` extra" in result.stderr


# --- readiness --------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def readyz(server: Server) -> httpx.Response:
    return httpx.get(f"{server.base_url}/readyz", timeout=10)


def test_readyz_is_not_ready_while_the_schema_is_behind(run: Run) -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    assert head is not None
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)
    engine = make_engine(Settings(_env_file=None, database_url=run.database_url).sqlalchemy_url)

    def stamp(revision: str) -> None:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})

    server = run.server
    try:
        stamp(previous)
        behind = wait_for(
            lambda: (r := readyz(server)).status_code == 503 and r,
            SCHEMA_CHECK_SECONDS * 3, "readyz to see the schema behind",
        )  # fmt: skip
        problem = behind.json()
        assert problem["code"] == "unavailable" and behind.headers["retry-after"]
        assert problem["checks"] == {"database": True, "keys": True, "schema": False}
        assert "control db upgrade" in problem["detail"]
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # alive all along
        # A revision this code does not know is a newer release's: older replicas stay ready.
        # A replica that was behind looks again at every probe: ready at the first one after.
        stamp("9999_from_a_newer_release")
        ahead = readyz(server)
        assert ahead.status_code == 200, ahead.text
        assert ahead.json()["schema_revision"] == "9999_from_a_newer_release"
    finally:
        stamp(head)
        engine.dispose()
    wait_for(lambda: readyz(server).json().get("schema_revision") == head, 15, "recovery")


@contextmanager
def blockable_database() -> Iterator[tuple[str, Any, Any]]:
    """A scratch PostgreSQL database, and two switches: refuse every connection to it (and end
    those it has), or take connections again."""
    reachable_postgres("the database-outage readiness test")
    with scratch_database() as url:
        name = url.rsplit("/", 1)[1]

        def block() -> None:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )

        def unblock() -> None:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')  # type: ignore[arg-type]

        try:
            yield url, block, unblock
        finally:
            unblock()


def test_readyz_fails_while_the_database_is_unreachable_and_recovers_by_itself(
    tmp_path: Path,
) -> None:
    with blockable_database() as (url, block, unblock), running_server(
        url, tmp_path, key_refresh_seconds="0.2", token_leeway_seconds="1",
        metrics_token=METRICS_TOKEN,
    ) as server:  # fmt: skip
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert readyz(server).status_code == 200
        block()
        down = wait_for(
            lambda: (r := readyz(server)).status_code == 503 and r, 15, "readyz to fail"
        )
        assert down.json()["checks"]["database"] is False
        # Past the key ring's bound (leeway 1 s, three refreshes of 0.2 s: 1 s) with no
        # refresh, the keys are stale too.
        stale = wait_for(
            lambda: (r := readyz(server)).json()["checks"]["keys"] is False and r, 15, "stale keys"
        )
        assert "signing keys were last loaded" in stale.json()["detail"]
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        metrics = parse_samples(httpx.get(f"{server.base_url}/metrics", headers=scrape).text)
        assert metrics[("control_ready", ())] == 0.0
        assert metrics[("control_readiness_check_ok", labels(check="database"))] == 0.0
        unblock()
        back = wait_for(
            lambda: (r := readyz(server)).status_code == 200 and r, 30, "readyz to recover"
        )
        assert back.json()["keys_age_seconds"] < 1
        metrics = parse_samples(httpx.get(f"{server.base_url}/metrics", headers=scrape).text)
        assert metrics[("control_ready", ())] == 1.0
        assert server.process.poll() is None  # the same process, never restarted


# --- several processes, one set of metrics ------------------------------------------------------


def test_workers_sharing_a_multiprocess_directory_are_scraped_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    url = f"sqlite:///{tmp_path}/control.db"
    with running_server(url, tmp_path) as one, running_server(url, tmp_path) as two:
        for server, count in ((one, 3), (two, 4)):
            for _ in range(count):
                assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        for server in (one, two):
            found = parse_samples(httpx.get(f"{server.base_url}/metrics").text)
            key = ("control_http_requests_total", labels(route="healthz", code="200", problem=""))
            assert found[key] == 7.0
    assert list(directory.glob("*.db"))


# --- traces -----------------------------------------------------------------------------------


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP endpoint on loopback that keeps each export request's body."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_traces_are_exported_when_the_environment_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with otlp_receiver() as (endpoint, received), running_idp() as idp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "control-under-test")
        with running_server(f"sqlite:///{tmp_path}/control.db", tmp_path) as server:
            boot = server.bootstrap("traced")
            http = httpx.Client(base_url=server.base_url, timeout=30)
            admin = {"Authorization": f"Bearer {boot['api_key']}"}

            def ok(method: str, path: str, body: Any, status: int = 201) -> Any:
                response = http.request(method, path, json=body, headers=admin)
                assert response.status_code == status, response.text
                return response.json() if response.content else None

            ok(
                "POST",
                "/api/admin/query-sets",
                {
                    "name": "run_events",
                    "stream_kinds": ["run"],
                    "queries": ["SELECT * FROM run_event_view"],
                },
            )
            ok("POST", "/api/streams", {"id": "run:t"})
            ok(
                "POST",
                "/api/admin/grant-rules",
                {
                    "effect": "allow",
                    "subjects": {"roles": ["member"]},
                    "streams": {"kind": "run", "relation": "org"},
                    "query_sets": ["run_events"],
                    "ops": ["subscribe"],
                },
            )
            ok("POST", "/api/admin/trusted-issuers",
               {"issuer": idp.issuer, "audiences": ["desktop-app"]})  # fmt: skip
            id_token = idp.id_token("traced-user")
            minted = http.post(
                TOKEN, json={"streams": ["run:t"]}, headers={"Authorization": f"Bearer {id_token}"}
            )
            assert minted.status_code == 200, minted.text
            request_id = minted.headers["x-request-id"]
            key_in_path = http.get(f"/api/admin/principals/{boot['api_key']}", headers=admin)
            assert key_in_path.status_code == 404

            def spans() -> list[Any]:
                found = []
                for body in list(received):
                    export = ExportTraceServiceRequest.FromString(body)
                    for resource in export.resource_spans:
                        for scope in resource.scope_spans:
                            found += [(resource, span) for span in scope.spans]
                return found

            def complete() -> list[Any]:
                found = spans()
                names = {span.name for _, span in found}
                ours = {"token.sign", "policy.decide", "audit.write"} <= names
                templated = any("/api/admin/principals/{principal_id}" in n for n in names)
                return found if ours and templated else []

            found = wait_for(complete, 20, "the spans to be exported")

    def attributes(span: Any) -> dict[str, str]:
        return {a.key: a.value.string_value for a in span.attributes}

    (resource, _), *_ = found
    assert {a.key: a.value.string_value for a in resource.resource.attributes}[
        "service.name"
    ] == "control-under-test"
    server_spans = [span for _, span in found if span.kind == span.SPAN_KIND_SERVER]
    (mint_span,) = [
        s for s in server_spans if attributes(s).get("control.request_id") == request_id
    ]
    in_the_mint = [span for _, span in found if span.trace_id == mint_span.trace_id]
    names = {span.name for span in in_the_mint}
    assert {"policy.decide", "token.sign", "audit.write"} <= names
    assert any("db.statement" in attributes(span) for span in in_the_mint)  # SQLAlchemy
    assert any(span.kind == span.SPAN_KIND_CLIENT and "GET" in span.name
               for span in in_the_mint)  # httpx, fetching the provider's keys  # fmt: skip
    everything = "\n".join(repr(attributes(span)) for _, span in found)
    assert boot["api_key"] not in everything and boot["api_key"][12:] not in everything
    assert id_token not in everything


# --- the dashboard and the alerts -------------------------------------------------------------


METRIC_NAME = re.compile(r"\bcontrol_[a-z0-9_]+\b")


def exposed_names(client: TestClient) -> set[str]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    names = set()
    for family in text_string_to_metric_families(response.text):
        kind = family.type
        if kind == "counter":
            names.add(family.name + "_total")
        elif kind == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names


def deploy_expressions() -> dict[str, str]:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    found = {
        f"alert {rule['alert']}": rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
    }
    dashboard = json.loads((ROOT / "deploy/grafana/control.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']} {target.get('refId', '')}"] = target["expr"]
    return found


def test_dashboard_and_alerts_name_only_metrics_the_service_exposes(state: AppState) -> None:
    from pydantic import SecretStr

    expressions = deploy_expressions()
    assert any(key.startswith("alert") for key in expressions)
    assert any(key.startswith("panel") for key in expressions)
    with TestClient(app_with(state, metrics_token=SecretStr(METRICS_TOKEN))) as client:
        names = exposed_names(client)
    unknown = {
        (where, name)
        for where, expr in expressions.items()
        for name in METRIC_NAME.findall(expr)
        if name not in names
    }
    assert unknown == set()


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for command in (["check", "rules", "deploy/prometheus/alerts.yml"],
                    ["test", "rules", "deploy/prometheus/alerts.test.yml"]):  # fmt: skip
        result = subprocess.run(
            [promtool, *command], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
