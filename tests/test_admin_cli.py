"""`control admin bootstrap --org NAME` against a SQLite file, after `control db upgrade` run as a
real process (the bootstraps run as `main` in this one, with the same environment)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from control.app import create_app
from control.errors import InvalidRequest
from control.identity.models import Principal
from control.identity.service import bootstrap_org
from control.state import AppState
from tests.cli import control_in_process, control_process
from tests.conftest import make_settings
from tests.factories import Api, table_counts


def _secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def test_admin_bootstrap_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    kek, pepper = _secret(), _secret()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROL_")}
    env.update(
        CONTROL_DATABASE_URL=url,
        CONTROL_KEY_ENCRYPTION_KEY=kek,
        CONTROL_CREDENTIAL_PEPPER=pepper,
        CONTROL_DEV_SECRETS_FILE=str(tmp_path / "secrets.json"),
    )

    def control(*args: str) -> subprocess.CompletedProcess[str]:
        return control_process(args, env, tmp_path)

    def in_process(*args: str) -> subprocess.CompletedProcess[str]:
        return control_in_process(monkeypatch, args, env, tmp_path)

    # The first command runs as a real `control` process, the others as `main` in this one.
    upgraded = control("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr

    first = in_process("admin", "bootstrap", "--org", "acme")
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    assert set(a) == {"org_id", "principal_id", "api_key"}
    assert re.fullmatch(r"ctl_[A-Za-z0-9_-]{43,}", a["api_key"])
    assert a["api_key"] not in first.stderr

    second = in_process("admin", "bootstrap", "--org", "globex")
    assert second.returncode == 0, second.stderr
    b = json.loads(second.stdout)
    assert b["org_id"] != a["org_id"]
    assert b["principal_id"] != a["principal_id"]
    assert b["api_key"] != a["api_key"]

    again = in_process("admin", "bootstrap", "--org", "acme")
    assert again.returncode != 0
    assert "conflict" in again.stderr
    assert "ctl_" not in again.stdout + again.stderr
    assert not (tmp_path / "secrets.json").exists()  # the given secrets were used

    # The printed keys work, with the printed ids, and only the first org's admin is operator.
    settings = make_settings(url, key_encryption_key=kek, credential_pepper=pepper)
    with TestClient(create_app(settings, background=False)) as client:
        admin_a, admin_b = Api(client, a["api_key"]), Api(client, b["api_key"])
        me_a = admin_a.ok("GET", f"/api/admin/principals/{a['principal_id']}", status=200)
        me_b = admin_b.ok("GET", f"/api/admin/principals/{b['principal_id']}", status=200)
        assert (me_a["org_id"], me_a["roles"]) == (a["org_id"], ["admin", "operator"])
        assert (me_b["org_id"], me_b["roles"]) == (b["org_id"], ["admin"])
        assert admin_a.get("/api/admin/keys").status_code == 200
        assert admin_b.get("/api/admin/keys").status_code == 403
        assert admin_b.get(f"/api/admin/principals/{a['principal_id']}").status_code == 404
        audit = admin_b.ok("GET", "/api/admin/audit", status=200)["items"]
        assert [(e["action"], e["target"]) for e in audit] == [("org.bootstrap", b["org_id"])]


def test_bootstrap_refuses_a_bad_org_name(session: Session, state: AppState) -> None:
    before = table_counts(session)
    for name in ["", "a\nb", "nul\x00", "x" * 201]:
        with pytest.raises(InvalidRequest):
            bootstrap_org(session, state.credential_pepper, name)
    assert table_counts(session) == before
    # The longest name still gives its admin a name that fits (checked by PostgreSQL).
    created = bootstrap_org(session, state.credential_pepper, "n" * 200)
    admin = session.get(Principal, created["principal_id"])
    assert admin is not None
    assert len(admin.name) <= 200
