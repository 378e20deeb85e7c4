"""Gen-SSD on the toy world: what a kept trajectory costs, and what the data is worth (paper §4.3, §5.4, Table 4).

Every data set is built by `GenSSDSampler` (the same code path) from the same training problems, scored by the
cold-started toy student, and checked with `verify/`:

- **Gen-SSD**: 24-token chunks of a 192-token budget, K = 16, 8, 4 per kept prefix, beam 2, lowest student PPL;
- **Gen-SSD with 4-token chunks and beam 1**: a toy solution then spans ~9 chunks, as a 16K trace spans 8 of 2K;
- **best-of-16 by student PPL**: one chunk of the whole budget (the paper's App. D setting);
- **rejection sampling**: one teacher sample per problem, kept if correct (Standard KD's data);
- **Gen-SSD keeping the highest / a random PPL** (paper Table 4's ablation, second table).

Table 1 gives teacher tokens generated and wall time per kept correct trajectory, and held-out accuracy of the student
after SFT on each data set with the same number of examples (the smallest kept count of the seed); table 2 the
selection rules. Decoding is T = 1.0 (the toy build samples its teacher so), top-p 0.95, top-k 30 for every method.
Rows are appended to `results/gen_ssd_cost.csv` as each run ends, and the sampled data sets are resumable JSONL files
in `results/gen_ssd_cost/` (local, not committed), so a stopped benchmark resumes where it stopped (a sampling run
cut short is redone from scratch, so that its wall time is whole).

    python benchmarks/gen_ssd_cost.py                    # 3 seeds
    python benchmarks/gen_ssd_cost.py --problems 8 --seeds 0 --steps 2 --n_test 4 --out /tmp/gen_ssd_cost.csv
    python benchmarks/gen_ssd_cost.py --table            # the markdown tables of the CSV, mean ± std over seeds

The figure `results/gen_ssd_cost.png` (teacher tokens per kept trajectory, and accuracy after SFT, per data set) is
drawn from the CSV at the end of a run and by `--table`. The CSV is fingerprinted (every option but --seeds/--methods/
--out, the decoding and SFT settings, the toy models): a run under other settings refuses to resume it;
`--overwrite` starts afresh, deleting the sampled data sets too.
"""

import argparse
import csv
import re
import statistics
import tempfile
import time
from pathlib import Path

from trl_reasoning_distill import toy_recipes
from trl_reasoning_distill.results import append_row, finished_rows, mean_std, study_settings, toy_identity
from trl_reasoning_distill.toy_recipes import GEN_SSD_TOY, SFT_STEPS

RESULTS = Path(__file__).parent / "results"
CHUNK, BUDGET = GEN_SSD_TOY["chunk_size"], GEN_SSD_TOY["max_new_tokens"]  # 24, 192 (ours): ~36-token solutions
DECODING = {key: GEN_SSD_TOY[key] for key in ("temperature", "top_p", "top_k")}
GEN_SSD, BEST_OF_16, PLAIN = "Gen-SSD (lowest PPL)", "best-of-16 by student PPL", "rejection sampling (1 sample)"
HIGH, RANDOM = "Gen-SSD, highest PPL", "Gen-SSD, random PPL"
FINE_CHUNK = 4  # ours: a toy solution (~36 tokens) spans ~9 such chunks, as a 16K trace spans 8 chunks of 2K
GEN_SSD_FINE = f"Gen-SSD, {FINE_CHUNK}-token chunks, beam 1"
METHODS = {  # name -> (sampling kind, selection rule)
    GEN_SSD: ("chunked", "low"), GEN_SSD_FINE: ("fine", "low"), BEST_OF_16: ("best_of_16", "low"),
    PLAIN: ("plain", "low"), HIGH: ("chunked", "high"), RANDOM: ("chunked", "random"),
}
COST_TABLE, RULE_TABLE = (GEN_SSD, GEN_SSD_FINE, BEST_OF_16, PLAIN), (GEN_SSD, HIGH, RANDOM)
SFT = dict(per_device_train_batch_size=16, lr_scheduler_type="cosine", warmup_steps=0.1, max_length=256)
SAMPLER_BATCH = 16
FIELDS = ["kind", "method", "seed", "problems", "kept", "teacher_tokens", "seconds", "mean_student_ppl",
          "mean_completion_tokens", "examples", "steps", "accuracy", "eval_n", "device"]


def sampling_for(kind: str):
    from trl_reasoning_distill.gen_ssd.sampler import ChunkSampling

    if kind == "chunked":
        return ChunkSampling(chunk_size=CHUNK, max_new_tokens=BUDGET, **DECODING)
    if kind == "fine":
        return ChunkSampling(chunk_size=FINE_CHUNK, max_new_tokens=BUDGET, beam_width=1, **DECODING)
    if kind == "best_of_16":
        return ChunkSampling.best_of(16, BUDGET, **DECODING)
    return ChunkSampling.plain(BUDGET, **DECODING)


def sample_once(method: str, seed: int, problems, teacher, student, tokenizer, path: Path) -> dict:
    """Build one data set from scratch (a partial one is discarded, so the wall time covers the whole run)."""
    from trl_reasoning_distill.fingerprint import fingerprint_path
    from trl_reasoning_distill.gen_ssd.sampler import GenerationSelectionCallback, GenSSDSampler, all_records_path

    for stale in (path, all_records_path(path), fingerprint_path(path)):
        stale.unlink(missing_ok=True)
    kind, rule = METHODS[method]
    sampler = GenSSDSampler(teacher, student, tokenizer, sampling_for(kind), GenerationSelectionCallback(rule),
                            batch_size=SAMPLER_BATCH, seed=seed, progress=False)
    summary = sampler.sample(problems, path)
    kept = read_jsonl(path)
    return {"problems": summary.problems, "kept": summary.kept, "teacher_tokens": summary.teacher_tokens,
            "seconds": summary.seconds,
            "mean_student_ppl": statistics.mean(r["student_ppl"] for r in kept) if kept else "",
            "mean_completion_tokens": statistics.mean(r["completion_tokens"] for r in kept) if kept else ""}


def train_and_evaluate(path: Path, examples: int, seed: int, steps: int, lr: float, tokenizer, test) -> float:
    """SFT of the cold-started student on `examples` seeded rows of the data set, then greedy pass@1."""
    from datasets import load_dataset
    from transformers import PrinterCallback

    from trl_reasoning_distill import evaluate, load_toy_student
    from trl_reasoning_distill._trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files=str(path), split="train").shuffle(seed=seed).select(range(examples))
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, learning_rate=lr, seed=seed, use_cpu=True, bf16=False,
                         report_to="none", save_strategy="no", logging_steps=max(1, steps), disable_tqdm=True,
                         activation_checkpointing=False, **SFT)
        trainer = SFTTrainer(model=load_toy_student(), args=args,
                             train_dataset=data.select_columns(["prompt", "completion"]), processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return evaluate(trainer.model, tokenizer, test, max_new_tokens=BUDGET, progress=False).greedy_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    # Ours: ~850 examples per data set (the smallest kept count of 1,024 problems), trained at the reproduction's SFT
    # budget and Gen-SSD's chosen rate, so that the student leaves the first-steps dip (toy world v2)
    parser.add_argument("--problems", type=int, default=1024, help="training problems sampled per seed")
    parser.add_argument("--steps", type=int, default=SFT_STEPS, help="SFT steps (batch 16) per data set")
    parser.add_argument("--lr", type=float, default=toy_recipes.CHOSEN[toy_recipes.GEN_SSD])
    parser.add_argument("--n_test", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "gen_ssd_cost.csv")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete --out and its sampled data sets (the folder beside it), and start afresh")
    args = parser.parse_args(argv)
    if args.table:
        print(tables(args.out))
        plot(args.out, args.out.with_suffix(".png"))
        return

    import torch

    from trl_reasoning_distill import evaluate, load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset
    from trl_reasoning_distill.utils import quiet_cpu_run

    quiet_cpu_run()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    tokenizer, teacher, student = load_toy_tokenizer(), load_toy_teacher(), load_toy_student()
    test = toy_dataset("test", args.n_test, seed=0)
    work = args.out.with_suffix("")  # results/gen_ssd_cost/: the sampled data sets
    settings = study_settings(args, method_kinds=METHODS, chunks=[CHUNK, FINE_CHUNK], budget=BUDGET,
                              decoding=DECODING, sampler_batch=SAMPLER_BATCH, sft=SFT,
                              **toy_identity(teacher, student, tokenizer))
    rows = finished_rows(args.out, FIELDS, settings, args.overwrite, companions=[work])
    work.mkdir(parents=True, exist_ok=True)
    done = {(r["kind"], r["method"], int(r["seed"])): r for r in rows}
    if ("sft", "student (cold start)", 0) not in done:
        accuracy = evaluate(student, tokenizer, test, max_new_tokens=BUDGET, progress=False).greedy_accuracy
        write(args.out, {"kind": "sft", "method": "student (cold start)", "seed": 0, "steps": 0, "accuracy": accuracy,
                         "eval_n": args.n_test, "device": device})
    for seed in args.seeds:
        problems = toy_dataset("train", args.problems, seed=seed)
        for method in args.methods:
            if ("sample", method, seed) not in done:
                stats = sample_once(method, seed, problems, teacher, student, tokenizer, data_path(work, method, seed))
                done[("sample", method, seed)] = write(args.out, {"kind": "sample", "method": method, "seed": seed,
                                                                  **stats, "device": device})
                print(f"{method:<32} seed {seed}: {stats['kept']}/{stats['problems']} kept, "
                      f"{stats['teacher_tokens'] / max(stats['kept'], 1):.0f} teacher tokens per kept", flush=True)
        examples = min(int(done[("sample", m, seed)]["kept"]) for m in args.methods)
        for method in args.methods:
            if ("sft", method, seed) in done or examples == 0:
                continue
            start = time.time()
            accuracy = train_and_evaluate(data_path(work, method, seed), examples, seed, args.steps, args.lr,
                                          tokenizer, test)
            write(args.out, {"kind": "sft", "method": method, "seed": seed, "examples": examples, "steps": args.steps,
                             "accuracy": accuracy, "eval_n": args.n_test, "seconds": time.time() - start,
                             "device": device})
            print(f"{method:<32} seed {seed}: accuracy {accuracy:.3f} after SFT on {examples} examples", flush=True)
    plot(args.out, args.out.with_suffix(".png"))


def data_path(work: Path, method: str, seed: int) -> Path:
    return work / f"{re.sub(r'[^a-z0-9]+', '-', method.lower()).strip('-')}-seed{seed}.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write(path: Path, row: dict) -> dict:
    """Append `row`; returns it as the CSV reads it back (strings)."""
    return {k: str(v) for k, v in append_row(path, FIELDS, row).items()}


def _spread(values: list[float], digits: int = 3) -> str:
    return mean_std(values, digits) if values else "-"


def _of(rows: list[dict], kind: str, method: str) -> list[dict]:
    """The CSV rows of one kind and method, by seed."""
    return sorted((r for r in rows if r["kind"] == kind and r["method"] == method), key=lambda r: int(r["seed"]))


def _per_kept(sampled: list[dict], field: str) -> float:
    """`field` summed over the sampling runs of all seeds, per kept trajectory."""
    return sum(float(r[field]) for r in sampled) / max(sum(int(r["kept"]) for r in sampled), 1)


def tables(path: Path) -> str:
    """Markdown: cost and accuracy per data set (table 1), selection rules (table 2); mean ± sample std over seeds."""
    rows = list(csv.DictReader(path.open()))

    def of(kind, method):
        return _of(rows, kind, method)

    def cells(method):
        sampled, trained = of("sample", method), of("sft", method)
        kept, problems = sum(int(r["kept"]) for r in sampled), sum(int(r["problems"]) for r in sampled)
        tokens, seconds = _per_kept(sampled, "teacher_tokens"), _per_kept(sampled, "seconds")
        ppl = _spread([float(r["mean_student_ppl"]) for r in sampled if r["mean_student_ppl"]])
        length = _spread([float(r["mean_completion_tokens"]) for r in sampled if r["mean_completion_tokens"]], 1)
        accuracy = [float(r["accuracy"]) for r in trained]
        return (f"{kept}/{problems}", f"{tokens:.0f}", f"{seconds * 1000:.1f}", ppl, length, _spread(accuracy),
                ", ".join(f"{a:.3f}" for a in accuracy), ", ".join(r["examples"] for r in trained) or "-")

    base = of("sft", "student (cold start)")
    lines = [f"Cold-started student (no SFT): {_spread([float(r['accuracy']) for r in base])}", "",
             "| data set | kept / problems | teacher tokens per kept | ms per kept | mean student PPL | mean length | "
             "accuracy after SFT | per seed | examples per seed |", "|" + " --- |" * 9]
    lines += [f"| {m} | " + " | ".join(cells(m)) + " |" for m in COST_TABLE if of("sample", m)]
    lines += ["", "| selection | kept / problems | mean student PPL | mean length | accuracy after SFT | per seed |",
              "| --- | --- | --- | --- | --- | --- |"]
    for m in (m for m in RULE_TABLE if of("sample", m)):
        kept, _, _, ppl, length, accuracy, per_seed, _ = cells(m)
        lines.append(f"| {m} | {kept} | {ppl} | {length} | {accuracy} | {per_seed} |")
    return "\n".join(lines)


def plot(path: Path, png: Path) -> None:
    """Two panels per data set: teacher tokens generated per kept correct trajectory (all seeds pooled), and held-out
    accuracy after SFT (mean ± sample std over seeds, the cold-started student as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(path.open()))
    methods = [m for m in METHODS if _of(rows, "sample", m)]
    fig, (cost, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(methods):
        cost.bar(i, _per_kept(_of(rows, "sample", method), "teacher_tokens"), color="tab:blue")
        values = [float(r["accuracy"]) for r in _of(rows, "sft", method)]
        if values:
            accuracy.bar(i, statistics.mean(values), yerr=statistics.stdev(values) if len(values) > 1 else 0,
                         capsize=3, color="tab:green")
    base = [float(r["accuracy"]) for r in _of(rows, "sft", "student (cold start)")]
    if base:
        accuracy.axhline(statistics.mean(base), color="0.4", linestyle="--", label="cold-started student")
        accuracy.legend(loc="lower right")
    for ax, label in ((cost, "teacher tokens per kept correct trajectory"), (accuracy, "held-out pass@1 after SFT")):
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
    fig.suptitle("Gen-SSD on the toy world: teacher cost of the data, and what it is worth")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
