"""Scratch PostgreSQL databases for the tests, and what a test does when there is no server:
fail when PostgreSQL is required (`.ci/run`), else skip."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from harness.pg import ADMIN_URL, postgres_available, scratch_database

__all__ = [
    "ADMIN_URL",
    "postgres_available",
    "postgres_required",
    "reachable_postgres",
    "scratch_database",
    "without_postgres",
]


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
