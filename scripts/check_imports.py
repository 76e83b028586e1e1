"""The import rules of the house, checked over the source's own import statements.

1. No import cycles between `control`'s modules, nor between its packages (each subpackage of
   `control`, and each top-level module, is one node; function-local imports count).
2. The SDK (`control.sdk`: the grant grammar, the runtime verifier and the client token source)
   imports nothing of `control` outside itself: runtime services and clients install it alone.
3. `control/kit/` imports nothing of `control` outside itself: it is the domain-free toolkit;
   nor does `control/observability/` (metrics, logs, traces), which the domain imports.
4. `bench/` and `scripts/` never import from `tests/`.

Exit status 1 with one line per violation; `make test` runs it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "control"
# Packages that must stand alone: (package, what it may import of `control` besides itself).
SELF_CONTAINED = {
    "control.sdk": (),
    "control.kit": ("control.errors",),
    # Domain code imports it to count and log; it must never import the domain back.
    "control.observability": (),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from control.tokens import service` imports the module `control.tokens.service`.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one node, or with a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def room(module: str) -> str:
    """The package-level node a module belongs to: `control.tokens.service` -> `control.tokens`."""
    parts = module.split(".")
    return ".".join(parts[:2])


def check(paths: Iterable[Path]) -> list[str]:
    modules = {module_name(path): path for path in paths}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path):
            # Resolve to the longest known module: `control.x.Name` imports `control.x`.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    problems: list[str] = []
    for component in strongly_connected(graph):
        problems.append("module import cycle: " + " -> ".join(component))
    rooms: dict[str, set[str]] = defaultdict(set)
    for name, targets in graph.items():
        for target in targets:
            # A package's `__init__` is its own face; an arrow into it is an arrow into the room.
            if room(name) != room(target):
                rooms[room(name)].add(room(target))
    for component in strongly_connected(rooms):
        problems.append("package import cycle: " + " <-> ".join(component))
    for package, allowed in SELF_CONTAINED.items():
        for name, targets in graph.items():
            if name != package and not name.startswith(package + "."):
                continue
            for target in sorted(targets):
                inside = target == package or target.startswith(package + ".")
                if not inside and target not in allowed:
                    problems.append(f"{name} imports {target}: {package} must stand alone")
    return problems


def outside_imports_of_tests() -> list[str]:
    problems = []
    for folder in ("bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for target in imports_of(path):
                if target == "tests" or target.startswith("tests."):
                    module = ".".join(target.split(".")[:2])
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
    return sorted(set(problems))


def main() -> int:
    sources = sorted((ROOT / PACKAGE).rglob("*.py"))
    problems = check(sources) + outside_imports_of_tests()
    for problem in problems:
        print(f"check_imports: {problem}")
    if problems:
        return 1
    print(f"check_imports: {len(sources)} modules of {PACKAGE}/, no cycles, layers respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
