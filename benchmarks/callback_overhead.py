"""What ``LoratopCallback`` costs a script's training loop: the tiny CPU model under a plain
``Trainer``, in the demo's shape (the worst case: ~0.03 s steps, so per-step work shows most), with and without
the callback, interleaved (ABBA...) in one process, each a fresh Trainer. Step time is the
median of the steps after the fifth. Also counts the callback's own time in its hooks
directly (the A/B difference drowns in this machine's noise).

    python benchmarks/callback_overhead.py [--pairs 3] [--steps 150]     # about a minute
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _trainer(output: Path, steps: int, callbacks: list[Any]) -> Any:
    import random

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from loratop.trainer.tiny_model import tiny_model_dir

    folder, _ = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    rng = random.Random(0)
    words = ["the", "model", "learns", "a", "small", "task", "from", "rows", "of", "plain", "words", "and", "numbers"]
    # The demo's shape (tiny-cpu-demo.yaml): batches of 8 rows, up to 512 tokens; rows of ~60-250 tokens.
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 160))) for _ in range(512)]
    data = Dataset.from_list([dict(tokenizer(t, truncation=True, max_length=512)) for t in texts])
    args = TrainingArguments(
        output_dir=str(output),
        max_steps=steps,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # its print of every step's logs is not what is measured
    return trainer


def _step_times(trainer: Any) -> list[float]:
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return [b - a for a, b in zip(marks[5:], marks[6:], strict=False)]


def _timed_hooks(callback: Any, spent: list[float]) -> None:
    for hook in ("on_train_begin", "on_step_begin", "on_step_end", "on_log", "on_evaluate", "on_train_end"):
        inner = getattr(callback, hook)

        def call(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        setattr(callback, hook, call)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    from loratop import LoratopCallback

    medians: dict[str, list[float]] = {"callback": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.pairs):
            for arm in ("callback", "bare") if i % 2 == 0 else ("bare", "callback"):
                callbacks = [LoratopCallback(runs_dir=root / "runs")] if arm == "callback" else []
                step = statistics.median(_step_times(_trainer(root / f"{i}-{arm}", args.steps, callbacks)))
                medians[arm].append(step)
                print(f"pair {i + 1}/{args.pairs} {arm:8s} median step {1000 * step:6.2f} ms", flush=True)
        spent: list[float] = []
        callback = LoratopCallback(runs_dir=root / "runs")
        _timed_hooks(callback, spent)
        steps = _step_times(_trainer(root / "direct", args.steps, [callback]))
    ours, bare = statistics.median(medians["callback"]), statistics.median(medians["bare"])
    print(f"step time with / without the callback = {ours / bare:.3f} (1.000 = no cost; target ≤ 1.010)")
    spread = max(medians["bare"]) / min(medians["bare"]) - 1
    print(f"run-to-run spread of the bare arm alone: {100 * spread:.1f}% (the noise floor on this machine)")
    train_begin = max(spent)  # creating the folder and the first event: once, before step 1
    per_step = (sum(spent) - train_begin) / max(1, len(steps) + 6)
    print(
        f"the callback's own time in its hooks: {1e6 * per_step:.0f} µs a step = "
        f"{100 * per_step / statistics.median(steps):.2f}% of a {1000 * statistics.median(steps):.1f} ms step "
        f"(plus {1000 * train_begin:.0f} ms once at train begin)"
    )


if __name__ == "__main__":
    main()
