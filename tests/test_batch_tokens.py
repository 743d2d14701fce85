"""Tokens per step from the batch the model ran, on the real Trainer/SFTTrainer loop (issue 23).

On the H200 every ``oom_risk`` said "every batch so far had 0 tokens": the batch recorder sat
in the data collator, but the Trainer collates all of a step's micro-batches before the step
begins and accelerate's data loader collates one more ahead, so the per-step maximum was reset
after its batches were counted. These tests run the real loop in this process (accelerate's
own data loader, one batch ahead as it really runs) on the embedded tiny Llama, with the GPU's
memory counters played by :class:`FakeCudaMemory` (CUDA is hardware CI lacks) and NVML by
:class:`FakePynvml`, so the forecaster runs end to end on CPU: its observed tokens must equal
the shapes of the batches collated for each step, and its forecast reach ``events.jsonl``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fake_cuda import GIB, MIB, FakeCudaMemory
from fake_nvml import FakeGpu, FakePynvml, install

from loratop import LoratopCallback
from loratop.core import events as ev
from loratop.core.oom_forecast import DANGER_AT, WATCH, WATCH_AT
from tests.conftest import of_type, read_events

BATCH = 2
STEPS = 5
MAX_LENGTH = 64


class OnFakeGpu(LoratopCallback):
    """LoratopCallback as it runs on a GPU, its memory counters played by a fake."""

    def __init__(self, gpu: FakeCudaMemory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fake = gpu

    def gpu_memory(self, args: Any, cuda: bool) -> Any:
        return self.fake


def _texts(n: int) -> list[str]:
    rng = random.Random(1)
    words = ["the", "model", "learns", "a", "small", "task", "from", "rows", "of", "plain", "words", "and", "numbers"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 20))) for _ in range(n)]


def _train(
    kind: str, accumulation: int, runs: Path, gpu: FakeCudaMemory, before: Any = None
) -> tuple[OnFakeGpu, list[int], int]:
    """Train STEPS steps; return the callback, the padded tokens of every batch the data loader
    collated (in order: the truth), and the worst batch the dataset can make (``before`` is
    called with it just before training)."""
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
    model = AutoModelForCausalLM.from_pretrained(folder)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    gpu.run_on(model)
    callback = OnFakeGpu(gpu, runs_dir=runs, name=f"{kind}-ga{accumulation}")
    common: dict[str, Any] = dict(
        output_dir=str(runs.parent / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    texts = _texts(BATCH * accumulation * STEPS * 2)
    trainer: Any
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(max_length=MAX_LENGTH, **common),
            train_dataset=Dataset.from_list([{"text": t} for t in texts]),
            processing_class=tokenizer,
            callbacks=[callback],
        )
    else:
        encoded = Dataset.from_list([dict(tokenizer(t, truncation=True, max_length=MAX_LENGTH)) for t in texts])
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=encoded,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            callbacks=[callback],
        )
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    collated: list[int] = []
    inner = trainer.data_collator

    def collate(features: Any) -> Any:
        batch = inner(features)
        rows, length = batch["input_ids"].shape
        collated.append(rows * length)
        return batch

    trainer.data_collator = collate
    worst = BATCH * min(max(lengths), MAX_LENGTH)
    if before is not None:
        before(worst)
    trainer.train()
    return callback, collated, worst


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "accumulation"), [("sft", 1), ("sft", 4), ("trainer", 1), ("trainer", 4)])
def test_the_forecaster_sees_the_batches_each_step_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, accumulation: int
) -> None:
    install(monkeypatch, FakePynvml([FakeGpu("GPU-1", total=80 * GIB, used=GIB)]), None)
    gpu = FakeCudaMemory(base=2 * GIB, per_token=MIB, reserved=GIB)
    callback, collated, worst = _train(kind, accumulation, tmp_path / "runs", gpu)

    # The loader runs ahead of the model, but in order: step k ran collated[k·A : (k+1)·A].
    assert len(collated) >= STEPS * accumulation
    expected = [max(collated[k * accumulation : (k + 1) * accumulation]) for k in range(STEPS)]
    assert len(set(expected)) > 1, "the rows must make batches of different shapes"
    points = callback.memory_watch.forecaster.points
    assert [tokens for tokens, _ in points] == expected
    assert [peak for _, peak in points] == [2 * GIB + MIB * tokens for tokens in expected]
    assert gpu.resets == STEPS, "the peak counter starts again at every optimizer step"
    assert callback.memory_watch.recorder.last_tokens == collated[STEPS * accumulation - 1]


@pytest.mark.slow
def test_the_forecast_runs_end_to_end_on_cpu_and_reaches_events_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peaks grow by 1 MiB a token; the GPU is sized so the longest batch ahead is at 90 % of
    what torch can have: the forecast must say ``watch`` from the longest batch, not a zero."""
    nvml_gpu = FakeGpu("GPU-1", total=80 * GIB, used=GIB)  # NVML used = torch's reserved: all torch's
    install(monkeypatch, FakePynvml([nvml_gpu]), None)
    gpu = FakeCudaMemory(base=2 * GIB, per_token=MIB, reserved=GIB)
    sized: dict[str, int] = {}

    def size_the_gpu(worst: int) -> None:
        sized["predicted"] = 2 * GIB + MIB * worst
        nvml_gpu.total = sized["total"] = int(sized["predicted"] / ((WATCH_AT + DANGER_AT) / 2))

    callback, collated, worst = _train("sft", 1, tmp_path / "runs", gpu, before=size_the_gpu)

    events = read_events(callback.run_dir)  # type: ignore[arg-type]
    risks = [r for r in of_type(events, ev.OOM_RISK) if r.get("level") != "n/a"]
    assert len(risks) == 1, risks
    risk = risks[0]
    assert risk["level"] == WATCH and risk["step"] == 3, "trusted from the third step"
    assert risk["available"] == sized["total"]
    assert risk["predicted_peak"] == pytest.approx(sized["predicted"], abs=64)
    seen = max(collated[:3])
    assert f"longest batch ahead: {BATCH} × {worst // BATCH:,} tokens (seen so far: {seen:,})" in risk["reason"]
