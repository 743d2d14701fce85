"""What loratop costs the training loop: the tiny CPU model (the worst case: ~0.03 s steps,
so per-step work shows most), with loratop's callbacks, sampler, batch recorder, events and
index, against the same SFTTrainer with none of them.

The two arms are interleaved (ABBA...) in one process, each a fresh run; tokens/s is measured
between the end of step 5 and the last step. Prints each run and the ratio of the medians.
The GPU check (``scripts/gpu_check.py``) makes the same comparison on a ~1B model.

    python benchmarks/trainer_overhead.py [--pairs 3] [--steps 200]     # about 2 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from gpu_check import _config, timed_run  # noqa: E402

from loratop.core import events as ev  # noqa: E402


def emit_cost_us(events: int = 20_000) -> float:
    """Microseconds the trainer spends per step event: encode, append to events.jsonl, index."""
    import time

    from loratop.trainer.event_sink import EventSink

    with tempfile.TemporaryDirectory() as tmp:
        sink = EventSink(Path(tmp) / "events.jsonl")
        start = time.perf_counter()
        for step in range(events):
            sink.emit(ev.STEP, step=step, loss=1.234, lr=2e-4, grad_norm=0.31, tokens=4096 * step, epoch=0.5,
                      step_time_s=0.031)  # fmt: skip
        seconds = time.perf_counter() - start
        sink.close()
    return 1e6 * seconds / events


def direct_share(run_dir: Path, steps: int) -> tuple[float, float, dict[str, float]]:
    """One loratop run with every piece of loratop's own work in the loop timed: the event
    callback's hooks (which emit the step events), the memory sampler's samples and emits, the
    batch recorder, the folder check. Returns (seconds of that work, seconds of training, by part).

    A direct count, where the A/B comparison drowns in this machine's noise; work on the
    sampler's own thread is counted in full, as if it took the training's core."""
    import time

    from loratop.trainer.event_sink import EventSink
    from loratop.trainer.train import Run

    spent: dict[str, float] = {}

    def timed(name: str, fn: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)  # type: ignore[operator]
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return call

    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(_config(None, run_dir, steps), run_dir, EventSink(run_dir / "events.jsonl"))
    run._sampler.sample = timed("memory sampler", run._sampler.sample)  # type: ignore[method-assign]
    run._sampler._emit = timed("memory sampler", run._sampler._emit)
    run._folder_watch._fn = timed("folder check", run._folder_watch._fn)
    setup = run.setup
    bounds: list[float] = []

    def setup_timed() -> object:
        trainer = setup()
        for callback in trainer.callback_handler.callbacks:
            if type(callback).__name__ == "LoratopCallback":  # the run's own, given the run as its policy
                for hook in ("on_train_begin", "on_step_begin", "on_step_end", "on_log", "on_save", "on_train_end"):
                    setattr(callback, hook, timed("event callback", getattr(callback, hook)))
        recorder = run.watch.recorder  # its forward pre-hook, timed
        recorder.detach()
        recorder._seen = timed("batch recorder", recorder._seen)
        recorder.attach(trainer.model)
        train = trainer.train

        def train_timed(*args: object, **kwargs: object) -> object:
            bounds.append(time.perf_counter())
            try:
                return train(*args, **kwargs)
            finally:
                bounds.append(time.perf_counter())

        trainer.train = train_timed
        return trainer

    run.setup = setup_timed  # type: ignore[method-assign]
    run.execute()
    return sum(spent.values()), bounds[1] - bounds[0], spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"loratop": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for arm in ("loratop", "bare") if i % 2 == 0 else ("bare", "loratop"):
                run = timed_run(None, Path(tmp) / f"{i}-{arm}", args.steps, arm)
                results[arm].append(run.tokens_per_s)
                print(f"pair {i + 1}/{args.pairs} {arm:7s} {run.tokens_per_s:9,.0f} tokens/s", flush=True)
        step_times = [
            e["step_time_s"]
            for e in ev.read_events(str(Path(tmp) / "0-loratop" / "events.jsonl"))[0]
            if e["type"] == ev.STEP and e["step"] > 5
        ]
    ours, bare = statistics.median(results["loratop"]), statistics.median(results["bare"])
    print(f"loratop / bare = {ours / bare:.3f} (median {ours:,.0f} vs {bare:,.0f} tokens/s; 1.000 = no cost)")
    spread = max(results["bare"]) / min(results["bare"]) - 1
    print(f"run-to-run spread of the bare arm alone: {100 * spread:.1f}% (the noise floor on this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        ours, training, parts = direct_share(Path(tmp) / "direct", args.steps)
    detail = ", ".join(f"{name} {1000 * seconds:.0f} ms" for name, seconds in sorted(parts.items()))
    print(f"loratop's own work in the loop: {100 * ours / training:.2f}% of {training:.1f} s of training ({detail})")
    cost = emit_cost_us()
    step_s = statistics.median(step_times)
    share = 100 * cost / 1e6 / step_s
    print(f"one step event (encode, events.jsonl, index): {cost:.1f} µs = {share:.3f}% of a {step_s:.3f} s step")


if __name__ == "__main__":
    main()
