"""Dependencies go one way: app.py -> explorer -> index_builder -> metaembed, with no import cycle.

Imports are read from the source (``import``, ``from ... import`` anywhere in a file, and
``importlib.import_module("literal")``), so a lazy import inside a function counts like any other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Each layer may import the layers below it (higher number = higher layer), never one above.
LAYERS = {"metaembed": 0, "index_builder": 1, "explorer": 2, "app": 3}
#: Third-party packages a layer must not import: only app.py talks to the UI toolkit.
UI = ("gradio",)


def _modules() -> dict[str, Path]:
    found = {"app": REPO / "app.py"}
    for top in ("metaembed", "index_builder", "explorer"):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports: project modules (resolved to the module, not the package) and the
    top-level names of third-party ones."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str, names: list[str] = ()) -> None:
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
        out.update(subs or [target if target in modules else target.split(".")[0]])

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            add(base, [alias.name for alias in node.names])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_layers_import_only_downwards_and_only_app_imports_gradio():
    graph = _graph()
    wrong = []
    for name, targets in graph.items():
        layer = LAYERS[name.split(".")[0]]
        for target in targets:
            top = target.split(".")[0]
            if top in LAYERS and LAYERS[top] > layer:
                wrong.append(f"{name} imports {target}")
            if top in UI and name != "app":
                wrong.append(f"{name} imports {top}")
    assert not wrong, wrong
    assert "explorer.service" in graph["app"] and "index_builder" in graph["explorer.uploads"]  # the reader works


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules_or_between_library_subpackages():
    graph = _graph()
    assert _cycles(graph) == []
    # One level up, metaembed's sub-packages (datasets, training, models, eval, baselines) and top-level
    # modules must not depend on each other in a circle either (the old datasets <-> training loop).
    def unit(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "metaembed" else parts[0]

    units: dict[str, set[str]] = defaultdict(set)
    for name, targets in graph.items():
        units[unit(name)].update(unit(t) for t in targets if t.split(".")[0] in LAYERS and unit(t) != unit(name))
    assert _cycles(dict(units)) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the detector works
