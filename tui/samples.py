"""Find sample configs: in a checkout (``sample_configs/``) or inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

from loratop import trainer

DEMO = "tiny-cpu-demo"


def samples_dir() -> Path | None:
    """The folder of sample configs: ``trainer/sample_configs`` (a link to ``sample_configs/`` in a
    checkout, the folder itself in a wheel)."""
    package = Path(trainer.__file__).parent
    for candidate in (package / "sample_configs", package.parent / "sample_configs"):
        if candidate.is_dir():
            return candidate
    return None


def sample_names() -> list[str]:
    """Names of the shipped samples (file stems)."""
    folder = samples_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve_config_path(given: str) -> Path:
    """A config path as given, or a shipped sample named by its stem.

    ``loratop run tiny-cpu-demo`` works from any folder; an existing file always wins.
    """
    path = Path(given)
    folder = samples_dir()
    if path.exists() or folder is None:
        return path
    if len(path.parts) == 1 or path.parent.name == "sample_configs":
        stem = path.stem if path.suffix == ".yaml" else path.name
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    return path
