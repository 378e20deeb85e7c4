"""`trl-distill`: evaluate a model, run the toy reproduction or the demo, rebuild the toy world.

    trl-distill eval --model toy-student --dataset toy:test:500 --k 8 --output runs/student.jsonl
    trl-distill eval --model ./checkpoints/step-1000 --dataset data/gsm8k_test.jsonl --max_new_tokens 2048
    trl-distill eval --model toy-teacher --dataset toy:test:500 --k 8 --output runs/teacher.jsonl --overwrite
    trl-distill reproduce --seeds 0 1 2 --out benchmarks/results/reproduce.csv
    trl-distill demo
    trl-distill build-toy
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

TOY_MODELS = ("toy-teacher", "toy-student")
TOY_SPEC = "toy:<split>:<n>[:<min_ops>-<max_ops>]"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def parse_toy_spec(spec: str) -> dict:
    """`toy:<split>:<n>[:<min_ops>-<max_ops>]` as `toy_dataset` arguments; `ValueError` naming the bad part."""
    from .toy.task import SPLITS

    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"a toy dataset spec is {TOY_SPEC}, got {spec!r}.")
    if parts[1] not in SPLITS:
        raise ValueError(f"the split of {spec!r} must be one of {SPLITS}, got {parts[1]!r}.")
    if not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"the size of {spec!r} must be a positive integer, got {parts[2]!r} ({TOY_SPEC}).")
    ops = parts[3].split("-") if len(parts) == 4 else ["2", "4"]
    if len(ops) not in (1, 2) or not all(x.isdigit() for x in ops) or not 2 <= int(ops[0]) <= int(ops[-1]):
        raise ValueError(f"the operand range of {spec!r} must be <min>-<max> or <n> with 2 <= min <= max, got "
                         f"{parts[3]!r}.")
    return {"split": parts[1], "n": int(parts[2]), "seed": 0, "min_ops": int(ops[0]), "max_ops": int(ops[-1])}


def load_dataset_spec(spec: str):
    """`toy:<split>:<n>[:<min_ops>-<max_ops>]`, or a JSON/JSONL/Parquet file with `prompt` and `answer` columns."""
    if spec.startswith("toy:"):
        from .toy import toy_dataset

        return toy_dataset(**parse_toy_spec(spec))
    if not spec.endswith(DATA_SUFFIXES):
        raise ValueError(f"--dataset is {TOY_SPEC} or a {'/'.join(DATA_SUFFIXES)} file, got {spec!r}.")
    if not Path(spec).is_file():
        raise ValueError(f"the dataset file {spec} does not exist.")
    from datasets import load_dataset

    kind = "parquet" if spec.endswith(".parquet") else "json"
    return load_dataset(kind, data_files=spec, split="train")


def check_output_path(path: str | Path) -> None:
    """Raise `ValueError` unless `path` is a file that can be written: its folder is created (as the evaluation would)
    and a probe file written and removed there. Run before loading any model."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--output {path} is a directory; give the path of a .jsonl file.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
        if path.exists():
            with path.open("a"):
                pass
    except OSError as error:
        raise ValueError(f"cannot write --output {path}: {error.strerror or error}; choose a writable location.") \
            from error


def load_model_and_tokenizer(name: str, trust_remote_code: bool = False):
    if name in TOY_MODELS:
        from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

        return (load_toy_teacher() if name == "toy-teacher" else load_toy_student()), load_toy_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def cmd_eval(args) -> None:
    """Every argument is checked (settings, dataset, output location) before the model loads."""
    from .evaluation import check_eval_settings, evaluate, evaluation_rows
    from .fingerprint import StaleOutputError

    try:
        check_eval_settings(args.k, args.temperature, args.top_p, args.max_new_tokens, args.batch_size,
                            args.extraction)
        if args.output is not None:
            check_output_path(args.output)
        rows = evaluation_rows(load_dataset_spec(args.dataset))
    except ValueError as error:
        raise SystemExit(f"trl-distill eval: {error}") from error
    import torch

    model, tokenizer = load_model_and_tokenizer(args.model, args.trust_remote_code)
    if torch.cuda.is_available():
        model = model.cuda()
    try:
        result = evaluate(model, tokenizer, rows, k=args.k, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, extraction=args.extraction,
                          output_jsonl=args.output, overwrite=args.overwrite)
    except StaleOutputError as error:
        raise SystemExit(f"trl-distill eval: {error}") from error
    print(json.dumps(result.summary()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="greedy pass@1 and avg@k accuracy of a model on a prompt/answer dataset")
    ev.add_argument("--model", required=True, help=f"a path or hub id, or one of {TOY_MODELS}")
    ev.add_argument("--dataset", required=True, help="toy:<split>:<n>[:<min>-<max>] or a .jsonl/.json/.parquet file")
    ev.add_argument("--k", type=int, default=0, help="samples per prompt for avg@k (0: greedy only)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top_p", type=float, default=1.0)
    ev.add_argument("--max_new_tokens", type=int, default=256)
    ev.add_argument("--batch_size", type=int, default=128)
    ev.add_argument("--extraction", default="auto", help="answer extraction mode (verify.EXTRACTION_MODES)")
    ev.add_argument("--output", default=None,
                    help="per-example JSONL, resumed if it exists and was made by the same evaluation (model, "
                         "dataset, settings: its .fingerprint.json); another evaluation is refused")
    ev.add_argument("--overwrite", action="store_true", help="delete --output and its fingerprint, start afresh")
    ev.add_argument("--trust_remote_code", action="store_true")
    sub.add_parser("reproduce", help="every method on the toy world under one budget (see --help)", add_help=False)
    sub.add_parser("demo", help="the toy reproduction at a small budget (make demo)", add_help=False)
    sub.add_parser("build-toy", help="retrain the toy teacher and student (about 15-20 min on CPU)")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "eval":
        if rest:
            raise SystemExit(f"unknown arguments: {rest}")
        cmd_eval(args)
    elif args.command == "reproduce":
        from .reproduce import main as reproduce_main

        reproduce_main(rest)
    elif args.command == "demo":
        from .demo import main as demo_main

        demo_main(rest)
    else:
        from .toy.build import main as build_main

        build_main(rest)


if __name__ == "__main__":
    main()
