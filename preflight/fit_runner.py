"""Start ``loratop fit``'s probe (:mod:`trainer.fit_probe`) as a subprocess and read what it says.

The command line and the knob editor both run the probe this way: torch is loaded in the child,
never in the dashboard. The child speaks JSON lines on its standard output (progress, then a
result or a refusal); its standard error (the libraries' noise, a traceback) goes to a log file
whose tail is shown if it dies without a result.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from loratop.core.distributed import python_module
from loratop.preflight.fit_plan import DEFAULT_BUDGET_S, DEFAULT_HEADROOM, FAKE_MEMORY_ENV, NO_GPU_LINE, FitResult

PROBE_COMMAND = python_module("loratop.trainer.fit_probe")
"""How the probe starts; its arguments follow."""


def no_gpu_line(config: str) -> str | None:
    """The one-line refusal on a box without an NVIDIA GPU (NVML's view: nothing is loaded), or
    ``None`` when there is one — or when the test fake (:data:`FAKE_MEMORY_ENV`) stands in for it."""
    if os.environ.get(FAKE_MEMORY_ENV):
        return None
    from loratop.preflight.estimate import visible_gpu_total

    total, _name = visible_gpu_total()
    return NO_GPU_LINE.format(config=config) if total is None else None


@dataclass
class ProbeOutcome:
    """How a probe ended."""

    result: FitResult | None = None
    refused: str | None = None
    """The probe's one-line refusal (a bad config, no GPU), if it refused."""
    failed: str | None = None
    """It died without a result: its exit code and the tail of its log."""
    progress: list[str] = field(default_factory=list)


class FitProbeProcess:
    """A running probe.

    Args:
        config: The config file (or sample name) to probe.
        overrides: ``--set`` values, as typed.
        budget_s: Seconds for the probe points.
        headroom: The share of memory to keep free.
    """

    def __init__(
        self,
        config: str | Path,
        overrides: list[str] | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        self.log: IO[bytes] = tempfile.NamedTemporaryFile(prefix="loratop-fit-", suffix=".log")  # noqa: SIM115
        args = [*PROBE_COMMAND, str(config), "--budget", str(budget_s), "--headroom", str(headroom)]
        for item in overrides or []:
            args += ["--set", item]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True
        )
        self.outcome = ProbeOutcome()

    def messages(self) -> Iterator[dict[str, Any]]:
        """Each line the probe writes, as it writes it; fills :attr:`outcome` on the way."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("kind")
            if kind == "progress":
                self.outcome.progress.append(str(message.get("message", "")))
            elif kind == "refused":
                self.outcome.refused = str(message.get("message", ""))
            elif kind == "result":
                self.outcome.result = FitResult.from_dict(message["result"])
            yield message

    def finish(self) -> ProbeOutcome:
        """Read to the end, wait for the process, and say how it ended."""
        for _ in self.messages():
            pass
        code = self.process.wait()
        if self.outcome.result is None and self.outcome.refused is None:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-8:]
            self.outcome.failed = f"the probe exited with code {code} and no result:\n" + "\n".join(tail)
        self.log.close()
        return self.outcome

    def stop(self) -> None:
        """End the probe (ours, by its own handle), if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
