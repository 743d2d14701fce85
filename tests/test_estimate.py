"""The pre-flight estimate (``loratop estimate``): figures checked by hand, no torch.

The fixtures under ``tests/data/configs/`` are the public ``config.json`` files of
LLaMA-2-7B, Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct, Llama-3.1-70B-Instruct and Gemma-3-4B-it
(multimodal, with a sparse ``text_config``), each in a folder that stands in for a local model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakePynvml, four_gpus, install

from loratop.cli.main import main
from loratop.preflight import estimate as est_mod
from loratop.preflight import model_config
from loratop.preflight.config import RunConfig, load_config
from loratop.preflight.estimate import (
    GB,
    NO_GPU,
    EstimateError,
    ModelShape,
    activation_bytes,
    adapter_param_count,
    count_parameters,
    estimate,
    fit_label,
    format_estimate,
    load_model_shape,
    optimizer_state_bytes,
    quant_constant_bytes,
    shape_from_config,
    visible_gpu_total,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "tests" / "data" / "configs"
LLAMA_7B = str(CONFIGS / "llama-7b")
QWEN_7B = str(CONFIGS / "qwen2.5-7b")
LLAMA_31_8B = str(CONFIGS / "llama-3.1-8b")
GEMMA_3_4B = str(CONFIGS / "gemma-3-4b-it")
LLAMA_31_70B = str(CONFIGS / "llama-3.1-70b")
DEMO = REPO / "sample_configs" / "tiny-cpu-demo.yaml"
ALL_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qlora_config(**training: Any) -> RunConfig:
    """The usual QLoRA recipe: NF4 + double quant, bf16 compute, r 16 on all seven, paged 8-bit AdamW."""
    settings = {
        "per_device_train_batch_size": 1,
        "max_seq_length": 512,
        "gradient_checkpointing": True,
        "optim": "paged_adamw_8bit",
        **training,
    }
    return RunConfig.model_validate(
        {
            "quantization": {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "bfloat16",
            },
            "lora": {"r": 16, "target_modules": ALL_SEVEN},
            "training": settings,
        }
    )


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sees no NVIDIA GPU, whatever machine the tests run on."""
    monkeypatch.setattr(est_mod, "visible_gpu_total", lambda: (None, NO_GPU))


# ---------------------------------------------------------------- parameter counts


def test_llama_7b_has_6_738_415_616_parameters() -> None:
    # per layer: q, k, v, o 4 × 4096² = 67,108,864; gate, up, down 3 × 4096 × 11008 = 135,266,304;
    # two norms 8,192 → 202,383,360; × 32 = 6,476,267,520
    # embeddings + untied head 2 × 32000 × 4096 = 262,144,000; final norm 4,096
    assert count_parameters(load_model_shape(LLAMA_7B)).total == 6_738_415_616


def test_qwen2_5_7b_counts_its_qkv_biases() -> None:
    params = count_parameters(load_model_shape(QWEN_7B))

    # q, k, v biases per layer: 3584 + 512 + 512 = 4,608; × 28 layers
    assert params.biases == 28 * 4_608
    assert params.total == 7_615_616_512


def test_llama_3_1_8b_has_8_030_261_248_parameters() -> None:
    assert count_parameters(load_model_shape(LLAMA_31_8B)).total == 8_030_261_248


def test_gemma_3_counts_only_the_language_model_and_fills_in_class_defaults() -> None:
    shape = load_model_shape(GEMMA_3_4B)

    # text_config states only hidden, intermediate and layers; the rest are Gemma3TextConfig defaults
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim) == (8, 4, 256)
    assert shape.vocab_size == 262_208 and shape.tie_word_embeddings
    # per layer: q 2560×2048, k and v 2560×1024, o 2048×2560, gate/up/down 2560×10240: 94,371,840;
    # four norms 4×2560 + q/k norms 2×256 = 10,752 → 94,382,592 × 34 = 3,209,008,128
    # tied embeddings 262,208 × 2560 = 671,252,480; final norm 2,560
    assert count_parameters(shape).total == 3_880_263_168
    assert any("vision tower" in note for note in shape.notes)


def test_tiny_model_shape_needs_no_files() -> None:
    shape = load_model_shape("tiny")

    # per layer: q 128×128, k and v 128×64, o 128×128, three MLP 128×256, two norms: 147,712 × 2
    # embeddings + untied head 2 × 1024 × 128 = 262,144; final norm 128
    assert count_parameters(shape).total == 557_696


# ---------------------------------------------------------------- formulas


def test_quant_constants_per_block_of_64() -> None:
    numel = 64 * 256 * 3  # 768 blocks
    assert quant_constant_bytes(numel, double_quant=False) == 768 * 4
    assert quant_constant_bytes(numel, double_quant=True) == 768 * 1 + 3 * 4


def test_8bit_optimizer_keeps_small_tensors_in_32_bit() -> None:
    big, small = (16, 4096), (8, 128)  # 65,536 and 1,024 elements
    assert optimizer_state_bytes([big], "paged_adamw_8bit") == 65_536 * 2
    assert optimizer_state_bytes([small], "paged_adamw_8bit") == 1_024 * 8
    assert optimizer_state_bytes([big, small], "adamw_torch") == (65_536 + 1_024) * 8


def test_activations_without_checkpointing_hold_every_layer() -> None:
    shape = load_model_shape(LLAMA_7B)

    assert activation_bytes(shape, 2, 1024, gradient_checkpointing=False) == 32 * 34 * 2 * 1024 * 4096
    assert activation_bytes(shape, 2, 1024, gradient_checkpointing=True) == (32 * 2 + 34) * 2 * 1024 * 4096


# ---------------------------------------------------------------- the estimate, by hand


def test_full_fine_tune_of_llama_7b_is_16_bytes_per_parameter() -> None:
    full = estimate(load_model_shape(LLAMA_7B), qlora_config(), None).row("full")

    assert full.model_state == 16 * 6_738_415_616 == 107_814_649_856
    assert full.breakdown["weights"] == full.breakdown["gradients"] == 4 * 6_738_415_616
    assert full.breakdown["optimizer"] == 8 * 6_738_415_616


def test_qlora_llama_7b_batch_1_at_512_tokens_by_hand() -> None:
    # 4-bit linear weights: per layer q, k, v, o 4 × 4096 × 4096 = 67,108,864
    #                       gate, up, down 3 × 4096 × 11008 = 135,266,304 → 202,375,168
    quantized = 32 * 202_375_168  # 6,476,005,376 params
    packed = quantized // 2  # 0.5 B/param: 3,238,002,688
    # double quant: one 8-bit absmax per 64 weights + one fp32 per 256 blocks (every tensor divides evenly)
    blocks = quantized // 64  # 101,187,584
    constants = blocks * 1 + (blocks // 256) * 4  # 101,187,584 + 1,581,056 = 102,768,640
    # embeddings, untied head, 2 norms × 32 layers, final norm: fp32 after prepare_model_for_kbit_training
    other = 2 * 32_000 * 4096 + 32 * 2 * 4096 + 4096  # 262,410,240 params
    other_bytes = other * 4  # 1,049,640,960
    # adapters: r × (in + out) per linear: q, k, v, o 4 × 8192; gate, up, down 3 × (4096 + 11008)
    adapter_params = 32 * 16 * (4 * 8192 + 3 * 15_104)  # 32 × 16 × 78,080 = 39,976,960
    adapters = adapter_params * 4  # fp32 weights: 159,907,840
    gradients = adapter_params * 4  # fp32 gradients: 159,907,840
    optimizer = adapter_params * 2  # 8-bit m and v, every tensor ≥ 4096 elements: 79,953,920
    # checkpointing: one bf16 hidden state per layer + one layer recomputed (34 B × b × s × h)
    activations = 32 * 1 * 512 * 4096 * 2 + 34 * 1 * 512 * 4096  # 134,217,728 + 71,303,168
    logits = 1 * 512 * 32_000 * 4 * 2  # fp32 logits and their gradient: 131,072,000
    overhead = 500_000_000
    expected = packed + constants + other_bytes + adapters + gradients + optimizer + activations + logits + overhead
    assert expected == 5_626_774_784

    qlora = estimate(load_model_shape(LLAMA_7B), qlora_config(), None).row("qlora")

    assert qlora.breakdown == {
        "weights": packed + other_bytes,
        "quant_constants": constants,
        "adapters": adapters,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "overhead": overhead,
    }
    assert qlora.total == expected
    assert 3 * GB < qlora.total < 10 * GB


def test_qlora_qwen2_5_7b_weights_and_adapters_by_hand() -> None:
    # h 3584, 28 heads × 128, 4 kv heads × 128 = 512, i 18944, 28 layers
    # per layer: q, o 2 × 3584² = 25,690,112; k, v 2 × 3584 × 512 = 3,670,016; MLP 3 × 3584 × 18944 = 203,685,888
    quantized = 28 * (25_690_112 + 3_670_016 + 203_685_888)  # 6,525,288,448
    packed = quantized // 2
    # second-level constants per tensor: q, o 784 each; k, v 112 each; gate, up, down 4,144 each
    blocks = quantized // 64
    constants = blocks + 28 * (2 * 784 + 2 * 112 + 3 * 4_144) * 4
    # embeddings + untied head 2 × 152064 × 3584; norms 28 × 2 × 3584 + 3584; q/k/v biases 28 × 4608
    other = 2 * 152_064 * 3584 + 28 * 2 * 3584 + 3584 + 28 * 4_608  # 1,090,328,064
    # adapters: q, o 2 × 7168; k, v 2 × (3584 + 512); gate, up, down 3 × (3584 + 18944)
    adapter_params = 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22_528)  # 40,370,176

    shape = load_model_shape(QWEN_7B)
    qlora = estimate(shape, qlora_config(), None).row("qlora")

    assert quantized + other == 7_615_616_512
    assert adapter_param_count(shape, ALL_SEVEN, 16) == adapter_params == 40_370_176
    assert qlora.breakdown["weights"] == packed + other * 4
    assert qlora.breakdown["quant_constants"] == constants == 103_550_720
    assert qlora.breakdown["adapters"] == qlora.breakdown["gradients"] == adapter_params * 4
    assert qlora.breakdown["optimizer"] == adapter_params * 2
    assert qlora.breakdown["logits"] == 512 * 152_064 * 8


def test_lora_base_is_two_bytes_per_parameter_in_bf16() -> None:
    lora = estimate(load_model_shape(LLAMA_31_8B), qlora_config(), None).row("lora")

    assert lora.breakdown["weights"] == 2 * 8_030_261_248
    assert lora.breakdown["quant_constants"] == 0


def test_all_linear_targets_the_seven_projections() -> None:
    shape = load_model_shape(LLAMA_7B)

    assert adapter_param_count(shape, ["all-linear"], 16) == adapter_param_count(shape, ALL_SEVEN, 16) == 39_976_960


def test_fit_against_the_gpu() -> None:
    result = estimate(load_model_shape(LLAMA_7B), qlora_config(), 24 * GB, "NVIDIA L4")

    qlora, full = result.row("qlora"), result.row("full")
    assert qlora.fits and qlora.headroom == 24 * GB - 5_626_774_784
    assert fit_label(qlora) == "fits (18.4 GB spare)"
    assert not full.fits
    assert fit_label(full) == f"does not fit ({(full.total - 24 * GB) / GB:.1f} GB over)"


def test_no_gpu_is_said_not_zeroed() -> None:
    result = estimate(load_model_shape(LLAMA_7B), qlora_config(), None)

    assert all(row.fits is None and row.headroom is None for row in result.rows)
    assert fit_label(result.row("qlora")) == "no NVIDIA GPU"
    assert "GPU      no NVIDIA GPU" in format_estimate(result)


# ---------------------------------------------------------------- reading config.json


def test_hub_id_offline_and_not_cached_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    with pytest.raises(EstimateError) as caught:
        load_model_shape("someorg/some-model")

    assert str(caught.value) == (
        "cannot read config.json for someorg/some-model: not local, not cached, hub unreachable (HF_HUB_OFFLINE is set)"
    )


def test_unreachable_hub_fails_fast_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(model_config.socket, "create_connection", refuse)

    with pytest.raises(EstimateError) as caught:
        load_model_shape("someorg/some-model")

    assert str(caught.value) == (
        "cannot read config.json for someorg/some-model: not local, not cached, hub unreachable "
        "(cannot connect to huggingface.co: Name or service not known)"
    )


def test_hub_id_is_read_from_the_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo = tmp_path / "models--meta-llama--Llama-2-7b-hf"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text((CONFIGS / "llama-7b" / "config.json").read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    shape = load_model_shape("meta-llama/Llama-2-7b-hf")

    assert shape.source == "the Hugging Face cache"
    assert count_parameters(shape).total == 6_738_415_616


# ---------------------------------------------------------------- shapes shipped for the samples

SAMPLES = REPO / "sample_configs"
GPU_SAMPLES = sorted(path.stem for path in SAMPLES.glob("*.yaml") if not path.stem.startswith("tiny"))
PUBLISHED = {
    "meta-llama/Llama-3.1-8B-Instruct": LLAMA_31_8B,
    "meta-llama/Llama-3.1-70B-Instruct": LLAMA_31_70B,
    "Qwen/Qwen2.5-7B-Instruct": QWEN_7B,
    "google/gemma-3-4b-it": GEMMA_3_4B,
}
"""Each shipped shape and the published config.json it was copied from (tests/data/configs)."""


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub and an empty Hugging Face cache (returned)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_the_gpu_samples_are_the_ones_whose_shapes_ship() -> None:
    names = {load_config(SAMPLES / f"{s}.yaml", check_files=False).model.name_or_path for s in GPU_SAMPLES}
    assert len(GPU_SAMPLES) == 5 and names == set(PUBLISHED)
    assert set(json.loads(model_config.SHIPPED_SHAPES.read_text())) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_shipped_shape_counts_as_its_published_config_json(name: str, offline: Path) -> None:
    shipped, published = load_model_shape(name), load_model_shape(PUBLISHED[name])
    assert shipped.source == model_config.SHIPPED_SOURCE and "shipped with loratop" in shipped.source
    assert {**vars(shipped), "source": ""} == {**vars(published), "source": ""}
    data = json.loads(model_config.SHIPPED_SHAPES.read_text())[name]
    full = json.loads((Path(PUBLISHED[name]) / "config.json").read_text())
    assert all(full[key] == value for key, value in data.items() if key != "text_config"), "copied, not made up"
    assert all(full["text_config"][k] == v for k, v in data.get("text_config", {}).items())


@pytest.mark.parametrize("sample", GPU_SAMPLES)
def test_every_gpu_sample_estimates_offline_and_names_its_shapes_source(
    sample: str, offline: Path, no_gpu: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", sample]) == 0

    out = capsys.readouterr().out
    model = load_config(SAMPLES / f"{sample}.yaml", check_files=False).model.name_or_path
    text = " ".join(out.split())  # the model line wraps at 80 columns
    assert f"model {model}: " in text
    assert "from the copy of its config.json shipped with loratop (shape only, no download)" in text


def test_the_readme_example_estimates_the_70b_per_gpu_offline(
    offline: Path, no_gpu: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", "llama-3.1-70b-qlora-fsdp"]) == 0

    out = capsys.readouterr().out
    assert "70.55B parameters" in out and "On 2 GPUs (QLoRA, NF4 + double quant), per GPU:" in out


def test_a_cached_or_local_config_json_wins_over_the_shipped_shape(offline: Path, tmp_path: Path) -> None:
    name = "Qwen/Qwen2.5-7B-Instruct"
    repo = offline / "models--Qwen--Qwen2.5-7B-Instruct"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    cached = {**json.loads((Path(QWEN_7B) / "config.json").read_text()), "num_hidden_layers": 2}
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(cached))

    shape = load_model_shape(name)

    assert (shape.source, shape.num_hidden_layers) == ("the Hugging Face cache", 2)
    assert load_model_shape(QWEN_7B).source == str(Path(QWEN_7B) / "config.json")


def test_a_model_loratop_does_not_ship_is_still_an_error_offline(offline: Path) -> None:
    with pytest.raises(EstimateError, match="not local, not cached, hub unreachable"):
        load_model_shape("meta-llama/Llama-3.2-1B-Instruct")


def test_mixture_of_experts_is_refused_in_one_line(tmp_path: Path) -> None:
    config = json.loads((CONFIGS / "llama-7b" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mixtral", "num_local_experts": 8}))

    with pytest.raises(EstimateError, match="mixture-of-experts"):
        load_model_shape(str(tmp_path))


def test_missing_key_names_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))

    with pytest.raises(EstimateError, match="num_attention_heads missing"):
        load_model_shape(str(tmp_path))


# ---------------------------------------------------------------- the GPU


def test_no_driver_reads_as_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")

    class NVMLError_LibraryNotFound(Exception):  # noqa: N801 - pynvml's own name
        pass

    def init() -> None:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    fake.nvmlInit = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    assert visible_gpu_total() == (None, NO_GPU)


def test_without_pynvml_reads_as_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError

    assert visible_gpu_total() == (None, NO_GPU)


@pytest.mark.parametrize(
    ("visible", "nvml_index"), [(None, 0), ("3", 3), (four_gpus()[2].uuid, 2), ("GPU-1111", 1), ("1,0", 1)]
)
def test_the_gpu_compared_is_torchs_first_visible_one(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, nvml_index: int
) -> None:
    fake = install(monkeypatch, FakePynvml(four_gpus()), visible)

    assert visible_gpu_total() == (fake.gpus[nvml_index].total, "NVIDIA H200")
    assert fake.open == 0, "NVML shut down again"


def test_no_visible_gpu_reads_as_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakePynvml(four_gpus()), "")

    assert visible_gpu_total() == (None, NO_GPU)


def test_an_nvml_failure_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakePynvml(four_gpus(), init_error="NVMLError_GpuIsLost"), None)

    assert visible_gpu_total() == (None, "NVML failed: GPU is lost")


def test_real_nvml_never_raises() -> None:
    total, name = visible_gpu_total()

    assert (total is None) == (name == NO_GPU or name.startswith("NVML failed"))


# ---------------------------------------------------------------- the command


def test_cli_llama_7b_prints_the_table(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set", f"model.name_or_path={LLAMA_7B}", "--set", "training.per_device_train_batch_size=1"]
    args += ["--set", "training.max_seq_length=512", "--set", "lora.r=16", str(DEMO)]

    assert main(["estimate", *args]) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  full fine-tune, AdamW         107.8 GB  108.7 GB  no NVIDIA GPU" in lines
    assert "* QLoRA, NF4 + double quant       4.8 GB    5.6 GB  no NVIDIA GPU" in lines
    assert "  total" + " " * 64 + "5.63 GB" in lines


def test_cli_tiny_demo_works_offline(
    no_gpu: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert main(["estimate", "tiny-cpu-demo"]) == 0

    out = capsys.readouterr().out
    assert "QLoRA, NF4 + double quant: breakdown" in out
    assert "tiny: llama, 557,696 parameters" in out


def test_cli_bad_knob_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(DEMO), "--set", "lora.r=0"]) == 2

    err = capsys.readouterr().err
    assert "--set lora.r: lora.r = 0" in err


def test_cli_missing_config_json_is_one_line_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", "estimate", str(DEMO), "--set", f"model.name_or_path={empty}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"loratop: cannot read config.json for {empty}: the folder {empty} has no config.json"
    ]


@pytest.mark.parametrize("model", ["tiny", LLAMA_7B, QWEN_7B, LLAMA_31_8B, GEMMA_3_4B])
@pytest.mark.parametrize("gpu", [None, 150_754_820_096])
def test_every_line_fits_80_columns(model: str, gpu: int | None) -> None:
    config = load_config(DEMO, {"model.name_or_path": model, "lora.target_modules": ["all-linear"]}, check_files=False)
    shape = load_model_shape(model)

    text = format_estimate(estimate(shape, config, gpu, "NVIDIA H200" if gpu else NO_GPU))

    assert max(len(line) for line in text.splitlines()) <= 80


def test_estimate_module_is_standard_library_only() -> None:
    script = "import loratop.preflight.estimate, sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    modules = json.loads(result.stdout.splitlines()[-1])
    banned = ("torch", "transformers", "huggingface_hub", "pynvml", "pydantic", "textual")
    assert [m for m in modules if m.split(".")[0] in banned] == []


def test_shape_defaults_head_dim_to_hidden_over_heads() -> None:
    shape = ModelShape(
        vocab_size=10,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        tie_word_embeddings=True,
        model_type="llama",
    )
    read = shape_from_config(
        {
            "model_type": "llama",
            "vocab_size": 10,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "tie_word_embeddings": True,
        }
    )
    assert read == shape


# ---------------------------------------------------------------- disk


class _FakeDisk:
    """Stands in for ``shutil.disk_usage``: this much free, and which folders were asked about."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked: list[Path] = []

    def __call__(self, path: Any) -> Any:
        self.asked.append(Path(path))
        return types.SimpleNamespace(total=10 * self.free + 1, used=0, free=self.free)


def demo_config(**overrides: Any) -> RunConfig:
    return load_config(DEMO, overrides, check_files=False)


# The tiny demo by hand: r 8 on all seven linears of hidden 128, kv 64, intermediate 256, 2 layers.
# Per layer r × (in + out): q 8×256 = 2,048; k, v 8×192 = 1,536 each; o 2,048; gate, up, down
# 8×384 = 3,072 each → 16,384; × 2 layers = 32,768 adapter parameters.
TINY_ADAPTER_PARAMS = 32_768
# paged_adamw_8bit: every tensor is under 4096 elements (the largest, 256 × 8, has 2,048), so
# m and v stay fp32: 8 B per parameter.
TINY_OPTIMIZER_BYTES = TINY_ADAPTER_PARAMS * 8


def test_disk_need_of_the_tiny_demo_by_hand() -> None:
    # A real run (max_steps 5, save_steps 2) wrote checkpoint-2, -4 and -5, each with an
    # adapter_model.safetensors of 69,080 B: 65,536 B of bf16 weights and a 3,536 B header.
    need = est_mod.disk_need(load_model_shape("tiny"), demo_config(**{"training.save_steps": 50}), rows=3000)

    adapter = TINY_ADAPTER_PARAMS * 2  # QLoRA: TRL saves a 4-bit model's adapters in bf16
    checkpoint = adapter + TINY_OPTIMIZER_BYTES + 64 * 1024
    assert (need.adapter, need.checkpoint, need.checkpoints) == (65_536, 393_216, 6) == (adapter, checkpoint, 300 // 50)
    assert need.total == 65_536 + 6 * 393_216 == 2_424_832


def test_a_16_bit_base_saves_its_adapters_in_fp32() -> None:
    need = est_mod.disk_need(load_model_shape("tiny"), demo_config(**{"quantization.load_in_4bit": False}))

    assert need.adapter == TINY_ADAPTER_PARAMS * 4 == 131_072
    assert need.checkpoints == 0 and need.total == need.adapter  # save_steps 0: the adapter alone


@pytest.mark.parametrize(
    ("training", "rows", "checkpoints"),
    [
        ({"save_steps": 7}, 3000, 43),  # steps 7, 14, ... 294, and the last step, 300
        ({"save_steps": 500}, 3000, 1),  # only the last step's
        ({"save_steps": 100, "max_steps": -1}, 3000, 4),  # 1 epoch of ceil(3000 / 8) = 375 steps
        ({"save_steps": 100, "max_steps": -1, "gradient_accumulation_steps": 3}, 3000, 2),  # 125 steps
        ({"save_steps": 100, "max_steps": -1, "num_train_epochs": 2.5}, 16, 1),  # 2 batches × 2.5 → 5 steps
        ({"save_steps": 100, "max_steps": -1}, None, None),  # epochs over a hub dataset: unknown
    ],
)
def test_checkpoints_are_counted_as_the_trainer_saves_them(
    training: dict[str, Any], rows: int | None, checkpoints: int | None
) -> None:
    config = demo_config(**{f"training.{key}": value for key, value in training.items()})
    need = est_mod.disk_need(load_model_shape("tiny"), config, rows)

    assert need.checkpoints == checkpoints
    assert need.total == need.adapter + need.checkpoint * (checkpoints or 1)  # unknown: at least the last


def test_a_short_disk_is_one_warning_line_naming_the_nearest_existing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _FakeDisk(free=1_000_000)
    monkeypatch.setattr(est_mod.shutil, "disk_usage", disk)
    need = est_mod.DiskNeed(adapter=65_536, checkpoint=393_216, checkpoints=6)

    line = est_mod.free_space_warning(tmp_path / "runs" / "not-yet", need)

    assert disk.asked == [tmp_path]
    assert line == (
        f"warning: {tmp_path}/ has 1.0 MB free; this run writes about 2.4 MB (adapter 65.5 kB + 6 checkpoints "
        "of 393.2 kB); free some space, or raise training.save_steps for fewer checkpoints"
    )
    disk.free = need.total
    assert est_mod.free_space_warning(tmp_path / "runs" / "not-yet", need) is None
    unknown = est_mod.DiskNeed(adapter=65_536, checkpoint=393_216, checkpoints=None)
    disk.free = 1000
    line = est_mod.free_space_warning(tmp_path, unknown)
    assert line is not None and "writes at least 458.8 kB (adapter 65.5 kB + a checkpoint of 393.2 kB every " in line


SHORT_DISK = "has 1.0 MB free; this run writes about 2.4 MB (adapter 65.5 kB + 6 checkpoints of 393.2 kB)"


@pytest.mark.parametrize("free", [1_000_000, 10**12])
def test_check_warns_only_when_the_output_disk_is_short(
    free: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = _FakeDisk(free)
    monkeypatch.setattr(est_mod.shutil, "disk_usage", disk)
    out_dir = tmp_path / "runs" / "r1"

    assert main(["check", str(DEMO), "--set", "training.save_steps=50", "--set", f"output_dir={out_dir}"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert disk.asked == [tmp_path]
    if free < 2_424_832:
        assert [line for line in out if "warning" in line] == [
            f"warning: {tmp_path}/ {SHORT_DISK}; free some space, or raise training.save_steps for fewer checkpoints",
            "1 warning (advice only: the config is valid)",
        ]
    else:
        assert not [line for line in out if "warning" in line]


@pytest.mark.parametrize("mode", [["--no-tui"], []])
def test_run_warns_on_stderr_before_it_launches(
    mode: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.core.run_dir import RunDirError
    from loratop.preflight import launcher

    def refuse(*args: Any, **kwargs: Any) -> Any:
        print("launch called", file=sys.stderr)
        raise RunDirError("stopped here by the test")  # no trainer, no dashboard

    monkeypatch.setattr(est_mod.shutil, "disk_usage", _FakeDisk(1_000_000))
    monkeypatch.setattr(launcher, "launch", refuse)
    argv = ["run", str(DEMO), *mode, "--set", "training.save_steps=50", "--set", f"output_dir={tmp_path / 'r1'}"]

    assert main(argv) == 2

    err = capsys.readouterr().err.splitlines()
    warning = [i for i, line in enumerate(err) if line.startswith("warning:")]
    assert len(warning) == 1 and SHORT_DISK in err[warning[0]]
    assert warning[0] < err.index("launch called")


def test_a_dashboard_launch_on_a_short_disk_shows_the_warning_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from loratop.core.run_dir import RunDirError
    from loratop.preflight import launcher
    from loratop.tui.app import LoratopApp

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RunDirError("stopped here by the test")  # no trainer

    monkeypatch.setattr(est_mod.shutil, "disk_usage", _FakeDisk(1_000_000))
    monkeypatch.setattr(launcher, "launch", refuse)
    config = demo_config(output_dir=str(tmp_path / "r1"), **{"training.save_steps": 50})
    app = LoratopApp(runs_root=tmp_path / "runs")
    notices: list[tuple[str, str]] = []

    async def drive() -> None:
        async with app.run_test(size=(100, 30)):
            app.notify = lambda message, **kw: notices.append((message, kw.get("severity", "")))  # type: ignore[method-assign]
            await app.launch_config(config, None).wait()

    asyncio.run(drive())
    assert [severity for _, severity in notices] == ["", "warning", "error"]  # "": the launch's own progress note
    assert notices[0][0].startswith("checking and launching")
    assert notices[1][0].startswith(f"warning: {tmp_path}/ has 1.0 MB free; this run writes about")


def test_an_unknown_model_shape_draws_no_disk_warning_and_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a check must not go to the hub for a disk warning")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(model_config.socket, "create_connection", no_network)
    monkeypatch.setattr(model_config, "_download_config", no_network)
    monkeypatch.setattr(est_mod, "visible_gpu_total", lambda: (None, NO_GPU))
    disk = _FakeDisk(1)
    monkeypatch.setattr(est_mod.shutil, "disk_usage", disk)
    args = ["--set", "model.name_or_path=someorg/some-model", "--set", "training.save_steps=50"]

    assert main(["check", str(DEMO), *args, "--set", f"output_dir={tmp_path / 'r1'}"]) == 0

    assert "this run writes" not in capsys.readouterr().out and disk.asked == []


# ---------------------------------------------------------------- several GPUs


def test_70b_qlora_on_two_48_gb_gpus_fits_only_sharded() -> None:
    """The QLoRA-FSDP case: 70B in 4 bits is ~45 GB of model state, too much for one 48 GB card."""
    from loratop.preflight.estimate import per_gpu

    shape = load_model_shape(LLAMA_31_70B)
    assert count_parameters(shape).total == 70_553_706_496
    est = estimate(shape, qlora_config(max_seq_length=2048), 48 * 10**9, "RTX 6000 Ada")
    row = est.row("qlora")
    b = row.breakdown
    ddp, fsdp = per_gpu(est, 2)
    assert ddp.total == row.total + b["gradients"]  # replicated, plus DDP's gradient buckets
    per_layer = (b["weights"] + b["quant_constants"]) // 80
    assert fsdp.total == row.model_state // 2 + 2 * per_layer + b["activations"] + b["logits"] + b["overhead"]
    assert not ddp.fits and fsdp.fits and fsdp.total < 35 * 10**9
    assert per_gpu(est, 4)[1].total < fsdp.total  # more GPUs, smaller shards
    assert per_gpu(est, 4)[0].total == ddp.total  # DDP does not shrink with GPUs


def test_cli_estimate_per_gpu_follows_the_configs_world_size(no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set", f"model.name_or_path={LLAMA_31_70B}", "--set", "training.per_device_train_batch_size=1"]
    assert main(["estimate", *args, "--set", "distributed.nproc_per_node=2", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "On 2 GPUs (QLoRA, NF4 + double quant), per GPU:" in out
    assert re.search(r"DDP, replicated +[0-9.]+ GB  no NVIDIA GPU", out)
    assert re.search(r"FSDP, sharded +[0-9.]+ GB  no NVIDIA GPU", out)
    assert main(["estimate", *args, str(DEMO)]) == 0
    assert "per GPU" not in capsys.readouterr().out  # one process: nothing to split
    assert main(["estimate", *args, "--gpus", "8", str(DEMO)]) == 0
    assert "On 8 GPUs" in capsys.readouterr().out
