"""The package's import graph, read from its own source: no circles, and the leaves stay leaves.

Every ``from .x import y`` counts, at the top of a module or inside a function: an import deferred
into a function still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "batchclf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``ImportFrom`` names: ``from . import x`` names ``pkg.x`` when that is a module."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("batchclf"):
        return []
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                found = [t for t in _resolve(name, is_package, node) if t in modules]
                # ``from .x import name``: the module x (and x.name, where x is a package and name a module).
                graph[name].update(found)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
        graph[name].discard(name)
    return graph


def _without_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b`` runs ``a/__init__`` first; that edge is Python's, not a design choice."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(_without_parents(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "batchclf.job" in graph["batchclf.cli.run"]  # imported inside the handler, after validation


def test_config_imports_nothing_of_the_package_but_errors():
    assert import_graph()["batchclf.config"] <= {"batchclf.errors"}


def test_the_leaves_stay_leaves():
    graph = import_graph()
    assert graph["batchclf.errors"] == set()
    assert graph["batchclf.fsutil"] <= {"batchclf.errors"}


MAX_MODULE_LINES = 400  # a module that outgrows this has two concerns in it (docs/architecture.md)


def test_every_module_stays_under_four_hundred_lines():
    sizes = {_module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    too_long = {name: lines for name, lines in sizes.items() if lines >= MAX_MODULE_LINES}
    assert not too_long, f"split these modules: {too_long}"
