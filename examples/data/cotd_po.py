"""CoTD-PO paper data: the UltraFeedback prompt pool, as examples/configs/cotd_po_paper.yaml reads it.

CoTD-PO paper §3.1 "Datasets": the prompts of UltraFeedback's training set (about 64K; `openbmb/UltraFeedback`, columns
`source`, `instruction`, `models`, `completions`, `correct_answers`, `incorrect_answers`), 8,000 drawn per round.
This script writes `id` and `prompt` (the `instruction`, each once). The paper's teacher rationales (GPT-4o's
"My thought:" part of its reply to the YAML's instruction_template) come from the teacher's API: give them as a JSONL
of `id`, `rationale` with --rationales and they are joined into a `rationale` column (every prompt must have one).
Without them, examples/cotd_po.py writes rationales with --teacher_model_name_or_path (a local teacher).

    python examples/data/cotd_po.py --rationales gpt4o_rationales.jsonl   # -> data/ultrafeedback_rationales.jsonl
"""

import json
import sys

from _prepare import load, make_parser, write_jsonl


def prepare(rows, rationales: dict[str, str] | None = None) -> list[dict]:
    prompts = list(dict.fromkeys(str(row["instruction"]).strip() for row in rows
                                 if str(row.get("instruction") or "").strip()))
    out = [{"id": f"uf-{i}", "prompt": p} for i, p in enumerate(prompts)]
    if rationales is not None:
        missing = [row["id"] for row in out if not rationales.get(row["id"])]
        if missing:
            raise ValueError(f"{len(missing)} prompts have no rationale (first: {missing[0]}); every id needs one.")
        for row in out:
            row["rationale"] = rationales[row["id"]]
    return out


def main(argv=None):
    parser = make_parser(__doc__, "openbmb/UltraFeedback", "data/ultrafeedback_rationales.jsonl")
    parser.add_argument("--rationales", default="", help="JSONL of id, rationale (the teacher's) to join")
    args = parser.parse_args(argv)
    rationales = None
    if args.rationales:
        with open(args.rationales) as f:
            rationales = {r["id"]: r["rationale"] for r in map(json.loads, f) if r}
    try:
        rows = prepare(load(args), rationales)
    except ValueError as error:
        sys.exit(f"cotd_po.py: {error}")
    write_jsonl(rows, args.output)


if __name__ == "__main__":
    main()
