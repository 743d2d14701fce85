"""More than one GPU or box, torch-free: who this process is, what torchrun is given, what is refused.

loratop does not launch ranks itself: the agent (:mod:`trainer.agent`) runs
PyTorch's elastic launcher (``torch.distributed.run``, i.e. ``torchrun``), which starts one
trainer per GPU and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``GROUP_RANK`` (the
node) and ``LOCAL_WORLD_SIZE`` in each. Rank 0 writes the run folder; the other ranks'
memory and control flags reach it over the process group at step boundaries (``Run.sync_ranks``).

Standard library only: ``loratop check`` and the dashboard import it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGENT_ENV = "LORATOP_AGENT_PID"
"""Set by the agent for its ranks: the pid that ``status.json`` names (the agent's)."""

DEFAULT_PORT = 29500
"""torchrun's own default rendezvous port."""


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run (all zeros and ones for a single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes events, ``status.json`` and the adapter."""
        return self.rank == 0

    @property
    def label(self) -> str:
        """``node:local rank``, as the memory panel names a rank."""
        return rank_label(self.node_rank, self.local_rank)


def python_module(module: str) -> tuple[str, ...]:
    """``python -m MODULE``, minus the working folder on ``sys.path``: a user's ``trainer.py``,
    ``datasets.py`` or ``peft.py`` there must not be imported in place of ours. Arguments follow."""
    return (
        sys.executable,
        "-c",
        "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; import runpy; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    )


def rank_label(node: Any, local_rank: Any) -> str:
    return f"{node}:{local_rank}"


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """Read torchrun's variables (absent: a single process)."""
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    world = number("WORLD_SIZE", 1)
    if world <= 1:
        return RankInfo()
    return RankInfo(
        rank=number("RANK", 0),
        local_rank=number("LOCAL_RANK", 0),
        world_size=world,
        node_rank=number("GROUP_RANK", 0),
        local_world_size=number("LOCAL_WORLD_SIZE", 1),
    )


def backend_for(backend: str, cuda: bool) -> str:
    """``auto`` resolved: NCCL between GPUs, gloo between CPU processes."""
    if backend != "auto":
        return backend
    return "nccl" if cuda else "gloo"


def split_endpoint(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:port`` for IPv6), or ``None`` when it is not one."""
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_distributed(section: Any, visible_gpus: int | None, gpu_note: str = "") -> list[str]:
    """One line per problem in a ``distributed`` section (without the ``file:`` prefix): the
    section's own (:func:`section_problems`) and this box's (:func:`box_problems`).

    Args:
        section: A :class:`preflight.config.DistributedSection`.
        visible_gpus: GPUs this process sees (NVML through ``CUDA_VISIBLE_DEVICES``);
            0 on a box without one.
        gpu_note: Why there are none, when there are none.
    """
    return section_problems(section) + box_problems(section, visible_gpus, gpu_note)


def section_problems(section: Any) -> list[str]:
    """What is wrong with a ``distributed`` section wherever it runs: one line each."""
    problems = []
    d = section
    if d.node_rank >= d.nnodes:
        problems.append(
            f"distributed.node_rank = {d.node_rank}: must be below distributed.nnodes = {d.nnodes} "
            f"(0 to {d.nnodes - 1})"
        )
    if d.nnodes > 1 and not d.rdzv_endpoint:
        problems.append(
            f"distributed.nnodes = {d.nnodes}: set distributed.rdzv_endpoint to node 0's host:port "
            f"(e.g. 10.0.0.1:{DEFAULT_PORT}), the same on every box"
        )
    if d.rdzv_endpoint and split_endpoint(d.rdzv_endpoint) is None:
        problems.append(f"distributed.rdzv_endpoint = {d.rdzv_endpoint!r}: expected host:port, e.g. 10.0.0.1:29500")
    return problems


def box_problems(section: Any, visible_gpus: int | None, gpu_note: str = "") -> list[str]:
    """Why a ``distributed`` section cannot run on this box (its GPUs): one line each. Facts
    about the box, not the config: ``check`` warns, a launch refuses."""
    problems = []
    d = section
    gpus = visible_gpus or 0
    if d.strategy == "fsdp" and gpus == 0:
        problems.append(
            "distributed.strategy = 'fsdp': QLoRA-FSDP shards the 4-bit base across GPUs and needs them; "
            f"this box has none ({gpu_note or 'no NVIDIA GPU'}). Use ddp to try ranks on CPU"
        )
    if d.backend == "nccl" and gpus == 0 and d.world_size > 1:
        problems.append(
            f"distributed.backend = 'nccl' needs NVIDIA GPUs; this box has none ({gpu_note or 'no NVIDIA GPU'}). "
            "Use auto or gloo"
        )
    if gpus and d.nproc_per_node > gpus:
        problems.append(
            f"distributed.nproc_per_node = {d.nproc_per_node}: this box shows only {gpus} GPU(s) "
            "(CUDA_VISIBLE_DEVICES); one rank per GPU"
        )
    return problems


def torchrun_args(section: Any, port: int | None = None) -> list[str]:
    """The launcher options for ``torch.distributed.run`` (the script and its arguments follow).

    One box: torchrun's standalone rendezvous on a free local port (or ``port``). Several:
    a static rendezvous at ``rdzv_endpoint``, so each box's rank is its ``node_rank``.
    """
    d = section
    args = ["--nproc_per_node", str(d.nproc_per_node), "--max_restarts", "0", "--monitor_interval", "0.5"]
    if d.nnodes == 1 and not d.rdzv_endpoint:
        if port is None:
            return [*args, "--standalone"]
        return [*args, "--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    endpoint = split_endpoint(d.rdzv_endpoint or "")
    assert endpoint is not None, "check_distributed refuses a bad endpoint"
    host, port_ = endpoint
    return [
        *args,
        "--nnodes",
        str(d.nnodes),
        "--node_rank",
        str(d.node_rank),
        "--master_addr",
        host,
        "--master_port",
        str(port_),
    ]


def exit_words(exit_code: int | None) -> str:
    """``killed by SIGKILL`` for a negative code (a signal), ``exited with code 3`` else."""
    if exit_code is None:
        return "ended"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exited with code {exit_code}"


def describe_failure(rank: int, failure: Mapping[str, Any]) -> str:
    """One line naming the rank, its node, its pid and how it ended."""
    where = f"node {failure.get('node', '?')}, local rank {failure.get('local_rank', '?')}"
    if failure.get("host"):
        where += f", host {failure['host']}"
    if failure.get("pid"):
        where += f", pid {failure['pid']}"
    return f"rank {rank} ({where}) {exit_words(failure.get('exit_code'))}"


def worst_rank(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the rank with the least GPU headroom (used / total), else the largest host RSS."""
    best: tuple[float, int] | None = None
    for i, row in enumerate(rows):
        gpu = row.get("gpu") or {}
        # Any GPU figure outranks RSS (which only a CPU run has to go by).
        key = 1.0 + gpu.get("used", 0) / gpu["total"] if gpu.get("total") else (row.get("rss") or 0) / 2**60
        if best is None or key > best[0]:
            best = (key, i)
    return None if best is None else best[1]


__all__ = [
    "AGENT_ENV",
    "RankInfo",
    "backend_for",
    "box_problems",
    "check_distributed",
    "section_problems",
    "describe_failure",
    "exit_words",
    "python_module",
    "rank_info",
    "rank_label",
    "torchrun_args",
    "worst_rank",
]
