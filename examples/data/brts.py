"""BRTS paper data: DAPO-Math-17K prompts with their ground truth, as examples/configs/brts_paper.yaml reads them.

The paper trains on DAPO-Math-17K (BRTS paper §4.1 "Setup"; the authors' code reads a processed
`dapo-math-17k` parquet that is not published). This script takes the public `BytedTsinghua-SIA/DAPO-Math-17k`
(columns `prompt`: one user message wrapping the problem in DAPO's "Answer:" instructions, `reward_model`:
{`ground_truth`, `style`}, `data_source`, `ability`, `extra_info`), keeps each problem once (the release repeats
every problem), and writes `prompt` = the problem followed by the instruction of the authors' evaluation script,
"Please reason step by step, and put your final answer within \\boxed{}.", and `answer` = the ground truth.

    python examples/data/brts.py                       # -> data/dapo_math_17k.jsonl
    python examples/data/brts.py --dataset_name ./dapo_local.parquet --output /tmp/dapo.jsonl
"""

from _prepare import load, make_parser, write_jsonl

BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_HEAD = "Solve the following math problem step by step."  # DAPO's wrapper: "<head> ... \n\n<problem>\n\n<tail>"
DAPO_TAIL = "\n\nRemember to put your answer on its own line after \"Answer:\"."


def problem_text(prompt) -> str:
    """The bare problem of a DAPO prompt (a message list or a string), without DAPO's answer-format wrapper."""
    text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
    if text.startswith(DAPO_HEAD) and "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    return text.removesuffix(DAPO_TAIL).strip()


def prepare(rows) -> list[dict]:
    out, seen = [], set()
    for row in rows:
        problem = problem_text(row["prompt"])
        answer = str((row.get("reward_model") or {}).get("ground_truth", "")).strip()
        if not problem or not answer or problem in seen:
            continue
        seen.add(problem)
        out.append({"id": f"dapo-{len(out)}", "prompt": f"{problem} {BOXED}", "answer": answer})
    return out


def main(argv=None):
    args = make_parser(__doc__, "BytedTsinghua-SIA/DAPO-Math-17k", "data/dapo_math_17k.jsonl").parse_args(argv)
    write_jsonl(prepare(load(args, streaming=True)), args.output)


if __name__ == "__main__":
    main()
