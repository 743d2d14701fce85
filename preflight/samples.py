"""Find sample configs: in a checkout (``sample_configs/``) or inside an installed wheel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loratop.preflight.config import RunConfig

DEMO = "tiny-cpu-demo"


def samples_dir() -> Path | None:
    """The folder of sample configs: ``preflight/sample_configs`` (a link to ``sample_configs/`` in a
    checkout, the folder itself in a wheel)."""
    package = Path(__file__).parent
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
    from loratop.preflight.config import ConfigError

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


# -- what a sample needs to run ----------------------------------------------------------------


@dataclass(frozen=True)
class HardwareNeed:
    """What a config needs to train: a CPU will do, or NVIDIA GPUs (how many, how much memory)."""

    cpu: bool
    """It trains on a CPU: the embedded tiny model, and no setting that only a GPU has."""
    here: bool
    """It trains on this box: on its CPU, or on one GPU that the estimate says it fits."""
    text: str
    """In words, for the sample picker: ``runs on CPU · the embedded tiny model``,
    ``needs an NVIDIA GPU · ~6.9 GB peak, 8.0B params``."""


def hardware_need(config: RunConfig, gpu_total: int | None = None, gpu_name: str = "") -> HardwareNeed:
    """Whether ``config`` runs on a CPU, or what GPUs it needs, read from the config itself.

    A GPU is needed for a model other than the embedded tiny one (a pretrained model trains
    on a CPU at a few tokens a second: ``loratop check`` warns of days), and for a setting
    that only a GPU has (FSDP, nccl, a GPU-only attention kernel): the same rules as a launch
    on a box without one. The memory is the pre-flight estimate's peak per GPU, from the
    model's shape as loratop ships or caches it (never downloaded).

    Args:
        config: The validated config.
        gpu_total: This box's GPU memory, to say whether the peak fits it; ``None``: no GPU.
        gpu_name: That GPU's name.
    """
    from loratop.core.distributed import box_problems
    from loratop.preflight.config import sdpa_cpu_problem
    from loratop.preflight.estimate import EstimateError, estimate, fmt_size, load_model_shape, per_gpu
    from loratop.preflight.model_config import TINY

    d = config.distributed
    gpu_only = [line.split(" ", 1)[0] for line in box_problems(d, 0)]
    kernel = sdpa_cpu_problem(config.training.sdpa_backend)
    if kernel is not None:
        gpu_only.append(kernel.split(" ", 1)[0])
    tiny = config.model.name_or_path == TINY
    if tiny and not gpu_only:
        return HardwareNeed(True, True, "runs on CPU · the embedded tiny model")
    gpus = d.nproc_per_node if (d.world_size > 1 or gpu_only) else 1
    boxes = f" on each of {d.nnodes} boxes" if d.nnodes > 1 else ""
    who = f"{'an NVIDIA GPU' if gpus == 1 else f'{gpus} NVIDIA GPUs'}{boxes}"
    if tiny:  # the model fits anything: a setting is what needs the GPUs
        return HardwareNeed(False, False, f"needs {who} · for {', '.join(gpu_only)}")
    try:
        shape = load_model_shape(config.model.name_or_path, download=False)
    except EstimateError:
        return HardwareNeed(False, False, f"needs {who} · peak n/a (the model's shape is not here)")
    est = estimate(shape, config, gpu_total, gpu_name or "this GPU")
    if d.world_size > 1:
        shared = next(p for p in per_gpu(est, d.world_size) if p.strategy == d.strategy)
        peak, fits, each = shared.total, shared.fits, f" each ({d.strategy})"
    else:
        row = est.row(est.selected)
        peak, fits, each = row.total, row.fits, ""
    text = f"needs {who} · ~{fmt_size(peak)} peak{each}, {est.params.total / 1e9:.1f}B params"
    if fits is not None and gpu_total is not None:
        text += " · fits this GPU" if fits else f" · over this GPU's {fmt_size(gpu_total)}"
    return HardwareNeed(False, bool(fits) and gpus == 1 and not boxes, text)


def sample_needs(gpu_total: int | None = None, gpu_name: str = "") -> dict[str, HardwareNeed]:
    """:func:`hardware_need` of each shipped sample, by name (a sample that does not read says so)."""
    from loratop.preflight.config import ConfigError, read_yaml, validate_tree

    folder = samples_dir()
    needs = {}
    for name in sample_names():
        assert folder is not None  # names come from it
        try:
            config, problems = validate_tree(read_yaml(folder / f"{name}.yaml"))
        except ConfigError as exc:
            config, problems = None, {"": str(exc)}
        if config is None:
            first = next(iter(problems.values()), "invalid")
            needs[name] = HardwareNeed(False, False, f"cannot tell: {first}")
        else:
            needs[name] = hardware_need(config, gpu_total, gpu_name)
    return needs
