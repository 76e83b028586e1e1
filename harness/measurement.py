"""Tests that run outside coverage's measurement: the `unmeasured` mark.

The breadth suites (the fuzzer's generated requests, the permission matrix, the JWT attack list)
walk lines of `control/` that the focused tests reach too, many times over, and under coverage's
tracer they take about twice their CPU. So they run unmeasured: every one still runs and asserts
as before, and coverage's total is the same with them measured or not (a line only they reached
gets a focused test).

Pausing pytest-cov's own measurement is not enough: a process that coverage started (an xdist
worker, through `patch = ["subprocess"]`) holds several `Coverage` objects, and stopping the
newest resumes the one beneath it. So every started one is stopped, newest first, and started
again, oldest first, which leaves them stacked as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MARK = "unmeasured"


@contextmanager
def coverage_paused() -> Iterator[None]:
    """No coverage tracer runs in this process (nor in threads it starts) inside the block."""
    try:
        from coverage import Coverage
    except ImportError:  # coverage is a dev dependency; without it there is nothing to pause
        yield
        return
    stopped: list[Coverage] = []
    while (current := Coverage.current()) is not None:
        current.stop()
        stopped.append(current)
    try:
        yield
    finally:
        for measurement in reversed(stopped):
            measurement.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Setup, call and teardown of an `unmeasured` test run with coverage paused."""
    if item.get_closest_marker(MARK) is None:
        yield
        return
    with coverage_paused():
        yield
