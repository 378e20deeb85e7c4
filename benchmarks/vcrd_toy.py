"""VCRD on the toy world: held-out accuracy vs the constant-weight loss, GKD and the cold-started student; the judge's
cost per step.

Every run starts from the same cold-started student and trains for the same steps on 16 prompts a step. VCRD and its
constant-weight twin (DistiLLM-2's loss) read one offline teacher response and one offline student response per
prompt, sampled once from the toy teacher and the cold-started student (`vcrd.toy_vcrd_dataset`, steps x 16 prompts,
shared by every run); GKD samples its student responses on-policy. Each run is evaluated greedily on held-out test
problems. The judge's overhead is measured after training on one batch of 16: the scorer's time (proposal
generation, judging, weights) over the rest of `compute_loss` + backward. Results are appended to
`results/vcrd_toy.csv` as each run finishes, so a stopped run resumes where it stopped.

    python benchmarks/vcrd_toy.py                      # 3 seeds, 4 variants
    python benchmarks/vcrd_toy.py --seeds 0 --steps 20 # smoke run
    python benchmarks/vcrd_toy.py --table              # the markdown table of the CSV, mean ± std over seeds

The CSV is fingerprinted (every option but --seeds/--variants/--out, the training settings, the toy models): a run
under other settings refuses to resume it; `--overwrite` starts afresh.
"""

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from trl_reasoning_distill.results import append_row, finished_rows, mean_std, study_settings, toy_identity

RESULTS = Path(__file__).parent / "results"
BATCH = 16
# The exact step checker scores {0, 1}, so Eq. (1) gives 0, ~1 or 1/ε = 1e8 (wherever the teacher's proposal is
# invalid and the student's valid). The paper does not clip (spec A6); the toy run caps w at 2, the PRM-free bound
# (ours), so that one such line cannot dominate a batch.
STEP_CHECKER = {"validity_judge": "step_checker", "weight_clip_max": 2.0}
VARIANTS = {  # name -> (trainer, config overrides)
    "VCRD (exact step checker)": ("vcrd", STEP_CHECKER),
    "VCRD (PRM-free)": ("vcrd", {"validity_judge": "teacher_prob"}),
    "constant weights (DistiLLM-2 loss)": ("vcrd", {"validity_judge": "constant"}),
    "GKD (generalized JSD, beta 0.9)": ("kd", {"beta": 0.9, "lmbda": 1.0}),
}
TRAINING = dict(per_device_train_batch_size=BATCH, learning_rate=5e-4, warmup_steps=10, lr_scheduler_type="cosine",
                temperature=1.0, max_new_tokens=96, max_length=256)
EVAL_TOKENS = 192
FIELDS = ["variant", "seed", "steps", "accuracy", "seconds_per_step", "train_seconds", "scorer_ms", "loss_step_ms",
          "scorer_ratio", "eval_n"]


def train_once(variant: str, seed: int, steps: int, data, tokenizer, teacher, out: str):
    from trl_reasoning_distill import KDConfig, KDTrainer, load_toy_student
    from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer

    kind, overrides = VARIANTS[variant]
    config_cls, trainer_cls = (KDConfig, KDTrainer) if kind == "kd" else (VCRDConfig, VCRDTrainer)
    extra = {"max_prompt_length": 64} if kind == "vcrd" else {}
    args = config_cls(
        output_dir=out, max_steps=steps, seed=seed, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=50, disable_tqdm=True, activation_checkpointing=False, **TRAINING, **extra, **overrides,
    )
    train = data if kind == "vcrd" else data.select_columns(["prompt"])
    trainer = trainer_cls(model=load_toy_student(), teacher_model=teacher, args=args, train_dataset=train,
                          processing_class=tokenizer)
    start = time.time()
    trainer.train()
    return trainer, time.time() - start


def scorer_overhead(trainer, repeats: int = 3) -> tuple[float, float]:
    """Median `(scorer_ms, loss_step_ms)` on one batch: the scorer is the generation of proposals plus the judge and
    weights inside `compute_loss` (its `vcrd/judge_seconds`); the loss step, the rest of `compute_loss` + backward."""
    rows = [trainer.train_dataset[i] for i in range(BATCH)]
    trainer.model.train()
    scorer, step = [], []
    for _ in range(repeats):
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        start = time.perf_counter()
        batch = trainer.generate_missing(batch, mode="train")
        generation = time.perf_counter() - start
        trainer.model.zero_grad()
        start = time.perf_counter()
        trainer.compute_loss(trainer.model, batch).backward()
        total = time.perf_counter() - start
        judge = trainer._metrics["train"]["vcrd/judge_seconds"][-1]
        scorer.append(1000 * (generation + judge))
        step.append(1000 * (total - judge))
    return statistics.median(scorer), statistics.median(step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n_test", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS / "vcrd_toy.csv")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return

    from trl_reasoning_distill import evaluate, load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from trl_reasoning_distill.utils import quiet_cpu_run
    from trl_reasoning_distill.vcrd import toy_vcrd_dataset

    quiet_cpu_run()
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    test = toy_dataset("test", args.n_test, seed=0)
    settings = study_settings(args, variant_configs=VARIANTS, training=TRAINING, eval_tokens=EVAL_TOKENS,
                              **toy_identity(teacher=teacher, tokenizer=tokenizer))
    done = {(r["variant"], int(r["seed"])) for r in finished_rows(args.out, FIELDS, settings, args.overwrite)}
    if ("student (cold start)", 0) not in done:
        acc = evaluate(load_toy_student(), tokenizer, test, max_new_tokens=EVAL_TOKENS, progress=False).greedy_accuracy
        append_row(args.out, FIELDS, {"variant": "student (cold start)", "seed": 0, "steps": 0, "accuracy": acc,
                         "train_seconds": 0, "eval_n": args.n_test})
    todo = [(seed, variant) for seed in args.seeds for variant in args.variants if (variant, seed) not in done]
    data = None
    if todo:  # one offline rollout set (seed 0) for every run, as the paper generates its rollouts once (§12)
        start = time.time()
        data = toy_vcrd_dataset(args.steps * BATCH, seed=0, teacher=teacher, tokenizer=tokenizer)
        print(f"offline rollouts for {len(data)} prompts: {time.time() - start:.0f} s", flush=True)
    for seed, variant in todo:
        with tempfile.TemporaryDirectory() as out:
            trainer, seconds = train_once(variant, seed, args.steps, data, tokenizer, teacher, out)
            scorer_ms, step_ms = scorer_overhead(trainer) if VARIANTS[variant][0] == "vcrd" else ("", "")
        acc = evaluate(trainer.model, tokenizer, test, max_new_tokens=EVAL_TOKENS, progress=False).greedy_accuracy
        ratio = scorer_ms / step_ms if step_ms else ""
        append_row(args.out, FIELDS, {"variant": variant, "seed": seed, "steps": args.steps, "accuracy": acc,
                         "seconds_per_step": seconds / args.steps, "train_seconds": seconds, "scorer_ms": scorer_ms,
                         "loss_step_ms": step_ms, "scorer_ratio": ratio, "eval_n": args.n_test})
        overhead = f", scorer {ratio:.2f}x the loss step" if ratio != "" else ""
        print(f"{variant:<36} seed {seed}: accuracy {acc:.3f} ({seconds / args.steps:.2f} s/step{overhead})",
              flush=True)


def table(path: Path) -> str:
    """Markdown table: per variant, held-out accuracy as mean ± sample std over seeds, each seed's, and the median
    scorer time as a fraction of the loss step."""
    rows = list(csv.DictReader(path.open()))
    lines = ["| variant | seeds | accuracy (mean ± std) | per seed | scorer / loss step |",
             "| --- | --- | --- | --- | --- |"]
    rows.sort(key=lambda row: int(row["seed"]))
    for variant in dict.fromkeys(row["variant"] for row in rows):
        runs = [row for row in rows if row["variant"] == variant]
        accuracies = [float(row["accuracy"]) for row in runs]
        ratios = [float(row["scorer_ratio"]) for row in runs if row["scorer_ratio"]]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else ""
        lines.append(f"| {variant} | {len(accuracies)} | {mean_std(accuracies)} | "
                     f"{', '.join(f'{a:.3f}' for a in accuracies)} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
