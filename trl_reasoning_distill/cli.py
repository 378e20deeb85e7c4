"""`trl-distill`: train with a method, evaluate a model, run the toy reproduction or the demo, rebuild the toy world.

    trl-distill train tsd_kd                                   # toy world; `trl-distill train tsd_kd --help`
    trl-distill train brts --config examples/configs/brts_paper.yaml
    accelerate launch -m trl_reasoning_distill.cli train gkd --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct ...
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

from .loading import (  # noqa: F401  (importable from here as before)
    DATA_SUFFIXES,
    TOY_MODELS,
    TOY_SPEC,
    MissingResourceError,
    load_dataset_spec,
    load_model_and_tokenizer,
    parse_toy_spec,
)


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

    try:
        model, tokenizer = load_model_and_tokenizer(args.model, args.trust_remote_code)
    except MissingResourceError as error:
        raise SystemExit(f"trl-distill eval: {error}") from None
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
    from .scripts import METHODS

    sub.add_parser("train", help=f"train a student with one of {', '.join(METHODS)} (the code of "
                                 "examples/<method>.py; `train <method> --help`)", add_help=False)
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
    sub.add_parser("demo", help="Standard KD and GKD live, then every method as reproduced (make demo)",
                   add_help=False)
    sub.add_parser("build-toy", help="retrain the toy teacher and student (about 15-20 min on CPU)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "eval":
        if rest:
            raise SystemExit(f"unknown arguments: {rest}")
        cmd_eval(args)
    elif args.command == "train":
        from .scripts import METHODS, run_script

        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: trl-distill train {{{','.join(METHODS)}}} [flags]\n\nRuns the script of "
                  "examples/<method>.py: TRL's ScriptArguments, the method's config and ModelConfig, toy defaults.\n"
                  "`trl-distill train <method> --help` lists its flags.")
            if not rest:
                raise SystemExit(2)
            return
        run_script(rest[0], rest[1:])
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
