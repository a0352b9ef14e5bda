"""The package's layout: no import cycles among rethink's modules and no module importing another's
private (leading-underscore) name.

An edge A -> B is any import statement in A, at module level or inside a function, that names the
rethink module B: ``import B``, ``from B import x``, and ``from P import b`` where ``P.b`` is the
submodule B. Importing a submodule does not count as importing its parent package (``from . import
api`` is an edge to ``rethink.api`` alone), though Python runs the parent's ``__init__`` first.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (under ``root``) by dotted name; a package is its ``__init__``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _base(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module that a (maybe relative) ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def scan(root: Path, package: str):
    """``(edges, private)``: edges maps (A, B) to the places ("file:line") that import B in A;
    private lists every private name of a rethink module used by another, as "file:line: from B
    import _name" or "file:line: B._name"."""
    mods = modules(root, package)
    edges: dict[tuple[str, str], list[str]] = {}
    private: list[str] = []
    for name, path in mods.items():
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))))
        bound = {}  # local name -> the rethink module it is bound to (``from . import api``)
        for node in nodes:
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in mods]
                bound.update({a.asname: a.name for a in node.names if a.asname and a.name in mods})
            elif isinstance(node, ast.ImportFrom):
                base = _base(name, path, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        targets.append(f"{base}.{alias.name}")
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif base in mods:
                        targets.append(base)
                        if _private(alias.name):
                            private.append(f"{where}: from {base} import {alias.name}")
            for target in dict.fromkeys(targets):  # one statement is one edge, however many names it imports
                if target != name:
                    edges.setdefault((name, target), []).append(where)
        for node in nodes:  # ``api._load(...)`` reaches into another module as much as importing it does
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _private(node.attr)
            ):
                private.append(f"{path.relative_to(root)}:{node.lineno}: {bound[node.value.id]}.{node.attr}")
    return edges, private


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """For every edge A -> B that lies on a cycle, the shortest cycle through it (each cycle once,
    starting at its smallest module): together they show every import that closes a loop."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = {}
    for a, b in sorted(edges):
        back = _path(graph, b, a)
        if back is not None:
            loop = [a] + back[:-1]
            i = loop.index(min(loop))
            loop = loop[i:] + loop[:i]
            found[tuple(loop)] = loop
    return list(found.values())


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest path from ``start`` to ``goal`` (breadth first), or None."""
    parent = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = parent[node]
            return path[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def describe(loop: list[str], edges: dict[tuple[str, str], list[str]]) -> str:
    """``a -> b (a.py:3) -> a (b.py:7)``."""
    steps = [loop[0]]
    for a, b in zip(loop, loop[1:] + loop[:1]):
        steps.append(f"{b} ({', '.join(edges[a, b])})")
    return " -> ".join(steps)


def test_no_import_cycles():
    edges, _ = scan(SRC, "rethink")
    found = [describe(loop, edges) for loop in cycles(edges)]
    for line in found:
        print("cycle:", line)
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(found)


def test_no_private_imports_across_modules():
    _, private = scan(SRC, "rethink")
    for line in private:
        print("private import:", line)
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_checks_catch_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import run\n",
        "a.py": "from .b import helper\n\ndef run():\n    return helper()\n",
        "b.py": "def helper():\n    from . import a  # a function-level import closes the loop\n    return a\n",
        "c.py": "from .sub.d import _secret, __version__\nfrom pkg import sub\nfrom .sub import d as dee\n\n"
        "dee._secret, dee.__version__\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import c\n__version__ = 1\n_secret = 2\n",
        "sub/e.py": "from . import d  # a submodule of the package, not the package\nimport pkg.sub\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges, private = scan(tmp_path, "pkg")
    assert edges[("pkg.b", "pkg.a")] == ["pkg/b.py:2"]
    assert ("pkg.sub.e", "pkg.sub") in edges and ("pkg.c", "pkg.sub") in edges
    assert ("pkg.sub.d", "pkg") not in edges  # ``from .. import c`` imports pkg.c alone
    assert sorted(map(tuple, cycles(edges))) == [("pkg.a", "pkg.b"), ("pkg.c", "pkg.sub.d")]
    assert describe(["pkg.a", "pkg.b"], edges) == "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:2)"
    assert private == ["pkg/c.py:1: from pkg.sub.d import _secret", "pkg/c.py:5: pkg.sub.d._secret"]
