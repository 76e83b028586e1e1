"""Scratch PostgreSQL databases: a fresh database each, dropped afterwards."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get(
    "CONTROL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {ADMIN_URL} is not reachable ({type(exc).__name__})"


def scratch_name() -> str:
    """A database name no other process picks: parallel test workers, and other checkouts'
    runs, share one PostgreSQL server. The worker and pid also say whose a leftover is."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"control_test_{worker}_{os.getpid()}_{secrets.token_hex(6)}"


def _admin(statement: str) -> None:
    # CREATE DATABASE copies template1 and is refused while another session is connected to
    # it (a concurrent client of the shared server may be, briefly): wait that out.
    for attempt in range(20):
        try:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(statement)  # type: ignore[arg-type]
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.25)


@contextmanager
def scratch_database() -> Iterator[str]:
    """The URL of a new, empty database on the shared server, dropped on exit."""
    name = scratch_name()
    _admin(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
