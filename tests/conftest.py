"""Fixtures: real migrations into fresh SQLite and PostgreSQL databases, one rolled-back
transaction per test, and the app served over that transaction."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, sessionmaker

from control.app import create_app
from control.keys.crypto import KeyCipher
from control.keys.service import KeyRing
from control.kit.db import make_engine
from control.migrate import upgrade
from control.settings import Settings
from control.state import AppState
from harness import grouping
from harness.keys import KEK, PEPPER
from tests.admin_world import Seeded, rollback_blocks, seed
from tests.factories import OrgFixture, bootstrap
from tests.pg import reachable_postgres, scratch_database

BACKENDS = ["sqlite", "postgresql"]

# The `unmeasured` mark: the breadth suites run with coverage paused.
pytest_plugins = ("harness.measurement",)

# The query sets the tests define, with the names and versions they use: the whole run enforces
# this catalog (in-process settings, and the servers `harness/server.py` starts, which inherit
# it). Tests of the reference module's catalog itself ask for it (`enforce_shipped_catalog` below).
TEST_CATALOG = Path(__file__).resolve().with_name("catalog.json")
os.environ.setdefault("CONTROL_QUERY_SET_CATALOG", str(TEST_CATALOG))


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "issuer": "http://127.0.0.1:8080",
        "audience": "spacetimedb",
        "key_encryption_key": KEK,
        "credential_pepper": PEPPER,
        "mint_rate_per_second": 0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def _sqlite_savepoints(engine: Engine) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy issue BEGIN.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN")


@contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[str]:
    """A fresh database of `backend`, migrated to head (SQLite: a file in `directory`)."""
    if backend == "sqlite":
        url = f"sqlite:///{directory}/control.db"
        upgrade(url)
        yield url
        return
    reachable_postgres()
    with scratch_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    settings = make_settings(database_url)
    engine = make_engine(settings.sqlalchemy_url)
    if database_url.startswith("sqlite"):
        _sqlite_savepoints(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One transaction per test, rolled back at the end: no test sees another's rows."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


def state_over(settings: Settings, engine: Engine, connection: Connection) -> AppState:
    """An app's state whose sessions join the test's transaction as savepoints, so what the app
    commits is rolled back with the test. With other `settings`, another replica's state."""
    sessions = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        keyring=KeyRing(settings, KeyCipher(settings.key_encryption_key_bytes())),
        credential_pepper=settings.credential_pepper_bytes(),
    )


@pytest.fixture
def state(settings: Settings, engine: Engine, connection: Connection) -> AppState:
    return state_over(settings, engine, connection)


@pytest.fixture
def enforce_shipped_catalog(state: AppState) -> None:
    """The test runs under the reference module's catalog, as a deployment that leaves
    CONTROL_QUERY_SET_CATALOG unset does."""
    state.settings = state.settings.model_copy(update={"query_set_catalog": None})


@pytest.fixture
def session(state: AppState) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


# Threads a test may leave calling the app through its client: the token source refreshes in
# the background and returns the still-valid token at once.
BACKGROUND_CALLERS = ("control-token-refresh",)


@pytest.fixture
def client(state: AppState) -> Iterator[TestClient]:
    app = create_app(state=state, background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
        # Closing the client under a request still in flight from another thread can leave
        # its event loop waiting forever: let those requests finish first.
        for thread in threading.enumerate():
            if thread.name in BACKGROUND_CALLERS:
                thread.join(timeout=30)


@pytest.fixture(autouse=True)
def _no_dev_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings built without explicit secrets must not write into the working tree.
    monkeypatch.setenv("CONTROL_DEV_SECRETS_FILE", str(tmp_path / "secrets.json"))
    monkeypatch.delenv("CONTROL_DATABASE_URL", raising=False)


@pytest.fixture
def org_a(state: AppState, client: TestClient) -> OrgFixture:
    """The first org bootstrapped: the operator org."""
    return bootstrap(state, client, "org-a")


@pytest.fixture
def org_b(state: AppState, client: TestClient, org_a: OrgFixture) -> OrgFixture:
    """A second, ordinary org (its admin is not an operator)."""
    return bootstrap(state, client, "org-b")


@pytest.fixture
def seeded_orgs(org_a: OrgFixture, org_b: OrgFixture) -> tuple[Seeded, Seeded]:
    """Both orgs, each with a row of every kind the admin API manages (`tests.admin_world`)."""
    return seed(org_a, "alpha"), seed(org_b, "beta")


@pytest.fixture
def undo(connection: Connection, session: Session) -> Callable[[], AbstractContextManager[None]]:
    """`with undo():` blocks whose writes are rolled back at the block's end."""
    return rollback_blocks(connection, session)


@pytest.fixture(scope="module", params=BACKENDS)
def fresh_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database of each backend, for tests whose data must really commit
    (real uvicorn processes, several connections). Not migrated: the server does that."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('e2e')}/control.db"
        return
    reachable_postgres()
    with scratch_database() as url:
        yield url


# Under xdist's `--dist loadgroup` (see harness/grouping.py), the workers tell the controller's
# scheduler which tests share a module-scoped fixture, through files in a directory of the run's.
GROUPS_DIRECTORY = "control_groups_directory"
_groups_directory: list[Path] = []


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    if not _groups_directory:
        _groups_directory.append(Path(tempfile.mkdtemp(prefix="control-xdist-groups-")))
    node.workerinput[GROUPS_DIRECTORY] = str(_groups_directory[0])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup" or not _groups_directory:
        return None
    return grouping.make_scheduler(config, log, _groups_directory[0])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and GROUPS_DIRECTORY in workerinput:
        grouping.write_groups(Path(workerinput[GROUPS_DIRECTORY]), workerinput["workerid"], items)


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _groups_directory:
        shutil.rmtree(directory, ignore_errors=True)


# Counters the fuzz and permission-matrix modules keep, for the summary. Under xdist the
# controller never imports the test modules: each worker sends its own in `workeroutput`.
COUNTERS = "control_counters"
_gathered: dict[str, dict[str, list[list[Any]]]] = {}


def _local_counters() -> dict[str, list[list[Any]]]:
    """This process's counters, as lists (what execnet can carry)."""
    counters: dict[str, list[list[Any]]] = {"fuzz": [], "matrix": []}
    fuzz = sys.modules.get("tests.test_fuzz")
    if fuzz is not None:
        counters["fuzz"] = [[key, count] for key, count in fuzz.CASES_RUN.items()]
    matrix = sys.modules.get("tests.test_permission_matrix")
    if matrix is not None:
        counters["matrix"] = [[route, role, n] for (route, role), n in matrix.CASES_RUN.items()]
    return counters


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[COUNTERS] = _local_counters()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    output = getattr(node, "workeroutput", None) or {}
    if COUNTERS in output:
        worker = getattr(node, "workerinput", {}).get("workerid", str(id(node)))
        _gathered[worker] = output[COUNTERS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly which database backends the run covered."""
    counts = dict.fromkeys(BACKENDS, 0)
    for status in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(status, []):
            for backend in BACKENDS:
                if f"[{backend}" in report.nodeid or f"-{backend}" in report.nodeid:
                    counts[backend] += 1
    line = ", ".join(f"{backend}: {count} tests run" for backend, count in counts.items())
    # A skipped half says why in pytest's own `SKIPPED ... PostgreSQL half` lines (-ra).
    terminalreporter.write_line(f"database backends: {line}")
    sources = list(_gathered.values()) or [_local_counters()]
    # An operation run is one test's: keys are only unique within the process that ran it.
    fuzz_runs = sum(len(source["fuzz"]) for source in sources)
    fuzz_cases = sum(int(count) for source in sources for _, count in source["fuzz"])
    if fuzz_runs:
        terminalreporter.write_line(
            f"fuzz: {fuzz_cases} generated requests over {fuzz_runs} operation runs"
        )
    matrix: Counter[tuple[str, str]] = Counter()
    for source in sources:
        for route, role, n in source["matrix"]:
            matrix[(route, role)] += int(n)
    if matrix:
        routes = len({route for route, _ in matrix})
        terminalreporter.write_line(
            f"permission matrix: {len(matrix)} (route, role) cases over {routes} "
            f"routes ({matrix.total()} walked, counting each backend)"
        )
