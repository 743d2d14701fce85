"""The house stays layered: every import points down, and nothing imports in a circle.

The graph is drawn from the code's own imports by ``scripts/import_graph.py`` (through
``loratop``'s links, to the folders at the repository root), lazy imports inside functions
included: a lazy import is still a dependency, and it is how cycles used to be hidden.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO

FLOORS = {
    "core": 1,
    "widgets": 1,
    "preflight": 2,
    "trainer": 3,
    "tui/models": 3,
    "tui/screens": 4,
    "tui": 5,
    "cli": 6,
    "loratop": 7,
}
"""Each home's floor: a file may import its own folder or any folder on a lower floor, never a
folder on its own floor or above (the trainer and the dashboard never import each other)."""


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


graph_tool = _import_graph()


def upward_imports(graph: dict[Path, dict[Path, bool]], floors: dict[str, int]) -> list[str]:
    """``a.py → b.py`` for every import that does not point to a lower floor (or the same folder)."""
    wrong = []
    for path, arrows in graph.items():
        here = graph_tool.home_of(path)
        for target in arrows:
            there = graph_tool.home_of(target)
            if there != here and floors[there] >= floors[here]:
                wrong.append(f"{path} → {target} (floor {floors[here]} → {floors[there]})")
    return sorted(wrong)


def test_every_folder_of_the_code_has_a_floor() -> None:
    folders = {graph_tool.home_of(path) for path in graph_tool.file_graph()}

    assert folders == set(FLOORS), "a new folder needs a floor here (and a line in README's map)"


def test_every_import_points_down() -> None:
    assert upward_imports(graph_tool.file_graph(), FLOORS) == []


def test_no_file_and_no_folder_imports_in_a_circle() -> None:
    graph = graph_tool.file_graph()

    assert graph_tool.cycles(graph) == []
    assert graph_tool.cycles(graph_tool.folder_graph(graph)) == []


def test_every_home_is_connected_to_the_house() -> None:
    folders = graph_tool.folder_graph(graph_tool.file_graph())
    imported = {target for arrows in folders.values() for target in arrows}

    assert [folder for folder in folders if not folders[folder] and folder not in imported] == []


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    """The checks themselves can fail: a core module that imports the dashboard, and two files
    that import each other."""
    core, app, panels = Path("core/events.py"), Path("tui/app.py"), Path("tui/models/panels.py")
    upward = {core: {app: True}, app: {}}
    circle = {app: {panels: False}, panels: {app: True}}

    assert upward_imports(upward, FLOORS) == ["core/events.py → tui/app.py (floor 1 → 5)"]
    assert graph_tool.cycles(circle) == [[app, panels]]


def test_the_graph_sees_through_the_links_and_counts_lazy_imports() -> None:
    graph = graph_tool.file_graph()

    assert Path("core/events.py") in graph[Path("core/run_dir.py")], "loratop.core.events is core/events.py"
    assert graph[Path("loratop/__init__.py")][Path("trainer/callback.py")] is True, "a lazy import is an arrow"
