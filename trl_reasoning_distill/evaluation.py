"""Accuracy harness: greedy pass@1 and avg@k sampling accuracy of a causal LM on a `prompt`/`answer` dataset.

Works for any dataset whose `prompt` is chat messages (or a plain string, sent as one user message) and whose
`answer` is the gold final answer. Answers are extracted with `verify.extract_answer` (mode recorded in the output)
and graded with `verify.grade`. Per-example records are appended to a JSONL file as each batch finishes (flushed and
fsynced, keyed by `id`), so an interrupted evaluation resumes where it stopped without duplicating a record. The file
is bound to what produced it by a fingerprint beside it (`<name>.fingerprint.json`: model, tokenizer, dataset, every
sampling and grading setting, code version), so records are only ever resumed by the same evaluation; another one
stops with a `StaleOutputError` naming the differing fields (`overwrite=True` starts afresh).
"""

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .fingerprint import check_unique_ids, claim_output, model_identity, rows_identity, tokenizer_identity
from .generation.hf import HFGenerator
from .jsonl import append_records, read_records
from .progress import ThroughputBar, generated_tokens
from .validation import check_prompt_answer_rows, dataset_rows  # check_prompt_answer_rows: re-exported
from .verify import EXTRACTION_MODES, extract_answer, grade

RECORD_FORMAT = 1  # of the evaluation records: a change of fields bumps it, so old files are not resumed


@dataclass
class EvalResult:
    """Aggregates of one evaluation; `records` holds one dict per example (the JSONL lines)."""

    greedy_accuracy: float
    avg_at_k: float | None
    k: int
    n: int
    extraction: str
    records: list[dict] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        sampled = {f"avg@{self.k}": self.avg_at_k} if self.k else {}
        return {"n": self.n, "greedy_pass@1": self.greedy_accuracy, **sampled, "extraction": self.extraction}


def as_messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Iterable[str | list[dict]]) -> list[list[int]]:
    """Chat-templated prompt ids, generation prompt included."""
    texts = [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | list[dict]],
    temperature: float = 0.0,
    max_new_tokens: int = 256,
) -> list[str]:
    """One completion per prompt (greedy when `temperature == 0`)."""
    samples = HFGenerator(model, tokenizer).generate(
        encode_prompts(tokenizer, prompts), n=1, max_new_tokens=max_new_tokens, temperature=temperature
    )
    return [s[0].text for s in samples]


def check_eval_settings(
    k: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int, extraction: str
) -> None:
    """Raise `ValueError` naming the bad setting of [`evaluate`] (cheap: run it before loading any model)."""
    checks = [
        ("k", k, isinstance(k, numbers.Integral) and k >= 0, "an integer >= 0 (0: greedy only)"),
        ("batch_size", batch_size, isinstance(batch_size, numbers.Integral) and batch_size >= 1, "an integer >= 1"),
        ("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, numbers.Integral) and max_new_tokens >= 1,
         "an integer >= 1"),
        ("temperature", temperature, math.isfinite(temperature) and temperature >= 0, "finite and >= 0 (0: greedy)"),
        ("top_p", top_p, math.isfinite(top_p) and 0 < top_p <= 1, "in (0, 1]"),
        ("extraction", extraction, extraction in EXTRACTION_MODES, f"one of {EXTRACTION_MODES}"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value!r}.")


def evaluation_rows(dataset) -> list[dict]:
    """The rows of `dataset` as dicts, checked (`prompt`, `answer`, unique ids) and with row-index ids filled in."""
    rows = dataset_rows(dataset, "the evaluation dataset")
    check_prompt_answer_rows(rows, "the evaluation dataset")
    return check_unique_ids(rows, "the evaluation dataset")


def evaluation_fingerprint(model, tokenizer, rows: list[dict], k: int, temperature: float, top_p: float,
                           max_new_tokens: int, extraction: str) -> dict:
    """What the records of an evaluation depend on; the sampling settings only count when `k > 0`. The batch size
    does not count: an evaluation may resume with a smaller one (after running out of memory)."""
    return {"records": f"evaluation v{RECORD_FORMAT}", "model": model_identity(model),
            "tokenizer": tokenizer_identity(tokenizer), "dataset": rows_identity(rows), "k": k,
            "temperature": temperature if k else None, "top_p": top_p if k else None,
            "max_new_tokens": max_new_tokens, "extraction": extraction}


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    k: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 128,
    extraction: str = "auto",
    output_jsonl: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Greedy pass@1 and, when `k > 0`, avg@k: the mean accuracy of `k` samples at `temperature`/`top_p`.

    Args:
        dataset: a `datasets.Dataset` or a list of dicts with `prompt`, `answer` and optionally `id` (row index
            otherwise; ids must be unique).
        output_jsonl: per-example records are appended here; existing records (same `id`) are reused, not redone,
            when the file was made by the same evaluation (its fingerprint beside it: model, tokenizer, dataset,
            `k`, `temperature`, `top_p`, `max_new_tokens`, `extraction`, code version). Otherwise
            `fingerprint.StaleOutputError` names the differing fields, before any generation.
        overwrite: delete `output_jsonl` (and its fingerprint) and start afresh.
        progress: show a bar over the problems (problems/s, generated tok/s), updated after each batch.
    """
    check_eval_settings(k, temperature, top_p, max_new_tokens, batch_size, extraction)
    rows = evaluation_rows(dataset)
    if output_jsonl is not None:
        if Path(output_jsonl).is_dir():
            raise ValueError(f"output_jsonl {output_jsonl} is a directory; give the path of a .jsonl file.")
        fields = evaluation_fingerprint(model, tokenizer, rows, k, temperature, top_p, max_new_tokens, extraction)
        claim_output(output_jsonl, fields, overwrite=overwrite)
    done = read_records(output_jsonl)
    todo = [r for r in rows if str(r["id"]) not in done]
    generator = HFGenerator(model, tokenizer, batch_size=batch_size * max(k, 1))
    bar = ThroughputBar(len(rows), "eval", unit="problem", initial=len(rows) - len(todo), enabled=progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        records, tokens = _evaluate_batch(generator, tokenizer, batch, k, temperature, top_p, max_new_tokens,
                                          extraction)
        append_records(output_jsonl, records)
        done.update({str(r["id"]): r for r in records})
        bar.update(len(batch), tokens=tokens)
    bar.close()
    records = [done[str(r["id"])] for r in rows]
    greedy = sum(r["greedy_correct"] for r in records) / len(records)
    avg_k = sum(sum(r["sample_correct"]) / k for r in records) / len(records) if k else None
    return EvalResult(greedy, avg_k, k, len(records), extraction, records)


def _evaluate_batch(generator, tokenizer, batch, k, temperature, top_p, max_new_tokens,
                    extraction) -> tuple[list[dict], int]:
    """The records of `batch` and the tokens generated for them (greedy and sampled)."""
    prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in batch])
    greedy = generator.generate(prompt_ids, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    sampled = (generator.generate(prompt_ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p) if k else [[] for _ in batch])
    records = []
    for row, (g,), samples in zip(batch, greedy, sampled):
        gold = str(row["answer"])
        records.append({
            "id": row["id"],
            "answer": gold,
            "greedy": g.text,
            "greedy_correct": grade(extract_answer(g.text, extraction), gold),
            "samples": [s.text for s in samples],
            "sample_correct": [grade(extract_answer(s.text, extraction), gold) for s in samples],
        })
    return records, generated_tokens(greedy) + generated_tokens(sampled)
