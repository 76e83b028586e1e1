"""A real `control serve` (uvicorn) process on a loopback port, for end-to-end tests."""

from harness.server import (
    BIN,
    Server,
    free_port,
    migrate,
    running_server,
    server_env,
    stop,
    wait_ready,
)

__all__ = [
    "BIN",
    "Server",
    "free_port",
    "migrate",
    "running_server",
    "server_env",
    "stop",
    "wait_ready",
]
