"""CoTD-PO on the toy world: held-out accuracy after rounds 1..R vs Standard KD and the pairwise ablation, with and
without the teacher's rationale, and the diversity of the student's samples.

Every run starts from the cold-started student, and in round r every variant of a seed gets the same fresh training
prompts (the reproduction's `train_prompts` of the seed, split by `round_prompt_indices`) and trains `--steps` steps of
batch 16 on them, at the reproduction's budget (2 rounds x 250 steps = `SFT_STEPS`, one pass over 8,000 prompts) and
its chosen learning rate for the family (`CHOSEN`: CoTD-PO's for the CoTD-PO variants, Standard KD's for Standard KD),
so the listwise variant is the reproduction's CoTD-PO run:
- CoTD-PO variants: `run_rounds` with the toy teacher's greedy rationale, K student answers per prompt scored by
  exact correctness (`ToyCorrectnessScorer`), the config's loss defaults; "no teacher CoT" samples whole continuations.
- Standard KD: verified teacher samples of the round's prompts (`rejection_sample`, 4 tries, the first correct kept),
  then TRL's `SFTTrainer`, continuing from the previous round's model.
After each round: greedy pass@1 on the reproduction's `--n_test` held-out easy (2-3 operands) and hard (4-6)
problems, and distinct-1/2 of 8 samples (temperature 1, top-p 0.95) per prompt on the first `--diversity_prompts` easy
ones: unique / total word n-grams within each prompt's set
(words: runs of letters and digits, and single symbols), averaged over prompts (paper §3.1's intra-prompt Distinct-N).
`mean_reward` is the mean teacher score of the round's student samples (CoTD-PO variants only).
Rows are appended to `results/cotd_po_toy.csv` as they finish; each run's rounds live under `--workdir`, so a stopped
study resumes where it stopped.

    python benchmarks/cotd_po_toy.py                  # 3 seeds, 2 rounds, 5 variants
    python benchmarks/cotd_po_toy.py --rounds 1 --steps 2 --n_test 4 --seeds 0 --out /tmp/cotd_smoke.csv  # smoke
    python benchmarks/cotd_po_toy.py --table          # markdown table of the CSV, mean ± std over seeds

The CSV is fingerprinted (every option but --seeds/--variants/--out/--workdir, the training settings, the toy
models): a run under other settings refuses to resume it; `--overwrite` starts afresh, deleting this study's run
folders under --workdir too.
"""

import argparse
import csv
import json
import re
import statistics
import time
from pathlib import Path

from trl_reasoning_distill.results import append_row, finished_rows, mean_std, study_settings, toy_identity
from trl_reasoning_distill.toy_recipes import CHOSEN, COTD_PO, COTD_PO_TOY, SFT_STEPS, STANDARD_KD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
NO_COT = {"use_teacher_rationale": False, "rationale_weight": 0.0}
PAIRWISE = {"loss_mode": "pairwise_simpo"}
VARIANTS = {  # name -> CoTDPOConfig overrides, or None for Standard KD
    "CoTD-PO listwise": {},
    "pairwise SimPO + NLL": PAIRWISE,
    "Standard KD (rejection sampling + SFT)": None,
    "CoTD-PO listwise (no teacher CoT)": NO_COT,
    "pairwise SimPO + NLL (no teacher CoT)": {**PAIRWISE, **NO_COT},
}
COLD_START = "student (cold start)"
FIELDS = ["variant", "seed", "round", "steps", "accuracy_easy", "accuracy_hard", "distinct_1", "distinct_2",
          "mean_reward", "train_seconds", "eval_n"]
TOY_FORMAT = COTD_PO_TOY  # the toy world's format: `<think>` steps are the rationale, the boxed number the answer
TRAINING = dict(per_device_train_batch_size=16, gradient_accumulation_steps=1, warmup_steps=0.1,
                lr_scheduler_type="cosine", max_length=256, use_cpu=True, bf16=False, report_to="none",
                save_strategy="no", disable_tqdm=True, activation_checkpointing=False)  # the reproduction's
ROUNDS = 2  # the reproduction's (ours: rounds 2-3 added nothing on toy world v1)
LEARNING_RATE = {"cotd_po": CHOSEN[COTD_PO], "sft": CHOSEN[STANDARD_KD]}
EVAL_TOKENS = 192


def distinct_n(texts: list[str], n: int) -> float:
    """Unique / total word n-grams over `texts` (Li et al. 2016); 0 when there is no n-gram."""
    grams = []
    for text in texts:
        words = re.findall(r"\w+|[^\w\s]", text)
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def measure(model, tokenizer, test: dict, n_diversity: int) -> dict:
    """Greedy pass@1 on each split of `test` (easy, hard), and mean distinct-1/2 of 8 samples per prompt on the first
    `n_diversity` easy problems."""
    from trl_reasoning_distill import evaluate
    from trl_reasoning_distill.evaluation import encode_prompts
    from trl_reasoning_distill.generation import HFGenerator

    accuracy = {f"accuracy_{split}": evaluate(model, tokenizer, rows, max_new_tokens=EVAL_TOKENS,
                                              progress=False).greedy_accuracy for split, rows in test.items()}
    prompts = encode_prompts(tokenizer, [row["prompt"] for row in test["easy"].select(range(n_diversity))])
    groups = HFGenerator(model, tokenizer).generate(prompts, n=8, max_new_tokens=192, temperature=1.0, top_p=0.95)
    texts = [[sample.text for sample in group] for group in groups]
    diversity = {f"distinct_{n}": statistics.mean(distinct_n(t, n) for t in texts) for n in (1, 2)}
    return {**accuracy, **diversity}


def run_cotd_po(variant: str, seed: int, args, context: dict, workdir: Path) -> dict[int, dict]:
    """Rounds 1..R of a CoTD-PO variant (resumable under `workdir`); per round its model directory and summary."""
    from trl_reasoning_distill import load_toy_student
    from trl_reasoning_distill.cotd_po import (
        CoTDPOConfig,
        CoTDPORoundsConfig,
        TeacherRationales,
        ToyCorrectnessScorer,
        run_rounds,
    )
    from trl_reasoning_distill.cotd_po.rounds import round_dir

    config = CoTDPOConfig(output_dir=str(workdir), max_steps=args.steps, seed=seed, logging_steps=args.steps,
                          learning_rate=LEARNING_RATE["cotd_po"], **{**TRAINING, **TOY_FORMAT, **VARIANTS[variant]})
    with_cot = config.use_teacher_rationale
    rounds = CoTDPORoundsConfig(num_rounds=args.rounds, prompts_per_round=args.prompts,
                                num_candidates=args.candidates, max_new_tokens=24 if with_cot else 160)
    rationales = TeacherRationales(context["teacher"], context["tokenizer"], config, max_new_tokens=160) if with_cot \
        else None
    run_rounds(load_toy_student(), context["tokenizer"], context["train"][seed], ToyCorrectnessScorer(), config,
               rounds, rationales=rationales, progress=False)
    out = {}
    for r in range(1, args.rounds + 1):
        summary = json.loads((round_dir(workdir, r) / "round.json").read_text())
        out[r] = {"model": round_dir(workdir, r) / "model", "mean_reward": summary["mean_reward"],
                  "train_seconds": summary["training_seconds"]}
    return out


def run_standard_kd(seed: int, args, context: dict, workdir: Path) -> dict[int, dict]:
    """Rounds 1..R of Standard KD on the same prompts; each round's model is saved under `workdir/round_NN`."""
    import torch

    from trl_reasoning_distill import load_toy_student, rejection_sample
    from trl_reasoning_distill._trl import SFTConfig, SFTTrainer
    from trl_reasoning_distill.cotd_po.rounds import round_dir, round_prompt_indices

    model, out, tokenizer, train = load_toy_student(), {}, context["tokenizer"], context["train"][seed]
    for r in range(1, args.rounds + 1):
        directory = round_dir(workdir, r)
        if (directory / "round.json").exists():
            model = type(model).from_pretrained(directory / "model")
        else:
            torch.manual_seed(seed * 1000 + r)
            rows = train.select(round_prompt_indices(len(train), args.prompts, r, seed))
            data = rejection_sample(context["teacher"], tokenizer, rows, n=4, temperature=1.0, max_new_tokens=192)
            config = SFTConfig(output_dir=str(directory / "trainer"), max_steps=args.steps, seed=seed,
                               logging_steps=args.steps, learning_rate=LEARNING_RATE["sft"], completion_only_loss=True,
                               **TRAINING)
            trainer = SFTTrainer(model=model, args=config, train_dataset=data.select_columns(["prompt", "completion"]),
                                 processing_class=tokenizer)
            began = time.time()
            trainer.train()
            model = trainer.model
            model.save_pretrained(directory / "model")
            summary = {"mean_reward": "", "training_seconds": time.time() - began}  # every kept sample is correct
            (directory / "round.json").write_text(json.dumps(summary))
        summary = json.loads((directory / "round.json").read_text())
        out[r] = {"model": directory / "model", "mean_reward": summary["mean_reward"],
                  "train_seconds": summary["training_seconds"]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=SFT_STEPS // ROUNDS, help="optimizer steps per round")
    parser.add_argument("--prompts", type=int, default=SFT_STEPS // ROUNDS * TRAINING["per_device_train_batch_size"],
                        help="fresh training prompts per round")
    parser.add_argument("--candidates", type=int, default=4, help="K student answers per prompt")
    parser.add_argument("--n_test", type=int, default=1000, help="held-out problems per split (easy, hard)")
    parser.add_argument("--diversity_prompts", type=int, default=100, help="test prompts sampled 8 times each")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS / "cotd_po_toy.csv")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "cotd_po_toy")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete --out and this study's run folders under --workdir, and start afresh")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return

    import torch
    import transformers

    from trl_reasoning_distill import load_toy_student, load_toy_teacher, load_toy_tokenizer
    from trl_reasoning_distill.reproduce import test_sets, train_prompts
    from trl_reasoning_distill.utils import quiet_cpu_run

    quiet_cpu_run()
    n_train = args.rounds * args.prompts
    context = {"tokenizer": load_toy_tokenizer(), "teacher": load_toy_teacher(),
               "train": {seed: train_prompts(n_train, seed).select_columns(["id", "prompt", "answer"])
                         for seed in args.seeds}}
    test = test_sets(args.n_test)
    n_diversity = min(args.diversity_prompts, args.n_test)
    settings = study_settings(args, variant_configs=VARIANTS, training=TRAINING, toy_format=TOY_FORMAT,
                              learning_rate=LEARNING_RATE, eval_tokens=EVAL_TOKENS,
                              **toy_identity(teacher=context["teacher"], tokenizer=context["tokenizer"]))
    run_folders = [args.workdir / slug_of(variant) for variant in VARIANTS]
    rows = finished_rows(args.out, FIELDS, settings, args.overwrite, companions=run_folders)
    done = {(r["variant"], int(r["seed"]), int(r["round"])) for r in rows}
    if (COLD_START, 0, 0) not in done:
        torch.manual_seed(0)
        scores = measure(load_toy_student(), context["tokenizer"], test, n_diversity)
        append_row(args.out, FIELDS, {"variant": COLD_START, "seed": 0, "round": 0, "steps": 0, **scores,
                                      "mean_reward": "", "train_seconds": 0, "eval_n": args.n_test})
    for seed in args.seeds:
        for variant in args.variants:
            if all((variant, seed, r) in done for r in range(1, args.rounds + 1)):
                continue
            workdir = (args.workdir / slug_of(variant) /
                       f"seed{seed}_steps{args.steps}_prompts{args.prompts}_k{args.candidates}")
            if VARIANTS[variant] is None:
                per_round = run_standard_kd(seed, args, context, workdir)
            else:
                per_round = run_cotd_po(variant, seed, args, context, workdir)
            for r, result in per_round.items():
                if (variant, seed, r) in done:
                    continue
                torch.manual_seed(seed)
                model = transformers.AutoModelForCausalLM.from_pretrained(result["model"], dtype="float32")
                scores = measure(model, context["tokenizer"], test, n_diversity)
                append_row(args.out, FIELDS, {
                    "variant": variant, "seed": seed, "round": r, "steps": args.steps, **scores,
                    "mean_reward": result["mean_reward"], "train_seconds": result["train_seconds"],
                    "eval_n": args.n_test,
                })
                print(f"{variant:<40} seed {seed} round {r}: easy {scores['accuracy_easy']:.3f}, hard "
                      f"{scores['accuracy_hard']:.3f}, distinct-2 {scores['distinct_2']:.3f}", flush=True)


def slug_of(variant: str) -> str:
    """The folder of `variant`'s runs under `--workdir`."""
    return re.sub(r"[^a-z0-9]+", "_", variant.lower()).strip("_")


def table(path: Path) -> str:
    """Markdown table: per variant and round, accuracy and distinct-n as mean ± sample std over seeds."""
    rows = sorted(csv.DictReader(path.open()), key=lambda row: int(row["seed"]))
    lines = ["| variant | round | seeds | easy (mean ± std) | hard | easy per seed | distinct-1 | distinct-2 | "
             "mean reward |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = dict.fromkeys((row["variant"], int(row["round"])) for row in rows)
    for variant, r in sorted(keys, key=lambda key: (list(VARIANTS).index(key[0]) if key[0] in VARIANTS else -1,
                                                    key[1])):
        group = [row for row in rows if row["variant"] == variant and int(row["round"]) == r]
        cells = {}
        for name in ("accuracy_easy", "accuracy_hard", "distinct_1", "distinct_2", "mean_reward"):
            values = [float(row[name]) for row in group if row[name] != ""]
            cells[name] = mean_std(values) if values else ""
        per_seed = ", ".join(f"{float(row['accuracy_easy']):.3f}" for row in group)
        lines.append(f"| {variant} | {r} | {len(group)} | {cells['accuracy_easy']} | {cells['accuracy_hard']} | "
                     f"{per_seed} | {cells['distinct_1']} | {cells['distinct_2']} | {cells['mean_reward']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
