"""Find sample configs: in a checkout (``sample_configs/``) or inside an installed wheel."""

from __future__ import annotations

from collections.abc import Sequence
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
    """The config file a user means: the one function every command that takes a CONFIG asks.

    A path as given, or a shipped sample named by its stem (``loratop run tiny-cpu-demo``
    works from any folder); an existing file (or folder: reading it says what is wrong) wins.

    Raises:
        ConfigError: Neither exists: one line that says so, lists the shipped samples and
            suggests the closest names (:func:`closest_configs`).
    """
    path = Path(given)
    if path.exists():
        return path
    folder = samples_dir()
    if folder is not None and (len(path.parts) == 1 or path.parent.name == "sample_configs"):
        stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    from loratop.trainer.config import ConfigError

    raise ConfigError([config_not_found(given)])


def config_not_found(given: str, elsewhere: str = "", also_close: Sequence[str] = ()) -> str:
    """``GIVEN: config file not found (nor a shipped sample: ...); did you mean 'x'?``

    Args:
        given: What the user typed.
        elsewhere: Where else it was looked for, in words (``a run under runs/``).
        also_close: More names to suggest after the closest configs (runs, for ``edit``).
    """
    names = sample_names()
    nor = [f"a shipped sample: {', '.join(names)}" if names else "", elsewhere]
    looked = f" (nor {'; nor '.join(n for n in nor if n)})" if any(nor) else ""
    close = [*closest_configs(given), *also_close][:3]
    hint = f"; did you mean {either(close)}?" if close else ""
    return f"{given}: config file not found{looked}{hint}"


def either(names: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``: the choices of a did-you-mean."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def closest_configs(given: str, limit: int = 2) -> list[str]:
    """A did-you-mean for a config that is not there: the most alike shipped samples, and
    YAML files in the folder the path names (``configs/my-run.yml`` for ``configs/my_run.yaml``)."""
    import difflib

    path = Path(given)
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    close = difflib.get_close_matches(stem, sample_names(), n=limit, cutoff=0.6)
    try:
        beside = [p for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError:
        beside = []
    by_stem = {p.stem: p for p in beside}
    for near in difflib.get_close_matches(stem, list(by_stem), n=limit, cutoff=0.6):
        close.append(str(by_stem[near]) if path.parent != Path() else by_stem[near].name)
    return list(dict.fromkeys(close))[:limit]
