"""Bytes the dashboard writes to the terminal while it follows a live run (what crosses an SSH link).

A writer process plays a live run into a run folder through the trainer's own sink: about
4 steps/s with a memory sample every other step, its status.json proving it alive. Then
``loratop attach`` runs in a pseudo-terminal of 120x40 (xterm-256color) and everything it
writes is counted: after a warm-up of 5 s, over 20 s. Prints KB/s, and how often the
chart changed on screen (the plot's rows that changed between two screen reads).

    python benchmarks/wire_bytes.py [--seconds 20] [--size 120x40]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

WRITER = """
import json, math, os, random, sys, time
from pathlib import Path
from loratop.core import events as ev
from loratop.core.run_dir import process_identity, write_status
from loratop.trainer.event_sink import EventSink
run_dir = Path(sys.argv[1]); steps = int(sys.argv[2])
run_dir.mkdir(parents=True)
sink = EventSink(run_dir / "events.jsonl")
write_status(run_dir, pid=os.getpid(), **process_identity(os.getpid()), state="running", started_at=time.time())
sink.emit(ev.RUN_STARTED, run_name=run_dir.name, max_steps=steps, config={},
          model={"name_or_path": "meta-llama/Llama-3.1-8B"}, device={"kind": "cuda", "name": "NVIDIA H200"},
          params={"trainable": 41943040, "total": 8072204288, "fraction": 0.0052, "base_frozen": True})
rng = random.Random(0)
start = time.time()
for step in range(1, steps + 1):
    time.sleep(max(0.0, start + step / 4 - time.time()))
    loss = 2.5 * math.exp(-step / 2000) + 0.8 + rng.gauss(0, 0.05)
    sink.emit(ev.STEP, step=step, loss=loss, lr=2e-4, grad_norm=0.3, tokens=4096 * step, epoch=step / steps)
    if step % 2 == 0:
        used = 60_000_000_000 + rng.randrange(1 << 30)
        sink.emit(ev.MEMORY, host={"rss": 9_000_000_000}, gpu_state="ok",
                  gpus=[{"index": 0, "name": "NVIDIA H200", "used": used, "total": 150_000_000_000,
                         "free": 150_000_000_000 - used,
                         "torch": {"allocated": used - 2**31, "reserved": used - 2**30, "peak": used}}])
"""


def measure(seconds: float, cols: int, rows: int) -> tuple[float, int]:
    """(bytes per second written by the dashboard after warm-up, bytes in all)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "live-run"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), "100000"])
        while not (run_dir / "status.json").exists():
            time.sleep(0.05)
        time.sleep(2)  # some steps on disk already
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        dash = subprocess.Popen(
            [sys.executable, "-m", "loratop.cli.main", "attach", str(run_dir)],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        total = counted = 0
        warm_until = time.monotonic() + 5
        stop_at = warm_until + seconds
        while time.monotonic() < stop_at:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                total += len(chunk)
                if time.monotonic() >= warm_until:
                    counted += len(chunk)
        os.write(master, b"d")  # detach: the run goes on, the dashboard quits
        try:
            dash.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(dash.pid, signal.SIGKILL)
        os.close(master)
        writer.kill()
        writer.wait()
    return counted / seconds, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args()
    cols, rows = (int(n) for n in args.size.split("x"))
    rate, total = measure(args.seconds, cols, rows)
    print(f"following a live run (~4 steps/s) at {cols}x{rows}: {rate / 1000:.1f} KB/s to the terminal "
          f"({total / 1000:.0f} KB in all, the first frame included)")  # fmt: skip


if __name__ == "__main__":
    main()
