"""Gen-SSD against Standard KD at equal training-set size, the paper's axis (spec: "Standard KD training set size:
same as Gen-SSD"), on the toy reproduction's own data.

The reproduction (`benchmarks/reproduce.py`) compares them at equal teacher tokens: Gen-SSD's 16/8/4 candidates per
chunk cost ~17x Standard KD's tokens per kept toy trajectory, so it trains on ~300 examples where Standard KD has
~5,150. Here each seed's Gen-SSD data (the reproduction's, same prompts and seeds; read back from its work folder or
sampled afresh) is compared with Standard KD's first kept examples of the same prompts, as many as Gen-SSD kept:
SFT of the cold-started student at the reproduction's budget and chosen rate, greedy pass@1 on its 1,000 validation,
easy and hard problems, and the paired difference with a 95 % bootstrap interval over seeds and problems.

    python benchmarks/gen_ssd_equal_examples.py            # 3 seeds, ~10 CPU-minutes with the reproduction's data
    python benchmarks/gen_ssd_equal_examples.py --table
"""

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from trl_reasoning_distill import reproduce as rep
from trl_reasoning_distill.gen_ssd.sampler import all_records_path
from trl_reasoning_distill.jsonl import append_records, read_records
from trl_reasoning_distill.reproduce_report import METRICS, SPLITS, paired_bootstrap, verdict
from trl_reasoning_distill.results import append_row, finished_rows, mean_std, toy_identity

RESULTS = Path(__file__).parent / "results"
DATA = ["Gen-SSD", "Standard KD, as many examples"]
FIELDS = ["data", "seed", "examples", "teacher_tokens", "train_seconds", *METRICS, "eval_n"]


def context(n_test: int, work: Path) -> dict:
    from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

    return {"tokenizer": load_toy_tokenizer(), "teacher": load_toy_teacher(), "student": load_toy_student(),
            "work": work, "eval_sets": rep.eval_sets(n_test)}


def data_sets(ctx: dict, seed: int) -> dict:
    """The reproduction's Standard KD and Gen-SSD data of `seed`; Standard KD cut to Gen-SSD's size, in prompt order,
    with the teacher tokens of the prompts that produced those examples."""
    prompts, path = rep.train_prompts(rep.SFT_STEPS * 16, seed), ctx["work"] / f"standard_kd-seed{seed}.jsonl"
    standard, tokens = rep._sample("plain", prompts, ctx, path, seed)
    gen_ssd, gen_tokens = rep._sample("chunked", prompts, ctx, ctx["work"] / f"gen_ssd-seed{seed}.jsonl", seed, tokens)
    cut = standard.select(range(len(gen_ssd)))
    seen, kept = read_records(all_records_path(path)), read_records(path)
    cut_tokens = count = 0
    for problem in prompts:  # the prompts Standard KD sampled until its cut was complete (kept ones in prompt order)
        if count == len(cut):
            break
        cut_tokens += seen[str(problem["id"])]["teacher_tokens"]
        count += str(problem["id"]) in kept
    return {DATA[0]: (gen_ssd, gen_tokens), DATA[1]: (cut, cut_tokens)}


def table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = ["| data | seeds | examples | teacher tokens | validation pass@1 | easy pass@1 | hard pass@1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for data in DATA:
        group = [r for r in rows if r["data"] == data]
        if group:
            cells = [mean_std([float(r[m]) for r in group]) for m in METRICS]
            lines.append(f"| {data} | {len(group)} | {sum(int(r['examples']) for r in group) / len(group):,.0f} | "
                         f"{sum(int(r['teacher_tokens']) for r in group) / len(group):,.0f} | " + " | ".join(cells) +
                         " |")
    problems = {(r["data"], int(r["seed"])): r["correct"] for r in map(json.loads, path.with_suffix(
        ".problems.jsonl").read_text().splitlines())} if path.with_suffix(".problems.jsonl").exists() else {}
    seeds = sorted({s for d, s in problems if d == DATA[0] and (DATA[1], s) in problems})
    if seeds:
        lines += ["", "| split | Gen-SSD - Standard KD, points [95 % CI] | verdict |", "| --- | --- | --- |"]
        for split in ("val", *SPLITS):
            mean, low, high = paired_bootstrap([[int(c) for c in problems[(DATA[0], s)][split]] for s in seeds],
                                               [[int(c) for c in problems[(DATA[1], s)][split]] for s in seeds])
            lines.append(f"| {split} | {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
                         f"{verdict(low, high)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n_test", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=RESULTS / "reproduce.work",
                        help="the reproduction's sample files (read back, or sampled afresh into it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gen_ssd_equal_examples.csv")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    args = parser.parse_args(argv)
    if not args.table:
        from trl_reasoning_distill.utils import quiet_cpu_run

        quiet_cpu_run()
        args.workdir.mkdir(parents=True, exist_ok=True)
        ctx = context(args.n_test, args.workdir)
        settings = {"n_test": args.n_test, "steps": rep.SFT_STEPS, "learning_rate": rep.CHOSEN[rep.GEN_SSD],
                    "gen_ssd": rep.GEN_SSD_TOY, **toy_identity(ctx["teacher"], ctx["student"], ctx["tokenizer"])}
        problems = args.out.with_suffix(".problems.jsonl")
        done = {(r["data"], int(r["seed"])) for r in finished_rows(args.out, FIELDS, settings, args.overwrite,
                                                                   companions=[problems])}
        for seed in args.seeds:
            for data, (rows, tokens) in data_sets(ctx, seed).items():
                if (data, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as out:
                    began = time.time()
                    model = rep._sft(rows, ctx, out, rep.SFT_STEPS, 16, seed, rep.CHOSEN[rep.GEN_SSD])
                    seconds = time.time() - began
                scores, correct = rep.measure(model, ctx)
                append_records(problems, [{"data": data, "seed": seed, "correct": correct}])
                append_row(args.out, FIELDS, {"data": data, "seed": seed, "examples": len(rows),
                                              "teacher_tokens": tokens, "train_seconds": seconds, **scores,
                                              "eval_n": args.n_test})
                print(f"{data:<32} seed {seed}: " + ", ".join(f"{m} {scores[m]:.3f}" for m in METRICS), flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
