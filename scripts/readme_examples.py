"""The README's examples, from real runs, so that they cannot drift from what loratop prints.

    python scripts/readme_examples.py            # run them and print the blocks
    python scripts/readme_examples.py --write    # and put them into README.md

Runs, one at a time in a scratch folder (about two minutes on 2 CPU cores):

- ``loratop demo --no-tui``: the headless output block (elided the same way every time)
  and the demo's wall time;
- ``loratop run tiny-lr-too-high --no-tui``: what the spike detector flagged on it, and
  how far the loss rose above its low.

Each generated part of README.md sits between ``<!-- readme-example: NAME -->`` and
``<!-- /readme-example -->``. The slow tests (``tests/test_trainer_run.py``) render the same
blocks from their own runs of these configs and compare them with README.md, numbers aside:
a change to what ``--no-tui`` prints, or to what the detector flags, fails them until this
script is run again.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START = "<!-- readme-example: {name} -->"
END = "<!-- /readme-example -->"
HEAD_STEPS = 2
"""Step lines kept at the start of the headless block; the last one is kept too."""


def _tidy(line: str, scratch: Path) -> str:
    """A line as a reader's own run would print it: paths relative, the home folder as ``~``."""
    line = line.replace(f"{scratch}/", "")
    return re.sub(r"/(?:root|home/[^/\s]+)/", "~/", line)


def headless_block(output: str, scratch: Path | None = None) -> str:
    """The README's headless example from a ``--no-tui`` run's output.

    Keeps every line up to the second step line, the first eval line, and everything from
    the last step line on; each cut is one ``...`` line.
    """
    lines = [_tidy(line, scratch) if scratch else line for line in output.strip().splitlines()]
    steps = [i for i, line in enumerate(lines) if line.startswith("step ")]
    if not steps:
        return "\n".join(lines)
    keep = lines[: steps[min(HEAD_STEPS, len(steps)) - 1] + 1]
    last = steps[-1]
    evals = [i for i, line in enumerate(lines) if line.startswith("eval at step ") and i < last]
    if evals:
        keep += ["...", lines[evals[0]]]
    keep += ["...", *lines[last:]]
    return "\n".join(keep)


def shape(text: str) -> str:
    """A block with what differs from run to run taken out: numbers, units, paths, run names."""
    out = []
    for line in text.strip().splitlines():
        line = re.sub(r"\S*/\S*", "PATH", line)
        line = re.sub(r"\brun \S+:", "run NAME:", line)
        line = re.sub(r"\b(?:built|cached) tiny model\b", "tiny model", line)  # the first run builds it
        line = re.sub(r"\b[KMG]iB\b|\bkB\b|\bMB\b|\bGB\b|\bB\b", "UNIT", line)
        line = re.sub(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", "9", line)
        out.append(line)
    return "\n".join(out)


def lr_story(events: list[dict]) -> str:
    """What the spike detector flagged on a ``tiny-lr-too-high`` run, and how the loss went."""
    losses = [(e["step"], e["loss"]) for e in events if e.get("type") == "step"]
    spikes = [e for e in events if e.get("type") == "spike"]
    smooth = [
        (losses[i][0], statistics.median(v for _, v in losses[max(0, i - 4) : i + 5])) for i in range(len(losses))
    ]
    low_step, low = min(smooth, key=lambda p: p[1])
    high_step, high = max(((s, v) for s, v in smooth if s > low_step), key=lambda p: p[1], default=(low_step, low))
    end = statistics.median(v for _, v in losses[-20:])
    flagged = "; ".join(f"step {s['step']} {s['severity']} `{s['kind']}` ({s['reason']})" for s in spikes) or "nothing"
    return (
        f"On a real `tiny-lr-too-high` run the loss (a 9-step median) fell to {low:.2f} at step {low_step}, "
        f"climbed to {high:.2f} at step {high_step} (+{high - low:.2f} nat) and ended near {end:.2f}; "
        f"the detector flagged {flagged}."
    )


def spike_shape(story: str) -> list[str]:
    """The severity and kind of each flag in a story, in order (what a rerun must repeat)."""
    return re.findall(r"\b(warn|severe|fatal) `(\w+)`", story)  # type: ignore[return-value]


def readme_block(name: str, text: str | None = None) -> str:
    """The generated part of README.md called ``name``."""
    text = README.read_text() if text is None else text
    start = START.format(name=name)
    i = text.index(start) + len(start)
    return text[i : text.index(END, i)].strip("\n")


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` holding ``body`` (inline when the markers share a line)."""
    start = START.format(name=name)
    i = text.index(start) + len(start)
    j = text.index(END, i)
    inline = "\n" not in text[i:j]
    return f"{text[:i]}{body}{text[j:]}" if inline else f"{text[:i]}\n{body}\n{text[j:]}"


def _run(args: list[str], cwd: Path, timeout: float = 900) -> tuple[str, float]:
    """``loratop ARGS`` (a ``--no-tui`` run), its output and wall time. Given up on (too slow, or
    Ctrl+C here), it is stopped as a user would stop it, with Ctrl+C: the CLI stops its trainer,
    which runs in a session of its own and would otherwise train on, orphaned."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # the timeout, or Ctrl+C
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=120)
        finally:
            process.kill()
        raise
    if process.returncode != 0:
        raise SystemExit(f"loratop {' '.join(args)} failed ({process.returncode}):\n{err[-2000:]}")
    return out + err, time.perf_counter() - started


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def generate() -> dict[str, str]:
    """Run the examples; the README's blocks by name."""
    blocks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="loratop-readme-") as tmp:
        scratch = Path(tmp).resolve()
        print("running loratop demo --no-tui ...", file=sys.stderr)
        output, seconds = _run(["demo", "--no-tui"], scratch)
        blocks["demo-headless"] = "```\n" + headless_block(output, scratch) + "\n```"
        blocks["demo-seconds"] = f"{seconds:.0f}"
        print("running loratop run tiny-lr-too-high --no-tui ...", file=sys.stderr)
        _run(["run", "tiny-lr-too-high", "--no-tui", "--set", "output_dir=runs/lr"], scratch)
        blocks["lr-too-high"] = lr_story(_events(scratch / "runs" / "lr"))
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the blocks into README.md")
    args = parser.parse_args()
    blocks = generate()
    text = README.read_text()
    for name, body in blocks.items():
        print(f"--- {name}\n{body}")
        text = replace_block(text, name, body)
    if args.write:
        README.write_text(text)
        print(f"wrote {len(blocks)} blocks into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
