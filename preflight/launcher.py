"""Start the trainer subprocess so that it outlives the terminal that launched it.

The trainer runs in its own session (a dropped SSH link's SIGHUP never reaches it),
with stdin from /dev/null, stdout and stderr into ``trainer.log``, and events on a
dedicated pipe whose write end is the only extra fd it inherits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loratop.core import events as ev
from loratop.core.distributed import python_module
from loratop.core.run_dir import (
    CONFIG,
    LOG,
    RunDirError,
    claim_run_dir,
    now,
    process_identity,
    release_claim,
    write_status,
)
from loratop.preflight.config import RunConfig, box_problems, dump_config, unavailable_data
from loratop.preflight.data_files import DataProblem, resolve_path
from loratop.preflight.model_config import unavailable_model

TRAINER_COMMAND = python_module("loratop.trainer")
"""How the launcher starts the training subprocess; its arguments follow."""

AGENT_COMMAND = python_module("loratop.trainer.agent")
"""In place of the trainer when the run has several ranks: torchrun's agent
(:mod:`trainer.agent`), which starts one trainer per rank; same arguments."""


class CannotRunHere(Exception):
    """The run cannot start on this box; the message says why, in one line (nothing is created)."""


class ModelUnavailable(CannotRunHere):
    """The run's model cannot be had here (not local, not cached, hub unreachable); one line."""


class DataUnavailable(CannotRunHere):
    """The run's hub dataset cannot be had here (not cached, hub unreachable); one line."""


@dataclass
class LaunchedRun:
    """A trainer subprocess and the read end of its events pipe."""

    process: subprocess.Popen[bytes]
    run_dir: Path
    events_fd: int
    """Read end of the events pipe; the caller owns it and closes it."""
    ranks: int | None = None
    """Trainer processes on this box when ``process`` is torchrun's agent (which starts them);
    ``None`` when it is the trainer itself."""


def resolved_for_run(config: RunConfig) -> RunConfig:
    """The config as the run folder records it: local data paths made absolute."""
    resolved = config.model_copy(deep=True)
    try:
        source, file = resolve_path(resolved.data.path)
    except DataProblem:
        return resolved
    if source == "file" and file is not None:
        resolved.data.path = str(file.resolve())
    return resolved


def launch(config: RunConfig, config_source: Path | None = None) -> LaunchedRun:
    """Create the run folder, write ``config.yaml`` and spawn the trainer (:data:`TRAINER_COMMAND`).

    Args:
        config: A config that passed :func:`preflight.config.load_config`.
        config_source: The YAML it came from, recorded in ``status.json``.

    Raises:
        ModelUnavailable: The model is neither local nor cached and the hub does not answer
            (found in seconds; nothing is created).
        DataUnavailable: The same for a hub dataset (``data.path`` or ``data.eval_path``).
        CannotRunHere: This box cannot run the config (:func:`preflight.config.box_problems`).
        RunDirError: The run folder could not be claimed or written.
    """
    assert config.output_dir is not None
    missing = unavailable_model(config.model.name_or_path)
    if missing is not None:
        raise ModelUnavailable(f"model.name_or_path = {config.model.name_or_path}: {missing}")
    missing_data = unavailable_data(config)
    if missing_data:
        raise DataUnavailable("; ".join(missing_data))
    here = box_problems(config)
    if here:
        raise CannotRunHere("; ".join(here))
    run_dir = claim_run_dir(Path(config.output_dir).resolve())  # atomic; raises RunDirError
    resolved = resolved_for_run(config)
    resolved.output_dir = str(run_dir)  # with its suffix, if a parallel launch took the name
    try:
        (run_dir / CONFIG).write_text(dump_config(resolved))
        write_status(
            run_dir,
            state=ev.STARTING,
            launched_at=now(),
            config_source=str(config_source.resolve()) if config_source else None,
            parent=config.parent,
        )
        log = open(run_dir / LOG, "ab")  # noqa: SIM115 - closed below, once the child has it
    except OSError as exc:  # a full disk, a folder made read-only: nothing has started yet
        release_claim(run_dir)
        raise RunDirError(f"{run_dir}: cannot write the run folder: {exc.strerror or exc}") from None
    agent = config.distributed.world_size > 1
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with log:
        try:
            process = subprocess.Popen(
                [
                    *(AGENT_COMMAND if agent else TRAINER_COMMAND),
                    str(run_dir / CONFIG),
                    "--run-dir",
                    str(run_dir),
                    "--events-fd",
                    str(write_fd),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
                env=env,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
    # The trainer's identity from its first instant (it writes the same once it starts): if it
    # dies before that, whoever looks later can still prove it gone rather than guess.
    with contextlib.suppress(OSError):
        write_status(run_dir, pid=process.pid, **process_identity(process.pid))
    return LaunchedRun(
        process=process, run_dir=run_dir, events_fd=read_fd, ranks=config.distributed.nproc_per_node if agent else None
    )
