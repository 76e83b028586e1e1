"""The module's query-set catalog, as the control plane enforces it, and the outbox rows every
revocation writes in its own transaction. The shared vectors are `tests/vectors/catalog.json` and
`revocations.json` (the module's node tests read the same files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from control.cli import main
from control.grants import parse_grants
from control.policy.queries import queried_table
from control.revocations.service import revoke
from control.settings import SettingsError
from control.spacetime.catalog import (
    CATALOG_PATH,
    MODULE_CATALOG,
    CatalogError,
    parse_catalog,
    read_catalog,
    shipped_catalog,
)
from control.spacetime.models import OutboxEntry
from control.spacetime.outbox import push_for
from control.state import AppState
from tests.cli import control_in_process, control_process
from tests.conftest import make_settings
from tests.factories import OrgFixture

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
CATALOG_VECTORS = json.loads((VECTORS / "catalog.json").read_text())
REVOCATION_VECTORS = json.loads((VECTORS / "revocations.json").read_text())
VIEWS = ["run_event_view", "run_checkpoint_view"]


def _kind(stream: str) -> str:
    return stream.split(":", 1)[0]


@pytest.mark.parametrize("case", CATALOG_VECTORS["opens"], ids=lambda c: c["name"])
def test_catalog_opens_vector(case: dict[str, Any]) -> None:
    row, catalog = case["row"], shipped_catalog()
    opened = [
        view
        for view in VIEWS
        if "subscribe" in row["ops"] and catalog.opens(row["query_set"], _kind(row["stream"]), view)
    ]
    assert sorted(opened) == sorted(case["opens"])


@pytest.mark.parametrize("case", CATALOG_VECTORS["connect"], ids=lambda c: c["name"])
def test_catalog_connect_vector(case: dict[str, Any]) -> None:
    catalog = shipped_catalog()
    served = all(
        catalog.serves(ref, _kind(grant.stream))
        for grant in parse_grants(case["grants"])
        for ref in grant.query_sets
    )
    assert ("ok" if served else "query_set_not_served") == case["expect"]


@pytest.mark.parametrize("case", CATALOG_VECTORS["definitions"], ids=lambda c: c["name"])
def test_catalog_definition_vector(case: dict[str, Any]) -> None:
    d = case["definition"]
    selected = {queried_table(q) for q in d["queries"]}
    problem = shipped_catalog().definition_problem(
        d["name"], d["version"], d["stream_kinds"], selected
    )
    assert ("ok" if problem is None else "not_served") == case["expect"]
    if problem is not None:
        assert "control-sync-module@1" in problem


def test_the_module_and_the_control_plane_hold_one_catalog() -> None:
    assert read_catalog(ROOT / MODULE_CATALOG) == shipped_catalog()
    assert read_catalog(CATALOG_PATH).views.keys() == set(VIEWS)
    summary: dict[str, list[str]] = {}
    for ref, entry in shipped_catalog().query_sets.items():
        views = summary.setdefault(ref.split("@")[0], [])
        views += [v for v in entry.views if v not in views]
    views_json = json.loads((VECTORS / "views.json").read_text())
    assert views_json["query_set_views"] == summary


@pytest.mark.parametrize(
    "document",
    [
        None,
        {},
        {"catalog": "c", "revision": True, "views": {"v": {"table": "t"}}, "query_sets": {}},
        {"catalog": "c", "revision": 1, "views": {"v": {"table": "t"}}, "query_sets": {"x": {}}},
        {
            "catalog": "c",
            "revision": 1,
            "views": {"v": {"table": "t"}},
            "query_sets": {"x@1": {"views": ["w"], "stream_kinds": ["run"]}},
        },
        {
            "catalog": "c",
            "revision": 1,
            "views": {"v": {"table": "t"}},
            "query_sets": {"x@1": {"views": ["v"], "stream_kinds": ["run", "run"]}},
        },
    ],
)
def test_malformed_catalogs_are_refused(document: Any) -> None:
    with pytest.raises(CatalogError):
        parse_catalog(document)


def test_catalog_check_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTROL_QUERY_SET_CATALOG", raising=False)  # the shipped one
    assert main(["module", "catalog", "check", "--module", str(ROOT / MODULE_CATALOG)]) == 0
    changed = json.loads((ROOT / MODULE_CATALOG).read_text())
    changed["query_sets"]["run_events@3"] = {"views": ["run_event_view"], "stream_kinds": ["run"]}
    other = tmp_path / "catalog.json"
    other.write_text(json.dumps(changed))
    assert main(["module", "catalog", "check", "--module", str(other)]) == 1
    assert "differs from the catalog the control plane enforces" in capsys.readouterr().err
    other.write_text("{not json")
    assert main(["module", "catalog", "check", "--module", str(other)]) == 1


@pytest.mark.usefixtures("enforce_shipped_catalog")
def test_a_query_set_outside_the_catalog_is_refused(org_a: OrgFixture) -> None:
    admin = org_a.admin
    refused = admin.post(
        "/api/admin/query-sets",
        {"name": "worker_lifecycle", "stream_kinds": ["worker"], "queries": ["SELECT * FROM v"]},
    )
    assert refused.status_code == 422
    assert "control-sync-module@1" in refused.json()["detail"]
    assert admin.get("/api/admin/query-sets/worker_lifecycle").status_code == 404
    # A view the version does not open, or a kind it does not serve: refused too.
    for body in (
        {"name": "run_checkpoints", "stream_kinds": ["run"], "queries": ["SELECT * FROM x"]},
        {
            "name": "run_checkpoints",
            "stream_kinds": ["job"],
            "queries": ["SELECT * FROM run_checkpoint_view"],
        },
    ):
        assert admin.post("/api/admin/query-sets", body).status_code == 422
    created = admin.ok(
        "POST",
        "/api/admin/query-sets",
        {
            "name": "run_events",
            "stream_kinds": ["run"],
            "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
        },
    )
    assert created["ref"] == "run_events@1"
    # Version 2 is served with events only; a version 2 with checkpoints is not.
    both = {
        "stream_kinds": ["run"],
        "queries": ["SELECT * FROM run_event_view", "SELECT * FROM run_checkpoint_view"],
    }
    assert admin.put("/api/admin/query-sets/run_events", both).status_code == 422
    events = {"stream_kinds": ["run"], "queries": ["SELECT * FROM run_event_view"]}
    assert admin.ok("PUT", "/api/admin/query-sets/run_events", events)["ref"] == "run_events@2"
    # The catalog serves no version 3: the policy stays at version 2.
    third = admin.put("/api/admin/query-sets/run_events", events)
    assert third.status_code == 422
    assert "does not serve run_events@3" in third.json()["detail"]
    assert admin.ok("GET", "/api/admin/query-sets/run_events")["ref"] == "run_events@2"


@pytest.mark.parametrize("case", REVOCATION_VECTORS["pushes"], ids=lambda c: c["name"])
def test_revocation_push_vector(case: dict[str, Any]) -> None:
    r = case["revocation"]
    push = push_for(r["org_id"], r["kind"], r["value"], r["not_before"])
    expected = case["push"]
    assert (None if push is None else {"reducer": push[0], "args": push[1]}) == expected


def test_every_revocation_writes_its_push_in_its_own_transaction(session: Session) -> None:
    before = session.scalar(select(OutboxEntry.id).order_by(OutboxEntry.id.desc()).limit(1)) or 0
    with session.begin_nested() as savepoint:
        row = revoke(session, org_id="org_x", kind="subject", value="prn_gone")
        savepoint.rollback()
    assert session.scalars(select(OutboxEntry).where(OutboxEntry.id > before)).all() == []
    row = revoke(session, org_id="org_x", kind="subject", value="prn_kept")
    jti = revoke(session, org_id="org_x", kind="jti", value="t-1")
    revoke(session, org_id="org_x", kind="credential", value="cred_1")
    entries = session.scalars(select(OutboxEntry).where(OutboxEntry.id > before)).all()
    assert [(e.reducer, e.args, e.revocation_cursor) for e in entries] == [
        ("revoke_subject", ["org_x", "prn_kept", int(row.not_before.timestamp())], row.cursor),
        ("revoke_jti", ["org_x", "t-1"], jti.cursor),
    ]


# --- the catalog a deployment enforces: CONTROL_QUERY_SET_CATALOG ----------------------------

SETTING = "CONTROL_QUERY_SET_CATALOG"
# A deployment's own module: one query set the reference module does not serve.
CUSTOM_CATALOG = {
    "catalog": "fleet-module",
    "revision": 3,
    "views": {"worker_event_view": {"table": "worker_event"}},
    "query_sets": {
        "worker_lifecycle@1": {"views": ["worker_event_view"], "stream_kinds": ["worker"]},
        "worker_lifecycle@2": {"views": ["worker_event_view"], "stream_kinds": ["worker"]},
    },
}
WORKER_LIFECYCLE = {
    "name": "worker_lifecycle",
    "stream_kinds": ["worker"],
    "queries": ["SELECT * FROM worker_event_view"],
}
RUN_EVENTS = {
    "name": "run_events",
    "stream_kinds": ["run"],
    "queries": ["SELECT * FROM run_event_view"],
}


def test_the_setting_decides_which_query_sets_can_be_defined(
    org_a: OrgFixture, state: AppState, tmp_path: Path
) -> None:
    custom = tmp_path / "fleet-catalog.json"
    custom.write_text(json.dumps(CUSTOM_CATALOG))
    admin = org_a.admin
    path = "/api/admin/query-sets"

    state.settings = state.settings.model_copy(update={"query_set_catalog": None})
    refused = admin.post(path, WORKER_LIFECYCLE)
    assert refused.status_code == 422
    assert "control-sync-module@1 does not serve worker_lifecycle@1" in refused.json()["detail"]

    state.settings = state.settings.model_copy(update={"query_set_catalog": custom})
    assert admin.ok("POST", path, WORKER_LIFECYCLE)["ref"] == "worker_lifecycle@1"
    body = {key: value for key, value in WORKER_LIFECYCLE.items() if key != "name"}
    replaced = admin.ok("PUT", f"{path}/worker_lifecycle", body)
    assert replaced["ref"] == "worker_lifecycle@2"
    # What the reference module serves is not served by this deployment's.
    other = admin.post(path, RUN_EVENTS)
    assert other.status_code == 422
    assert other.json()["errors"][0]["type"] == "query_set_not_served"
    assert "fleet-module@3 does not serve run_events@1" in other.json()["detail"]
    assert admin.get(f"{path}/run_events").status_code == 404
    # Nor a view the deployment's module does not open.
    mixed = body | {"queries": ["SELECT * FROM run_event_view"]}
    assert admin.put(f"{path}/worker_lifecycle", mixed).status_code == 422
    assert admin.ok("GET", f"{path}/worker_lifecycle")["version"] == 2


BAD_CATALOGS = {
    "missing": (None, "CONTROL_QUERY_SET_CATALOG cannot be read: No such file or directory"),
    "not JSON": ("{\n not json", "CONTROL_QUERY_SET_CATALOG is not JSON (line 2)"),
    "not a catalog": (
        json.dumps({**CUSTOM_CATALOG, "revision": 0}),
        "CONTROL_QUERY_SET_CATALOG is not a query-set catalog: "
        "`revision` must be a positive integer",
    ),
    "a set opening an undeclared view": (
        json.dumps(
            {
                **CUSTOM_CATALOG,
                "query_sets": {"w@1": {"views": ["nope_view"], "stream_kinds": ["worker"]}},
            }
        ),
        "CONTROL_QUERY_SET_CATALOG is not a query-set catalog: "
        "w@1 opens nope_view, which the catalog does not declare",
    ),
}


# The case run as a real `control serve` process; the others run `main` in the test's process,
# the same code without a process start each.
REAL_PROCESS_CASE = "not JSON"


@pytest.mark.parametrize("case", BAD_CATALOGS, ids=list(BAD_CATALOGS))
def test_a_catalog_that_cannot_be_read_stops_the_start_in_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content, line = BAD_CATALOGS[case]
    catalog = tmp_path / "secret-looking-name" / "catalog.json"
    if content is not None:
        catalog.parent.mkdir()
        catalog.write_text(content)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROL_")}
    env |= {
        "CONTROL_DATABASE_URL": f"sqlite:///{workdir / 'control.db'}",
        "CONTROL_DEV_SECRETS_FILE": str(workdir / "secrets.json"),
        SETTING: str(catalog),
    }
    args = ["serve", "--port", "0"]
    if case == REAL_PROCESS_CASE:
        result = control_process(args, env, workdir)
    else:
        result = control_in_process(monkeypatch, args, env, workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"control: configuration error: {line}"]
    assert "secret-looking-name" not in result.stdout + result.stderr  # never the value
    # Refused before anything ran: no database migrated, no secret generated.
    assert sorted(path.name for path in workdir.iterdir()) == []
    # A replica built in-process (each worker of `serve --workers`) stops the same way.
    settings = make_settings(env["CONTROL_DATABASE_URL"], query_set_catalog=catalog)
    with pytest.raises(SettingsError) as refused:
        AppState.build(settings)
    assert refused.value.problems == (line,)


def test_the_check_command_compares_with_the_catalog_the_setting_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = tmp_path / "fleet-catalog.json"
    custom.write_text(json.dumps(CUSTOM_CATALOG))
    monkeypatch.setenv(SETTING, str(custom))
    assert main(["module", "catalog", "check", "--module", str(custom)]) == 0
    assert "agree: fleet-module@3" in capsys.readouterr().out
    assert main(["module", "catalog", "check", "--module", str(ROOT / MODULE_CATALOG)]) == 1
    assert f"enforces ({SETTING}, fleet-module@3)" in capsys.readouterr().err
    monkeypatch.setenv(SETTING, str(tmp_path / "missing.json"))
    assert main(["module", "catalog", "check", "--module", str(custom)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"control: configuration error: {SETTING} cannot be read: No such file or directory"
    ]
