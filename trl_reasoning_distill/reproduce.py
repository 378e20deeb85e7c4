"""The toy reproduction: every method and baseline trained from the same cold-started student on the toy world, each
family under one budget, evaluated on held-out easy and hard problems. `benchmarks/reproduce.py`, `trl-distill
reproduce` run it; `make demo` runs its two baselines.

The budget of a run (per seed), named by its cost axis:
- **optimizer steps**: `sft_steps` steps of `batch` sequences for the SFT-type methods (Standard KD, Gen-SSD,
  CoTD-PO, which train on teacher-generated data) and `steps` for the on-policy ones (GKD, TSD-KD, VCRD, BRTS);
  each method is compared with its paper's baseline in its own family, at equal optimizer steps;
- **prompts**: the same training prompts (2-6 operands, drawn per seed) for every method of a family, one per
  sequence of the budget (on-policy methods roll out each once; offline methods sample their data from them);
- **teacher tokens generated**: Standard KD samples the teacher once per prompt (kept if correct); Gen-SSD samples
  prompts, in order, until it has generated as many teacher tokens as Standard KD did on that seed. The on-policy
  methods (GKD, TSD-KD, VCRD's student half, BRTS's student term) use the teacher as a scorer of student tokens;
  BRTS, VCRD and CoTD-PO also generate with the teacher (N rollouts per prompt, one response per prompt, one
  rationale per prompt). `teacher_tokens` records what each run generated.

Learning rate, chosen fairly: every method of a family runs the family's small sweep (`SWEEP`) on the first seed,
the rate of best greedy accuracy on `n_test` validation problems (never the test problems) is kept, and the other
seeds run at it (`--no-sweep` runs every seed at `CHOSEN`, the rates the committed sweep chose). Each method runs
at the settings its toy study found to train, with the paper's loss defaults otherwise. Evaluation: greedy pass@1
on `n_test` held-out test problems of 2-3 operands (easy) and of 4-6 operands (hard), and on the validation split;
the per-problem results go beside the CSV (`<out>.problems.jsonl`), so each method's paired difference to its
baseline gets a 95 % bootstrap interval over problems and seeds (`reproduce_report.py`).

Each finished run is one CSV row, appended and flushed, so a stopped reproduction resumes at the next unfinished
(method, seed, learning rate); teacher samples and rollouts are kept in `<out>.work/` and reused by every rate of
a seed. The CSV is fingerprinted (budgets, `n_test`, the settings below, the toy models, the code version): a
reproduction under other settings refuses to resume it, naming what differs; `--overwrite` starts afresh.
"""

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from .jsonl import append_records
from .reproduce_report import (
    BASELINE,
    BRTS,
    COLD_START,
    COTD_PO,
    GEN_SSD,
    GKD,
    METHODS,
    METRICS,
    SPLITS,
    STANDARD_KD,
    TEACHER,
    TSD_KD,
    VALIDATION,
    VCRD,
    chosen_rates,
    gains,
    plot,
    problems_path,
    read_problems,
    sweep_table,
    table,
)
from .results import append_row, finished_rows, toy_identity
from .toy_recipes import (
    CHOSEN,
    COTD_PO_TOY,
    FAMILY,
    GEN_SSD_TOY,
    ON_POLICY_STEPS,
    SFT_STEPS,
    SFT_TYPE,
    SWEEP,
    TSD_KD_TOY,
)

__all__ = ["BASELINE", "CHOSEN", "COTD_PO_TOY", "FAMILY", "FIELDS", "GEN_SSD_TOY", "METHODS", "ON_POLICY_STEPS",
           "SFT_STEPS", "SWEEP", "TSD_KD_TOY", "main", "reproduce"]

FIELDS = ["method", "seed", "learning_rate", "steps", "batch", "examples", "teacher_tokens", "train_seconds",
          "eval_seconds", *METRICS, "eval_n"]
EVAL_TOKENS = 192  # 192 new tokens cover every toy solution style
SAMPLER_BATCH = 16  # problems per GenSSDSampler batch; Gen-SSD's budget is checked after each
# Every fixed setting a row depends on, beside the budgets and n_test: part of the CSV's fingerprint.
SETTINGS = {"splits": SPLITS, "validation": VALIDATION, "eval_tokens": EVAL_TOKENS, "tsd_kd": TSD_KD_TOY,
            "gen_ssd": GEN_SSD_TOY, "cotd_po": COTD_PO_TOY, "sampler_batch": SAMPLER_BATCH}


def _common(out: str, steps: int, batch: int, seed: int, lr: float) -> dict:
    return dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.1, max_length=256, seed=seed,
                use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=max(1, steps),
                disable_tqdm=True, activation_checkpointing=False)


def _sft(data, ctx: dict, out: str, steps: int, batch: int, seed: int, lr: float):
    from transformers import PrinterCallback

    from ._trl import SFTConfig, SFTTrainer
    from .toy import load_toy_student

    args = SFTConfig(completion_only_loss=True, **_common(out, steps, batch, seed, lr))
    trainer = SFTTrainer(model=load_toy_student(), args=args, train_dataset=data.select_columns(["prompt",
                         "completion"]), processing_class=ctx["tokenizer"])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.model


def _sample(kind: str, prompts, ctx: dict, path: Path, seed: int, budget: int | None = None):
    """Teacher data through `GenSSDSampler` (the same code path for both): `plain` = one sample per prompt, kept if
    correct; `chunked` = Gen-SSD on the prompts in order, a sampler batch at a time, until `budget` teacher tokens
    are spent; the problems past the budget (part of the last batch) are dropped. Returns (kept rows, tokens)."""
    from datasets import Dataset

    from .gen_ssd.sampler import ChunkSampling, GenerationSelectionCallback, GenSSDSampler, all_records_path
    from .jsonl import read_records

    decoding = {k: v for k, v in GEN_SSD_TOY.items() if k != "chunk_size"}
    sampling = ChunkSampling(**GEN_SSD_TOY) if kind == "chunked" else ChunkSampling.plain(**decoding)
    sampler = GenSSDSampler(ctx["teacher"], ctx["student"], ctx["tokenizer"], sampling,
                            GenerationSelectionCallback("low"), batch_size=SAMPLER_BATCH, seed=seed, progress=False)
    budget, step = (float("inf"), len(prompts)) if budget is None else (budget, SAMPLER_BATCH)
    # A growing prefix resumes the file (batch k keeps its seed); it starts past every problem already sampled, as the
    # file refuses a prefix that lacks some of its records (another learning rate of this seed sampled them).
    n = max(len(read_records(all_records_path(path))) - step, 0)
    while n < len(prompts):
        n = min(n + step, len(prompts))
        if sampler.sample(prompts.select(range(n)), path).teacher_tokens >= budget:
            break
    seen, kept = read_records(all_records_path(path)), read_records(path)
    rows, spent = [], 0
    for problem in prompts.select(range(n)):
        record = seen[str(problem["id"])]
        if spent + record["teacher_tokens"] > budget and spent:
            break
        spent += record["teacher_tokens"]
        if str(problem["id"]) in kept:
            rows.append({key: kept[str(problem["id"])][key] for key in ("prompt", "completion")})
    if not rows:
        raise RuntimeError(f"no correct teacher trajectory within {budget} teacher tokens; raise --steps.")
    return Dataset.from_list(rows), spent


def run_standard_kd(prompts, ctx, out, steps, batch, seed, lr):
    data, tokens = _sample("plain", prompts, ctx, ctx["work"] / f"standard_kd-seed{seed}.jsonl", seed)
    return _sft(data, ctx, out, steps, batch, seed, lr), len(data), tokens


def run_gen_ssd(prompts, ctx, out, steps, batch, seed, lr):
    standard_kd = next((row for (method, s, _), row in ctx["done"].items() if (method, s) == (STANDARD_KD, seed)),
                       None)  # its row (any rate: sampling comes first), written this run or read from the CSV
    if standard_kd is None:
        raise RuntimeError("Gen-SSD's teacher budget is Standard KD's spend on the same seed; run Standard KD first.")
    budget = int(standard_kd["teacher_tokens"])
    data, tokens = _sample("chunked", prompts, ctx, ctx["work"] / f"gen_ssd-seed{seed}.jsonl", seed, budget)
    return _sft(data, ctx, out, steps, batch, seed, lr), len(data), tokens


def _token_count(tokenizer, texts) -> int:
    """Teacher tokens of generated `texts`: their ids plus the EOS each ended with."""
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)


def _kd_run(config_cls, trainer_cls, train, ctx, out, steps, batch, seed, lr, **overrides):
    from transformers import PrinterCallback

    from .toy import load_toy_student

    on_policy = {"lmbda": 1.0, "temperature": 1.0, "max_new_tokens": 128}
    args = config_cls(**{**_common(out, steps, batch, seed, lr), **on_policy, **overrides})
    trainer = trainer_cls(model=load_toy_student(), teacher_model=ctx["teacher"], args=args, train_dataset=train,
                          processing_class=ctx["tokenizer"])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def run_gkd(prompts, ctx, out, steps, batch, seed, lr):
    from .kd_config import KDConfig
    from .kd_trainer import KDTrainer

    trainer = _kd_run(KDConfig, KDTrainer, prompts.select_columns(["prompt"]), ctx, out, steps, batch, seed, lr,
                      beta=0.5)
    return trainer.model, len(prompts), 0


def run_tsd_kd(prompts, ctx, out, steps, batch, seed, lr):
    from .tsd_kd import TSDKDConfig, TSDKDTrainer

    trainer = _kd_run(TSDKDConfig, TSDKDTrainer, prompts.select_columns(["prompt"]), ctx, out, steps, batch, seed,
                      lr, **TSD_KD_TOY)
    return trainer.model, len(prompts), 0


def run_vcrd(prompts, ctx, out, steps, batch, seed, lr):
    from .evaluation import encode_prompts
    from .vcrd import VCRDConfig, VCRDTrainer, sample_vcrd_rollouts

    data = sample_vcrd_rollouts(ctx["teacher"], ctx["student"], ctx["tokenizer"], prompts, max_new_tokens=EVAL_TOKENS,
                                seed=seed, output_jsonl=ctx["work"] / f"vcrd-seed{seed}.jsonl", progress=False)
    prompt_lengths = [len(ids) for ids in encode_prompts(ctx["tokenizer"], data["prompt"])]
    tokens = _token_count(ctx["tokenizer"], data["teacher_completion"])
    trainer = _kd_run(VCRDConfig, VCRDTrainer, data, ctx, out, steps, batch, seed, lr, validity_judge="teacher_prob",
                      lmbda=0.0, max_prompt_length=max(prompt_lengths))  # VCRD's rollouts are the offline ones
    return trainer.model, len(data), tokens


def run_cotd_po(prompts, ctx, out, steps, batch, seed, lr):
    from .cotd_po import CoTDPOConfig, CoTDPORoundsConfig, TeacherRationales, ToyCorrectnessScorer, run_rounds
    from .cotd_po.rounds import round_dir
    from .toy import load_toy_student

    rounds = 2  # ours: the study's rounds 2-3 add nothing on the toy task; two show the iteration at half the steps
    args = CoTDPOConfig(**{**_common(out, steps // rounds, batch, seed, lr), **COTD_PO_TOY})
    config = CoTDPORoundsConfig(num_rounds=rounds, prompts_per_round=len(prompts) // rounds, num_candidates=4,
                                max_new_tokens=24)
    rationales = TeacherRationales(ctx["teacher"], ctx["tokenizer"], args, max_new_tokens=160)
    model = run_rounds(load_toy_student(), ctx["tokenizer"], prompts.select_columns(["id", "prompt", "answer"]),
                       ToyCorrectnessScorer(), args, config, rationales=rationales, progress=False)
    records = [json.loads(line) for r in range(1, rounds + 1)
               for line in (round_dir(out, r) / "samples.jsonl").read_text().splitlines()]
    tokens = _token_count(ctx["tokenizer"], [r["rationale"] for r in records if r.get("rationale")])
    return model, sum("skipped" not in r for r in records), tokens


def run_brts(prompts, ctx, out, steps, batch, seed, lr):
    from .brts import BRTSConfig, BRTSTrainer

    class CountingBRTSTrainer(BRTSTrainer):
        """BRTS that adds up the teacher tokens it samples (Tier 1 pools and Tier 2 recovery)."""

        teacher_tokens = 0

        def generate_teacher_rollouts(self, prompt_ids, n):
            groups = super().generate_teacher_rollouts(prompt_ids, n)
            self.teacher_tokens += sum(len(sample.token_ids) for group in groups for sample in group)
            return groups

    trainer = _kd_run(BRTSConfig, CountingBRTSTrainer, prompts.select_columns(["prompt", "answer"]), ctx, out, steps,
                      batch, seed, lr, num_teacher_rollouts=2, recovery=True, loss_chunk_size=0)
    return trainer.model, len(prompts), trainer.teacher_tokens


RUNNERS = {STANDARD_KD: run_standard_kd, GKD: run_gkd, GEN_SSD: run_gen_ssd, TSD_KD: run_tsd_kd, VCRD: run_vcrd,
           COTD_PO: run_cotd_po, BRTS: run_brts}


def measure(model, ctx: dict) -> tuple[dict, dict]:
    """Greedy pass@1 on the validation split and each held-out test split, and per split the 0/1 string of each
    problem's result (in the split's order)."""
    from .evaluation import evaluate

    scores, correct = {}, {}
    for split, rows in ctx["eval_sets"].items():
        result = evaluate(model, ctx["tokenizer"], rows, max_new_tokens=EVAL_TOKENS, progress=False)
        scores[f"{split}_greedy"] = result.greedy_accuracy
        correct[split] = "".join("1" if r["greedy_correct"] else "0" for r in result.records)
    return scores, correct


def test_sets(n_test: int) -> dict:
    """`n_test` held-out test problems per split (`SPLITS`: easy, hard)."""
    from .toy import toy_dataset

    return {s: toy_dataset("test", n_test, seed=0, min_ops=lo, max_ops=hi) for s, (lo, hi) in SPLITS.items()}


def eval_sets(n_test: int) -> dict:
    """The held-out problems every run is scored on: `n_test` validation problems and `n_test` per test split."""
    from .toy import toy_dataset

    return {"val": toy_dataset("validation", n_test, seed=0, min_ops=VALIDATION[0], max_ops=VALIDATION[1]),
            **test_sets(n_test)}


def train_prompts(n: int, seed: int):
    """The `n` training prompts (2-6 operands) of a seed, the same for every method and rate."""
    from .toy import toy_dataset

    return toy_dataset("train", n, seed=100 + seed, min_ops=2, max_ops=6)


def _plan(methods: list[str], seeds: list[int], sweep: bool, done: dict) -> list[tuple[str, int, float | None]]:
    """The (method, seed, rate) runs in order: with `sweep`, every rate of the family on the first seed, then the
    other seeds at the chosen rate (None until the first seed's sweep is done); else every seed at `CHOSEN`."""
    if not sweep:
        return [(m, s, CHOSEN[m]) for s in seeds for m in methods]
    first = [(m, seeds[0], lr) for m in methods for lr in SWEEP[FAMILY[m]]]
    return first + [(m, s, None) for s in seeds[1:] for m in methods]


def reproduce(out: Path, seeds: list[int], steps: int, sft_steps: int, batch: int, n_test: int, methods: list[str],
              sweep: bool = True, verbose: bool = True, overwrite: bool = False) -> list[dict]:
    """Run every (method, seed, rate) not yet in `out`; returns the CSV's rows. With `verbose`, a bar over the runs
    (elapsed, ETA, the run in progress) and one line per finished run.

    `out` is resumed only when its fingerprint matches this run's settings (else `fingerprint.StaleOutputError`
    names the differing ones, before any training); `overwrite=True` deletes it, its per-problem results and its
    work folder, and starts afresh.
    """
    import torch

    from .progress import ThroughputBar
    from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer
    from .utils import quiet_cpu_run

    unknown = [m for m in methods if m not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(RUNNERS)}.")
    if GEN_SSD in methods and STANDARD_KD not in methods:
        raise ValueError("Gen-SSD's teacher budget is Standard KD's spend: include Standard KD in --methods.")
    if min(steps, sft_steps, batch, n_test) < 1 or not seeds:
        raise ValueError(f"steps, sft_steps, batch and n_test must be >= 1 and seeds non-empty; got {steps}, "
                         f"{sft_steps}, {batch}, {n_test}, {seeds}.")
    quiet_cpu_run()
    ctx = {"tokenizer": load_toy_tokenizer(), "teacher": load_toy_teacher(), "student": load_toy_student()}
    settings = {"steps": steps, "sft_steps": sft_steps, "batch": batch, "n_test": n_test, "sweep": sweep,
                "learning_rates": SWEEP if sweep else CHOSEN, **SETTINGS,
                **toy_identity(ctx["teacher"], ctx["student"], ctx["tokenizer"])}
    out, correct_path = Path(out), problems_path(out)
    ctx["work"] = out.with_suffix(".work")
    rows = finished_rows(out, FIELDS, settings, overwrite, companions=(correct_path, ctx["work"]))
    ctx["work"].mkdir(parents=True, exist_ok=True)
    ctx["eval_sets"] = eval_sets(n_test)
    ctx["done"] = done = {(r["method"], int(r["seed"]), float(r["learning_rate"] or 0)): r for r in rows}

    fixed = [(COLD_START, 0, 0.0), (TEACHER, 0, 0.0)]
    runs = fixed + _plan(methods, seeds, sweep, done)
    bar = ThroughputBar(len(runs), "reproduce", unit="run", enabled=verbose,
                        initial=sum((m, s, lr) in done for m, s, lr in runs if lr is not None))

    def record(row: dict, correct: dict) -> None:
        append_records(correct_path, [{key: row[key] for key in ("method", "seed", "learning_rate")} |
                                      {"correct": correct}])
        append_row(out, FIELDS, row)
        done[(row["method"], int(row["seed"]), float(row["learning_rate"]))] = row
        if verbose:
            bar.write(f"{row['method']:<22} seed {row['seed']} lr {row['learning_rate']:g}: " +
                      ", ".join(f"{m} {row[m]:.3f}" for m in METRICS) + f" ({row['train_seconds']:.0f} s training)")
        bar.update(1)

    for name, model in ((COLD_START, ctx["student"]), (TEACHER, ctx["teacher"])):
        if (name, 0, 0.0) not in done:
            bar.describe(f"reproduce: {name}")
            began = time.time()
            scores, correct = measure(model, ctx)
            record({"method": name, "seed": 0, "learning_rate": 0.0, "steps": 0, "batch": batch, "examples": 0,
                    "teacher_tokens": 0, "train_seconds": 0.0, **scores, "eval_seconds": time.time() - began,
                    "eval_n": n_test}, correct)
    for method, seed, lr in runs[len(fixed):]:
        if lr is None:  # after the sweep: the rate the first seed chose
            lr = chosen_rates([r for (m, _, _), r in done.items() if m == method])[method]
        if (method, seed, lr) in done:
            continue
        n_steps = sft_steps if method in SFT_TYPE else steps
        prompts = train_prompts(n_steps * batch, seed)
        bar.describe(f"reproduce: {method}, seed {seed}, lr {lr:g}")
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as run_dir:
            began = time.time()
            model, examples, tokens = RUNNERS[method](prompts, ctx, run_dir, n_steps, batch, seed, lr)
            trained = time.time()
            scores, correct = measure(model, ctx)
        record({"method": method, "seed": seed, "learning_rate": lr, "steps": n_steps, "batch": batch,
                "examples": examples, "teacher_tokens": tokens, "train_seconds": trained - began,
                "eval_seconds": time.time() - trained, **scores, "eval_n": n_test}, correct)
    bar.close()
    with out.open(newline="") as handle:
        return list(csv.DictReader(handle))


def build_parser(description: str = __doc__, **defaults) -> argparse.ArgumentParser:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The docstring as written, and each option's default."""

    parser = argparse.ArgumentParser(description=description, formatter_class=Formatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.get("seeds", [0, 1, 2]),
                        help="seeds, one paired run of every method each (the first one also runs the sweep)")
    parser.add_argument("--steps", type=int, default=defaults.get("steps", ON_POLICY_STEPS),
                        help="optimizer steps of the on-policy methods (GKD, TSD-KD, VCRD, BRTS)")
    parser.add_argument("--sft_steps", type=int, default=defaults.get("sft_steps", SFT_STEPS),
                        help="optimizer steps of the SFT-type methods (Standard KD, Gen-SSD, CoTD-PO)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--n_test", type=int, default=defaults.get("n_test", 1000),
                        help="held-out problems per split (validation, easy test, hard test)")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=defaults.get("sweep", True),
                        help="choose each method's learning rate on validation (first seed) among its family's")
    parser.add_argument("--methods", nargs="+", default=defaults.get("methods", METHODS), choices=METHODS,
                        help="methods and baselines run")
    parser.add_argument("--out", type=Path, default=defaults.get("out", Path("benchmarks/results/reproduce.csv")),
                        help="CSV of the rows (resumed if it exists)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and exit (reads only)")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    return parser


def main(argv: list[str] | None = None, **defaults) -> list[dict]:
    args = build_parser(**defaults).parse_args(argv)
    if not args.table:
        reproduce(args.out, args.seeds, args.steps, args.sft_steps, args.batch, args.n_test, args.methods,
                  sweep=args.sweep, overwrite=args.overwrite)
    with Path(args.out).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    plot(rows, args.plot or Path(args.out).with_suffix(".png"))
    print("\n" + table(rows) + "\n\n" + gains(rows, read_problems(args.out)))
    sweep = sweep_table(rows)
    if len(sweep.splitlines()) > 2:  # some method ran more than one rate
        print("\nLearning-rate sweep (validation split):\n" + sweep)
    return rows
