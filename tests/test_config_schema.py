"""The run-config schema: defaults, overrides, docs on every field, samples that mirror it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from loratop.preflight.config import (
    ALL_PROJECTIONS,
    OPTIMIZERS,
    SCHEDULERS,
    ConfigError,
    RunConfig,
    default_output_dir,
    load_config,
    parse_overrides,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "sample_configs").glob("*.yaml"))


def test_defaults_are_the_usual_qlora_recipe() -> None:
    config = RunConfig.model_validate({"model": {"name_or_path": "someorg/pretrained-model"}})

    assert config.training.learning_rate == 2e-4
    assert RunConfig().training.learning_rate == 2e-3  # the default model, tiny, learns from scratch
    assert RunConfig.model_validate({"training": {"learning_rate": 2e-4}}).training.learning_rate == 2e-4
    assert config.training.optim == "paged_adamw_8bit"
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert config.quantization.load_in_4bit is True
    assert config.quantization.bnb_4bit_quant_type == "nf4"
    assert config.quantization.bnb_4bit_use_double_quant is True
    assert config.quantization.bnb_4bit_compute_dtype == "bfloat16"


def test_default_target_modules_are_not_shared_between_configs() -> None:
    first, second = RunConfig(), RunConfig()
    first.lora.target_modules.append("lm_head")

    assert second.lora.target_modules == ALL_PROJECTIONS
    assert ALL_PROJECTIONS == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_load_config_without_a_file_fills_in_the_output_dir() -> None:
    config = load_config(None, check_files=False)

    assert config.output_dir is not None
    assert Path(config.output_dir).parent == Path("runs")
    assert Path(config.output_dir).name.startswith("run-")


def test_parse_overrides_reads_values_as_yaml() -> None:
    overrides = parse_overrides(
        [
            "lora.r=32",
            "lora.lora_dropout=0.05",
            "lora.target_modules=[q_proj, v_proj]",
            "quantization.load_in_4bit=false",
            "data.max_rows=null",
            "output_dir=runs/r32",
            " training.optim =adamw_torch",
        ]
    )

    assert overrides == {
        "lora.r": 32,
        "lora.lora_dropout": 0.05,
        "lora.target_modules": ["q_proj", "v_proj"],
        "quantization.load_in_4bit": False,
        "data.max_rows": None,
        "output_dir": "runs/r32",
        "training.optim": "adamw_torch",
    }


def test_parse_overrides_splits_at_the_first_equals_sign() -> None:
    assert parse_overrides(["output_dir=runs/a=b"]) == {"output_dir": "runs/a=b"}


def test_parse_overrides_keeps_an_empty_value_and_unparsable_yaml_as_text() -> None:
    assert parse_overrides(["output_dir="]) == {"output_dir": ""}
    assert parse_overrides(["lora.target_modules=[q_proj"]) == {"lora.target_modules": "[q_proj"}


def test_parse_overrides_later_assignment_wins() -> None:
    assert parse_overrides(["lora.r=8", "lora.r=16"]) == {"lora.r": 16}


def test_parse_overrides_reports_every_malformed_assignment() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_overrides(["lora.r8", "=3", "lora..r=3", "lora.r=8", "lora.=1"])

    assert caught.value.problems == [
        "--set lora.r8: expected section.key=value, e.g. --set lora.r=16",
        "--set =3: expected section.key=value, e.g. --set lora.r=16",
        "--set lora..r=3: expected section.key=value, e.g. --set lora.r=16",
        "--set lora.=1: expected section.key=value, e.g. --set lora.r=16",
    ]


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("lora:\n  r: 8\n  lora_alpha: 16\n")

    config = load_config(config_file, parse_overrides(["lora.r=64"]), check_files=False)

    assert config.lora.r == 64
    assert config.lora.lora_alpha == 16


def test_default_output_dir_uses_config_stem_and_time() -> None:
    now = dt.datetime(2025, 1, 2, 3, 4, 5)

    expected = str(Path("runs") / "gemma-r16-20250102-030405")
    assert default_output_dir(Path("configs/gemma-r16.yaml"), now=now) == expected
    assert default_output_dir(None, now=now) == str(Path("runs") / "run-20250102-030405")


def _documented_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    """``(dotted name, description)`` for every field, recursing into sections."""
    found = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # A section field is documented by its section's class docstring.
            found.append((dotted, info.description or annotation.__doc__))
            found.extend(_documented_fields(annotation, prefix=f"{dotted}."))
        else:
            found.append((dotted, info.description))
    return found


def test_every_field_has_a_docstring() -> None:
    fields = _documented_fields(RunConfig)
    undocumented = [name for name, description in fields if not (description and description.strip())]

    assert len(fields) > 30
    assert undocumented == []


def _key_tree(model: type[BaseModel]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            tree[name] = _key_tree(annotation)
        else:
            tree[name] = None
    return tree


def _mismatches(schema: dict[str, Any], sample: Any, prefix: str = "") -> list[str]:
    if not isinstance(sample, dict):
        return [f"{prefix or '(top level)'}: not a mapping"]
    problems = [f"{prefix}{key}: missing" for key in schema if key not in sample]
    problems += [f"{prefix}{key}: not in the schema" for key in sample if key not in schema]
    for key, sub in schema.items():
        if sub is not None and key in sample:
            problems += _mismatches(sub, sample[key], prefix=f"{prefix}{key}.")
    return problems


def test_there_is_at_least_one_sample() -> None:
    assert SAMPLES, "sample_configs/ holds no YAML"


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_mirrors_the_schema_one_to_one(sample: Path) -> None:
    data = yaml.safe_load(sample.read_text())

    assert _mismatches(_key_tree(RunConfig), data) == []


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_validates(sample: Path) -> None:
    config = load_config(sample, check_files=False)

    assert config.output_dir


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch, imported by transformers
def test_optimizers_are_transformers_optimizer_names() -> None:
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}
    assert len(set(OPTIMIZERS)) == len(OPTIMIZERS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch, imported by transformers
def test_schedulers_are_transformers_scheduler_types() -> None:
    from transformers.trainer_utils import SchedulerType

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}
    assert len(set(SCHEDULERS)) == len(SCHEDULERS)
