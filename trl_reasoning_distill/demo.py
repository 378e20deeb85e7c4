"""`make demo` / `trl-distill demo`: the baselines on the toy world, one table, a few minutes on a laptop CPU.

Rows: the cold-started student, the student after Standard KD (SFT on verified teacher samples), the student after
on-policy GKD (`KDTrainer`, generalized JSD), and the teacher; greedy pass@1 on held-out test problems, with the wall
time of each row (training plus evaluation).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _train_args(config_cls, out: str, steps: int, **overrides):
    settings = dict(
        output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3,
        lr_scheduler_type="cosine", warmup_steps=10, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=25, disable_tqdm=True, activation_checkpointing=False, seed=0,
        dataloader_num_workers=0,
    )
    return config_cls(**{**settings, **overrides})


def run_standard_kd(student, teacher, tokenizer, prompts, steps: int, out: str, **overrides):
    """SFT of the student on verified teacher samples (one per prompt, 2 tries)."""
    from ._trl import SFTConfig, SFTTrainer
    from .baselines import rejection_sample

    data = rejection_sample(teacher, tokenizer, prompts, n=2, max_new_tokens=192).select_columns(
        ["prompt", "completion"])
    args = _train_args(SFTConfig, out, steps, **{"max_length": 256, "completion_only_loss": True, **overrides})
    SFTTrainer(model=student, args=args, train_dataset=data, processing_class=tokenizer).train()
    return student, len(data)


def run_gkd(student, teacher, tokenizer, prompts, steps: int, out: str, **overrides):
    """On-policy GKD (lmbda 1, generalized JSD beta 0.5) on the training prompts."""
    from .kd_config import KDConfig
    from .kd_trainer import KDTrainer

    settings = {"lmbda": 1.0, "beta": 0.5, "temperature": 1.0, "max_new_tokens": 96, "max_length": 256,
                "learning_rate": 5e-4, **overrides}  # ours: 1e-3 (the SFT rate) made GKD worse on the toy task
    args = _train_args(KDConfig, out, steps, **settings)
    data = prompts.select_columns(["prompt"])
    KDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer).train()
    return student


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of each baseline (batch 16)")
    parser.add_argument("--n_test", type=int, default=300, help="held-out test problems (2-4 operands)")
    parser.add_argument("--n_train", type=int, default=2048, help="training prompts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for the toy models here")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    from .evaluation import evaluate
    from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from .utils import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    test, train = toy_dataset("test", args.n_test, seed=0), toy_dataset("train", args.n_train, seed=0)
    rows = []

    def row(name, model, start, note=""):
        acc = evaluate(model, tokenizer, test, max_new_tokens=192, progress=False).greedy_accuracy
        rows.append({"model": name, "pass@1": acc, "seconds": time.time() - start, "note": note})
        print(f"{name:<28} pass@1 {acc:.3f}  ({rows[-1]['seconds']:.0f} s) {note}", flush=True)

    row("student (cold start)", load_toy_student(), time.time())
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        student, n = run_standard_kd(load_toy_student(), teacher, tokenizer, train, args.steps, out)
        row("student + Standard KD", student, start, f"{n} verified teacher samples, {args.steps} steps")
        start = time.time()
        student = run_gkd(load_toy_student(), teacher, tokenizer, train, args.steps, out)
        row("student + GKD (on-policy)", student, start, f"{args.steps} steps")
    row("teacher", teacher, time.time())
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| model | greedy pass@1 | wall time (s) | notes |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['pass@1']:.3f} | {r['seconds']:.0f} | {r['note']} |")


if __name__ == "__main__":
    main()
