"""Under pytest-xdist, the tests that share a module-scoped fixture (a real server, a fleet of
replicas, a database they commit to) run on one worker, so that fixture is set up once per run
rather than once per worker that happens to receive one of its tests.

`--dist loadgroup` groups by the `xdist_group` mark by renaming each node id on the worker, a
rename pytest 9.2's structured node ids ignore. Here the workers instead write each test's group
to a file the controller's scheduler reads: the group of a test is its `xdist_group` mark if it
has one, else its module and the parameters of its module-scoped fixtures (one group per backend
of a module's server, say). Every other test is scheduled on its own, as with `--dist load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

SHARED_SCOPES = frozenset({"module", "class", "package"})


def group_of(item: pytest.Item) -> str | None:
    """The work unit `item` belongs to, or None when it may run anywhere."""
    marked = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    if marked:
        return "_".join(sorted(marked))
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return None
    shared = [
        name
        for name, definitions in fixtures.name2fixturedefs.items()
        if definitions and definitions[-1].scope in SHARED_SCOPES
    ]
    if not shared:
        return None
    params = getattr(getattr(item, "callspec", None), "params", {})
    keys = [f"{name}={params[name]}" for name in sorted(shared) if name in params]
    return "::".join([item.nodeid.split("::", 1)[0], *keys])


def write_groups(directory: Path, worker: str, items: list[pytest.Item]) -> None:
    """On a worker, after collection: every grouped test's group, for the controller."""
    groups = {item.nodeid: group for item in items if (group := group_of(item)) is not None}
    partial = directory / f".{worker}.json"
    partial.write_text(json.dumps(groups))
    os.replace(partial, directory / f"{worker}.json")  # the controller never reads half a file


def read_groups(directory: Path) -> dict[str, str]:
    """On the controller: the groups every worker wrote (they collected the same tests)."""
    groups: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        if not path.name.startswith("."):
            groups.update(json.loads(path.read_text()))
    return groups


def make_scheduler(config: pytest.Config, log: Any, directory: Path) -> Any:
    """`--dist loadgroup`, with the groups the workers wrote."""
    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtureScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            native = super()._split_scope(nodeid)
            if native != nodeid:  # a node id that carries its group already
                return str(native)
            # Called only once every worker has finished collecting, so the files are complete.
            if self.groups is None:
                self.groups = read_groups(directory)
            return self.groups.get(nodeid, nodeid)

    return SharedFixtureScheduling(config, log)
