"""Policy as code: an org's policy exported as one document and applied back, over the admin API
and the command line. Applying is idempotent, a dry run changes nothing and says what it would
revoke, and a narrowing apply revokes what the same change through the API would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from control.migrate import upgrade
from tests.cli import control_in_process
from tests.conftest import KEK, PEPPER
from tests.factories import Api, OrgFixture

APPLY = "/api/admin/policy:apply"


def _world(org: OrgFixture) -> tuple[Api, Api, str]:
    """An org with a query set, two streams, an org-wide rule, a member token and a service."""
    member = org.principal("ada")
    service = org.principal("svc", kind="service")
    org.query_set("run_events", ["run"], ["SELECT * FROM run_event_view"])
    org.stream("run:a", owner_id=org.principals["ada"])
    org.stream("run:b")
    org.allow(query_sets=["run_events"], ops=["subscribe", "append"])
    token = member.ok("POST", "/api/sync/token", {"streams": ["run:a"]}, 200)["token"]
    return member, service, token


def _active(service: Api, token: str) -> bool:
    answer = service.ok("POST", "/api/sync/introspect", {"token": token}, 200)
    return bool(answer["active"])


def _apply(org: OrgFixture, document: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = org.admin.ok(
        "POST", APPLY, {"document": document, "dry_run": dry_run}, 200
    )
    return result


def test_export_then_apply_changes_nothing(org_a: OrgFixture) -> None:
    _, service, token = _world(org_a)
    document = org_a.admin.ok("GET", "/api/admin/policy")
    assert [q["name"] for q in document["query_sets"]] == ["run_events"]
    assert [s["id"] for s in document["streams"]] == ["run:a", "run:b"]
    assert len(document["grant_rules"]) == 1
    rev = org_a.admin.ok("GET", "/api/admin/grant-rules")["items"][0]["policy_rev"]

    for dry_run in (True, False):
        result = _apply(org_a, document, dry_run)
        assert result["changes"] == [] and result["revoked_subjects"] == []
        assert result["policy_rev"] == rev
    assert _active(service, token)
    assert org_a.admin.ok("GET", "/api/admin/policy") == document


def test_a_dry_run_reports_the_diff_and_revocations_and_changes_nothing(
    org_a: OrgFixture,
) -> None:
    _, service, token = _world(org_a)
    document = org_a.admin.ok("GET", "/api/admin/policy")
    narrowed = json.loads(json.dumps(document))
    narrowed["grant_rules"][0]["ops"] = ["subscribe"]  # no more append: a narrowing
    narrowed["streams"] = [s for s in narrowed["streams"] if s["id"] != "run:b"]
    narrowed["query_sets"].append(
        {
            "name": "run_checkpoints",
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_checkpoint_view"],
        }
    )
    before = org_a.admin.ok("GET", "/api/admin/audit?limit=500")["items"]

    result = _apply(org_a, narrowed, dry_run=True)

    ops = sorted((c["op"], c["kind"], c["key"]) for c in result["changes"])
    rule_id = document_rule_id(org_a)
    assert ops == sorted(
        [
            ("delete", "grant_rule", rule_id),
            ("create", "grant_rule", ops_key(result)),
            ("create", "query_set", "run_checkpoints"),
            ("delete", "stream", "run:b"),
        ]
    )
    assert result["revoked_subjects"] == [org_a.principals["ada"]]
    assert result["dry_run"] is True
    # Nothing happened: not the rule, not the stream, not the token, not the audit log.
    assert org_a.admin.ok("GET", "/api/admin/policy") == document
    assert _active(service, token)
    assert org_a.admin.ok("GET", "/api/admin/audit?limit=500")["items"] == before


def document_rule_id(org: OrgFixture) -> str:
    return str(org.admin.ok("GET", "/api/admin/grant-rules")["items"][0]["id"])


def ops_key(result: dict[str, Any]) -> str:
    created = [c for c in result["changes"] if c["op"] == "create" and c["kind"] == "grant_rule"]
    return str(created[0]["key"])


def test_a_narrowing_apply_revokes_and_a_second_apply_is_a_no_op(org_a: OrgFixture) -> None:
    _, service, token = _world(org_a)
    narrowed = org_a.admin.ok("GET", "/api/admin/policy")
    narrowed["grant_rules"][0]["ops"] = ["subscribe"]

    result = _apply(org_a, narrowed)

    assert result["revoked_subjects"] == [org_a.principals["ada"]]
    assert not _active(service, token)
    assert org_a.admin.ok("GET", "/api/admin/grant-rules")["items"][0]["ops"] == ["subscribe"]
    again = _apply(org_a, narrowed)
    assert again["changes"] == [] and again["revoked_subjects"] == []
    actions = {e["action"] for e in org_a.admin.ok("GET", "/api/admin/audit?limit=500")["items"]}
    assert {"grant_rule.delete", "grant_rule.create"} <= actions


def test_a_bad_document_changes_nothing(org_a: OrgFixture, org_b: OrgFixture) -> None:
    _, _, _ = _world(org_a)
    document = org_a.admin.ok("GET", "/api/admin/policy")
    broken = json.loads(json.dumps(document))
    broken["streams"] = []  # would delete both streams ...
    broken["grant_rules"][0]["subjects"] = {"principal_ids": [org_b.admin_id]}  # ... but this
    response = org_a.admin.post(APPLY, {"document": broken})
    assert response.status_code == 422, response.text
    assert org_a.admin.ok("GET", "/api/admin/policy") == document
    unknown = org_a.admin.post(APPLY, {"document": {**document, "rules": []}})
    assert unknown.status_code == 422


def _cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    control = str(Path(sys.executable).with_name("control"))
    return subprocess.run(
        [control, *args], env=env, input=stdin, capture_output=True, text=True, check=False
    )


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`_cli`, run as `main` in this process (where `_cli`'s subprocess inherits its working
    directory)."""

    def run(
        env: dict[str, str], *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return control_in_process(monkeypatch, args, env, Path.cwd(), stdin)

    return run


def test_the_command_line_exports_and_applies_yaml(
    tmp_path: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    url = f"sqlite:///{tmp_path}/control.db"
    upgrade(url)
    env = {
        **os.environ,
        "CONTROL_DATABASE_URL": url,
        "CONTROL_KEY_ENCRYPTION_KEY": KEK,
        "CONTROL_CREDENTIAL_PEPPER": PEPPER,
    }
    # The first command runs as a real `control` process, the others as `main` in this one.
    created = _cli(env, "admin", "bootstrap", "--org", "acme")
    assert created.returncode == 0, created.stderr
    document = {
        "version": 1,
        "query_sets": [
            {
                "name": "run_events",
                "stream_kinds": ["run"],
                "queries": ["SELECT * FROM run_event_view"],
            }
        ],
        "streams": [{"id": "run:r1", "labels": {"env": "prod"}}],
        "grant_rules": [
            {
                "effect": "allow",
                "subjects": {"roles": ["member"]},
                "streams": {"kind": "run", "relation": "org"},
                "query_sets": ["run_events"],
                "ops": ["subscribe"],
            }
        ],
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))

    dry = in_process(env, "policy", "apply", "--org", "acme", "--dry-run", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "create query_set" in " ".join(dry.stdout.split()) and "dry run" in dry.stdout
    assert "run:r1" not in in_process(env, "policy", "export", "--org", "acme").stdout

    applied = in_process(env, "policy", "apply", "--org", "acme", str(path))
    assert applied.returncode == 0, applied.stderr
    exported = yaml.safe_load(in_process(env, "policy", "export", "--org", "acme").stdout)
    assert exported["streams"] == [{"id": "run:r1", "owner_id": None, "labels": {"env": "prod"}}]
    assert exported["grant_rules"][0]["ops"] == ["subscribe"]
    again = in_process(env, "policy", "apply", "--org", "acme", "-", stdin=json.dumps(exported))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr

    bad = in_process(
        env, "policy", "apply", "--org", "acme", "-", stdin="grant_rules: [{effect: x}]"
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("control: invalid_request: grant_rules.0")
    missing = in_process(env, "policy", "export", "--org", "nope")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_command_line_errors_are_one_line(
    tmp_path: Path, in_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {
        **os.environ,
        "CONTROL_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db",
        "CONTROL_KEY_ENCRYPTION_KEY": KEK,
        "CONTROL_CREDENTIAL_PEPPER": PEPPER,
    }
    # The first command runs as a real `control` process, the others as `main` in this one.
    unmigrated = _cli(env, "admin", "bootstrap", "--org", "acme")
    assert unmigrated.returncode == 1
    assert unmigrated.stderr.strip().splitlines() == [
        "control: the database has no schema yet (or an old one): run `control db upgrade`"
    ]
    upgrade(env["CONTROL_DATABASE_URL"])
    created = in_process(env, "admin", "bootstrap", "--org", "acme")
    admin = json.loads(created.stdout)["principal_id"]
    bad_stream = in_process(env, "token", "mint", "--principal", admin, "--stream", "bad id")
    assert bad_stream.returncode == 1, bad_stream.stderr
    assert "Traceback" not in bad_stream.stderr
    lines = bad_stream.stderr.strip().splitlines()
    assert lines and all(line.startswith("control: invalid_request: streams.0") for line in lines)
