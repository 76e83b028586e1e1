"""A real `control serve` (uvicorn) process on a loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import KEK, PEPPER

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def control(self, *args: str) -> dict:  # type: ignore[type-arg]
        """Run the `control` CLI against the same database; returns its JSON output."""
        result = subprocess.run(
            [str(BIN / "control"), *args], env=self.env, capture_output=True, check=False
        )
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text()


def server_env(database_url: str, port: int, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROL_")}
    env.update(
        CONTROL_DATABASE_URL=database_url,
        CONTROL_ISSUER=f"http://127.0.0.1:{port}",
        CONTROL_KEY_ENCRYPTION_KEY=KEK,
        CONTROL_CREDENTIAL_PEPPER=PEPPER,
        CONTROL_MINT_RATE_PER_SECOND="0",
        CONTROL_KEY_REFRESH_SECONDS="0.5",
        CONTROL_LOG_LEVEL="DEBUG",
    )
    env.update({f"CONTROL_{key.upper()}": value for key, value in settings.items()})
    return env


@contextmanager
def running_server(
    database_url: str, workdir: Path, port: int | None = None, **settings: str
) -> Iterator[Server]:
    port = port or free_port()
    env = server_env(database_url, port, **settings)
    if not database_url.startswith("sqlite"):
        subprocess.run([str(BIN / "control"), "db", "upgrade"], env=env, check=True)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "control"), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", env, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
