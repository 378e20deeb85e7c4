"""VCRD paper data: 50K MetaMathQA prompts, as examples/configs/vcrd_paper.yaml reads them.

VCRD paper §10.1-10.2 (detailed setup) and §12: math distillation on 50K random MetaMathQA prompts
(`meta-math/MetaMathQA`, columns `query`, `response`, `type`, `original_question`), with one teacher and one student
response each. This script writes `prompt` = `query` for --num_prompts distinct prompts drawn with --seed;
examples/vcrd.py then samples both responses (resumable, <output_dir>/rollouts.jsonl) before training.

    python examples/data/vcrd.py                       # -> data/metamathqa_vcrd.jsonl
"""

import random

from _prepare import load, make_parser, write_jsonl


def prepare(rows, num_prompts: int = 50000, seed: int = 42) -> list[dict]:
    prompts = list(dict.fromkeys(str(row["query"]).strip() for row in rows if str(row.get("query") or "").strip()))
    if len(prompts) > num_prompts:
        prompts = [prompts[i] for i in sorted(random.Random(seed).sample(range(len(prompts)), num_prompts))]
    return [{"id": f"mmqa-{i}", "prompt": p} for i, p in enumerate(prompts)]


def main(argv=None):
    parser = make_parser(__doc__, "meta-math/MetaMathQA", "data/metamathqa_vcrd.jsonl")
    parser.add_argument("--num_prompts", type=int, default=50000, help="prompts drawn (paper: 50K)")
    args = parser.parse_args(argv)
    write_jsonl(prepare(load(args), args.num_prompts, args.seed), args.output)


if __name__ == "__main__":
    main()
