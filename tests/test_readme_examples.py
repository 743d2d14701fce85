"""scripts/readme_examples.py: the README's examples come from real runs (issue 16, item 8).

The slow tests in test_trainer_run.py compare README.md with fresh runs; these check the
rendering rules and that README.md holds every block the script writes.
"""

from __future__ import annotations

from pathlib import Path

from scripts import readme_examples as rx

OUTPUT = """\
pre-flight estimate (QLoRA, NF4 + double quant): 555.2 MB peak; no NVIDIA GPU (loratop estimate)
run folder: /tmp/x/runs/demo-1  (trainer pid 12, log: /tmp/x/runs/demo-1/trainer.log)
[trainer] loading tiny
step 1/300  loss 6.9543  lr 0.00e+00  grad 0.6328  rss 654 MiB (no NVIDIA GPU)
step 2/300  loss 6.9549  lr 1.33e-04  grad 0.7070  rss 675 MiB (no NVIDIA GPU)
step 8/300  loss 6.8377  lr 9.33e-04  grad 0.6797  rss 781 MiB (no NVIDIA GPU)
eval at step 50: loss 5.8564 (best so far; 150 rows, 0.4 s)
step 60/300  loss 6.0  lr 1.97e-03  grad 0.4219  rss 1.1 GiB (no NVIDIA GPU)
eval at step 100: loss 5.7 (best so far; 150 rows, 0.4 s)
step 300/300  loss 5.6680  lr 6.08e-08  grad 0.3008  rss 1.8 GiB (no NVIDIA GPU)
eval at step 300: loss 5.5363 (best so far; 150 rows, 0.4 s)
run completed after 49.6 s; last step 300 loss 5.6680
"""


def test_the_headless_block_keeps_the_start_the_first_eval_and_the_end() -> None:
    block = rx.headless_block(OUTPUT, Path("/tmp/x")).splitlines()
    assert block[1].startswith("run folder: runs/demo-1 ")  # the scratch folder is gone
    assert block[3:5] == [OUTPUT.splitlines()[3], OUTPUT.splitlines()[4]]
    assert block[5:8] == ["...", "eval at step 50: loss 5.8564 (best so far; 150 rows, 0.4 s)", "..."]
    assert block[8].startswith("step 300/300") and block[-1].startswith("run completed after")
    assert "step 8/300" not in "\n".join(block)


def test_shape_ignores_numbers_units_paths_and_names_but_not_words() -> None:
    a = "run demo-1: rss 654 MiB at /tmp/a/b; step 1/300"
    b = "run tiny-cpu-demo-2026: rss 1.8 GiB at runs/x; step 22/300"
    assert rx.shape(a) == rx.shape(b)
    assert rx.shape("eval at step 50: loss 5.8") != rx.shape("early stop at step 50: loss 5.8")


def test_the_lr_story_names_each_flag_and_the_rise() -> None:
    steps = [
        {"type": "step", "step": i, "loss": 7.0 - 0.02 * i if i < 50 else 6.0 + 0.01 * (i - 50)} for i in range(1, 101)
    ]
    spike = {"type": "spike", "step": 60, "severity": "warn", "kind": "loss_spike", "reason": "loss 1.1x"}
    story = rx.lr_story([*steps, spike])
    assert "fell to 6.0" in story and "step 60 warn `loss_spike` (loss 1.1x)" in story
    assert rx.spike_shape(story) == [("warn", "loss_spike")]


def test_readme_holds_every_block_the_script_writes() -> None:
    text = rx.README.read_text()
    for name in ("demo-headless", "demo-seconds", "lr-too-high"):
        body = rx.readme_block(name, text)
        assert body.strip(), name
        assert rx.replace_block(text, name, body) == text, f"{name}: the block does not round-trip"
    assert rx.spike_shape(rx.readme_block("lr-too-high", text)), "the README's story names what was flagged"
