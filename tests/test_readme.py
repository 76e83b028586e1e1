"""The README's first steps work when pasted: its shell block runs as written against the
service `make run` serves on a free port, and the token it mints verifies, then reads as
revoked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from control.runtime import key_from_jwk, verify_token
from harness.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def first_steps() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## First steps", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's First steps have a ```sh block"
    return match.group(1)


@pytest.mark.e2e
def test_the_readme_first_steps_work_when_pasted(tmp_path: Path) -> None:
    port = free_port()
    # The block exports PORT=8080 for a reader; here any free port stands in for it.
    block = first_steps().replace("export PORT=8080", f"export PORT={port}")
    script = f"set -e\n{block}\necho TOKEN=$TOKEN\necho ISSUER=$BASE\n"
    env = {
        **os.environ,
        "CONTROL_DATABASE_URL": f"sqlite:///{tmp_path}/control.db",
        "CONTROL_DEV_SECRETS_FILE": str(tmp_path / "secrets.json"),
    }
    env.pop("CONTROL_ISSUER", None)
    # As a reader runs it: under the catalog of the module the package ships, not the tests'.
    env.pop("CONTROL_QUERY_SET_CATALOG", None)
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the background `make run` dies with the group below
    )
    try:
        out, err = shell.communicate(timeout=240)
        jwks = httpx.get(f"http://127.0.0.1:{port}/.well-known/jwks.json").json()
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, out + err
    lines = out.splitlines()
    introspections = [line for line in lines if line.startswith('{"active"')]
    assert len(introspections) == 2, out
    assert '"active":true' in introspections[0]
    assert introspections[1] == '{"active":false,"reason":"revoked"}'
    token = next(line for line in lines if line.startswith("TOKEN=")).split("=", 1)[1]
    issuer = next(line for line in lines if line.startswith("ISSUER=")).split("=", 1)[1]
    assert issuer == f"http://127.0.0.1:{port}"
    keys = {jwk["kid"]: key_from_jwk(jwk) for jwk in jwks["keys"]}
    claims = verify_token(token, keys.get, issuer=issuer, audience="spacetimedb")
    assert claims["grants"][0]["stream"] == "run:demo-1"
