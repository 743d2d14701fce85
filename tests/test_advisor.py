"""The knob advisor: each rule fires past its threshold and stays quiet at it; ``loratop check`` prints it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loratop.cli.main import main
from loratop.core.value_format import format_value
from loratop.preflight import advisor
from loratop.preflight.advisor import RULES, Advice, Facts, advise, gather_facts
from loratop.preflight.config import RunConfig, field_value, load_config
from loratop.preflight.estimate import NO_GPU, EstimateError, estimate, load_model_shape, visible_gpu_total

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_configs"
DEMO = SAMPLES / "tiny-cpu-demo.yaml"
GB = 10**9

REAL_MODEL = "Qwen/Qwen2.5-7B-Instruct"
BASE = RunConfig.model_validate({"model": {"name_or_path": REAL_MODEL}})
"""The schema's defaults on a pretrained model (the defaults' ``tiny`` wants a 10× rate)."""

QUIET_FACTS = Facts(dataset_rows=20_000, peak_bytes=10 * GB, gpu_total_bytes=24 * GB)
"""Facts under which the defaults draw no advice."""


def config_with(changes: dict[str, Any], base: RunConfig = BASE) -> RunConfig:
    """``base`` with dotted overrides, validated again: ``config_with({"lora.r": 64})``."""
    tree = base.model_dump()
    for dotted, value in changes.items():
        node = tree
        *sections, key = dotted.split(".")
        for section in sections:
            node = node[section]
        assert key in node, f"no field {dotted}"
        node[key] = value
    return RunConfig.model_validate(tree)


def rules_of(advice: list[Advice]) -> list[str]:
    return [a.rule for a in advice]


def write_rows(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"example {i}: the answer is {i % 7}"}) + "\n" for i in range(count)))
    return path


# --------------------------------------------------------------------------- the rules


def test_the_defaults_on_a_real_model_draw_no_advice() -> None:
    assert advise(BASE, QUIET_FACTS) == []
    assert advise(BASE) == []


def test_r_256_on_2000_rows_is_too_much_rank() -> None:
    advice = advise(config_with({"lora.r": 256, "lora.lora_alpha": 512}), Facts(dataset_rows=2000))

    assert advice == [
        Advice(
            "rank-vs-data",
            "lora.r",
            "r = 256 is above what 2,000 rows can constrain (r ≤ 64 is plenty): "
            "a high-rank adapter memorises their phrasing instead of learning the task",
        )
    ]


@pytest.mark.parametrize(
    ("rows", "r", "fires"),
    [
        (2_000, 64, False),
        (2_000, 65, True),
        (999, 16, False),
        (999, 17, True),
        (1_000, 64, False),
        (9_999, 65, True),
        (10_000, 128, False),
        (99_999, 129, True),
        (100_000, 4096, False),
        (None, 4096, False),
    ],
)
def test_rank_vs_data_ceiling(rows: int | None, r: int, fires: bool) -> None:
    config = config_with({"lora.r": r, "lora.lora_alpha": 2 * r, "lora.lora_dropout": 0.05})

    advice = advise(config, Facts(dataset_rows=rows))

    assert ("rank-vs-data" in rules_of(advice)) is fires


@pytest.mark.parametrize(
    ("r", "alpha", "fires"),
    [(16, 64, False), (16, 64.5, True), (16, 128, True), (8, 16, False), (64, 16, False), (1, 5, True)],
)
def test_alpha_much_larger_than_rank(r: int, alpha: float, fires: bool) -> None:
    advice = advise(config_with({"lora.r": r, "lora.lora_alpha": alpha}))

    assert rules_of(advice) == (["alpha-vs-rank"] if fires else [])
    if fires:
        assert advice[0].field == "lora.lora_alpha"
        assert f"α/r = {alpha / r:.3g} where" in advice[0].message


@pytest.mark.parametrize(
    ("model", "lr", "rule"),
    [
        (REAL_MODEL, 2e-4, None),
        (REAL_MODEL, 1e-3, "lr-high"),
        (REAL_MODEL, 9.9e-4, None),
        (REAL_MODEL, 3e-2, "lr-high"),
        (REAL_MODEL, 2e-5, "lr-low"),
        (REAL_MODEL, 2.1e-5, None),
        ("tiny", 2e-3, None),
        ("tiny", 1e-2, "lr-high"),
        ("tiny", 9.9e-3, None),
        ("tiny", 2e-4, "lr-low"),
        ("tiny", 2.1e-4, None),
    ],
)
def test_learning_rate_against_the_models_reference(model: str, lr: float, rule: str | None) -> None:
    advice = advise(config_with({"model.name_or_path": model, "training.learning_rate": lr}))

    assert rules_of(advice) == ([rule] if rule else [])
    if rule:
        assert advice[0].field == "training.learning_rate"
        reference = "0.002" if model == "tiny" else "0.0002"
        assert f"the usual {reference}" in advice[0].message


def test_the_schema_defaults_draw_no_advice_because_the_rate_follows_the_model() -> None:
    # The default model is tiny, random-init: an unset rate is its usual 2e-3, not a pretrained model's 2e-4.
    assert RunConfig().training.learning_rate == 2e-3
    assert advise(RunConfig()) == []
    assert BASE.training.learning_rate == 2e-4 and advise(BASE) == []


def test_check_on_an_empty_config_warns_about_no_value_loratop_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")

    assert main(["check", str(empty)]) == 0

    out, err = capsys.readouterr()
    assert "  train   lr=0.002 cosine" in out
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [], out
    assert "every value is a default" in err
    # A rate the user sets is still judged: the same 2e-4 on tiny, chosen, is too low.
    assert main(["check", str(empty), "--set", "training.learning_rate=2e-4"]) == 0
    assert "warning: training.learning_rate = 2e-4: learning_rate = 0.0002 is 1/10 of the usual 0.002" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("targets", "fires"),
    [
        (["q_proj", "v_proj"], True),
        (["q_proj", "k_proj", "v_proj", "o_proj"], True),
        (["o_proj"], True),
        (["q_proj", "v_proj", "gate_proj"], False),
        (["all-linear"], False),
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    ],
)
def test_attention_only_targets(targets: list[str], fires: bool) -> None:
    advice = advise(config_with({"lora.target_modules": targets}))

    assert rules_of(advice) == (["attention-only"] if fires else [])
    if fires:
        assert advice[0].field == "lora.target_modules"
        assert "gate_proj, up_proj, down_proj" in advice[0].message


@pytest.mark.parametrize(
    ("rows", "dropout", "rule"),
    [
        (100_000, 0.05, "dropout-large-data"),
        (99_999, 0.05, None),
        (100_000, 0.0, None),
        (999, 0.0, "dropout-tiny-data"),
        (1_000, 0.0, None),
        (999, 0.05, None),
        (None, 0.0, None),
        (None, 0.1, None),
    ],
)
def test_dropout_against_dataset_size(rows: int | None, dropout: float, rule: str | None) -> None:
    # r 8 stays under every rank ceiling, so only the dropout rules can speak.
    config = config_with({"lora.r": 8, "lora.lora_alpha": 16, "lora.lora_dropout": dropout})

    advice = advise(config, Facts(dataset_rows=rows))

    assert rules_of(advice) == ([rule] if rule else [])
    if rule:
        assert advice[0].field == "lora.lora_dropout"


@pytest.mark.parametrize(
    ("peak_share", "optim", "fires"),
    [
        (0.85, "adamw_torch", True),
        (0.84, "adamw_torch", False),
        (1.2, "adamw_8bit", True),
        (0.95, "paged_adamw_8bit", False),
        (0.95, "paged_adamw_32bit", False),
        (0.10, "adamw_torch", False),
    ],
)
def test_unpaged_optimizer_near_the_gpus_limit(peak_share: float, optim: str, fires: bool) -> None:
    total = 24 * GB
    facts = Facts(dataset_rows=20_000, peak_bytes=int(peak_share * total), gpu_total_bytes=total)

    advice = advise(config_with({"training.optim": optim}), facts)

    assert rules_of(advice) == (["optim-not-paged"] if fires else [])
    if fires:
        assert advice[0].field == "training.optim"
        assert "24.0 GB" in advice[0].message and f"{peak_share:.0%}" in advice[0].message


def test_unpaged_optimizer_advice_names_its_paged_twin() -> None:
    facts = Facts(peak_bytes=23 * GB, gpu_total_bytes=24 * GB)

    [eight_bit] = advise(config_with({"training.optim": "adamw_8bit"}), facts)
    [torch_adamw] = advise(config_with({"training.optim": "adamw_torch"}), facts)

    assert "paged_adamw_8bit would spill" in eight_bit.message
    assert "paged_adamw_32bit would spill" in torch_adamw.message


@pytest.mark.parametrize(
    "facts", [Facts(peak_bytes=23 * GB), Facts(gpu_total_bytes=24 * GB), Facts()], ids=["no-gpu", "no-peak", "none"]
)
def test_unpaged_optimizer_is_quiet_without_both_memory_facts(facts: Facts) -> None:
    assert advise(config_with({"training.optim": "adamw_torch"}), facts) == []


@pytest.mark.parametrize(
    ("checkpointing", "seq", "fires"),
    [(False, 2048, True), (False, 8192, True), (False, 2047, False), (True, 2048, False), (True, 8192, False)],
)
def test_no_checkpointing_on_long_sequences(checkpointing: bool, seq: int, fires: bool) -> None:
    config = config_with({"training.gradient_checkpointing": checkpointing, "training.max_seq_length": seq})

    advice = advise(config)

    assert rules_of(advice) == (["no-checkpointing-long-seq"] if fires else [])
    if fires:
        assert advice[0].field == "training.gradient_checkpointing"
        assert str(seq) in advice[0].message


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"lora.bias": "all"}, ["lora.bias"]),
        ({"lora.bias": "lora_only"}, ["lora.bias"]),
        ({"lora.allow_trainable_base": True}, ["lora.allow_trainable_base"]),
        ({"lora.bias": "all", "lora.allow_trainable_base": True}, ["lora.bias", "lora.allow_trainable_base"]),
        ({"lora.bias": "none", "lora.allow_trainable_base": False}, []),
    ],
)
def test_trains_base(changes: dict[str, Any], fields: list[str]) -> None:
    advice = advise(config_with(changes))

    assert [a.field for a in advice] == fields
    assert all(a.rule == "trains-base" for a in advice)


# --------------------------------------------------------------------------- all rules together

KITCHEN_SINKS: list[tuple[dict[str, Any], Facts]] = [
    (
        {
            "model.name_or_path": "tiny",
            "lora.r": 256,
            "lora.lora_alpha": 2048,
            "lora.target_modules": ["q_proj", "v_proj"],
            "lora.bias": "all",
            "lora.allow_trainable_base": True,
            "training.learning_rate": 1e-5,
            "training.optim": "adamw_torch",
            "training.gradient_checkpointing": False,
            "training.max_seq_length": 4096,
        },
        Facts(dataset_rows=500, peak_bytes=79 * GB, gpu_total_bytes=80 * GB),
    ),
    (
        {"lora.lora_dropout": 0.1, "training.learning_rate": 5e-3, "model.trust_remote_code": True},
        Facts(dataset_rows=500_000),
    ),
]
"""Two configs that between them break every rule."""


def _every_advice() -> list[Advice]:
    return [a for changes, facts in KITCHEN_SINKS for a in advise(config_with(changes), facts)]


def test_the_kitchen_sinks_break_every_rule() -> None:
    assert sorted(set(rules_of(_every_advice()))) == sorted(RULES)


def test_advice_comes_in_schema_order() -> None:
    changes, facts = KITCHEN_SINKS[0]

    advice = advise(config_with(changes), facts)

    assert [a.field for a in advice] == [
        "lora.r",
        "lora.lora_alpha",
        "lora.lora_dropout",
        "lora.target_modules",
        "lora.bias",
        "lora.allow_trainable_base",
        "training.learning_rate",
        "training.optim",
        "training.gradient_checkpointing",
    ]
    assert advise(config_with(changes), facts) == advice


@pytest.mark.parametrize("advice", _every_advice(), ids=lambda a: f"{a.rule}:{a.field}")
def test_every_message_is_one_sentence(advice: Advice) -> None:
    assert advice.rule in RULES
    assert "\n" not in advice.message
    assert re.search(r"[.!?]\s", advice.message) is None, advice.message
    assert not advice.message.endswith("."), advice.message
    assert advice.message.strip() == advice.message and advice.message


def test_field_value_and_format_value_spell_values_as_yaml() -> None:
    config = config_with({"lora.target_modules": ["q_proj", "v_proj"], "training.learning_rate": 2e-5})

    assert format_value(field_value(config, "lora.r")) == "16"
    assert format_value(field_value(config, "lora.target_modules")) == "[q_proj, v_proj]"
    assert format_value(field_value(config, "training.learning_rate")) == "2e-5"
    assert format_value(field_value(config, "training.gradient_checkpointing")) == "true"
    assert format_value(field_value(config, "lora.lora_alpha")) == "32"
    assert format_value(field_value(config, "data.max_rows")) == "null"


# --------------------------------------------------------------------------- shipped configs


def test_shipped_demo_draws_no_advice_on_its_3000_rows() -> None:
    config = load_config(DEMO, check_files=False)

    assert advise(config, Facts(dataset_rows=3000)) == []
    assert advise(config, gather_facts(config)) == []


def test_tiny_lr_too_high_draws_exactly_lr_high() -> None:
    config = load_config(SAMPLES / "tiny-lr-too-high.yaml", check_files=False)

    advice = advise(config, Facts(dataset_rows=3000))

    assert rules_of(advice) == ["lr-high"]
    assert "0.03 is 15× the usual 0.002" in advice[0].message


@pytest.mark.parametrize("recipe", ["gemma-3-4b-qlora", "llama-3.1-8b-qlora", "qwen2.5-7b-qlora"])
@pytest.mark.parametrize(
    "facts",
    [
        Facts(dataset_rows=20_000, peak_bytes=int(21.5 * GB), gpu_total_bytes=24 * GB),
        Facts(dataset_rows=20_000, peak_bytes=18 * GB, gpu_total_bytes=80 * GB),
        Facts(),
    ],
    ids=["24GB-nearly-full", "80GB", "unknown"],
)
def test_gpu_recipes_draw_no_advice(recipe: str, facts: Facts) -> None:
    config = load_config(SAMPLES / f"{recipe}.yaml", check_files=False)

    assert advise(config, facts) == []


# --------------------------------------------------------------------------- gather_facts


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advisor, "visible_gpu_total", lambda: (None, NO_GPU))


def _must_not_load_a_model(name: str) -> None:
    raise AssertionError(f"load_model_shape({name!r}) called without a GPU")


def test_gather_facts_counts_the_rows_of_a_real_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch)
    data = write_rows(tmp_path / "train.jsonl", 2000)

    assert gather_facts(config_with({"data.path": str(data)})).dataset_rows == 2000


@pytest.mark.parametrize(("max_rows", "rows"), [(500, 500), (2000, 2000), (5000, 2000)])
def test_gather_facts_caps_rows_at_max_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_rows: int, rows: int
) -> None:
    _no_gpu(monkeypatch)
    data = write_rows(tmp_path / "train.jsonl", 2000)

    facts = gather_facts(config_with({"data.path": str(data), "data.max_rows": max_rows}))

    assert facts.dataset_rows == rows


def test_gather_facts_counts_the_embedded_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch)

    assert gather_facts(load_config(DEMO, check_files=False)).dataset_rows == 2850  # 150 held out for eval


@pytest.mark.parametrize("path", ["missing.jsonl", "./nowhere/train.jsonl", "embedded:nope", "org/hub-dataset"])
def test_gather_facts_unknown_rows_are_none_without_raising(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_gpu(monkeypatch)
    monkeypatch.chdir(tmp_path)

    assert gather_facts(config_with({"data.path": path, "data.max_rows": 100})).dataset_rows is None


def test_gather_facts_without_a_gpu_estimates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch)
    monkeypatch.setattr(advisor, "load_model_shape", _must_not_load_a_model)

    facts = gather_facts(BASE)

    assert facts.peak_bytes is None and facts.gpu_total_bytes is None


@pytest.mark.skipif(visible_gpu_total()[0] is not None, reason="this machine has a GPU")
def test_gather_facts_on_this_gpu_less_machine_has_no_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real NVML probe; a hub model that would need a download must not be looked up.
    monkeypatch.setattr(advisor, "load_model_shape", _must_not_load_a_model)

    facts = gather_facts(BASE)

    assert facts.peak_bytes is None and facts.gpu_total_bytes is None


@pytest.mark.parametrize(("load_in_4bit", "method"), [(True, "qlora"), (False, "lora")])
def test_gather_facts_with_a_gpu_estimates_the_configured_method(
    monkeypatch: pytest.MonkeyPatch, load_in_4bit: bool, method: str
) -> None:
    # NVML is hardware CI lacks: stand in for it behind visible_gpu_total's interface.
    monkeypatch.setattr(advisor, "visible_gpu_total", lambda: (24 * GB, "Fake GPU 24GB"))
    config = config_with({"model.name_or_path": "tiny", "quantization.load_in_4bit": load_in_4bit})

    facts = gather_facts(config)

    expected = estimate(load_model_shape("tiny"), config, 24 * GB, "Fake GPU 24GB").row(method).total
    assert facts.gpu_total_bytes == 24 * GB
    assert facts.peak_bytes == expected


def test_gather_facts_with_a_gpu_and_an_unreadable_model_has_no_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advisor, "visible_gpu_total", lambda: (24 * GB, "Fake GPU 24GB"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = config_with({"model.name_or_path": "nobody-here/no-such-model-for-loratop"})
    with pytest.raises(EstimateError):
        load_model_shape(config.model.name_or_path)

    facts = gather_facts(config)

    assert facts.peak_bytes is None and facts.gpu_total_bytes == 24 * GB


# --------------------------------------------------------------------------- loratop check


def test_check_prints_rank_advice_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data = write_rows(tmp_path / "train.jsonl", 2000)
    config = tmp_path / "config.yaml"
    config.write_text(
        "lora:\n  r: 256\n  lora_alpha: 512\n"
        "training:\n  learning_rate: 2.0e-3\n"
        f"data:\n  path: {data}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )

    code = main(["check", str(config)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"ok: {config}")
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: lora.r = 256: r = 256 is above what 2,000 rows can constrain (r ≤ 64 is plenty): "
        "a high-rank adapter memorises their phrasing instead of learning the task"
    ]
    assert out.splitlines()[-1] == "1 warning (advice only: the config is valid)"
    assert not (tmp_path / "out").exists()


def test_check_counts_several_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    code = main(
        ["check", str(DEMO), "--set", "lora.target_modules=[q_proj, v_proj]", "--set", "lora.bias=all"]
        + ["--set", f"output_dir={tmp_path / 'out'}"]
    )

    out, _ = capsys.readouterr()
    assert code == 0
    assert "warning: lora.target_modules = [q_proj, v_proj]: only attention projections" in out
    assert "warning: lora.bias = all: bias = all trains" in out
    assert out.splitlines()[-1] == "2 warnings (advice only: the config is valid)"


def test_check_of_the_demo_prints_no_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    code = main(["check", str(DEMO), "--set", f"output_dir={tmp_path / 'out'}"])

    out, _ = capsys.readouterr()
    assert code == 0
    assert "warning" not in out


def test_trust_remote_code_is_named_and_plain_configs_stay_quiet() -> None:
    advice = advise(config_with({"model.trust_remote_code": True}))
    (remote,) = [a for a in advice if a.rule == "remote-code"]
    assert remote.field == "model.trust_remote_code" and "runs the Python code" in remote.message
    assert "remote-code" not in rules_of(advise(config_with({})))
