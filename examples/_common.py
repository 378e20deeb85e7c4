"""What every example shares: script arguments, toy-or-real model loading, dataset specs, before/after evaluation.

Kept beside the examples (not in the library) so each example stays one short file that reads top to bottom.
"""

import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl_reasoning_distill.cli import load_dataset_spec, load_model_and_tokenizer
from trl_reasoning_distill.evaluation import evaluate

# CPU-friendly defaults of the toy runs; every one can be overridden on the command line or in a --config YAML.
TOY_TRAINING_DEFAULTS = dict(
    output_dir="runs/example", max_steps=150, per_device_train_batch_size=16, learning_rate=1e-3,
    lr_scheduler_type="cosine", warmup_steps=10, logging_steps=25, save_strategy="no", report_to="none",
    activation_checkpointing=False, bf16=False, max_length=256,
)


@dataclass
class ScriptArguments:
    """Models and data of an example run (toy world by default)."""

    student: str = field(default="toy-student", metadata={"help": "Student: path, hub id or 'toy-student'."})
    teacher: str = field(default="toy-teacher", metadata={"help": "Teacher: path, hub id or 'toy-teacher'."})
    train_data: str = field(default="toy:train:1024", metadata={"help": "toy:<split>:<n>[:<min>-<max>] or a file."})
    eval_data: str = field(default="toy:test:300", metadata={"help": "Held-out prompt/answer data ('' to skip)."})
    eval_max_new_tokens: int = field(default=192, metadata={"help": "Generation budget of the accuracy eval."})


def load_models(script_args: ScriptArguments):
    """(student, teacher, tokenizer); toy names load the committed toy models."""
    student, tokenizer = load_model_and_tokenizer(script_args.student)
    teacher, _ = load_model_and_tokenizer(script_args.teacher)
    return student, teacher, tokenizer


def load_training_data(script_args: ScriptArguments):
    """The training rows, keeping only the columns `KDTrainer` reads (messages, or prompt [+ completion])."""
    train = load_dataset_spec(script_args.train_data)
    return train.select_columns([c for c in ("messages", "prompt", "completion") if c in train.column_names])


def accuracy(model, tokenizer, script_args: ScriptArguments, label: str) -> float | None:
    """Greedy pass@1 on the eval data, printed with its wall time (None when there is no eval data)."""
    if not script_args.eval_data:
        return None
    start = time.time()
    result = evaluate(model, tokenizer, load_dataset_spec(script_args.eval_data),
                      max_new_tokens=script_args.eval_max_new_tokens, progress=False)
    print(f"{label}: greedy pass@1 {result.greedy_accuracy:.3f} on {result.n} problems ({time.time() - start:.0f} s)")
    return result.greedy_accuracy
