"""A training script loratop did not launch: a plain Hugging Face Trainer (or TRL's
SFTTrainer) on the embedded tiny Llama, with the one line that adds loratop.

    python train_with_callback.py --trainer trainer|sft --runs-dir DIR [--max-steps N]

Under torchrun it runs one process per rank (gloo on CPU).
"""

from __future__ import annotations

import argparse
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

from loratop import LoratopCallback
from loratop.trainer.tiny_model import tiny_model_dir


def rows(n: int) -> list[str]:
    rng = random.Random(0)
    words = ["the", "model", "learns", "a", "small", "task", "from", "rows", "of", "plain", "words", "and", "numbers"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=("trainer", "sft"), default="trainer")
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--output-dir", default="out/tiny-script")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--handle-signals", action="store_true")
    parser.add_argument("--fail-at-step", type=int, default=None, help="raise at this step (a script that dies)")
    args = parser.parse_args()

    folder, _ = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    callback = LoratopCallback(runs_dir=args.runs_dir, handle_signals=args.handle_signals)  # the one line
    common = dict(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        eval_strategy="steps",
        eval_steps=max(1, args.max_steps // 2),
    )
    texts = rows(96)
    if args.trainer == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(max_length=64, **common),
            train_dataset=Dataset.from_list([{"text": t} for t in texts[:80]]),
            eval_dataset=Dataset.from_list([{"text": t} for t in texts[80:]]),
            processing_class=tokenizer,
            callbacks=[callback],
        )
    else:
        encoded = Dataset.from_list([dict(tokenizer(t, truncation=True, max_length=64)) for t in texts])
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=encoded.select(range(80)),
            eval_dataset=encoded.select(range(80, 96)),
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            callbacks=[callback],
        )
    if args.fail_at_step is not None:
        from transformers import TrainerCallback

        class Fail(TrainerCallback):
            def on_step_end(self, args_: object, state: object, control: object, **kwargs: object) -> None:
                if getattr(state, "global_step", 0) >= args.fail_at_step:
                    raise RuntimeError(f"the script's own bug at step {args.fail_at_step}")

        trainer.add_callback(Fail())
    trainer.train()
    if callback.run_dir is not None:
        print(f"loratop run folder: {callback.run_dir}", flush=True)


if __name__ == "__main__":
    main()
