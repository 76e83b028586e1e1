"""The `control` command line run in the test's own process, as a subprocess would run it.

Starting `control` costs seconds of imports per process; a test that runs several commands
starts one real process (that the installed command works) and runs the others here.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from control.cli import main
from harness.server import BIN


def control_in_process(
    monkeypatch: pytest.MonkeyPatch,
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`control ARGS` as `main(ARGS)` in this process, as a subprocess would run it: exactly
    `env` as the environment, `cwd` as the working directory, `stdin` on stdin, the output and
    log lines captured (`main`'s `logging.basicConfig` sends logs to stderr, as in a process of
    its own), an escaping exception printed as a traceback with exit code 1. Everything is
    restored afterwards, so runs leak nothing into each other or into later tests."""
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    handlers, level, alembic_level = root.handlers[:], root.level, alembic.level
    stdout, stderr = io.StringIO(), io.StringIO()
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name not in env:
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(cwd)
        patch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        root.handlers = []
        try:
            with redirect_stdout(stdout), redirect_stderr(stderr):
                try:
                    code = main(list(args))
                except SystemExit as stop:  # argparse, or `raise SystemExit(message)`
                    code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
                    if not isinstance(stop.code, int | None):
                        print(stop.code, file=sys.stderr)
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            for handler in root.handlers:
                handler.close()
            root.handlers = handlers
            root.setLevel(level)
            alembic.setLevel(alembic_level)
    return subprocess.CompletedProcess(list(args), code, stdout.getvalue(), stderr.getvalue())


def control_process(
    args: Sequence[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`control ARGS` as a real process of the installed command, with exactly `env`."""
    return subprocess.run(
        [str(BIN / "control"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
