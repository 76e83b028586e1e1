"""`alembic upgrade head` then `alembic check` on a fresh SQLite file and a fresh PostgreSQL
database, so the models and the migrations cannot drift on either backend."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.pg import postgres_available, scratch_database  # noqa: E402

ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def check(url: str, label: str) -> None:
    env = {**os.environ, "CONTROL_DATABASE_URL": url}
    for args in (["upgrade", "head"], ["check"]):
        result = subprocess.run(
            [ALEMBIC, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            print(result.stdout + result.stderr)
            sys.exit(f"alembic {' '.join(args)} failed on {label}")
    print(f"alembic upgrade head && alembic check: clean on {label}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check(f"sqlite:///{tmp}/migrations.db", "SQLite")
    reason = postgres_available()
    if reason is None:
        with scratch_database() as url:
            check(url, "PostgreSQL")
    elif os.environ.get("CONTROL_REQUIRE_POSTGRES") == "1":
        sys.exit(f"PostgreSQL is required (CONTROL_REQUIRE_POSTGRES=1) but {reason}")
    else:
        print(f"SKIPPED the PostgreSQL migration check: {reason}")


if __name__ == "__main__":
    main()
