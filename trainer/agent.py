"""A run of several ranks: ``python -m loratop.trainer.agent CONFIG --run-dir DIR [--events-fd N]``.

The launcher starts this in place of the trainer when ``distributed.nproc_per_node`` or
``nnodes`` is above 1, in its own session as always. It runs PyTorch's elastic launcher
in-process (``torch.distributed.run``, exactly what the ``torchrun`` command runs), which
starts one trainer (:mod:`trainer.train`) per rank on this box. This process is
what ``status.json`` names, so it is what a watcher proves alive and signals:

- SIGTERM/SIGINT and SIGUSR1 are passed on to every local rank once it catches them
  (:class:`Forwarder`; torchrun's own handlers, which kill the ranks after 30 s, are off);
  the ranks agree on the step to stop or checkpoint at over the process group, so the
  other boxes follow at the same step.
- Rank 0 writes ``events.jsonl``; the ranks cannot inherit the watcher's pipe (torchrun
  closes extra fds), so this process relays the file's new lines onto the pipe.
- When a rank dies, torchrun ends the others; this process then writes an ``alert`` naming
  the rank, its node and how it ended, and the ``run_finished`` rank 0 could not write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import AGENT_ENV, describe_failure, python_module, torchrun_args
from loratop.core.run_dir import (
    EVENTS,
    now,
    process_identity,
    read_status,
    write_status,
)
from loratop.core.run_summary import settle_finished_run
from loratop.trainer.event_sink import EventSink

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

RANK_COMMAND = python_module("loratop.trainer")
"""What torchrun starts once per rank: the trainer, as the launcher starts it for one process."""

PEER_ERRORS = ("Connection reset", "Connection closed", "connection closed", "Broken pipe", "gloo", "NCCL",
               "DistBackendError", "timed out", "Timeout")  # fmt: skip
"""Words of a rank 0 error that means a peer went away (then the rank that failed first is the news)."""

TAIL_BYTES = 4 << 20
"""How much of the end of ``events.jsonl`` the agent reads to say how the run ended."""

RELAY_INTERVAL_S = 0.1
"""How often new lines of ``events.jsonl`` are passed to the watcher's pipe."""


class Relay:
    """Passes whole new lines of ``events.jsonl`` to the watcher's pipe, never blocking.

    A full pipe leaves lines off (the watcher sees a ``seq`` gap and reads the file); a
    vanished watcher closes the pipe. Events are never lost: the file has them all.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self._path, self._fd = path, fd
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loratop-relay", daemon=True)
        if fd is not None:
            os.set_blocking(fd, False)

    def start(self) -> None:
        if self._fd is not None:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RELAY_INTERVAL_S):
            self.pass_on()

    def pass_on(self) -> None:
        if self._fd is None:
            return
        try:
            with self._path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(1 << 20)
        except OSError:
            return
        whole = chunk[: chunk.rfind(b"\n") + 1]
        if not whole:
            return
        self._offset += len(whole)
        try:
            sent = 0
            while sent < len(whole):
                sent += os.write(self._fd, whole[sent:])
        except BlockingIOError:
            pass  # the rest of this chunk is left off the pipe; the watcher fills the gap from the file
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _children() -> list[int]:
    """This process's children: the ranks torchrun started (proven ours: we are their parent)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process().children()]
    except psutil.Error:
        return []


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` in ``/proc/PID/status``).

    A rank that has not yet installed its handlers would be killed by SIGTERM or SIGUSR1
    (their default action), so a signal waits until the rank catches it.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


class Forwarder:
    """Passes the signals this process gets on to every local rank, once each rank catches them.

    The handler only records the signal; a thread delivers it, within ~0.1 s, to each rank
    that has its handler in place (a rank still starting gets it a moment later), until all
    ``ranks`` have it or :data:`FORWARD_GIVE_UP_S` passes.

    Args:
        ranks: How many ranks this box runs.
        children: The pids to pass signals to; this process's children (torchrun's ranks).
    """

    def __init__(self, ranks: int, children: Callable[[], list[int]] | None = None) -> None:
        self._ranks = ranks
        self._children = children or _children
        self._pending: list[tuple[int, set[int], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loratop-signals", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append((signum, set(), time.monotonic()))  # list.append: safe in a handler

    def deliver(self) -> None:
        for item in list(self._pending):
            signum, delivered, since = item
            for pid in self._children():
                if pid not in delivered and catches(pid, signum):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signum)
                    delivered.add(pid)
            if len(delivered) >= self._ranks or time.monotonic() - since > FORWARD_GIVE_UP_S:
                self._pending.remove(item)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.deliver()

    def close(self) -> None:
        self._stop.set()


FORWARD_GIVE_UP_S = 120.0
"""How long a signal waits for ranks that do not catch it yet (a rank that never starts)."""


def events_tail(path: Path) -> tuple[int, int, dict[str, Any] | None]:
    """The next ``seq``, the last step and the ``run_finished`` event (if any) of ``events.jsonl``."""
    next_seq, last_step, finished = 0, 0, None
    try:
        with path.open("rb") as fh:
            # The tail is enough (a long run's file is gigabytes): the last step, the last seq
            # and run_finished are within its last events.
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = fh.read().split(b"\n")
            if fh.tell() > TAIL_BYTES:
                lines = lines[1:]  # the first may be cut
            for line in lines:
                event = ev.decode_line(line)  # a damaged line is skipped, as every reader does
                if event is None:
                    continue
                next_seq = event["seq"] + 1
                if event["type"] == ev.STEP and isinstance(event.get("step"), int):
                    last_step = event["step"]
                elif event["type"] == ev.RUN_FINISHED:
                    finished = event
    except OSError:
        pass
    return next_seq, last_step, finished


def run_ranks(config_path: str, run_dir: Path, dist: Any) -> dict[str, Any] | None:
    """Run torchrun over this box's ranks. Returns the first failure (``None`` if all exited 0)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's own handlers would end the ranks on SIGTERM (SIGKILL after 30 s); with only
    # SIGQUIT left to them, ours pass the signal on and the ranks stop at a step boundary.
    argv = [
        *torchrun_args(dist),
        "--signals-to-handle",
        "SIGQUIT",
        "--no-python",
        *RANK_COMMAND,
        config_path,
        "--run-dir",
        str(run_dir),
    ]
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        node = dist.node_rank
        return {
            "rank": rank,
            "node": node,
            "local_rank": failure.local_rank,
            "pid": failure.pid,
            "exit_code": failure.exitcode,
            "host": socket.gethostname(),
            "exits": {r: f.exitcode for r, f in exc.failures.items()},
        }
    except Exception as exc:  # a rendezvous that timed out, a port taken
        return {"message": f"torchrun: {type(exc).__name__}: {exc}".splitlines()[0][:300]}
    return None


def main(argv: list[str] | None = None) -> int:
    from loratop.trainer.train import build_arg_parser, load_run_config, take_run_dir

    args = build_arg_parser("python -m loratop.trainer.agent").parse_args(argv)
    run_dir = Path(args.run_dir)
    config = load_run_config(args.config, run_dir, "loratop agent")
    if config is None:
        return EXIT_CONFIG
    dist = config.distributed
    if not take_run_dir(run_dir, config, "loratop agent", hold=True, write_config=True):  # for all its ranks
        return EXIT_CONFIG
    try:
        write_status(
            run_dir,
            pid=os.getpid(),
            **process_identity(os.getpid()),
            state=ev.RUNNING,
            started_at=now(),
            ended_at=None,
            distributed={
                "world_size": dist.world_size,
                "nnodes": dist.nnodes,
                "node_rank": dist.node_rank,
                "nproc_per_node": dist.nproc_per_node,
                "strategy": dist.strategy,
            },
        )
    except OSError as exc:
        print(f"loratop agent: cannot write {run_dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG

    # Ours pass SIGTERM/SIGINT/SIGUSR1 on; the ranks stop or checkpoint at a step boundary,
    # all at the same step (see run_ranks for torchrun's own handlers).
    os.environ[AGENT_ENV] = str(os.getpid())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    forwarder = Forwarder(dist.nproc_per_node)
    forwarder.start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forwarder.handle)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    if dist.node_rank > 0:  # rank 0 writes the run's events on node 0; this folder says so
        first = dist.node_rank * dist.nproc_per_node
        sink = EventSink(run_dir / EVENTS)
        sink.emit(
            ev.LOG,
            message=f"node {dist.node_rank} of {dist.nnodes}: ranks {first}–{first + dist.nproc_per_node - 1} "
            f"train here; the run's events, adapter and dashboard are on node 0 ({dist.rdzv_endpoint})",
        )
        sink.close()
    relay = Relay(run_dir / EVENTS, args.events_fd)
    relay.start()
    started = time.monotonic()
    where = f"node {dist.node_rank} of {dist.nnodes}"
    print(f"loratop agent: torchrun, {dist.nproc_per_node} rank(s) on {where}", flush=True)
    failure = run_ranks(str(Path(args.config).resolve()), run_dir, dist)
    forwarder.close()
    code = _finish(run_dir, failure, dist.node_rank, time.monotonic() - started)
    relay.pass_on()
    relay.close()
    return code


def _finish(run_dir: Path, failure: dict[str, Any] | None, node_rank: int, duration: float) -> int:
    """Say how the run ended where rank 0 could not, and leave ``status.json`` final.

    Returns the agent's exit code. Never raises for a folder that cannot be written (a full
    disk, a folder removed under the run): it says so on stderr, into ``trainer.log``.
    """
    path = run_dir / EVENTS
    next_seq, last_step, finished = events_tail(path)
    status = read_status(run_dir) or {}
    if failure is None:
        if node_rank > 0:  # rank 0 and its events live on node 0: this node's ranks all ended well
            end = {"status": ev.COMPLETED, "step": last_step, "duration_s": round(duration, 3)}
            _write_end(run_dir, next_seq, [(ev.RUN_FINISHED, end)], state="finished", status=ev.COMPLETED,
                       exit_code=EXIT_OK, ended_at=now())  # fmt: skip
            return EXIT_OK
        if finished is not None:
            code = EXIT_OK if finished.get("status") in (ev.COMPLETED, ev.STOPPED) else EXIT_FAILED
            _write_end(run_dir, next_seq, [], exit_code=code)
            return code
        failure = {"message": "the ranks exited without a report from rank 0"}
    elif finished is not None and _ranks_reported(failure, finished):
        # Every rank failed on its own (a refused config, say) and rank 0 said why: no rank was lost.
        _write_end(run_dir, next_seq, [], exit_code=EXIT_FAILED)
        return EXIT_FAILED
    message = failure.get("message") or describe_failure(failure["rank"], failure)
    message = f"{message} at step {last_step}" if last_step else f"{message} before the first step"
    if (failure.get("exit_code") or 0) > 0 and _peer_error(finished):
        # No rank here was killed; rank 0 lost a peer: on a run of several boxes, look there.
        message += " after losing a peer (a rank on another box?: see that box's trainer.log)"
    print(f"loratop agent: {message}", file=sys.stderr, flush=True)
    events: list[tuple[str, dict[str, Any]]] = [
        (ev.ALERT, {"kind": "rank_lost", "step": last_step, "message": message, **_failure_fields(failure)})
    ]
    if finished is None:
        error = {"message": message, "traceback": []}
        events.append(
            (
                ev.RUN_FINISHED,
                {"status": ev.FAILED, "step": last_step, "duration_s": round(duration, 3), "error": error},
            )
        )
    _write_end(
        run_dir,
        next_seq,
        events,
        state="finished",
        status=ev.FAILED,
        exit_code=EXIT_FAILED,
        last_step=max(last_step, int(status.get("last_step") or 0)),
        ended_at=now(),
        error=message,
    )
    return EXIT_FAILED


def _write_end(run_dir: Path, next_seq: int, events: list[tuple[str, dict[str, Any]]], **status: Any) -> None:
    """Append ``events`` after rank 0's (their seq goes on from ``next_seq``) and merge ``status``
    into ``status.json``; what cannot be written is said on stderr, never raised. A removed
    run folder is not made again. Last, the run's caches for ``ls`` (its index and summary):
    the agent owns the run's end, and its events came after rank 0's own caching."""
    if not run_dir.is_dir():
        print(f"loratop agent: {run_dir} is gone; how the run ended is in trainer.log only", file=sys.stderr)
        return
    if events:
        try:
            sink = EventSink(run_dir / EVENTS, start_seq=next_seq)
        except OSError as exc:
            print(f"loratop agent: cannot write {run_dir / EVENTS}: {exc.strerror or exc}", file=sys.stderr)
        else:
            for kind, fields in events:
                sink.emit(kind, **fields)  # a failed write is kept by the sink, never raised
            if sink.write_error is not None:
                print(f"loratop agent: cannot write {run_dir / EVENTS}: {sink.write_error.strerror}", file=sys.stderr)
            sink.close()
    try:
        write_status(run_dir, **status)
    except OSError as exc:
        print(f"loratop agent: cannot write {run_dir / 'status.json'}: {exc.strerror or exc}", file=sys.stderr)
    settle_finished_run(run_dir)


def _ranks_reported(failure: dict[str, Any], finished: dict[str, Any]) -> bool:
    """Whether rank 0 reported a failure and every rank that failed exited (no signal): the
    run failed as a whole (each rank met the same error), and rank 0's report says why."""
    exits = failure.get("exits") or {}
    return (
        finished.get("status") not in (ev.COMPLETED, ev.STOPPED)
        and 0 in exits
        and all(isinstance(code, int) and code > 0 for code in exits.values())
        and not _peer_error(finished)
    )


def _peer_error(finished: dict[str, Any] | None) -> bool:
    """Whether rank 0's error says a peer went away (a collective failed)."""
    message = str(((finished or {}).get("error") or {}).get("message") or "")
    return any(marker in message for marker in PEER_ERRORS)


def _failure_fields(failure: dict[str, Any]) -> dict[str, Any]:
    return {k: failure[k] for k in ("rank", "node", "local_rank", "pid", "exit_code", "host") if k in failure}


if __name__ == "__main__":
    raise SystemExit(main())
