"""What the data-preparation scripts share: the command line, loading (a Hub id, a local file or folder in the Hub
data set's format; offline, a missing one is one line saying how to fetch it) and the JSONL the paper YAML reads."""

import argparse
import json
import sys
from pathlib import Path


def make_parser(doc: str, dataset_name: str, output: str, split: str = "train", config: str | None = None):
    parser = argparse.ArgumentParser(description=doc, formatter_class=type(
        "Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    parser.add_argument("--dataset_name", default=dataset_name,
                        help="the paper's Hub data set, or a local file/folder with its columns")
    parser.add_argument("--dataset_config", default=config, help="its configuration (datasets' `name`)")
    parser.add_argument("--dataset_split", default=split, help="its split")
    parser.add_argument("--output", default=output, help="the JSONL the paper YAML reads (dataset_name)")
    parser.add_argument("--seed", type=int, default=42, help="seed of every subsample (ours)")
    return parser


def load(args, streaming: bool = False):
    """The source rows; `streaming` iterates a Hub data set without downloading it whole."""
    from trl_reasoning_distill.loading import MissingResourceError, load_dataset_spec

    try:
        if streaming and not Path(args.dataset_name).exists():
            from datasets import load_dataset

            try:
                return load_dataset(args.dataset_name, name=args.dataset_config, split=args.dataset_split,
                                    streaming=True)
            except Exception:  # offline or absent: the one-line message of the loader below
                pass
        return load_dataset_spec(args.dataset_name, args.dataset_config, args.dataset_split)
    except MissingResourceError as error:
        sys.exit(f"{Path(sys.argv[0]).name}: {error}")


def write_jsonl(rows: list[dict], path: str) -> None:
    """All rows, written to a temporary file and renamed (a stopped run leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    print(f"{len(rows)} rows -> {path}")
