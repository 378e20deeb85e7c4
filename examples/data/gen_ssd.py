"""Gen-SSD paper data: the 25K OpenMathReasoning problems, as examples/configs/gen_ssd_paper.yaml reads them.

Gen-SSD paper §4.1 "Training Data" (and App. D): problems of `nvidia/OpenMathReasoning` for which DeepSeek-R1 produced
16 distinct solutions, about 25K; the teacher (QwQ-32B) then solves them afresh, so only the problems and answers are
kept. Source columns (the data set card): `problem`, `expected_answer`, `problem_type`, `problem_source`,
`generation_model`, `generated_solution`, `inference_mode`, `pass_rate_72b_tir`, `used_in_kaggle`; split `cot`. Writes
`prompt` = the problem followed by "Please reason step by step, and put your final answer within \\boxed{}." (the
paper's evaluation prompt) and `answer` = `expected_answer` (non-empty); more than --num_problems qualifying problems
are subsampled with --seed. The `cot` split is millions of rows: a Hub id is streamed.

    python examples/data/gen_ssd.py                    # -> data/openmathreasoning_25k.jsonl
"""

import hashlib
import random

from _prepare import load, make_parser, write_jsonl

BOXED = "Please reason step by step, and put your final answer within \\boxed{}."


def prepare(rows, min_distinct: int = 16, num_problems: int = 25000, seed: int = 42,
            generation_model: str = "DeepSeek-R1") -> list[dict]:
    solutions: dict[str, set[str]] = {}
    answers: dict[str, str] = {}
    for row in rows:
        answer = str(row.get("expected_answer") or "").strip()
        if row.get("generation_model") != generation_model or not answer:
            continue
        problem = str(row["problem"]).strip()
        digest = hashlib.sha1(" ".join(str(row["generated_solution"]).split()).encode()).hexdigest()
        solutions.setdefault(problem, set()).add(digest)
        answers.setdefault(problem, answer)
    kept = [p for p in solutions if len(solutions[p]) >= min_distinct]
    if len(kept) > num_problems:
        kept = sorted(random.Random(seed).sample(kept, num_problems), key=kept.index)
    return [{"id": f"omr-{i}", "prompt": f"{p} {BOXED}", "answer": answers[p]} for i, p in enumerate(kept)]


def main(argv=None):
    parser = make_parser(__doc__, "nvidia/OpenMathReasoning", "data/openmathreasoning_25k.jsonl", split="cot")
    parser.add_argument("--min_distinct_solutions", type=int, default=16, help="distinct R1 solutions (paper §4.1)")
    parser.add_argument("--num_problems", type=int, default=25000, help="problems kept (paper §4.1: 25K)")
    args = parser.parse_args(argv)
    write_jsonl(prepare(load(args, streaming=True), args.min_distinct_solutions, args.num_problems, args.seed),
                args.output)


if __name__ == "__main__":
    main()
