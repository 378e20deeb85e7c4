"""TSD-KD on the toy world: held-out accuracy vs GKD and the cold-started student, the paper's ablation, step time.

Every run starts from the same cold-started student, trains on the same prompts with the same on-policy rollout
budget (steps x batch, `lmbda=1`), and is evaluated greedily on held-out test problems. Results are appended to
`results/tsd_kd_toy.csv` as each run finishes, so a stopped run resumes where it stopped.

    python benchmarks/tsd_kd_toy.py                      # 3 seeds, 6 variants
    python benchmarks/tsd_kd_toy.py --seeds 0 --steps 20 # smoke run
"""

import argparse
import csv
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # name -> (trainer, config overrides)
    "GKD (generalized JSD, beta 0.9)": ("kd", {"beta": 0.9}),
    "TSD-KD": ("tsd_kd", {}),
    "TSD-KD without indirect (PL) term": ("tsd_kd", {"indirect_coef": 0.0}),
    "TSD-KD without gate": ("tsd_kd", {"use_gate": False}),
    "TSD-KD without entropy term": ("tsd_kd", {"entropy_coef": 0.0}),
}
FIELDS = ["variant", "seed", "steps", "accuracy", "seconds_per_step", "train_seconds", "eval_n"]


def train_once(variant: str, seed: int, steps: int, train, tokenizer, teacher, out: str):
    from trl_reasoning_distill import KDConfig, KDTrainer, TSDKDConfig, TSDKDTrainer, load_toy_student

    kind, overrides = VARIANTS[variant]
    config_cls, trainer_cls = (KDConfig, KDTrainer) if kind == "kd" else (TSDKDConfig, TSDKDTrainer)
    args = config_cls(
        output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=5e-4, warmup_steps=10,
        lr_scheduler_type="cosine", lmbda=1.0, temperature=1.0, max_new_tokens=96, max_length=256, seed=seed,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=50, disable_tqdm=True,
        activation_checkpointing=False, loss_chunk_size=0, **overrides,
    )
    trainer = trainer_cls(model=load_toy_student(), teacher_model=teacher, args=args, train_dataset=train,
                          processing_class=tokenizer)
    start = time.time()
    trainer.train()
    return trainer.model, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--n_test", type=int, default=300)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS / "tsd_kd_toy.csv")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    from trl_reasoning_distill import evaluate, load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from trl_reasoning_distill.utils import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    test = toy_dataset("test", args.n_test, seed=0)
    train = toy_dataset("train", 2048, seed=0).select_columns(["prompt"])
    done = set()
    if args.out.exists():
        done = {(r["variant"], int(r["seed"])) for r in csv.DictReader(args.out.open())}
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()
    if ("student (cold start)", 0) not in done:
        acc = evaluate(load_toy_student(), tokenizer, test, max_new_tokens=192, progress=False).greedy_accuracy
        write(args.out, {"variant": "student (cold start)", "seed": 0, "steps": 0, "accuracy": acc,
                         "seconds_per_step": "", "train_seconds": 0, "eval_n": args.n_test})
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as out:
                model, seconds = train_once(variant, seed, args.steps, train, tokenizer, teacher, out)
            acc = evaluate(model, tokenizer, test, max_new_tokens=192, progress=False).greedy_accuracy
            write(args.out, {"variant": variant, "seed": seed, "steps": args.steps, "accuracy": acc,
                             "seconds_per_step": seconds / args.steps, "train_seconds": seconds,
                             "eval_n": args.n_test})
            print(f"{variant:<36} seed {seed}: accuracy {acc:.3f} ({seconds / args.steps:.2f} s/step)", flush=True)


def write(path: Path, row: dict) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, FIELDS).writerow(row)
        f.flush()


if __name__ == "__main__":
    main()
