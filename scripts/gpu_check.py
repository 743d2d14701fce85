"""Check loratop's GPU truth on a real NVIDIA GPU (and its CPU-safe parts anywhere).

    python scripts/gpu_check.py [--steps 40] [--ballast-at 15] [--oom-at 35]
                                [--pairs 3] [--pair-steps 30] [--layers 22] [--out DIR]

On a GPU, three parts, each read back from the runs' own ``events.jsonl``:

1. **throughput**: the same QLoRA run (a ~1B random-init Llama, r=64 on all seven
   projections) with loratop's callbacks and memory sampler, and as a plain SFTTrainer run
   with neither, interleaved ``--pairs`` times; tokens/s after a warm-up. Target ≥ 0.99×.
2. **memory truth**: one run with everything on; after step ``--ballast-at`` (and every
   ``--squeeze-every`` steps after it) a ballast of plain device allocations fills the GPU and
   pushes past full, so the driver evicts paged optimizer state, then gives some back so
   training goes on and pages it back in (``scripts/gpu_pressure.py`` says how and why);
   after ``--oom-at`` (0: never) the ballast takes the rest, so the next step runs out of
   memory. It shows NVML used next to torch reserved/allocated and the paged bytes, the
   spill events and their method, the OOM-risk levels, and the OOM post-mortem.
3. **verdict**: one ``CHECK name: PASS|FAIL|n/a — why`` line per criterion of issue 10;
   the exit code is 1 if any check failed.

Without a GPU it runs the same pipeline on the embedded tiny model for a few steps and
prints the honest CPU states ("no NVIDIA GPU", spills n/a, OOM risk n/a); the GPU checks
say ``n/a``. ``scripts/gpu_check.sh`` wraps this for an offline machine (docs/gpu-check.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "scripts"):  # loratop, and gpu_pressure beside this script
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from loratop.core import events as ev  # noqa: E402
from loratop.core import oom_forecast as oom  # noqa: E402
from loratop.core.gpu_devices import NO_NVIDIA_GPU  # noqa: E402
from loratop.core.spills import EXACT as SPILLS_EXACT  # noqa: E402
from loratop.core.spills import NOT_APPLICABLE as SPILLS_NA  # noqa: E402

GIB = 1024**3
MIB = 1024**2
PASS, FAIL, NA = "PASS", "FAIL", "n/a"
THROUGHPUT_TARGET = 0.99
"""loratop's tokens/s over a bare SFTTrainer's, median of the interleaved runs (issue 10)."""
WARMUP_STEPS = 5
"""Steps left out of a throughput figure: the first ones compile kernels and fill caches."""


# -- verdicts: pure functions of a run's events (tests/test_gpu_check.py runs them on CPU) --


@dataclass
class Check:
    """One line of the verdict."""

    name: str
    result: str
    why: str

    def line(self) -> str:
        return f"CHECK {self.name}: {self.result} — {self.why}"


def _gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f} GiB"


def _of(events: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def check_nvml_vs_torch(events: list[dict[str, Any]], ballast_step: int | None = None) -> Check:
    """NVML used ≥ torch reserved in every GPU sample, and what the difference is made of
    (explained on the last sample before the ballast arrived: steady training)."""
    samples = [(m, g) for m in _of(events, ev.MEMORY) for g in m.get("gpus") or [] if g.get("torch")]
    if not samples:
        states = {str(m.get("gpu_state")) for m in _of(events, ev.MEMORY)}
        if states and states <= {NO_NVIDIA_GPU}:
            return Check("nvml-vs-torch", NA, "no NVIDIA GPU: memory samples carry host RSS only")
        return Check("nvml-vs-torch", FAIL, f"no GPU sample with torch figures (gpu_state {sorted(states)})")
    bad = [(m, g) for m, g in samples if g["used"] < g["torch"]["reserved"]]
    if bad:
        m, g = bad[0]
        return Check(
            "nvml-vs-torch",
            FAIL,
            f"{len(bad)}/{len(samples)} samples have NVML used < torch reserved (first: seq {m.get('seq')},"
            f" {_gib(g['used'])} < {_gib(g['torch']['reserved'])})",
        )
    before = next((e["seq"] for e in _of(events, ev.STEP) if ballast_step and e.get("step") == ballast_step + 1), None)
    steady = [g for m, g in samples if before is None or m["seq"] < before]
    gpu = (steady or [samples[-1][1]])[-1]
    paged = next(iter(_of(events, ev.PAGED_STATE)), {})
    paged_bytes = int(paged.get("paged_bytes") or 0)
    reserved = gpu["torch"]["reserved"]
    rest = gpu["used"] - reserved
    why = (
        f"{len(samples)} samples; steady: NVML used {_gib(gpu['used'])} ≥ torch reserved {_gib(reserved)}"
        f" (allocated {_gib(gpu['torch'].get('allocated'))}); NVML − reserved = {_gib(rest)}: paged state"
        f" ≤ {_gib(paged_bytes)}, so ≥ {_gib(rest - paged_bytes)} is the CUDA context and other processes"
    )
    if "process_used" in gpu:
        why += f"; NVML counts {_gib(gpu['process_used'])} for this process"
    return Check("nvml-vs-torch", PASS, why)


def check_spills(events: list[dict[str, Any]]) -> Check:
    """Spill events > 0, counted by the exact (CUPTI) method, and training went on after the first
    (so the optimizer paged its state back in: the refill bytes say how much came back)."""
    paged = next(iter(_of(events, ev.PAGED_STATE)), None)
    if paged is None:
        return Check("spills-exact", FAIL, "no paged_state event: the first step never ended")
    method = paged.get("spill_method")
    if method == SPILLS_NA:
        return Check("spills-exact", NA, f"{paged.get('spill_reason')}")
    spills = _of(events, ev.SPILL)
    total = sum(int(s.get("bytes") or 0) for s in spills)
    refilled = sum(int(s.get("refill_bytes") or 0) for s in spills)
    if method != SPILLS_EXACT:
        return Check("spills-exact", FAIL, f"spills counted by method {method!r}: {paged.get('spill_reason')}")
    if not spills:
        return Check("spills-exact", FAIL, f"method exact, but no spill event ({_gib(paged.get('paged_bytes'))} paged)")
    inexact = [s for s in spills if s.get("method") != SPILLS_EXACT]
    if inexact:
        why = f"{len(inexact)} of {len(spills)} spill events not exact (CUPTI failed mid-run?)"
        return Check("spills-exact", FAIL, why)
    after = [e for e in _of(events, ev.STEP) if e["seq"] > spills[0]["seq"]]
    why = (
        f"{len(spills)} spill events at steps {', '.join(str(s.get('step')) for s in spills[:8])},"
        f" {total / MIB:.1f} MiB evicted, {refilled / MIB:.1f} MiB paged back in, method exact (CUPTI)"
    )
    if not after:
        return Check("spills-exact", FAIL, f"{why}; but no step trained after the first spill")
    return Check("spills-exact", PASS, f"{why}; {len(after)} steps trained after the first")


def check_risk_before_oom(events: list[dict[str, Any]], ballast_step: int | None) -> Check:
    """The OOM-risk level rose (to watch or danger) after the ballast, before any OOM."""
    risks = _of(events, ev.OOM_RISK)
    if risks and all(r.get("level") == oom.NOT_APPLICABLE for r in risks):
        return Check("oom-risk-rises", NA, str(risks[0].get("reason")))
    finished = next(iter(_of(events, ev.RUN_FINISHED)), {})
    oom_seq = finished.get("seq") if finished.get("status") == ev.OOM else None
    raised = [
        r
        for r in risks
        if r.get("level") in (oom.WATCH, oom.DANGER)
        and (ballast_step is None or (r.get("step") or 0) >= ballast_step)
        and (oom_seq is None or r["seq"] < oom_seq)
    ]
    levels = " → ".join(f"{r.get('level')}@{r.get('step', '-')}" for r in risks) or "none"
    if not raised:
        return Check(
            "oom-risk-rises",
            FAIL,
            f"levels {levels}; none rose after the ballast" + (" before the OOM" if oom_seq else ""),
        )
    first = raised[0]
    blind = [r for r in risks if r.get("level") != oom.NOT_APPLICABLE and not r.get("seen_tokens")]
    if blind:
        why = f"levels {levels}; but {len(blind)} forecasts saw no batch (seen_tokens 0 or missing)"
        return Check("oom-risk-rises", FAIL, f"{why}: {blind[0].get('reason')}")
    return Check(
        "oom-risk-rises",
        PASS,
        f"levels {levels}; {first.get('level')} at step {first.get('step')}"
        f" (predicted {_gib(first.get('predicted_peak'))} of {_gib(first.get('available'))})"
        + (", before the OOM" if oom_seq else "")
        + f"; largest batch seen {max(int(r.get('seen_tokens') or 0) for r in raised):,} tokens",
    )


def check_post_mortem(events: list[dict[str, Any]], skipped: int, forced: bool) -> Check:
    """A forced OOM ends as status ``oom`` with its post-mortem, and every line is intact."""
    finished = _of(events, ev.RUN_FINISHED)
    seqs = [e["seq"] for e in events]
    gaps = [b for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1]
    intact = f"{len(events)} events, {skipped} garbled, {len(gaps)} seq gaps"
    if not forced:
        return Check("oom-post-mortem", NA, f"no OOM forced; {intact}")
    if len(finished) != 1:
        return Check("oom-post-mortem", FAIL, f"{len(finished)} run_finished events; {intact}")
    end = finished[0]
    error = end.get("error") or {}
    missing = [k for k in ("step", "batch_tokens", "last_memory", "suggestions") if k not in error]
    if end.get("status") != ev.OOM or missing or skipped or gaps:
        return Check(
            "oom-post-mortem",
            FAIL,
            f"status {end.get('status')!r}, post-mortem fields missing {missing}; {intact}: {error.get('message', '')}",
        )
    return Check(
        "oom-post-mortem",
        PASS,
        f"status oom at step {error['step']} (batch {error['batch_tokens']} tokens), {len(error['suggestions'])}"
        f" suggestions; {intact}",
    )


@dataclass
class Throughput:
    """Tokens per second of one timed run."""

    arm: str
    """``loratop`` (callbacks and sampler on) or ``bare`` (a plain SFTTrainer run)."""
    tokens_per_s: float
    steps: int


@dataclass
class ThroughputVerdict:
    runs: list[Throughput] = field(default_factory=list)

    def median(self, arm: str) -> float | None:
        values = [r.tokens_per_s for r in self.runs if r.arm == arm]
        return statistics.median(values) if values else None

    def check(self, on_gpu: bool, pairs: int) -> Check:
        ours, bare = self.median("loratop"), self.median("bare")
        if ours is None or bare is None or bare <= 0:
            return Check("throughput", FAIL, "no timed runs")
        ratio = ours / bare
        why = (
            f"median {ours:,.0f} vs {bare:,.0f} tokens/s = {ratio:.3f}× over {pairs} interleaved pairs"
            f" (target ≥ {THROUGHPUT_TARGET}×)"
        )
        if not on_gpu:
            return Check("throughput", NA, f"CPU rehearsal, not a measurement: {why}")
        if pairs < 3:
            return Check("throughput", FAIL, f"{why}; needs at least 3 pairs")
        return Check("throughput", PASS if ratio >= THROUGHPUT_TARGET else FAIL, why)


def tokens_per_s(marks: list[tuple[float, int]], warmup: int = WARMUP_STEPS) -> float:
    """Tokens/s between the end of step ``warmup`` and the last step, from (time, tokens seen) marks."""
    if len(marks) <= warmup + 1:
        warmup = 0
    (t0, n0), (t1, n1) = marks[warmup], marks[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


# -- the GPU side: model, ballast, runs ---------------------------------------------------


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def build_model(folder: Path, layers: int) -> Path:
    """A random-init Llama of TinyLlama's shape (~1B at 22 layers), saved in bf16; no download.

    Every projection has ≥ 2048 × 64 = 131,072 elements of LoRA at r=64, over bitsandbytes'
    1e5 paging threshold, so that state is paged.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from loratop.trainer.tiny_model import tiny_model_dir

    tiny, _ = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    print(f"built a random-init Llama: {layers} layers, {params / 1e9:.2f} B parameters, at {folder}", flush=True)
    return folder


def _callback(on_step_end: Callable[[Any], None]) -> Any:
    from transformers import TrainerCallback

    class Hook(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            on_step_end(state)

    return Hook()


def _config(model: Path | None, run_dir: Path, steps: int) -> Any:
    from loratop.preflight.config import load_config, parse_overrides

    # No eval split (the demo holds 5% out): these runs time and measure the training loop.
    sets = [f"output_dir={run_dir}", f"training.max_steps={steps}", "training.save_steps=0", "data.eval_split=null"]
    if model is not None:
        sets += [f"model.name_or_path={model}", "lora.r=64", "lora.lora_alpha=64", "training.learning_rate=2e-4"]
    else:
        sets += ["data.max_rows=400"]  # CPU rehearsal: keep tokenising short
    return load_config(REPO / "sample_configs/tiny-cpu-demo.yaml", parse_overrides(sets), check_files=False)


def _release_gpu() -> None:
    """Free what a finished run left: its paged buffers stay listed in bitsandbytes' page manager."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            from bitsandbytes.functional import GlobalPageManager

            GlobalPageManager.get_instance().paged_tensors.clear()
            gc.collect()
            torch.cuda.empty_cache()
    except Exception as exc:  # an older bitsandbytes: say so, go on
        print(f"(could not clear bitsandbytes' page manager: {exc})")


def timed_run(model: Path | None, run_dir: Path, steps: int, arm: str) -> Throughput:
    """One throughput run: ``loratop`` is :meth:`Run.execute` as the trainer subprocess runs it;
    ``bare`` builds the same SFTTrainer and trains it with no event callback, memory sampler,
    batch recorder or spill counter."""
    import torch

    from loratop.trainer.event_sink import EventSink
    from loratop.trainer.train import Run

    marks: list[tuple[float, int]] = []
    cuda = torch.cuda.is_available()

    def mark(state: Any) -> None:
        if cuda:
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), int(state.num_input_tokens_seen or 0)))

    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(_config(model, run_dir, steps), run_dir, EventSink(run_dir / "events.jsonl"))
    if arm == "loratop":
        setup = run.setup

        def setup_with_timer() -> Any:
            trainer = setup()
            trainer.add_callback(_callback(mark))
            return trainer

        run.setup = setup_with_timer  # type: ignore[method-assign]
        code = run.execute()
        if code != 0:
            raise RuntimeError(f"the loratop run ended with exit code {code}; see {run_dir}/events.jsonl")
    else:
        trainer = run.setup()
        for callback in list(trainer.callback_handler.callbacks):
            if type(callback).__name__ == "LoratopCallback":  # the run's own, given the run as its policy
                trainer.remove_callback(callback)
        run.watch.recorder.detach()  # no batch recorder either
        trainer.add_callback(_callback(mark))
        trainer.train()
        run.sink.close()
        del trainer
    del run
    _release_gpu()
    return Throughput(arm, tokens_per_s(marks), len(marks))


def throughput(model: Path | None, out: Path, pairs: int, steps: int) -> ThroughputVerdict:
    """Interleave the two arms (ABBA...) so drift in clocks or caches hits both alike."""
    verdict = ThroughputVerdict()
    for i in range(pairs):
        for arm in ("loratop", "bare") if i % 2 == 0 else ("bare", "loratop"):
            result = timed_run(model, out / f"throughput-{i}-{arm}", steps, arm)
            verdict.runs.append(result)
            print(
                f"pair {i + 1}/{pairs} {arm:7s}: {result.tokens_per_s:10,.0f} tokens/s over {result.steps} steps",
                flush=True,
            )
    return verdict


def squeeze_due(step: int, ballast_at: int, every: int, oom_at: int) -> bool:
    """Whether the ballast squeezes after ``step``: at ``ballast_at``, then every ``every`` steps
    (0: only once), never at or after ``oom_at`` (where it takes the rest instead)."""
    if step < ballast_at or (oom_at and step >= oom_at):
        return False
    return step == ballast_at or (every > 0 and (step - ballast_at) % every == 0)


def memory_run(
    model: Path | None, run_dir: Path, steps: int, ballast_at: int, oom_at: int, squeeze_every: int = 5
) -> int:
    """The memory-truth run, in this process so the ballast shares its GPU. Returns the exit code.

    After step ``ballast_at`` and every ``squeeze_every`` steps after it (before ``oom_at``), a
    :class:`~gpu_pressure.Squeeze` fills the GPU to full with plain allocations and pushes the
    paged bytes past full, so the driver evicts paged optimizer state, then gives back the push
    and 512 MiB: training goes on and the optimizer pages its state back in. After ``oom_at``
    the ballast takes the rest, so the next step runs out of memory."""
    import torch

    from loratop.trainer.event_sink import EventSink
    from loratop.trainer.train import Run

    cuda = torch.cuda.is_available()
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(_config(model, run_dir, steps), run_dir, EventSink(run_dir / "events.jsonl"))
    squeeze: Any = None
    if cuda:
        from gpu_pressure import CudaRuntime, CudaUnavailable, Squeeze

        try:
            squeeze = Squeeze(CudaRuntime(torch.cuda.current_device()))
        except CudaUnavailable as exc:
            print(f"no ballast: the raw CUDA runtime is unavailable ({exc}); nothing will be evicted", flush=True)

    def crowd(state: Any) -> None:
        step = state.global_step
        paged = int((run.watch.paged or {}).get("paged_bytes") or 0)
        if oom_at and step == oom_at:
            torch.cuda.empty_cache()  # the training's cached blocks too: its next step must allocate
            held = squeeze.take_the_rest(evict=max(paged, 64 * MIB))
            print(f"ballast after step {oom_at}: takes the rest, {_gib(held)} held: the next step must OOM", flush=True)
        elif squeeze_due(step, ballast_at, squeeze_every, oom_at):
            torch.cuda.synchronize()
            result = squeeze.squeeze(evict=max(paged, 2 * MIB), margin=512 * MIB)
            print(result.line(step, squeeze.held_bytes), flush=True)

    setup = run.setup

    def setup_with_ballast() -> Any:
        trainer = setup()
        if squeeze is not None:
            trainer.add_callback(_callback(crowd))
        return trainer

    run.setup = setup_with_ballast  # type: ignore[method-assign]
    code = run.execute()
    if squeeze is not None:
        squeeze.release_all()
    _release_gpu()
    print(f"trainer finished with exit code {code}", flush=True)
    return code


def report(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Print what the run's events say about memory; return them and the garbled-line count."""
    events, skipped = ev.read_events(str(run_dir / "events.jsonl"))
    print(f"events: {dict(Counter(e['type'] for e in events))} (skipped lines: {skipped})")
    finished = next((e for e in events if e["type"] == ev.RUN_FINISHED), {})
    print(f"run status: {finished.get('status')} {(finished.get('error') or {}).get('message', '')}")
    memory = _of(events, ev.MEMORY)
    if memory:
        last = memory[-1]
        print(f"last memory sample: gpu_state={last.get('gpu_state')} note={last.get('gpu_note', '')!r}")
        print(f"  host rss {last['host']['rss'] / GIB:.2f} GiB")
        shown = [*memory[:: max(1, len(memory) // 8)], last]  # ~9 samples across the run
        for sample in shown:
            for gpu in sample.get("gpus", []):
                figures = gpu.get("torch", {})
                reserved = figures.get("reserved", 0)
                print(
                    f"  seq {sample['seq']:5d} gpu{gpu['index']} {gpu['name']}: NVML used {_gib(gpu['used'])}"
                    f" / {_gib(gpu['total'])}; torch allocated {_gib(figures.get('allocated'))} reserved"
                    f" {_gib(reserved)} peak {_gib(figures.get('peak'))};"
                    f" NVML − reserved = {_gib(gpu['used'] - reserved)}"
                )
    for paged in _of(events, ev.PAGED_STATE):
        shown_fields = {k: v for k, v in paged.items() if k not in ("v", "seq", "t", "type")}
        print(f"paged state: {json.dumps(shown_fields)}")
    spills = _of(events, ev.SPILL)
    by_method: dict[str, list[int]] = {}
    for spill in spills:
        by_method.setdefault(str(spill.get("method")), []).append(int(spill.get("bytes") or 0))
    for method, sizes in by_method.items():
        print(f"spills ({method}): {len(sizes)} events, {sum(sizes) / GIB:.3f} GiB evicted")
    if not spills:
        print("spills: no spill events")
    for risk in _of(events, ev.OOM_RISK):
        print(f"OOM risk at step {risk.get('step', '-')}: {risk.get('level')} — {risk.get('reason')}")
    error = finished.get("error") or {}
    if finished.get("status") == ev.OOM:
        print(f"OOM post-mortem: step {error.get('step')}, batch {error.get('batch_tokens')} tokens")
        for line in error.get("suggestions", []):
            print(f"  try: {line}")
    return events, skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps of the memory-truth run")
    parser.add_argument("--ballast-at", type=int, default=15, help="step after which the ballast fills the GPU")
    parser.add_argument("--oom-at", type=int, default=0, help="step after which the ballast takes the rest (0: never)")
    parser.add_argument(
        "--squeeze-every", type=int, default=5, help="steps between squeezes after --ballast-at (0: one squeeze)"
    )
    parser.add_argument("--pairs", type=int, default=3, help="interleaved throughput pairs (loratop vs bare)")
    parser.add_argument("--pair-steps", type=int, default=30, help="steps per throughput run")
    parser.add_argument("--layers", type=int, default=22, help="decoder layers of the random-init Llama (22: ~1B)")
    parser.add_argument("--out", type=Path, default=None, help="where runs and the model go (default: a temp folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="loratop-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)

    _section("machine")
    import torch

    from loratop.core.gpu_devices import GpuDevices

    cuda = torch.cuda.is_available()
    print(f"python {platform.python_version()}, torch {torch.__version__}, cuda available: {cuda}")
    reader = GpuDevices()
    print(f"NVML: {reader.state} {reader.note}")
    for gpu in reader.read() if reader.state == "ok" else []:
        print(f"  gpu{gpu['index']} {gpu['name']}: {gpu['used'] / GIB:.2f} / {gpu['total'] / GIB:.2f} GiB used")
    try:
        import cupti  # noqa: F401

        print("cupti-python: importable")
    except ImportError as exc:
        print(f"cupti-python: not importable ({exc}); spills will be estimated on a GPU")

    model: Path | None = None
    if cuda:
        _section("model")
        model = build_model(out / "model", args.layers)
        steps, pair_steps, ballast_at, oom_at = args.steps, args.pair_steps, args.ballast_at, args.oom_at
    else:
        print("no NVIDIA GPU: the tiny model on CPU, a few steps, no ballast")
        steps, pair_steps, ballast_at, oom_at = min(args.steps, 5), min(args.pair_steps, 8), 0, 0

    checks: list[Check] = []
    _section(f"throughput: loratop vs a bare SFTTrainer, {args.pairs} interleaved pairs of {pair_steps} steps")
    try:
        verdict = throughput(model, out, args.pairs, pair_steps)
        checks.append(verdict.check(cuda, args.pairs))
    except Exception:
        traceback.print_exc()
        checks.append(Check("throughput", FAIL, "the timed runs raised (traceback above)"))

    _section(
        "memory truth"
        + (f": ballast after step {ballast_at}" if cuda else "")
        + (f", OOM forced after {oom_at}" if oom_at else "")
    )
    run_dir = out / "run"
    try:
        memory_run(model, run_dir, steps, ballast_at, oom_at, args.squeeze_every)
        _section("what the events say")
        events, skipped = report(run_dir)
        checks += [
            check_nvml_vs_torch(events, ballast_at if cuda else None),
            check_spills(events),
            check_risk_before_oom(events, ballast_at if cuda else None),
            check_post_mortem(events, skipped, forced=bool(oom_at)),
        ]
    except Exception:
        traceback.print_exc()
        checks.append(Check("memory-run", FAIL, "the memory-truth run raised (traceback above)"))

    _section("verdict")
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if c.result == FAIL]
    print(
        f"{len(checks) - len(failed)} of {len(checks)} checks passed or n/a"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
