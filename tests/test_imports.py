"""The package imports only downward (issue 12): no module of
python/cryptotensors imports, at any depth and at any place (a function-level
import counts), a module that imports it back. A cycle means two modules that
are one concept, or a lower one reaching up (`_frameworks` imported `torch`,
which imports `_open`, which imports `_frameworks`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "cryptotensors"
NAME = "cryptotensors"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, named relative to the
    package ("torch", "_open", "_core" for the extension; "__init__" for the
    package itself). `from . import x` is an edge to the submodule x (Python
    imports the package first, but that is how submodules load, not a
    dependency); a name that is no submodule is an edge to `__init__`."""
    modules = {p.stem for p in package.glob("*.py")} | {p.stem for p in package.glob("*.pyi")}
    graph: dict[str, set[str]] = {p.stem: set() for p in package.glob("*.py")}

    def edges(parts: list[str], names: list[str]) -> list[str]:
        if parts[:1] != [NAME]:
            return []
        if len(parts) > 1:
            return [parts[1]] if parts[1] in modules else []
        return [n if n in modules else "__init__" for n in names]

    for m in graph:
        tree = ast.parse((package / f"{m}.py").read_text(), filename=f"{m}.py")
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.Import):
                for a in node.names:
                    found += edges(a.name.split("."), [])
            elif isinstance(node, ast.ImportFrom):
                # Every module here is directly in the package: level 1 is the package.
                parts = [NAME] if node.level else []
                parts += (node.module or "").split(".") if node.module else []
                found = edges(parts, [a.name for a in node.names])
            graph[m].update(t for t in found if t != m)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for nxt in sorted(graph.get(n, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_the_package():
    g = import_graph()
    assert {"_open", "_frameworks", "torch", "_core"} <= set(g) | {m for ts in g.values() for m in ts}
    assert "_frameworks" in g["_open"] and "_open" in g["torch"]


def test_the_cycle_finder_finds_cycles(tmp_path):
    # A package with the old cycle, function-level import included.
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "torch.py").write_text("from ._open import safe_open\n")
    (tmp_path / "_open.py").write_text("from . import _frameworks\n")
    (tmp_path / "_frameworks.py").write_text("def f():\n    from .torch import x\n")
    assert find_cycle(import_graph(tmp_path)) == ["_frameworks", "torch", "_open", "_frameworks"]
    (tmp_path / "_frameworks.py").write_text("from ._core import DTYPES\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_package_imports_only_downward():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
