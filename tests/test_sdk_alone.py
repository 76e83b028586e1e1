"""The SDK installs and works without the server: `pip install control` (no extra) into a fresh
virtualenv gives runtime services `control.runtime` and clients `control.client`, with only
their own dependencies, and verifies a real ES256 sync token there."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the SDK-only virtualenv: sign a sync token with a fresh ES256 key, verify it with
# the SDK, and prove that nothing of the server came along.
PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from control.runtime import GrantDenied, key_from_jwk, verify_token, authorize
    from control.runtime import SpacetimePublisher
    from control.client import SyncTokenSource
    from control.grants import parse_stream_id

    server = ["fastapi", "sqlalchemy", "alembic", "uvicorn", "pydantic_settings", "psycopg"]
    present = [name for name in server if importlib.util.find_spec(name) is not None]
    assert not present, f"server dependencies installed with the SDK: {present}"

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    now = int(time.time())
    claims = {
        "iss": "https://control.example", "sub": "prn_1", "aud": "spacetimedb",
        "iat": now, "nbf": now, "exp": now + 300, "jti": "j1", "token_use": "sync",
        "org_id": "org_1", "scope": "sync.subscribe", "policy_rev": 1,
        "grants": [{"stream": "run:r1", "query_sets": ["run_events@1"], "ops": ["subscribe"]}],
    }
    token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": "k1"})
    keys = {"k1": key_from_jwk(jwk)}
    verified = verify_token(
        token, keys.get, issuer="https://control.example", audience="spacetimedb", leeway=30
    )
    authorize(verified, "run:r1", "run_events", "subscribe")
    try:
        authorize(verified, "run:r2", None, "subscribe")
    except GrantDenied as exc:
        assert exc.code == "stream_not_granted"
    else:
        raise AssertionError("an ungranted stream was authorized")
    assert parse_stream_id("run:r1").kind == "run" and SyncTokenSource
    loaded = sorted(m for m in sys.modules if m.startswith("control"))
    print("sdk ok", loaded)
    """
)


@pytest.mark.e2e
def test_the_sdk_installs_alone_and_verifies_a_token(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("control-*.whl"))
    env_dir = tmp_path / "sdk-venv"
    # A bare virtualenv, installed into by this environment's pip (`--python`): the same
    # resolution and install as its own pip would do, without seeding pip into it first.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.startswith("sdk ok")
    # Only the SDK and its import paths were loaded: not a module of the server.
    loaded = probe.stdout.split("sdk ok", 1)[1]
    server_modules = ("control.app", "control.settings", "control.kit", "control.tokens")
    for server_module in (*server_modules, "control.spacetime"):
        assert f"'{server_module}" not in loaded, loaded
