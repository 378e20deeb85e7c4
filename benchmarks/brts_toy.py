"""BRTS on the toy world: held-out accuracy on easy and hard problems vs plain OPD and GKD, tier use, step time.

Every run starts from the same cold-started student, trains on the same prompts (2-6 operands, ours: the toy teacher
solves 2-4 operands but only a third of 5-6, so the pool has wrong rollouts to select against and Tier 2 has prompts
to recover) with the same on-policy rollout budget (steps x batch, `lmbda=1`), and is evaluated greedily on held-out
test problems, separately on easy (2-3 operands) and hard (4-6 operands) ones. "Plain OPD" is BRTS's student-context
term alone (`teacher_context_coef=0`: no teacher rollouts); BRTS adds the teacher pool of N rollouts, with or without
Tier-2 recovery. Results are appended to `results/brts_toy.csv` as each run finishes, so a stopped run resumes.

    python benchmarks/brts_toy.py                      # 3 seeds, 6 variants
    python benchmarks/brts_toy.py --seeds 0 --steps 2 --n_test 4 --out /tmp/brts_smoke.csv  # smoke run
    python benchmarks/brts_toy.py --table              # the markdown table of the CSV, mean ± std over seeds

The CSV is fingerprinted (every option but --seeds/--variants/--out, the training settings, the toy models): a run
under other settings refuses to resume it; `--overwrite` starts afresh.
"""

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from trl_reasoning_distill.reproduce_report import SPLITS  # operands per held-out problem: easy 2-3, hard 4-6
from trl_reasoning_distill.results import append_row, finished_rows, mean_std, study_settings, toy_identity

RESULTS = Path(__file__).parent / "results"
VARIANTS = {  # name -> (trainer, config overrides)
    "GKD (on-policy, generalized JSD, beta 0.5)": ("kd", {"beta": 0.5}),
    "plain OPD (student-context term only)": ("brts", {"teacher_context_coef": 0.0}),
    "BRTS N=2": ("brts", {"num_teacher_rollouts": 2}),
    "BRTS N=2 + recovery": ("brts", {"num_teacher_rollouts": 2, "recovery": True}),
    "BRTS N=4": ("brts", {"num_teacher_rollouts": 4}),
    "BRTS N=4 + recovery": ("brts", {"num_teacher_rollouts": 4, "recovery": True}),
    # Not run by default: the other candidate for the paper's lost lambda (ours; the released code has a 'coef=1' run).
    "BRTS N=2, lambda 1": ("brts", {"num_teacher_rollouts": 2, "teacher_context_coef": 1.0}),
}
DEFAULT_VARIANTS = list(VARIANTS)[:6]
TIER_STATS = ["pool_accuracy", "frac_tier1", "frac_tier2", "frac_tier3"]
FIELDS = ["variant", "seed", "steps", "accuracy_easy", "accuracy_hard", "seconds_per_step", "train_seconds",
          "eval_n", *TIER_STATS]
OPD = "plain OPD (student-context term only)"
TRAINING = dict(per_device_train_batch_size=16, learning_rate=5e-4, warmup_steps=10, lr_scheduler_type="cosine",
                lmbda=1.0, temperature=1.0, max_new_tokens=128, max_length=256)
EVAL_TOKENS = 192


def train_once(variant: str, seed: int, steps: int, train, tokenizer, teacher, out: str, clock=time.time):
    """Train one variant; returns the model, the training time by `clock` and BRTS's tier statistics."""
    from trl_reasoning_distill import KDConfig, KDTrainer, load_toy_student
    from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer

    kind, overrides = VARIANTS[variant]
    config_cls, trainer_cls = (KDConfig, KDTrainer) if kind == "kd" else (BRTSConfig, BRTSTrainer)
    args = config_cls(
        output_dir=out, max_steps=steps, seed=seed, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=min(25, steps), disable_tqdm=True, activation_checkpointing=False, loss_chunk_size=0,
        **TRAINING, **overrides,
    )
    trainer = trainer_cls(model=load_toy_student(), teacher_model=teacher, args=args, train_dataset=train,
                          processing_class=tokenizer)
    start = clock()
    trainer.train()
    logs = [log for log in trainer.state.log_history if "brts/frac_tier1" in log]
    stats = {name: statistics.mean(log[f"brts/{name}"] for log in logs) if logs else "" for name in TIER_STATS}
    return trainer.model, clock() - start, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n_test", type=int, default=1000, help="held-out problems per split (easy, hard)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS / "brts_toy.csv")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    parser.add_argument("--step_time", type=int, default=0, metavar="STEPS",
                        help="time STEPS training steps of every variant in interleaved rounds (CPU time), print the "
                             "ratios, and exit")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of --step_time")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return
    if args.step_time:
        print(step_time_table(args.step_time, args.variants, RESULTS / "brts_step_time.csv", args.repeats))
        return

    from trl_reasoning_distill import evaluate, load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from trl_reasoning_distill.reproduce import test_sets
    from trl_reasoning_distill.utils import quiet_cpu_run

    quiet_cpu_run()
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    tests = test_sets(args.n_test)
    train = toy_dataset("train", 2048, seed=0, min_ops=2, max_ops=6).select_columns(["prompt", "answer"])

    def accuracies(model) -> dict[str, float]:
        return {f"accuracy_{split}": evaluate(model, tokenizer, test, max_new_tokens=EVAL_TOKENS, progress=False)
                .greedy_accuracy for split, test in tests.items()}

    settings = study_settings(args, ignore=["step_time", "repeats"], variant_configs=VARIANTS, training=TRAINING,
                              splits=SPLITS, eval_tokens=EVAL_TOKENS,
                              **toy_identity(teacher=teacher, tokenizer=tokenizer))
    done = {(r["variant"], int(r["seed"])) for r in finished_rows(args.out, FIELDS, settings, args.overwrite)}
    for name, load in (("student (cold start)", load_toy_student), ("teacher", lambda: teacher)):
        if (name, 0) not in done:
            append_row(args.out, FIELDS, {"variant": name, "seed": 0, "steps": 0, **accuracies(load()),
                                          "seconds_per_step": "", "train_seconds": 0, "eval_n": args.n_test})
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as out:
                model, seconds, stats = train_once(variant, seed, args.steps, train, tokenizer, teacher, out)
            scores = accuracies(model)
            append_row(args.out, FIELDS, {"variant": variant, "seed": seed, "steps": args.steps, **scores,
                             "seconds_per_step": seconds / args.steps, "train_seconds": seconds,
                             "eval_n": args.n_test, **stats})
            print(f"{variant:<44} seed {seed}: easy {scores['accuracy_easy']:.3f}, hard {scores['accuracy_hard']:.3f}"
                  f" ({seconds / args.steps:.2f} s/step)", flush=True)


def step_time_table(steps: int, variants: list[str], csv_path: Path | None = None, repeats: int = 3) -> str:
    """CPU seconds (`time.process_time`) per training step of each variant on the same prompts and seed. The machine is
    shared, so the variants run interleaved (plain OPD, then the others, `repeats` rounds); each round gives one ratio
    to that round's plain OPD, and the table reports the median and the range. Also written to `csv_path`."""
    import torch

    from trl_reasoning_distill import load_toy_teacher, load_toy_tokenizer, toy_dataset
    from trl_reasoning_distill.utils import quiet_cpu_run

    quiet_cpu_run()
    tokenizer, teacher = load_toy_tokenizer(), load_toy_teacher()
    train = toy_dataset("train", 2048, seed=0, min_ops=2, max_ops=6).select_columns(["prompt", "answer"])
    order = [OPD, *(v for v in variants if v != OPD)]
    seconds = {variant: [] for variant in order}
    for _ in range(repeats):
        for variant in order:
            torch.manual_seed(0)
            with tempfile.TemporaryDirectory() as out:
                cpu = train_once(variant, 0, steps, train, tokenizer, teacher, out, clock=time.process_time)[1]
            seconds[variant].append(cpu / steps)
    rows = []
    for variant, times in seconds.items():
        ratios = [t / base for t, base in zip(times, seconds[OPD])]
        rows.append({"variant": variant, "steps": steps, "repeats": repeats,
                     "cpu_seconds_per_step": statistics.median(times), "ratio_to_plain_opd": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)})
    if csv_path is not None:
        with csv_path.open("w", newline="") as handle:  # written whole each time, never resumed
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    lines = [f"| variant ({steps} steps, {repeats} interleaved rounds) | CPU s/step | × plain OPD (median) | range |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['cpu_seconds_per_step']:.2f} | {r['ratio_to_plain_opd']:.2f} | "
              f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} |" for r in rows]
    return "\n".join(lines)


def table(path: Path) -> str:
    """Markdown table: per variant, held-out accuracy (mean ± sample std over seeds) on both splits, step time and
    its ratio to plain OPD, and the teacher pool's accuracy and tier fractions (means over seeds)."""
    rows = sorted(csv.DictReader(path.open()), key=lambda row: int(row["seed"]))
    opd_times = [float(row["seconds_per_step"]) for row in rows if row["variant"] == OPD]
    lines = ["| variant | seeds | easy (2-3 ops) | hard (4-6 ops) | s/step | × plain OPD | pool accuracy | "
             "tiers 1 / 2 / 3 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant in dict.fromkeys(row["variant"] for row in rows):
        group = [row for row in rows if row["variant"] == variant]
        cells = [variant, str(len(group))] + [mean_std([float(row[f"accuracy_{split}"]) for row in group])
                                              for split in SPLITS]
        times = [float(row["seconds_per_step"]) for row in group if row["seconds_per_step"]]
        ratio = f"{statistics.mean(times) / statistics.mean(opd_times):.2f}" if times and opd_times else ""
        cells += [f"{statistics.mean(times):.2f}" if times else "", ratio]
        stats = {name: [float(row[name]) for row in group if row[name]] for name in TIER_STATS}
        cells.append(f"{statistics.mean(stats['pool_accuracy']):.3f}" if stats["pool_accuracy"] else "")
        cells.append(" / ".join(f"{statistics.mean(stats[f'frac_tier{level}']):.2f}" for level in (1, 2, 3))
                     if stats["frac_tier1"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
