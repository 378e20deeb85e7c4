"""The toy reproduction: every method and baseline trained from the same cold-started student on the toy world, under
one budget, evaluated on held-out easy and hard problems. `benchmarks/reproduce.py`, `trl-distill reproduce` and
(at a small budget) `make demo` run it.

The budget of a run (per seed):
- **student**: `steps` optimizer steps of `batch` sequences for every trained method (on-policy methods roll out
  `steps x batch` prompts once each; offline methods train `steps` steps on their data);
- **prompts**: the same `steps x batch` training prompts (2-6 operands, drawn per seed) for every method;
- **teacher tokens generated**: Standard KD samples the teacher once per prompt (kept if correct); Gen-SSD samples
  prompts, in order, until it has generated as many teacher tokens as Standard KD did on that seed. The on-policy
  methods (GKD, TSD-KD, VCRD's student half, BRTS's student term) use the teacher as a scorer of student tokens;
  BRTS, VCRD and CoTD-PO also generate with the teacher (N rollouts per prompt, one response per prompt, one
  rationale per prompt). `teacher_tokens` records what each run generated.

Each method runs at the settings its toy study found to train (each study's script and table in `benchmarks/`), with
the paper's loss defaults otherwise. Evaluation: greedy pass@1 and avg@8 (T = 1) on `n_test` held-out problems of
2-3 operands (easy) and of 4-6 operands (hard). Each finished run is one CSV row, appended and flushed, so a stopped
reproduction resumes at the next unfinished (method, seed); a PNG bar chart is drawn from the CSV. The CSV is
fingerprinted (`steps`, `batch`, `n_test`, the settings below, the toy models, the code version): a reproduction
under other settings refuses to resume it, naming what differs; `--overwrite` starts afresh.
"""

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

from .results import append_row, finished_rows, mean_std, toy_identity

COLD_START, TEACHER = "student (cold start)", "teacher"
STANDARD_KD, GKD, GEN_SSD, TSD_KD, VCRD, COTD_PO, BRTS = (
    "Standard KD", "GKD", "Gen-SSD", "TSD-KD", "VCRD", "CoTD-PO", "BRTS")
METHODS = [STANDARD_KD, GKD, GEN_SSD, TSD_KD, VCRD, COTD_PO, BRTS]
BASELINE = {  # the baseline each paper compares its method with (its main results table)
    GEN_SSD: STANDARD_KD, TSD_KD: GKD, VCRD: GKD, COTD_PO: STANDARD_KD, BRTS: GKD,
}
PAPER_GAIN = {  # the paper's headline gain over that baseline (Table 1; BRTS: Table 2); a different task and scale
    GEN_SSD: "+5.9 avg. of 5 math benchmarks over Standard KD (QwQ-32B -> Qwen2.5-Math-1.5B)",
    TSD_KD: "+8.0 MATH over GKD beta 0.9 (Qwen2.5 14B -> 1.5B; 18.1 -> 26.1)",
    VCRD: "+2.2 / +3.1 avg. pass@1 over GKD (Qwen2-Math / Qwen2.5-Math 7B -> 1.5B)",
    COTD_PO: "+35.2 AlpacaEval 2 LC over CoT fine-tuning (Specialized KD 18.59 -> 53.80; Llama-3.1-8B)",
    BRTS: "+3.3 AIME25 mean over plain on-policy distillation (N = 2 + Tier 2; R1-Distill-1.5B)",
}
SPLITS = {"easy": (2, 3), "hard": (4, 6)}  # operands per held-out problem (BRTS study's split)
METRICS = [f"{split}_{metric}" for split in SPLITS for metric in ("greedy", "avg8")]
FIELDS = ["method", "seed", "steps", "batch", "examples", "teacher_tokens", "train_seconds", "eval_seconds",
          *METRICS, "eval_n"]
AVG_K, EVAL_TOKENS = 8, 192  # 192 new tokens cover every toy solution style
# The toy-scaled settings the method studies use too (ours): TSD-KD's extra terms brought to the direct term's first
# gradient norm (`benchmarks/tsd_kd_toy.py --grad_norms`; the paper's coefficients collapse the toy student), and
# Gen-SSD's chunks scaled to ~36-token toy solutions, decoded as the toy build samples its teacher (gen_ssd_cost.py).
TSD_KD_TOY = {"top_k": 3, "entropy_coef": 0.015, "indirect_coef": 0.01}
GEN_SSD_TOY = dict(chunk_size=24, max_new_tokens=192, temperature=1.0, top_p=0.95, top_k=30)
COTD_PO_TOY = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")
LEARNING_RATE = {"sft": 1e-3, "kd": 5e-4, "cotd_po": 2e-4}  # ours: the demo's and the toy studies' rates
SAMPLER_BATCH = 16  # problems per GenSSDSampler batch; Gen-SSD's budget is checked after each
# Every fixed setting a row depends on, beside steps, batch and n_test: part of the CSV's fingerprint.
SETTINGS = {"splits": SPLITS, "avg_k": AVG_K, "eval_tokens": EVAL_TOKENS, "tsd_kd": TSD_KD_TOY, "gen_ssd": GEN_SSD_TOY,
            "cotd_po": COTD_PO_TOY, "learning_rate": LEARNING_RATE, "sampler_batch": SAMPLER_BATCH}


def _common(out: str, steps: int, batch: int, seed: int, lr: float) -> dict:
    return dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.1, max_length=256, seed=seed,
                use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=max(1, steps),
                disable_tqdm=True, activation_checkpointing=False)


def _sft(data, ctx: dict, out: str, steps: int, batch: int, seed: int):
    from transformers import PrinterCallback

    from ._trl import SFTConfig, SFTTrainer
    from .toy import load_toy_student

    args = SFTConfig(completion_only_loss=True, **_common(out, steps, batch, seed, LEARNING_RATE["sft"]))
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
    n = 0
    while n < len(prompts):  # a growing prefix resumes the file, and batch k keeps its seed
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


def run_standard_kd(prompts, ctx, out, steps, batch, seed):
    data, tokens = _sample("plain", prompts, ctx, Path(out) / "data.jsonl", seed)
    return _sft(data, ctx, out, steps, batch, seed), len(data), tokens


def run_gen_ssd(prompts, ctx, out, steps, batch, seed):
    standard_kd = ctx["done"].get((STANDARD_KD, seed))  # its row, written this run or read from the CSV
    if standard_kd is None:
        raise RuntimeError("Gen-SSD's teacher budget is Standard KD's spend on the same seed; run Standard KD first.")
    budget = int(standard_kd["teacher_tokens"])
    data, tokens = _sample("chunked", prompts, ctx, Path(out) / "data.jsonl", seed, budget)
    return _sft(data, ctx, out, steps, batch, seed), len(data), tokens


def _token_count(tokenizer, texts) -> int:
    """Teacher tokens of generated `texts`: their ids plus the EOS each ended with."""
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)


def _kd_run(config_cls, trainer_cls, train, ctx, out, steps, batch, seed, **overrides):
    from transformers import PrinterCallback

    from .toy import load_toy_student

    on_policy = {"lmbda": 1.0, "temperature": 1.0, "max_new_tokens": 128}
    args = config_cls(**{**_common(out, steps, batch, seed, LEARNING_RATE["kd"]), **on_policy, **overrides})
    trainer = trainer_cls(model=load_toy_student(), teacher_model=ctx["teacher"], args=args, train_dataset=train,
                          processing_class=ctx["tokenizer"])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def run_gkd(prompts, ctx, out, steps, batch, seed):
    from .kd_config import KDConfig
    from .kd_trainer import KDTrainer

    trainer = _kd_run(KDConfig, KDTrainer, prompts.select_columns(["prompt"]), ctx, out, steps, batch, seed, beta=0.5)
    return trainer.model, len(prompts), 0


def run_tsd_kd(prompts, ctx, out, steps, batch, seed):
    from .tsd_kd import TSDKDConfig, TSDKDTrainer

    trainer = _kd_run(TSDKDConfig, TSDKDTrainer, prompts.select_columns(["prompt"]), ctx, out, steps, batch, seed,
                      **TSD_KD_TOY)
    return trainer.model, len(prompts), 0


def run_vcrd(prompts, ctx, out, steps, batch, seed):
    import torch

    from .evaluation import encode_prompts
    from .vcrd import VCRDConfig, VCRDTrainer, sample_vcrd_rollouts

    torch.manual_seed(seed)
    data = sample_vcrd_rollouts(ctx["teacher"], ctx["student"], ctx["tokenizer"], prompts,
                                max_new_tokens=EVAL_TOKENS, progress=False)
    prompt_lengths = [len(ids) for ids in encode_prompts(ctx["tokenizer"], data["prompt"])]
    tokens = _token_count(ctx["tokenizer"], data["teacher_completion"])
    trainer = _kd_run(VCRDConfig, VCRDTrainer, data, ctx, out, steps, batch, seed, validity_judge="teacher_prob",
                      lmbda=0.0, max_prompt_length=max(prompt_lengths))  # VCRD's rollouts are the offline ones
    return trainer.model, len(data), tokens


def run_cotd_po(prompts, ctx, out, steps, batch, seed):
    from .cotd_po import CoTDPOConfig, CoTDPORoundsConfig, TeacherRationales, ToyCorrectnessScorer, run_rounds
    from .cotd_po.rounds import round_dir
    from .toy import load_toy_student

    rounds = 2  # ours: the study's rounds 2-3 add nothing on the toy task; two show the iteration at half the steps
    args = CoTDPOConfig(**{**_common(out, steps // rounds, batch, seed, LEARNING_RATE["cotd_po"]), **COTD_PO_TOY})
    config = CoTDPORoundsConfig(num_rounds=rounds, prompts_per_round=len(prompts) // rounds, num_candidates=4,
                                max_new_tokens=24)
    rationales = TeacherRationales(ctx["teacher"], ctx["tokenizer"], args, max_new_tokens=160)
    model = run_rounds(load_toy_student(), ctx["tokenizer"], prompts.select_columns(["id", "prompt", "answer"]),
                       ToyCorrectnessScorer(), args, config, rationales=rationales, progress=False)
    records = [json.loads(line) for r in range(1, rounds + 1)
               for line in (round_dir(out, r) / "samples.jsonl").read_text().splitlines()]
    tokens = _token_count(ctx["tokenizer"], [r["rationale"] for r in records if r.get("rationale")])
    return model, sum("skipped" not in r for r in records), tokens


def run_brts(prompts, ctx, out, steps, batch, seed):
    from .brts import BRTSConfig, BRTSTrainer

    class CountingBRTSTrainer(BRTSTrainer):
        """BRTS that adds up the teacher tokens it samples (Tier 1 pools and Tier 2 recovery)."""

        teacher_tokens = 0

        def generate_teacher_rollouts(self, prompt_ids, n):
            groups = super().generate_teacher_rollouts(prompt_ids, n)
            self.teacher_tokens += sum(len(sample.token_ids) for group in groups for sample in group)
            return groups

    trainer = _kd_run(BRTSConfig, CountingBRTSTrainer, prompts.select_columns(["prompt", "answer"]), ctx, out, steps,
                      batch, seed, num_teacher_rollouts=2, recovery=True, loss_chunk_size=0)
    return trainer.model, len(prompts), trainer.teacher_tokens


RUNNERS = {STANDARD_KD: run_standard_kd, GKD: run_gkd, GEN_SSD: run_gen_ssd, TSD_KD: run_tsd_kd, VCRD: run_vcrd,
           COTD_PO: run_cotd_po, BRTS: run_brts}


def measure(model, ctx: dict, n_test: int) -> dict:
    """Greedy pass@1 and avg@8 (T = 1) on each held-out split."""
    from .evaluation import evaluate

    scores = {}
    for split, test in ctx["tests"].items():
        result = evaluate(model, ctx["tokenizer"], test, k=AVG_K, temperature=1.0, max_new_tokens=EVAL_TOKENS,
                          progress=False)
        scores[f"{split}_greedy"], scores[f"{split}_avg8"] = result.greedy_accuracy, result.avg_at_k
    return scores


def reproduce(out: Path, seeds: list[int], steps: int, batch: int, n_test: int, methods: list[str],
              verbose: bool = True, overwrite: bool = False) -> list[dict]:
    """Run every (method, seed) not yet in `out`; returns the CSV's rows. With `verbose`, a bar over the runs
    (elapsed, ETA, the run in progress) and one line per finished run.

    `out` is resumed only when its fingerprint matches this run's settings (else `fingerprint.StaleOutputError`
    names the differing ones, before any training); `overwrite=True` deletes it and starts afresh.
    """
    import torch

    from .progress import ThroughputBar
    from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from .utils import quiet_cpu_run

    unknown = [m for m in methods if m not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(RUNNERS)}.")
    if GEN_SSD in methods and STANDARD_KD not in methods:
        raise ValueError("Gen-SSD's teacher budget is Standard KD's spend: include Standard KD in --methods.")
    if min(steps, batch, n_test) < 1 or not seeds:
        raise ValueError(f"steps, batch and n_test must be >= 1 and seeds non-empty; got {steps}, {batch}, "
                         f"{n_test}, {seeds}.")
    quiet_cpu_run()
    ctx = {"tokenizer": load_toy_tokenizer(), "teacher": load_toy_teacher(), "student": load_toy_student()}
    settings = {"steps": steps, "batch": batch, "n_test": n_test, **SETTINGS,
                **toy_identity(ctx["teacher"], ctx["student"], ctx["tokenizer"])}
    rows = finished_rows(out, FIELDS, settings, overwrite)
    ctx["tests"] = {s: toy_dataset("test", n_test, seed=0, min_ops=lo, max_ops=hi) for s, (lo, hi) in SPLITS.items()}
    ctx["done"] = {(r["method"], int(r["seed"])): r for r in rows}
    done = ctx["done"]

    runs = [(name, 0) for name in (COLD_START, TEACHER)] + [(m, seed) for seed in seeds for m in methods]
    bar = ThroughputBar(len(runs), "reproduce", unit="run", initial=sum(run in done for run in runs),
                        enabled=verbose)

    def record(row: dict) -> None:
        append_row(out, FIELDS, row)
        done[(row["method"], int(row["seed"]))] = row
        if verbose:
            bar.write(f"{row['method']:<22} seed {row['seed']}: " + ", ".join(f"{m} {row[m]:.3f}" for m in METRICS) +
                      f" ({row['train_seconds']:.0f} s training)")
        bar.update(1)

    for name, model in ((COLD_START, ctx["student"]), (TEACHER, ctx["teacher"])):
        if (name, 0) not in done:
            bar.describe(f"reproduce: {name}")
            torch.manual_seed(0)
            began = time.time()
            record({"method": name, "seed": 0, "steps": 0, "batch": batch, "examples": 0, "teacher_tokens": 0,
                    "train_seconds": 0.0, **measure(model, ctx, n_test), "eval_seconds": time.time() - began,
                    "eval_n": n_test})
    for seed in seeds:
        prompts = toy_dataset("train", steps * batch, seed=100 + seed, min_ops=2, max_ops=6)
        for method in methods:
            if (method, seed) in done:
                continue
            bar.describe(f"reproduce: {method}, seed {seed}")
            torch.manual_seed(seed)
            with tempfile.TemporaryDirectory() as run_dir:
                began = time.time()
                model, examples, tokens = RUNNERS[method](prompts, ctx, run_dir, steps, batch, seed)
                trained = time.time()
                torch.manual_seed(seed)
                scores = measure(model, ctx, n_test)
            record({"method": method, "seed": seed, "steps": steps, "batch": batch, "examples": examples,
                    "teacher_tokens": tokens, "train_seconds": trained - began, "eval_seconds": time.time() - trained,
                    **scores, "eval_n": n_test})
    bar.close()
    with Path(out).open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- reporting -------------------------------------------------------------------------------------------------------


def _values(rows: list[dict], method: str, metric: str) -> list[float]:
    return [float(r[metric]) for r in rows if r["method"] == method and r[metric] != ""]


def table(rows: list[dict]) -> str:
    """Markdown: per method, each metric as mean ± sample std over seeds, teacher tokens and training time."""
    lines = ["| method | seeds | easy pass@1 | easy avg@8 | hard pass@1 | hard avg@8 | teacher tokens generated | "
             "examples | training s |", "|" + " --- |" * 9]
    for method in [COLD_START, *METHODS, TEACHER]:
        group = [r for r in rows if r["method"] == method]
        if not group:
            continue
        cells = [mean_std(_values(rows, method, m)) for m in METRICS]
        tokens = [float(r["teacher_tokens"]) for r in group if r["teacher_tokens"] != ""]
        extra = [f"{statistics.mean(tokens):,.0f}" if tokens else "-",
                 f"{statistics.mean(float(r['examples']) for r in group):,.0f}",
                 f"{statistics.mean(float(r['train_seconds']) for r in group):.0f}"]
        lines.append(f"| {method} | {len(group)} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def gains(rows: list[dict]) -> str:
    """Markdown: each method's toy gain over its paper's baseline (greedy pass@1, mean over seeds), beside the
    paper's reported gain."""
    lines = ["| method | baseline | toy gain, easy pass@1 | toy gain, hard pass@1 | paper's gain (paper scale) |",
             "| --- | --- | --- | --- | --- |"]
    for method, base in BASELINE.items():
        cells = []
        for split in SPLITS:
            ours, theirs = _values(rows, method, f"{split}_greedy"), _values(rows, base, f"{split}_greedy")
            cells.append(f"{100 * (statistics.mean(ours) - statistics.mean(theirs)):+.1f} pts" if ours and theirs
                         else "-")
        lines.append(f"| {method} | {base} | {cells[0]} | {cells[1]} | {PAPER_GAIN[method]} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bar chart: greedy pass@1 per method on each split, mean over seeds with sample-std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in [COLD_START, *METHODS] if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(11, 3.8), sharey=False)
    for ax, split in zip(axes, SPLITS):
        for i, method in enumerate(methods):
            values = _values(rows, method, f"{split}_greedy")
            error = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(i, statistics.mean(values), yerr=error, capsize=3,
                   color="0.6" if method in (COLD_START, STANDARD_KD, GKD) else "tab:blue")
        lo, hi = SPLITS[split]
        ax.set_title(f"{split}: {lo}-{hi} operands")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        ax.set_ylabel("greedy pass@1 (held out)")
    fig.suptitle("Toy reproduction: same student, same budget (mean ± std over seeds; grey = baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser(description: str = __doc__, **defaults) -> argparse.ArgumentParser:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The docstring as written, and each option's default."""

    parser = argparse.ArgumentParser(description=description, formatter_class=Formatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.get("seeds", [0, 1, 2]),
                        help="seeds, one paired run of every method each")
    parser.add_argument("--steps", type=int, default=defaults.get("steps", 64),
                        help="optimizer steps of every trained method")
    parser.add_argument("--batch", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--n_test", type=int, default=defaults.get("n_test", 150),
                        help="held-out problems per split (easy, hard)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="methods and baselines run")
    parser.add_argument("--out", type=Path, default=defaults.get("out", Path("benchmarks/results/reproduce.csv")),
                        help="CSV of the rows (resumed if it exists)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and exit (reads only)")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    return parser


def main(argv: list[str] | None = None, **defaults) -> list[dict]:
    args = build_parser(**defaults).parse_args(argv)
    if not args.table:
        reproduce(args.out, args.seeds, args.steps, args.batch, args.n_test, args.methods, overwrite=args.overwrite)
    with Path(args.out).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    plot(rows, args.plot or Path(args.out).with_suffix(".png"))
    print("\n" + table(rows) + "\n\n" + gains(rows))
    return rows
