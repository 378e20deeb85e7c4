"""TSD-KD paper data: the UltraInteract prompts, as examples/configs/tsd_kd_paper.yaml reads them.

TSD-KD paper §4.1 "Training Data": on-policy training on UltraInteract prompts (the student writes every response).
The authors released the prompts with their student's generations as `Minsang/TSD-KD-Qwen2.5-1.5B-Instruct-Gen`
(columns `instruction`, `response`, `prompt`) and split it 99/1 into train and evaluation. This script keeps
`instruction` as the `prompt` column of the 99 % (seeded split) and, with --eval_output, writes the 1 % as well.

    python examples/data/tsd_kd.py                     # -> data/ultrainteract_prompts.jsonl
"""

import random

from _prepare import load, make_parser, write_jsonl


def prepare(rows, seed: int = 42, eval_fraction: float = 0.01) -> tuple[list[dict], list[dict]]:
    prompts = [str(row["instruction"]).strip() for row in rows if str(row.get("instruction") or "").strip()]
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = round(eval_fraction * len(prompts))
    held = set(order[:n_eval])
    train = [{"id": f"ui-{i}", "prompt": p} for i, p in enumerate(prompts) if i not in held]
    test = [{"id": f"ui-{i}", "prompt": p} for i, p in enumerate(prompts) if i in held]
    return train, test


def main(argv=None):
    parser = make_parser(__doc__, "Minsang/TSD-KD-Qwen2.5-1.5B-Instruct-Gen", "data/ultrainteract_prompts.jsonl")
    parser.add_argument("--eval_output", default="", help="where the 1 %% evaluation prompts go ('' skips them)")
    args = parser.parse_args(argv)
    train, test = prepare(load(args), args.seed)
    write_jsonl(train, args.output)
    if args.eval_output:
        write_jsonl(test, args.eval_output)


if __name__ == "__main__":
    main()
