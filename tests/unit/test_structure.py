"""The shape of the code: imports only go down the layers, no import cycles, no module
too long to read, outcomes written in one place, the API free of the worker's heavy
imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("db", "server", "worker", "tingji", "migrations")

# Each layer and the layers it may import, bottom up (ARCHITECTURE.md draws them).  The
# ``tingji`` library (settings, formats, the client ...) is what the API and the worker
# share; ``tingji.cli`` (the command line, doctor, service, MCP) sits on top and nothing
# imports it; ``migrations`` is run by Alembic, beside the command line.
LAYERS: dict[str, set[str]] = {
    "db": {"db"},
    "tingji": {"tingji", "db"},
    "server": {"server", "tingji", "db"},
    "worker": {"worker", "tingji", "db"},
    "migrations": {"migrations", "tingji", "db"},
    "tingji.cli": {"tingji.cli", "server", "worker", "tingji", "db"},
}
LONGEST_MODULE = 450  # lines, outside tests


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
                # ``from pkg import module`` imports the module (and runs pkg/__init__,
                # which says nothing of the importer's layer); ``from module import name``
                # the module
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in files] or [node.module]
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def layer(module: str) -> str:
    return "tingji.cli" if module.startswith("tingji.cli") else module.split(".")[0]


def test_imports_only_go_down() -> None:
    """server and worker -> the tingji library -> db, with the command line on top:
    a module never imports a layer above its own (function bodies and TYPE_CHECKING
    blocks count), so each floor can be read, installed and tested without the ones
    above it."""
    wrong = sorted(f"{name} imports {dep}" for name, deps in import_graph().items()
                   for dep in deps if layer(dep) not in LAYERS[layer(name)])
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_layers_are_seen() -> None:
    """The rule above is not vacuous: the graph holds every layer and edges down."""
    graph = import_graph()
    assert {layer(n) for n in graph} == set(LAYERS)
    assert "tingji.settings" in graph["worker.main"]
    assert "server.app" in graph["tingji.cli.local"]
    assert "db.models" in graph["server.routes.tasks"]


def test_the_worker_talks_to_engines_through_the_protocol() -> None:
    """Batching, the scheduler and the pipeline know engines only by
    ``worker.engines.base``: no import of either engine's package, nor of funasr,
    torch or ONNX Runtime; the engine is chosen in one module (``loading``)."""
    graph = import_graph()
    engine_packages = ("worker.engines.torch", "worker.engines.onnx")
    for name in ("worker.batching", "worker.scheduler", "worker.pipeline"):
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        heavy = sorted({a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                        for a in n.names}
                       | {n.module for n in ast.walk(tree)
                          if isinstance(n, ast.ImportFrom) and n.module})
        heavy = [m for m in heavy if m.split(".")[0] in {"funasr", "torch", "onnxruntime"}]
        inside = sorted(d for d in graph[name] if d.startswith(engine_packages))
        assert not inside and not heavy, f"{name} imports {inside + heavy}"
    assert "worker.engines.base" in graph["worker.batching"]
    choosers = sorted(n for n, deps in graph.items()
                      if {"worker.engines.torch.engine", "worker.engines.onnx.engine"} <= deps)
    assert choosers == ["worker.engines.loading"]


def test_no_module_too_long_to_read() -> None:
    long = {str(p.relative_to(ROOT)): n for pkg in (*PACKAGES, "bench")
            for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LONGEST_MODULE}
    assert not long, f"modules over {LONGEST_MODULE} lines: {long}"


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
