"""Check loratop's memory truth on a real NVIDIA GPU (and its CPU-safe parts anywhere).

    python scripts/gpu_check.py [--steps 40] [--ballast-at 15] [--out DIR]

On a GPU it runs a short QLoRA on a random-init Llama big enough that some optimizer
state is paged (r=64 LoRA matrices on a 2048-wide model: 131,072 elements ≥ 1e5),
then, mid-run, fills the GPU with a ballast tensor so the paged state must be evicted,
and prints: NVML vs torch figures, paged bytes, spill events and bytes by method, and
the OOM-risk levels, all read back from the run's events.jsonl.

Without a GPU it runs the same pipeline on the embedded tiny model for a few steps and
prints the honest CPU states ("no NVIDIA GPU", spills n/a, OOM risk n/a).
Record what it prints on a GPU box in docs/gpu-check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer import events as ev  # noqa: E402
from trainer.config import load_config, parse_overrides  # noqa: E402
from trainer.event_sink import EventSink  # noqa: E402
from trainer.memory_sampler import NvmlReader  # noqa: E402

GIB = 1024**3


def _section(title: str) -> None:
    print(f"\n== {title}")


def _build_paging_model(folder: Path) -> Path:
    """A random-init Llama wide enough that r=64 LoRA matrices are paged (≥ 1e5 elements)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainer.tiny_model import tiny_model_dir

    tiny, _ = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _ballast_callback(at_step: int, keep_free: int) -> Any:
    """Fill the GPU at ``at_step`` so the paged optimizer state has to leave it."""
    import torch
    from transformers import TrainerCallback

    class Ballast(TrainerCallback):
        tensors: list[Any] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step != at_step:
                return
            chunk = 256 * 1024**2
            while True:
                free, _ = torch.cuda.mem_get_info()
                if free - chunk < keep_free:
                    break
                try:
                    self.tensors.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
                except torch.OutOfMemoryError:
                    break
            print(f"ballast at step {at_step}: {len(self.tensors) * chunk / GIB:.1f} GiB", flush=True)

    return Ballast()


def run_check(steps: int, ballast_at: int, out: Path) -> Path:
    """Run the trainer in this process (so the ballast shares its GPU) and return the run folder."""
    import torch

    from trainer.train import Run

    cuda = torch.cuda.is_available()
    sets = [f"output_dir={out / 'run'}", f"training.max_steps={steps}", "training.save_steps=0"]
    if cuda:
        model = _build_paging_model(out / "model")
        sets += [f"model.name_or_path={model}", "lora.r=64", "lora.lora_alpha=64", "training.learning_rate=2e-4"]
    config = load_config("sample_configs/tiny-cpu-demo.yaml", parse_overrides(sets), check_files=False)
    run_dir = Path(config.output_dir or out / "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(config, run_dir, EventSink(run_dir / "events.jsonl"))
    setup = run.setup

    def setup_with_ballast() -> Any:
        trainer = setup()
        if cuda:
            trainer.add_callback(_ballast_callback(ballast_at, keep_free=512 * 1024**2))
        return trainer

    run.setup = setup_with_ballast  # type: ignore[method-assign]
    code = run.execute()
    print(f"trainer finished with exit code {code}")
    return run_dir


def report(run_dir: Path) -> None:
    """Print what the run's events say about memory."""
    events, skipped = ev.read_events(str(run_dir / "events.jsonl"))
    by_type = Counter(e["type"] for e in events)
    print(f"events: {dict(by_type)} (skipped lines: {skipped})")
    finished = next((e for e in events if e["type"] == ev.RUN_FINISHED), {})
    print(f"run status: {finished.get('status')} {finished.get('error', {}).get('message', '')}")
    memory = [e for e in events if e["type"] == ev.MEMORY]
    if memory:
        last = memory[-1]
        print(f"last memory sample: gpu_state={last.get('gpu_state')} note={last.get('gpu_note', '')!r}")
        print(f"  host rss {last['host']['rss'] / GIB:.2f} GiB")
        for gpu in last.get("gpus", []):
            figures = gpu.get("torch", {})
            reserved = figures.get("reserved", 0)
            print(
                f"  gpu{gpu['index']} {gpu['name']}: NVML used {gpu['used'] / GIB:.2f} / {gpu['total'] / GIB:.2f} GiB;"
                f" torch allocated {figures.get('allocated', 0) / GIB:.2f} reserved {reserved / GIB:.2f}"
                f" peak {figures.get('peak', 0) / GIB:.2f} GiB; NVML − reserved ="
                f" {(gpu['used'] - reserved) / GIB:.2f} GiB (context, paged state, others)"
            )
    for paged in (e for e in events if e["type"] == ev.PAGED_STATE):
        shown = {k: v for k, v in paged.items() if k not in ("v", "seq", "t", "type")}
        print(f"paged state: {json.dumps(shown)}")
    spills = [e for e in events if e["type"] == ev.SPILL]
    by_method: dict[str, list[int]] = {}
    for spill in spills:
        by_method.setdefault(str(spill.get("method")), []).append(int(spill.get("bytes") or 0))
    if spills:
        for method, sizes in by_method.items():
            print(f"spills ({method}): {len(sizes)} events, {sum(sizes) / GIB:.3f} GiB evicted")
    else:
        print("spills: no spill events")
    for risk in (e for e in events if e["type"] == ev.OOM_RISK):
        print(f"OOM risk at step {risk.get('step', '-')}: {risk.get('level')} — {risk.get('reason')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ballast-at", type=int, default=15, help="step after which the GPU is filled")
    parser.add_argument("--out", type=Path, default=None, help="where the run goes (default: a temp folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="loratop-gpu-check-"))

    _section("machine")
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    reader = NvmlReader()
    print(f"NVML: {reader.state} {reader.note}")
    for gpu in reader.read() if reader.state == "ok" else []:
        print(f"  gpu{gpu['index']} {gpu['name']}: {gpu['used'] / GIB:.2f} / {gpu['total'] / GIB:.2f} GiB used")
    try:
        import cupti  # noqa: F401

        print("cupti-python: importable")
    except ImportError as exc:
        print(f"cupti-python: not importable ({exc}); spills will be estimated on a GPU")

    _section("run" + ("" if torch.cuda.is_available() else " (no NVIDIA GPU: tiny model on CPU, no ballast)"))
    run_dir = run_check(args.steps if torch.cuda.is_available() else min(args.steps, 5), args.ballast_at, out)

    _section("what the events say")
    report(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
