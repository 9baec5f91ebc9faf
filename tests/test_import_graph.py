"""The house has no import circles: no module of openvision2 imports, directly or through others, a module
that imports it. Every import counts, module-level and inside functions alike (an import inside a function
still forms the circle; it only hides it until run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import openvision2

ROOT = Path(openvision2.__file__).parent
PACKAGE = "openvision2"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The openvision2 modules `name` imports. `from .pkg import x` imports pkg/x.py when that module exists
    (a name taken from a package may be one of its modules), else pkg itself, whose x it reads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules:
                found.add(target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first, but a package's __init__ importing its
    # own children is not a circle the children can feel, so only explicit imports form edges.
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (as a path that returns to its start) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_circle(graph, group) for group in groups]


def _one_circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{group} is not a circle")


def test_the_graph_sees_relative_and_package_imports():
    graph = _graph()
    assert "openvision2.errors" in graph["openvision2.eval.tasks"]  # from ..errors import UserError
    assert "openvision2.data.synthetic" in graph["openvision2.eval.tasks"]  # from ..data import synthetic
    assert "openvision2.models.config" in graph["openvision2.train.config"]  # from ..models.config import ...
    assert "openvision2.data" not in graph["openvision2.eval.tasks"]  # synthetic is a module, not a name of data/
    assert "openvision2.models.config" in graph["openvision2.models.cappa"]  # from .config import ModelConfig


def test_circle_finder_reports_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    circles = _circles(_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_method_a_config_may_name_has_its_registry_entry():
    """models/config.py names the methods without importing the registry above it; the two agree."""
    from openvision2.methods import all_methods
    from openvision2.models.config import METHOD_NAMES

    assert all_methods() == METHOD_NAMES == ("openvision2", "openvision1", "cappa")
