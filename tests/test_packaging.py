"""The route table as the single source, and the package as shipped: a route deleted from the
table leaves the app and the spec, and the wheel carries its migrations."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control.app import build_openapi, guard_for
from control.cli import main, render_spec
from control.kit.routing import TableRoute, mount_routes
from control.routes import ROUTES

ROOT = Path(__file__).resolve().parent.parent


def test_deleting_a_route_removes_it_from_app_and_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = next(r for r in ROUTES if r.operation_id == "list_streams")
    app = FastAPI()
    mount_routes(app, [r for r in ROUTES if r is not victim], guard_for)
    spec = build_openapi(app)
    assert victim.path not in spec["paths"]
    assert TestClient(app).get(victim.path).status_code == 404
    # The committed spec is then stale, and `control openapi check` says so until re-exported.
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    assert main(["openapi", "check", "--path", str(stale)]) == 1
    assert main(["openapi", "export", "--path", str(stale)]) == 0
    assert main(["openapi", "check", "--path", str(stale)]) == 0
    assert stale.read_text() == render_spec()


def test_a_direct_route_is_the_only_route_its_path_reaches() -> None:
    """Direct routes are tried first, which answers as the table's order does only while no
    other route can match their paths: a table where one could is refused when mounted."""
    jwks = next(r for r in ROUTES if r.operation_id == "jwks")
    shadow = dataclasses.replace(
        jwks, method="POST", operation_id="jwks_shadow", direct=None, status_code=200
    )
    with pytest.raises(ValueError, match="only route its path can reach"):
        mount_routes(FastAPI(), [*ROUTES, shadow], guard_for)
    app = FastAPI()
    mount_routes(app, ROUTES, guard_for)
    first = [route.path for route in app.router.routes if isinstance(route, TableRoute)][:4]
    assert set(first) == {r.path for r in ROUTES if r.direct is not None}
    assert next(iter(build_openapi(app)["paths"])) == "/healthz"  # the spec: the table order


def test_postgresql_urls_are_normalized() -> None:
    from tests.conftest import make_settings

    url = make_settings("postgresql://u@h:5432/db").sqlalchemy_url
    assert url == "postgresql+psycopg://u@h:5432/db"
    assert make_settings("postgres://u@h/db").sqlalchemy_url.startswith("postgresql+psycopg://")


@pytest.mark.e2e
def test_wheel_ships_migrations_and_upgrades_from_anywhere(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"building the wheel failed: {built.stderr[-2000:]}")
    wheel = next(tmp_path.glob("control-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "control/_migrations/env.py" in names
    assert any(n.startswith("control/_migrations/versions/") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import control, control.migrate as m, sys; "
        "assert control.__file__.startswith(sys.argv[1]), control.__file__; "
        "m.upgrade(sys.argv[2]); print(m.migrations_dir())"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(target), f"sqlite:///{tmp_path}/w.db"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "_migrations" in result.stdout
