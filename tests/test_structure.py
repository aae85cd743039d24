"""The shape of the code: no import cycles inside a package, outcomes written in one
place, the API free of the worker's heavy imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("db", "server", "worker", "tingji")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every first-party module -> the first-party modules it imports (anywhere in the
    file, ``TYPE_CHECKING`` blocks and function bodies included)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    # package __init__ modules re-export nothing here; a cycle is two modules reaching
    # each other through imports
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_routes_do_not_import_the_app_and_the_api_no_heavy_packages() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("server.routes"):
            assert "server.app" not in deps, name
    heavy = {"torch", "funasr", "yt_dlp", "openai", "numpy"}
    for path in (ROOT / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & heavy, path


def test_task_outcomes_are_written_in_one_function() -> None:
    """complete / fail / mark_cancelled / release are called from Worker._write only."""
    calls = []
    for path in (ROOT / "worker").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("complete", "fail", "mark_cancelled", "release"):
                    calls.append((path.name, fn.name, node.func.attr))
    assert {(f, fn) for f, fn, _ in calls} == {("main.py", "_write")}, calls
