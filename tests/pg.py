"""Scratch PostgreSQL databases for the tests (a fresh database each, dropped afterwards)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
import pytest

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


def postgres_required() -> bool:
    return os.environ.get("CONTROL_REQUIRE_POSTGRES") == "1"


def without_postgres(skipped: str, reason: str) -> NoReturn:
    """Fail when PostgreSQL is required (`.ci/run`), else skip, saying what was `skipped`."""
    if postgres_required():
        pytest.fail(f"PostgreSQL is required (CONTROL_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"SKIPPED {skipped}: {reason}")


def reachable_postgres(skipped: str = "the PostgreSQL half") -> None:
    """Return when PostgreSQL answers; otherwise `without_postgres`."""
    reason = postgres_available()
    if reason is not None:
        without_postgres(skipped, reason)


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"control_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
