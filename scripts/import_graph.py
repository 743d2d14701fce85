"""The house drawn from its imports: every file of loratop's own code, what it imports, the
cycles, and the folder map.

loratop's code imports as ``loratop.core.…``, ``loratop.tui.…`` and so on, and ``loratop/core``
etc. are links to the folders at the repository root. A tool that reads
paths without following the links sees three unconnected folders; this script resolves each
``loratop.X.Y`` to the file ``X/Y.py`` at the root, so the graph is the real one. An import
inside a function counts like one at the top: it is still a dependency.

    python scripts/import_graph.py             # folders, their arrows, cycles
    python scripts/import_graph.py --files     # every file's arrows too
    python scripts/import_graph.py --dot > house.dot

Exit status 1 when a cycle exists (tests/test_layers.py asserts the layering itself).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("loratop", *sorted(p.name for p in (REPO / "loratop").iterdir() if p.is_symlink() and p.is_dir()))
"""Where loratop's own code lives: ``loratop/`` holds the package face, and each of its links
names a home at the repository root (``core``, ``preflight``, ``trainer``, ``tui``, ...)."""

Node = TypeVar("Node", str, Path)


def source_files(repo: Path = REPO) -> list[Path]:
    """Every ``.py`` file of the program, as a path relative to the repository root (links in
    ``loratop/`` are not followed: the folders are read where they are)."""
    files: list[Path] = []
    for root in ROOTS:
        base = repo / root
        if root == "loratop":
            files += [p.relative_to(repo) for p in sorted(base.glob("*.py"))]
        else:
            files += [p.relative_to(repo) for p in sorted(base.rglob("*.py"))]
    return files


def module_of(path: Path) -> str:
    """``tui/screens/home_screen.py`` → ``loratop.tui.screens.home_screen``."""
    parts = list(path.with_suffix("").parts)
    if parts[0] != "loratop":
        parts.insert(0, "loratop")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, repo: Path = REPO) -> list[tuple[str, bool]]:
    """``(module, lazy)`` for each import of ``path``: ``lazy`` when inside a function. Relative
    imports are resolved; ``from a import b`` names ``a.b`` too, in case ``b`` is a module."""
    tree = ast.parse((repo / path).read_text(), str(path))
    package = module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                found.append((base, lazy))
                found.extend((f"{base}.{alias.name}", lazy) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def file_graph(repo: Path = REPO) -> dict[Path, dict[Path, bool]]:
    """``{file: {imported file: lazy}}`` over loratop's own files (``lazy``: every import of
    that file is inside a function)."""
    files = source_files(repo)
    by_module = {module_of(p): p for p in files}
    graph: dict[Path, dict[Path, bool]] = {}
    for path in files:
        arrows: dict[Path, bool] = {}
        for name, lazy in imported_modules(path, repo):
            target = by_module.get(name)
            if target is None or target == path:
                continue
            arrows[target] = arrows.get(target, True) and lazy
        graph[path] = arrows
    return graph


def home_of(path: Path) -> str:
    """The folder a file lives in: ``core``, ``tui/screens``, ``widgets``, ``loratop``."""
    return str(path.parent)


def folder_graph(graph: dict[Path, dict[Path, bool]]) -> dict[str, dict[str, int]]:
    """``{folder: {imported folder: number of file arrows}}``, arrows within a folder left out."""
    folders: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path, arrows in graph.items():
        folders[home_of(path)]  # noqa: B018 - every folder is a node, even one with no arrow out
        for target in arrows:
            if home_of(target) != home_of(path):
                folders[home_of(path)][home_of(target)] += 1
    return {folder: dict(arrows) for folder, arrows in folders.items()}


def cycles(graph: Mapping[Node, Mapping[Node, object]]) -> list[list[Node]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[Node, int] = {}
    low: dict[Node, int] = {}
    stack: list[Node] = []
    on_stack: set[Node] = set()
    found: list[list[Node]] = []
    counter = [0]

    def strongconnect(node: Node) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component, key=str))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph, key=str):
        if node not in index:
            strongconnect(node)
    return found


def floors(graph: dict[str, dict[str, int]]) -> dict[str, int]:
    """Each folder's floor: 1 for one that imports no other folder, else one above the highest
    it imports (a folder in a cycle gets the floor of the cycle's first visit)."""
    floor: dict[str, int] = {}

    def of(node: str, seen: frozenset[str]) -> int:
        if node in floor:
            return floor[node]
        below = [of(t, seen | {node}) for t in graph.get(node, {}) if t not in seen and t != node]
        floor[node] = 1 + max(below, default=0)
        return floor[node]

    for node in sorted(graph):
        of(node, frozenset())
    return floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", action="store_true", help="also every file's arrows")
    parser.add_argument("--dot", action="store_true", help="print the folder graph as Graphviz dot")
    args = parser.parse_args(argv)

    graph = file_graph()
    folders = folder_graph(graph)
    if args.dot:
        print("digraph loratop {\n  rankdir=BT;")
        for folder, arrows in sorted(folders.items()):
            for target, count in sorted(arrows.items()):
                print(f'  "{folder}" -> "{target}" [label={count}];')
        print("}")
        return 0
    floor = floors(folders)
    lines = sum(len((REPO / p).read_text().splitlines()) for p in graph)
    count = sum(map(len, folders.values()))
    print(f"{len(graph)} files ({lines:,} lines) in {len(folders)} folders, {count} folder arrows")
    for folder in sorted(folders, key=lambda f: (-floor[f], f)):
        files = [p for p in graph if home_of(p) == folder]
        targets = ", ".join(f"{t} ({n})" for t, n in sorted(folders[folder].items())) or "nothing of ours"
        print(f"floor {floor[folder]}  {folder}/  {len(files)} files  → {targets}")
    if args.files:
        for path, imports in sorted(graph.items()):
            marks = ", ".join(f"{t}{' (lazy)' if lazy else ''}" for t, lazy in sorted(imports.items()))
            print(f"  {path} → {marks or '–'}")
    file_cycles = cycles(graph)
    folder_cycles = cycles(folders)
    for folder_cycle in folder_cycles:
        print(f"folder cycle: {' ↔ '.join(folder_cycle)}")
    for file_cycle in file_cycles:
        print(f"file cycle: {' ↔ '.join(map(str, file_cycle))}")
    if not file_cycles and not folder_cycles:
        print("no cycles")
    return 1 if file_cycles or folder_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
