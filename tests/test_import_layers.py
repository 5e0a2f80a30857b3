"""No import circles among the project's modules, lazy imports (inside functions) counted.

Every ``import`` / ``from ... import`` in hgrn_core, hgrn_vision and tools (installed as
hgrn_tools) is read from the source with ``ast``; ``from package import name`` counts as an
import of ``package.name`` when that is a module, else of ``package`` (its ``__init__``).
The test fails naming each circle (a strongly connected set of modules).
"""
import ast
import os
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"hgrn_core": "hgrn_core", "hgrn_vision": "hgrn_vision", "hgrn_tools": "tools"}


def _modules() -> Dict[str, str]:
    """module name -> file path."""
    mods = {}
    for pkg, folder in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, _, files in os.walk(base):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                mods[".".join([pkg] + rel)] = os.path.join(dirpath, f)
    return mods


def _resolve(name: str, mods: Dict[str, str]) -> str:
    # 'tools.x' is how a test or checkout imports hgrn_tools.x
    if name == "tools" or name.startswith("tools."):
        name = "hgrn_tools" + name[len("tools"):]
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> Dict[str, Set[str]]:
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        package = mod if is_pkg else mod.rpartition(".")[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                    if base not in mods and base.split(".")[0] not in PACKAGES | {"tools": 0}:
                        continue
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                dep = _resolve(t, mods)
                if not dep or dep == mod:
                    continue
                graph[mod].add(dep)
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_lazy_imports_and_finds_a_circle():
    graph = import_graph()
    # a lazy import (inside a function) is an edge: the ops import the backends at call time
    assert "hgrn_core.backends" in graph["hgrn_core.hgru_op"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles (lazy imports counted):\n" + "\n".join(
        " <-> ".join(c) for c in found)
