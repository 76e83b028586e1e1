"""A real `control serve` (uvicorn) process on a free loopback port."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from harness.keys import KEK, PEPPER

if TYPE_CHECKING:
    from control.settings import Settings

BIN = Path(sys.executable).parent
# Ports handed out by any process on this machine are locked here for that process's lifetime,
# so parallel test workers (and other checkouts' runs) never get the same port, not even one a
# test has stopped its server on and is about to restart it on. Locks die with the process.
_PORT_LOCKS = Path(tempfile.gettempdir()) / f"control-harness-ports-{os.getuid()}"
_held: list[int] = []
# A start that loses its port to someone else anyway is retried on a fresh one, this often.
_START_ATTEMPTS = 5


def free_port() -> int:
    """A loopback port nothing listens on, reserved against other harness processes."""
    _PORT_LOCKS.mkdir(exist_ok=True)
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        fd = os.open(_PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # another live process holds it
            continue
        _held.append(fd)
        return port
    raise RuntimeError("no free loopback port")


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def bootstrap(self, org: str) -> dict[str, Any]:
        """`bootstrap` against this server's database."""
        return bootstrap(self.env["CONTROL_DATABASE_URL"], org)

    def log(self) -> str:
        return self.log_path.read_text()


# Settings a server takes from the environment it is started in: the query-set catalog is the
# test run's (tests/conftest.py), or unset (the shipped one) for a benchmark.
INHERITED = frozenset({"CONTROL_QUERY_SET_CATALOG"})


def server_env(database_url: str, port: int, **settings: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CONTROL_") or key in INHERITED
    }
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


def _settings(database_url: str) -> Settings:
    """The settings a harness server's CLI commands would read, for running them in-process."""
    from control.settings import Settings

    return Settings(
        _env_file=None,
        database_url=database_url,
        key_encryption_key=KEK,
        credential_pepper=PEPPER,
    )


def bootstrap(database_url: str, org: str) -> dict[str, Any]:
    """What `control admin bootstrap --org ORG` prints, done in this process against a migrated
    database: the same service call and commit, without starting a process (about a second of
    CPU each, which the suite would spend dozens of times). The first org is the operator org."""
    from control.identity.service import bootstrap_org
    from control.kit.db import make_engine, make_sessionmaker, unit_of_work

    settings = _settings(database_url)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            return bootstrap_org(session, settings.credential_pepper_bytes(), org)
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    """`control db upgrade`, run in this process (the same Alembic upgrade, without the
    second of CPU a process start costs)."""
    from control.migrate import upgrade

    upgrade(_settings(database_url).sqlalchemy_url)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class PortTaken(RuntimeError):
    """The server could not bind its port: someone outside the harness took it."""


def _start(database_url: str, workdir: Path, port: int, settings: dict[str, str]) -> Server:
    env = server_env(database_url, port, **settings)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [str(BIN / "control"), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", env, process, log_path)
    try:
        wait_ready(server)
    except BaseException:
        stop(process)
        raise
    return server


def wait_ready(server: Server, timeout: float = 30) -> None:
    """Return once `/readyz` answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    # One client for every poll: `httpx.get` builds a TLS context each call, tens of ms of CPU.
    with httpx.Client(base_url=server.base_url, timeout=2) as http:
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if server.process.poll() is not None:
                log = server.log()
                if "address already in use" in log.lower():
                    raise PortTaken(log)
                raise RuntimeError(f"server did not start:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.log()}")
            time.sleep(0.1)


@contextmanager
def running_server(
    database_url: str, workdir: Path, port: int | None = None, **settings: str
) -> Iterator[Server]:
    """`control serve` on `port` (default: a free one), migrated first on PostgreSQL."""
    if not database_url.startswith("sqlite"):
        migrate(database_url)
    for attempt in range(1 if port else _START_ATTEMPTS):
        try:
            server = _start(database_url, workdir, port or free_port(), settings)
            break
        except PortTaken:
            if port or attempt == _START_ATTEMPTS - 1:
                raise
    try:
        yield server
    finally:
        stop(server.process)
