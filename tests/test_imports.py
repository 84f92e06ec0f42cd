"""The modules of `src/offload` form layers: no import circle.

Every import counts, at module level, under `TYPE_CHECKING` or inside a function: a
module that needs another only for a type still depends on it, and a circle of such
needs is what made the producer, the worker and the workflows one knot.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "offload"

#: Imports allowed to point up a layer (each inside a function), and why.
ALLOWED_UP = {
    # `app.testing()` returns `offload.testing.InlineRunner(app)`, which drives the app.
    ("offload.app", "offload.testing"),
    # `Retry(delay)` checks its delay by the producer's rules (`validation.duration`),
    # which raise the `ConfigurationError` defined beside `Retry`.
    ("offload.errors", "offload.validation"),
}

#: Packages whose internal circles are left to their own rework (issue 11, item 2:
#: broker helpers become classes with explicit collaborators).
NOT_YET = ("offload.brokers.redis", "offload.brokers.postgres")
#: Known circles left to their owners, each to be split (the test fails on any other).
KNOWN: list[list[str]] = []


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this package it imports (parents implied by Python's
    import system are not edges: `import offload.a.b` is an edge to `offload.a.b`)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        graph[name].add(f"{base}.{alias.name}")
                    elif base in modules:
                        graph[name].add(base)
    for low, high in ALLOWED_UP:
        graph[low].discard(high)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circles_finds_a_circle_through_type_only_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_type_checking_and_function_level_imports() -> None:
    graph = import_graph()
    assert "offload.producer" in graph["offload.job"]  # under TYPE_CHECKING only
    assert "offload.testing" not in graph["offload.app"]  # in a method, allowed up


def test_no_import_circle_among_the_modules_of_offload() -> None:
    found = [
        c
        for c in circles(import_graph())
        if c not in KNOWN and not all(m.startswith(NOT_YET) for m in c)
    ]
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)
