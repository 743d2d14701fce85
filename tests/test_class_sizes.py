"""A class that grows past a few hundred lines is several jobs (STYLE.md, 12): none in trainer/
may pass :data:`MAX_LINES`, so the next job gets its own home instead of another hundred lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 320


def class_sizes(folder: Path) -> dict[str, int]:
    """Every class in ``folder``'s modules (nested ones too), by ``file:Class``, with its lines."""
    sizes: dict[str, int] = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                sizes[f"{path.name}:{node.name}"] = (node.end_lineno or node.lineno) - start + 1
    return sizes


def test_no_class_in_the_trainer_is_over_320_lines() -> None:
    sizes = class_sizes(ROOT / "trainer")
    assert "train.py:Run" in sizes and "callback.py:LoratopCallback" in sizes
    too_big = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_big, f"classes over {MAX_LINES} lines (split them by job): {too_big}"


def test_the_measure_counts_a_class_from_its_decorators_to_its_last_line(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "big.py").write_text(f"import dataclasses\n\n@dataclasses.dataclass\nclass Big:\n{body}\n")
    assert class_sizes(tmp_path) == {"big.py:Big": MAX_LINES + 2}
