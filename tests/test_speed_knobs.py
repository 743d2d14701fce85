"""Issue 25's speed knobs keep the loss where it was: loratop's own trainer, run in this process as
the trainer subprocess runs it (:meth:`Run.execute`), on the embedded tiny model, same seed and rows.

Where the math is the same (padding to a multiple, padding-free batches, another attention kernel,
data-loader workers), every step's loss is today's to float tolerance. Where the batching changes
(length grouping, packing), the loss per token over the same tokens is today's within the noise of
the run itself. A knob that cannot work is refused in one line: by ``loratop check``, and by the
trainer at launch. ``scripts/gpu_speed.py`` rehearses on CPU and prints its table.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.preflight.config import RunConfig, load_config, parse_overrides
from loratop.trainer.event_sink import EventSink
from loratop.trainer.train import Run
from tests.conftest import DEMO_CONFIG, REPO, loratop, of_type, read_events

STEP_TOLERANCE = 1e-3
"""Nats, per step, where the math is the same: bf16 compute rounds a padded, a flattened or another
kernel's batch differently (at most 2e-4 seen). One row attending to another is 20 times this: a
padding-free batch of 8 rows without its row boundaries moved the loss from 6.9326 to 6.9518."""
TOKEN_TOLERANCE = 0.03
"""Nats per token, where the batching changes: the noise of the run itself. Today's settings with
seeds 42, 43 and 44 (another adapter init, row order and held-out rows) ended up to 0.012 apart in
the loss per token over the run and 0.026 apart in the held-out loss per token. Length grouping came
within 0.005 of today's, packing (about today's tokens per step) within 0.011; packing 8 sequences a
step (~4.7× today's tokens: 5 steps instead of 20, a larger batch by the back door) lands 0.23 off."""

STEPS = ("training.max_steps=8", "data.max_rows=120", "data.eval_split=null")
"""Eight steps of today's batches (8 rows each): where each step's loss is compared."""
EPOCH = ("training.max_steps=-1", "data.max_rows=200", "data.eval_split=40", "training.eval_steps=0")
"""One pass over the same 160 rows (20 steps today), 40 held out: where the loss per token is compared."""


@dataclass
class Trained:
    """What one run did, from its events and from the batches its model ran."""

    events: list[dict[str, Any]]
    trainer: Any
    targets: list[int] = field(default_factory=list)
    """Per training forward (one a step here): the tokens its loss is the mean over (after the shift)."""
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    keys: list[frozenset[str]] = field(default_factory=list)
    kernels: list[dict[str, bool]] = field(default_factory=list)
    """PyTorch's attention-kernel flags during each training forward."""
    held_out: float | None = None
    """Loss per token of the held-out rows after training, each row alone."""
    packed: tuple[float, float, int] | None = None
    """The packed sequence of the most rows: its loss per token packed, its rows' each alone, how many rows."""

    @property
    def losses(self) -> list[float]:
        return [float(e["loss"]) for e in of_type(self.events, ev.STEP)]

    @property
    def loss_per_token(self) -> float:
        assert len(self.losses) == len(self.targets)
        return sum(loss * n for loss, n in zip(self.losses, self.targets, strict=True)) / sum(self.targets)


def _kernel_flags() -> dict[str, bool]:
    import torch

    b = torch.backends.cuda
    return {
        "flash": b.flash_sdp_enabled(),
        "efficient": b.mem_efficient_sdp_enabled(),
        "math": b.math_sdp_enabled(),
        "cudnn": b.cudnn_sdp_enabled(),
    }


def _row_alone(model: Any, input_ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed loss and target count of one row run on its own (no padding, no neighbours)."""
    import torch

    ids, lab = torch.tensor([input_ids]), torch.tensor([labels])
    n = int((lab[..., 1:] != -100).sum())
    with torch.no_grad():
        loss = model(input_ids=ids, labels=lab, use_cache=False).loss
    return float(loss) * n, n


def held_out_loss(model: Any, rows: Any) -> float:
    """The held-out loss per token, each row alone: the same measure whatever the run's batching."""
    was = model.training
    model.eval()
    total = count = 0.0
    for row in rows:
        loss, n = _row_alone(model, row["input_ids"], row.get("labels") or row["input_ids"])
        total, count = total + loss, count + n
    model.train(was)
    return total / count


def packed_vs_alone(trainer: Any) -> tuple[float, float, int]:
    """The packed sequence of the most rows through the trainer's own collator, and its rows each alone."""
    import torch

    counts = [len(lengths) for lengths in trainer.train_dataset["seq_lengths"]]
    block = trainer.train_dataset[counts.index(max(counts))]
    batch = trainer.data_collator([block])
    model = trainer.model
    model.eval()
    with torch.no_grad():
        packed = float(model(**batch, use_cache=False).loss)
    total = count = 0.0
    start = 0
    for length in block["seq_lengths"]:
        loss, n = _row_alone(model, block["input_ids"][start : start + length], block["labels"][start : start + length])
        total, count, start = total + loss, count + n, start + length
    model.train(True)
    return packed, total / count, len(block["seq_lengths"])


def train(run_dir: Path, *sets: str, check_packed: bool = False) -> Trained:
    """One run of loratop's trainer on the demo config with ``sets``, watched from its model."""
    overrides = [f"output_dir={run_dir}", "training.save_steps=0", *sets]
    config = load_config(DEMO_CONFIG, parse_overrides(overrides), check_files=False)
    run_dir.mkdir(parents=True)
    run = Run(config, run_dir, EventSink(run_dir / "events.jsonl"))
    seen: dict[str, Any] = {}
    watched = Trained(events=[], trainer=None)

    def watch(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            labels = kwargs["labels"]
            watched.targets.append(int((labels[..., 1:] != -100).sum()))
            watched.shapes.append(tuple(labels.shape))
            watched.keys.append(frozenset(k for k, v in kwargs.items() if v is not None))
            watched.kernels.append(_kernel_flags())

    setup = run.setup

    def watched_setup() -> Any:
        trainer = setup()
        seen["trainer"] = trainer
        trainer.model.register_forward_pre_hook(watch, with_kwargs=True)
        return trainer

    run.setup = watched_setup  # type: ignore[method-assign]
    code = run.execute()
    run.sink.close()
    watched.events = read_events(run_dir)
    finished = of_type(watched.events, ev.RUN_FINISHED)[-1]
    assert code == 0 and finished["status"] == ev.COMPLETED, finished.get("error")
    watched.trainer = seen["trainer"]
    # Only after training: on a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for
    # inference at the first no-grad forward in eval mode, and later training steps through them
    # get no input gradient (its gemv_4bit has no autograd kernel): the run would learn less.
    if check_packed:
        watched.packed = packed_vs_alone(watched.trainer)
    if watched.trainer.eval_dataset is not None:
        watched.held_out = held_out_loss(watched.trainer.model, watched.trainer.eval_dataset)
    return watched


@pytest.fixture(scope="module")
def _tiny_built() -> None:
    """The tiny model built before any run compared: a run that builds it draws random numbers
    after the seed is set (Run.setup seeds first), so its adapters start elsewhere than the next run's."""
    from loratop.trainer.tiny_model import tiny_model_dir

    tiny_model_dir()


@pytest.fixture(scope="module")
def today_steps(_tiny_built: None, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(tmp_path_factory.mktemp("today") / "steps", *STEPS)


@pytest.fixture(scope="module")
def today_epoch(_tiny_built: None, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(tmp_path_factory.mktemp("today") / "epoch", *EPOCH)


# -- the knobs, their names and defaults --------------------------------------------------------


def test_every_default_is_what_a_run_did_before_the_knobs() -> None:
    t = RunConfig().training

    assert t.pad_to_multiple_of is None
    assert (t.group_by_length, t.packing, t.padding_free) == (False, False, False)
    assert t.sdpa_backend == "auto"
    assert (t.dataloader_num_workers, t.dataloader_pin_memory) == (0, True)  # transformers' own defaults


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch, imported by transformers
def test_the_knobs_carry_the_libraries_own_names() -> None:
    from transformers import TrainingArguments
    from trl import SFTConfig

    sft = {f.name: f for f in dataclasses.fields(SFTConfig)}
    args = {f.name: f for f in dataclasses.fields(TrainingArguments)}

    assert {"pad_to_multiple_of", "packing", "padding_free"} <= set(sft)
    assert {"dataloader_num_workers", "dataloader_pin_memory"} <= set(args)
    assert args["dataloader_pin_memory"].default is True
    # transformers 5 made group_by_length one of the training samplers
    assert "group_by_length" in args["train_sampling_strategy"].metadata["choices"]


# -- the same math: each step's loss is today's --------------------------------------------------


@pytest.mark.slow
def test_padding_to_a_multiple_of_64_gives_todays_losses(today_steps: Trained, tmp_path: Path) -> None:
    padded = train(tmp_path / "run", *STEPS, "training.pad_to_multiple_of=64")

    assert all(shape[-1] % 64 == 0 for shape in padded.shapes)
    assert [s[-1] for s in padded.shapes] != [s[-1] for s in today_steps.shapes]  # today pads to the longest row
    assert padded.targets == today_steps.targets  # the same rows, the same tokens
    assert padded.losses == pytest.approx(today_steps.losses, abs=STEP_TOLERANCE)


@pytest.mark.slow
def test_padding_free_batches_give_todays_losses(today_steps: Trained, tmp_path: Path) -> None:
    flat = train(tmp_path / "run", *STEPS, "training.padding_free=true")

    assert all(shape[0] == 1 for shape in flat.shapes)  # one row: the batch's rows end to end
    assert all("position_ids" in keys and "attention_mask" not in keys for keys in flat.keys)
    assert sum(s[-1] for s in flat.shapes) < sum(s[0] * s[-1] for s in today_steps.shapes)  # no padding
    assert flat.targets == today_steps.targets
    assert flat.losses == pytest.approx(today_steps.losses, abs=STEP_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "during"),
    [
        ("math", {"flash": False, "efficient": False, "math": True, "cudnn": False}),
        ("flash", {"flash": True, "efficient": True, "math": True, "cudnn": False}),
    ],
)
def test_an_attention_kernel_preference_gives_todays_losses(
    today_steps: Trained, tmp_path: Path, backend: str, during: dict[str, bool]
) -> None:
    before = _kernel_flags()
    chosen = train(tmp_path / "run", *STEPS, f"training.sdpa_backend={backend}")

    assert chosen.kernels == [during] * len(chosen.kernels)  # global flags: the backward pass runs under them too
    assert _kernel_flags() == before  # PyTorch's own choice again once training ended
    assert chosen.losses == pytest.approx(today_steps.losses, abs=STEP_TOLERANCE)


@pytest.mark.slow
def test_data_loader_workers_and_pinning_give_identical_losses(today_steps: Trained, tmp_path: Path) -> None:
    loaded = train(
        tmp_path / "run", *STEPS, "training.dataloader_num_workers=2", "training.dataloader_pin_memory=false"
    )

    assert loaded.trainer.args.dataloader_num_workers == 2  # what the Trainer builds its DataLoader with
    assert today_steps.trainer.args.dataloader_pin_memory is False  # transformers never pins on a CPU run
    assert loaded.shapes == today_steps.shapes
    assert loaded.losses == today_steps.losses


# -- other batching: the loss per token over the same tokens is today's ------------------------------


@pytest.mark.slow
def test_length_grouping_keeps_the_loss_per_token(today_epoch: Trained, tmp_path: Path) -> None:
    grouped = train(tmp_path / "run", *EPOCH, "training.group_by_length=true")

    assert sum(grouped.targets) == sum(today_epoch.targets)  # the same rows, once each
    padded = sum(s[0] * s[-1] for s in grouped.shapes)
    assert padded < 0.9 * sum(s[0] * s[-1] for s in today_epoch.shapes)  # rows of a length batched together
    assert grouped.losses != pytest.approx(today_epoch.losses, abs=STEP_TOLERANCE)  # other rows share a step
    assert grouped.loss_per_token == pytest.approx(today_epoch.loss_per_token, abs=TOKEN_TOLERANCE)
    assert grouped.held_out == pytest.approx(today_epoch.held_out, abs=TOKEN_TOLERANCE)


@pytest.mark.slow
def test_packing_keeps_rows_apart_and_the_loss_per_token(today_epoch: Trained, tmp_path: Path) -> None:
    # Two packed sequences of up to 512 tokens a step hold about today's 8 rows of ~108 tokens.
    packed = train(
        tmp_path / "run", *EPOCH, "training.packing=true", "training.per_device_train_batch_size=2", check_packed=True
    )

    assert packed.packed is not None
    together, alone, rows = packed.packed
    assert rows >= 3
    assert together == pytest.approx(alone, abs=STEP_TOLERANCE)  # no row sees another
    assert all(shape[0] == 1 and "position_ids" in keys for shape, keys in zip(packed.shapes, packed.keys, strict=True))
    assert sum(packed.targets) == sum(today_epoch.targets)  # whole rows: the same tokens
    assert packed.loss_per_token == pytest.approx(today_epoch.loss_per_token, abs=TOKEN_TOLERANCE)
    assert packed.held_out == pytest.approx(today_epoch.held_out, abs=TOKEN_TOLERANCE)
    # The eval split still works, on the same unpacked rows: its loss compares with unpacked runs'.
    (evaluated,) = of_type(packed.events, ev.EVAL)
    (today,) = of_type(today_epoch.events, ev.EVAL)
    assert (evaluated["eval_rows"], evaluated["eval_tokens"]) == (today["eval_rows"], today["eval_tokens"])
    assert evaluated["eval_loss"] == pytest.approx(today["eval_loss"], abs=TOKEN_TOLERANCE)


# -- refused in one line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["training.pad_to_multiple_of=1024"], "at most training.max_seq_length (512)"),
        (["training.pad_to_multiple_of=0"], "greater than or equal to 1"),
        (["training.sdpa_backend=fastest"], "'auto', 'flash', 'efficient', 'cudnn' or 'math'"),
        (["training.dataloader_num_workers=-1"], "greater than or equal to 0"),
        (["training.packing=maybe"], "a valid boolean"),
    ],
)
def test_loratop_check_refuses_a_bad_speed_knob_in_one_line(sets: list[str], says: str) -> None:
    assignments = [arg for s in sets for arg in ("--set", s)]
    result = loratop("check", str(DEMO_CONFIG), *assignments)

    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert lines[-1] == "loratop: 1 problem in the config; nothing was launched"
    assert len(lines) == 2 and lines[0].startswith(f"--set {sets[0].split('=')[0]}: {sets[0].split('=')[0]} = ")
    assert says in lines[0]
    assert "Traceback" not in result.stderr


def _gpu_visible() -> bool:
    from loratop.core.gpu_devices import NVML_OK, GpuDevices

    gpus = GpuDevices()
    try:
        return gpus.state == NVML_OK and bool(gpus.devices)
    finally:
        gpus.close()


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_a_cuda_only_kernel_where_no_gpu_is_is_a_warning_in_check_and_refused_by_run(
    backend: str, tmp_path: Path
) -> None:
    result = loratop("check", str(DEMO_CONFIG), "--set", f"training.sdpa_backend={backend}")
    assert result.returncode == 0, result.stderr  # a fact about this box, not about the config
    if _gpu_visible():
        return  # a GPU's own limits are checked at launch
    why = (
        f"training.sdpa_backend = {backend!r}: no NVIDIA GPU is visible, and PyTorch "
        f"has no {backend} attention kernel for a CPU; accepted on CPU: auto, flash, math"
    )
    assert f"warning: {why} (run refuses it on this box)" in result.stdout.splitlines()
    run = loratop(
        "run", str(DEMO_CONFIG), "--set", f"training.sdpa_backend={backend}", "--set", f"output_dir={tmp_path}/r",
        "--no-tui",
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [f"loratop: {why}; nothing was launched"]


@pytest.mark.slow
def test_the_trainer_refuses_a_cuda_only_kernel_on_cpu_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the kernel may run")
    run_dir = tmp_path / "run"
    sets = [f"output_dir={run_dir}", *STEPS, "training.sdpa_backend=cudnn"]
    config = load_config(DEMO_CONFIG, parse_overrides(sets), check_files=False)  # as the launcher passes it
    run_dir.mkdir()
    run = Run(config, run_dir, EventSink(run_dir / "events.jsonl"))

    code = run.execute()
    run.sink.close()

    (finished,) = of_type(read_events(run_dir), ev.RUN_FINISHED)
    assert code == 1 and finished["status"] == ev.FAILED
    assert finished["error"] == {
        "message": "training.sdpa_backend = 'cudnn': no NVIDIA GPU is visible, and PyTorch has no cudnn attention "
        "kernel for a CPU; accepted on CPU: auto, flash, math",
        "traceback": [],
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch, imported by transformers
def test_padding_free_is_refused_for_attention_that_cannot_keep_rows_apart() -> None:
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from loratop.trainer.tiny_model import tiny_model_dir
    from loratop.trainer.train import UserFacingError, _refuse_padding_free

    # A model's own attention function: transformers builds no mask for it, so the rows of a
    # flattened batch would see each other.
    AttentionInterface.register("loratop_test_own_attention", sdpa_attention_forward)
    folder, _ = tiny_model_dir()
    own = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="loratop_test_own_attention")
    usual = AutoModelForCausalLM.from_pretrained(folder)

    _refuse_padding_free(usual, "training.padding_free")  # sdpa: transformers masks the rows apart
    with pytest.raises(UserFacingError) as refused:
        _refuse_padding_free(own, "training.packing")
    assert str(refused.value) == (
        "training.packing = true: LlamaForCausalLM's attention 'loratop_test_own_attention' cannot keep packed rows "
        "apart; it needs sdpa, eager, flex_attention, flash_attention_2, flash_attention_3; accepted for this model: "
        "false"
    )


# -- scripts/gpu_speed.py, rehearsed on CPU ----------------------------------------------------------


@pytest.mark.slow
def test_gpu_speed_rehearses_on_cpu_and_prints_one_table(tmp_path: Path) -> None:
    if _gpu_visible():
        pytest.skip("a GPU is here: gpu_speed.py would measure, for minutes")
    # Its shortest form: two trainer processes of two steps (today, the candidate); the efficient
    # kernel has none for a CPU, so that arm is skipped, saying so.
    arms = "today,candidate,sdpa_backend=efficient"
    command = [sys.executable, "scripts/gpu_speed.py", "--steps", "2", "--workloads", "gpu_check", "--arms", arms]
    command.append("--once")
    result = subprocess.run([*command, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any("CPU numbers are not a measurement" in line for line in lines)
    assert any("gpu_check sdpa_backend=efficient: skipped on CPU (training.sdpa_backend" in line for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("workload "))
    assert re.split(r"\s{2,}", lines[header]) == [
        "workload",
        "arm",
        "runs",
        "tokens/s",
        "× today",
        "GPU busy",
        "final loss",
        "loss/token",
    ]
    body = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 1 : header + 3]]
    assert [cells[:3] for cells in body] == [["gpu_check", "today", "1"], ["gpu_check", "candidate", "1"]]
    for cells in body:
        assert len(cells) == 8, cells
        assert float(cells[3].replace(",", "")) > 0
        assert cells[4].endswith("×") and cells[5] == "n/a"  # no GPU: no busy %
        assert float(cells[6]) > 0 and float(cells[7]) > 0
    assert body[0][4] == "1.00×"
    verdicts = lines[header + 3 :]
    assert verdicts and all(line.startswith("CPU rehearsal, not a measurement:") for line in verdicts[:-1])


@pytest.mark.slow
def test_an_evaluation_on_cpu_leaves_the_next_steps_as_they_were(tmp_path: Path) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacked the 4-bit weights at the first
    evaluation and every later step got wrong gradients through the frozen base: the same run
    with an evaluation at step 3 parted from it without one after step 3. The trainer now keeps
    the weights unpacked on a CPU; with or without evaluations, the steps are the same."""
    held = ("training.max_steps=8", "data.max_rows=120", "data.eval_split=16")
    without = train(tmp_path / "without", *held, "training.eval_steps=0")
    evaluated = train(tmp_path / "evaluated", *held, "training.eval_steps=3")
    assert [e["step"] for e in of_type(evaluated.events, ev.EVAL)][:2] == [3, 6]
    assert evaluated.losses == pytest.approx(without.losses, abs=STEP_TOLERANCE)
