"""What a launch on this box would meet, said before anything starts: the model or dataset
it cannot fetch, a GPU-sized model on a CPU, a disk too small for the adapter, the memory
estimate's one line. ``loratop check`` prints them as warnings, ``loratop run`` and the
dashboard's launch before they start the trainer. Never touches the network."""

from __future__ import annotations

from loratop.preflight.config import RunConfig, data_paths
from loratop.preflight.data_files import usable_rows


def launch_warnings(config: RunConfig) -> list[str]:
    """What would stop or cripple a launch of this config on this box: a model or hub dataset
    the run cannot fetch (``loratop run`` refuses it) or must download first, a GPU-sized model
    on a CPU (hours per epoch). Never touches the network."""
    from loratop.preflight.cpu_estimate import cpu_training_warning
    from loratop.preflight.data_files import datasets_cache_dir, needs_dataset_download, unavailable_dataset
    from loratop.preflight.estimate import visible_gpu_total
    from loratop.preflight.model_config import hub_cache_dir, needs_download, unavailable_model

    name = config.model.name_or_path
    out = []
    missing = unavailable_model(name, probe=False)  # a check never touches the network
    if missing is not None:
        out.append(f"warning: model.name_or_path = {name}: {missing} (`loratop run` refuses it)")
    elif needs_download(name):
        out.append(
            f"warning: model.name_or_path = {name}: not a local folder and not in the Hugging Face cache "
            f"({hub_cache_dir()}): `loratop run` downloads it from the hub first, and refuses it at once "
            "when the hub does not answer"
        )
    for key, path in data_paths(config):
        missing = unavailable_dataset(path, config.data.split, probe=False)
        if missing is not None:
            out.append(f"warning: {key} = {path}: {missing} (`loratop run` refuses it)")
        elif needs_dataset_download(path):
            out.append(
                f"warning: {key} = {path}: not a local file and not in the Hugging Face datasets cache "
                f"({datasets_cache_dir()}): `loratop run` fetches it from the hub, and refuses it at once "
                "when the hub does not answer"
            )
    slow = cpu_training_warning(config, has_gpu=visible_gpu_total()[0] is not None)
    if slow is not None:
        out.append(slow)
    return out


def disk_space_warning(config: RunConfig) -> str | None:
    """``warning: ...`` when the output folder's disk cannot hold the adapter and checkpoints, else ``None``.

    Silent when the model's shape is unknown here: its ``config.json`` is read only from a
    local folder or the Hugging Face cache, never downloaded for this.
    """
    from loratop.preflight.estimate import EstimateError, disk_need, free_space_warning, load_model_shape

    try:
        shape = load_model_shape(config.model.name_or_path, download=False)
    except EstimateError:
        return None
    rows = usable_rows(config.data.path, config.data.format, config.data.max_rows, config.data.eval_split)
    return free_space_warning(config.output_dir or ".", disk_need(shape, config, rows))


def preflight_line(config: RunConfig) -> str:
    """One line of the pre-flight estimate for the configured method (never fails a launch)."""
    from loratop.preflight.estimate import (
        EstimateError,
        estimate,
        fit_label,
        fmt_size,
        load_model_shape,
        visible_gpu_total,
    )

    try:
        shape = load_model_shape(config.model.name_or_path)
    except EstimateError as exc:
        return f"pre-flight estimate: n/a ({exc})"
    gpu_total, gpu_name = visible_gpu_total()
    est = estimate(shape, config, gpu_total, gpu_name)
    row = est.row(est.selected)
    return (
        f"pre-flight estimate ({row.name}): {fmt_size(row.total)} peak; {fit_label(row, gpu_name)} (loratop estimate)"
    )
