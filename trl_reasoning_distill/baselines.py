"""Baselines every method is compared with.

- **Standard KD** (sequence-level KD / rejection-sampling fine-tuning): sample the teacher on the training prompts,
  keep the samples whose final answer is verified correct, and fine-tune the student on them with TRL's `SFTTrainer`
  (loss on completion tokens only). `rejection_sample` builds that data set; Gen-SSD's cold start and BRTS's pools
  reuse it.
- **GKD** (on-policy distillation, https://huggingface.co/papers/2306.13649): our `KDTrainer`.
"""

import math
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .evaluation import encode_prompts
from .fingerprint import (
    check_records_rows,
    check_unique_ids,
    claim_output,
    model_identity,
    row_hash,
    tokenizer_identity,
)
from .gen_ssd.sampler import batch_seed
from .generation import Generator, HFGenerator
from .jsonl import append_records, read_records
from .progress import ThroughputBar
from .validation import check_prompt_answer_rows, dataset_rows
from .verify import EXTRACTION_MODES, extract_answer, grade

RECORD_FORMAT = "rejection_sample/1"


def rejection_sample(
    model: PreTrainedModel | Generator,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    n: int = 4,
    keep_per_prompt: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    extraction: str = "auto",
    batch_size: int = 64,
    seed: int | None = None,
    output_jsonl: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Dataset:
    """Verified samples of `model` on `dataset` (`prompt`, `answer` columns): `n` samples per prompt, the first
    `keep_per_prompt` correct ones kept.

    Args:
        batch_size (`int`, *optional*, defaults to `64`):
            Prompts per seeded batch (with `seed`): one generation call, and one group of records appended.
        seed (`int` or `None`, *optional*, defaults to `None`):
            Seeds each batch of `batch_size` prompts with `gen_ssd.sampler.batch_seed(seed, k)`, so a resumed run
            redraws exactly the batches it redoes. `None`: one call over every prompt under the global random state.
        output_jsonl (`str` or `Path`, *optional*):
            Resumable record file (needs a `seed`): one record per prompt (`id`, `row_hash`, the kept completions
            and `tokens_generated`), appended and fsynced as each batch ends; prompts already recorded are not
            sampled again, so the result is the same whether the run was interrupted or not. Needs unique `id`s (the
            row index where there is no `id` column). A fingerprint of the model, tokenizer and settings is kept
            beside it: a run under others raises `StaleOutputError` naming the fields, and so does a record of
            another row.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete `output_jsonl` and its fingerprint first and start afresh.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over the prompts (prompts/s, generated tok/s, kept samples). Without a `seed`, an
            [`HFGenerator`] is called a few whole batches at a time, which draws the same samples as one call.

    Returns:
        `Dataset` with `prompt`, `completion` (assistant messages), `answer`, `id` (when the input has it) and
        `tokens_generated` (every sampled token of that prompt, kept or not: the teacher cost).
    """
    if keep_per_prompt < 1 or keep_per_prompt > n:
        raise ValueError(f"keep_per_prompt must be in [1, n={n}], got {keep_per_prompt}.")
    if extraction not in EXTRACTION_MODES:
        raise ValueError(f"extraction must be one of {EXTRACTION_MODES}, got {extraction!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if output_jsonl is not None and seed is None:
        raise ValueError("output_jsonl needs a `seed`: a resumed run must redraw the batches it redoes exactly.")
    rows = dataset_rows(dataset, "the rejection-sampling dataset")
    check_prompt_answer_rows(rows, "the rejection-sampling dataset")
    keyed = [dict(r) for r in rows]  # ids filled in (row index) without adding an `id` column to the result
    if output_jsonl is not None:
        check_unique_ids(keyed, "the rejection-sampling dataset")
    else:
        for i, row in enumerate(keyed):
            row["id"] = i  # no file: records live in memory, by position
    generator = model if isinstance(model, Generator) else HFGenerator(model, tokenizer)
    done: dict[str, dict] = {}
    if output_jsonl is not None:
        fields = {"record_format": RECORD_FORMAT, "model": model_identity(generator),
                  "tokenizer": tokenizer_identity(tokenizer), "n": n, "keep_per_prompt": keep_per_prompt,
                  "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                  "extraction": extraction, "batch_size": batch_size, "seed": seed}
        claim_output(output_jsonl, fields, overwrite=overwrite)
        done = read_records(output_jsonl)
        check_records_rows(done, keyed, output_jsonl)
    step = _unseeded_step(generator, n, len(rows)) if seed is None else batch_size
    bar = ThroughputBar(len(rows), "rejection sampling", unit="prompt", enabled=progress,
                        initial=sum(str(row["id"]) in done for row in keyed))
    for k, start in enumerate(range(0, len(rows), step)):
        batch = keyed[start : start + step]
        if all(str(row["id"]) in done for row in batch):
            continue
        if seed is not None:
            torch.manual_seed(batch_seed(seed, k))
        samples = generator.generate(encode_prompts(tokenizer, [r["prompt"] for r in batch]), n=n,
                                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        records = [_record(row, group, keep_per_prompt, extraction) for row, group in zip(batch, samples, strict=True)]
        new = [r for r in records if str(r["id"]) not in done]
        append_records(output_jsonl, new)
        done.update({str(r["id"]): r for r in new})
        bar.update(len(new), tokens=sum(r["tokens_generated"] for r in new),
                   kept=sum(len(r["kept"]) for r in done.values()))
    bar.close()
    kept = []
    for row, key in zip(rows, keyed):
        record = done[str(key["id"])]
        for text in record["kept"]:
            kept.append({**row, "completion": [{"role": "assistant", "content": text}],
                         "tokens_generated": record["tokens_generated"]})
    if kept:
        return Dataset.from_list(kept)
    return Dataset.from_dict({name: [] for name in [*rows[0], "completion", "tokens_generated"]})


def _unseeded_step(generator, n: int, num_rows: int) -> int:
    """Prompts per call without a seed: for an [`HFGenerator`], as many as fill whole `generate` batches, so the
    calls draw exactly what one call over every prompt would (its batches, in the same order); every prompt at once
    for other backends (vLLM schedules them best in one call)."""
    if isinstance(generator, HFGenerator):
        return math.lcm(generator.batch_size, n) // n
    return max(num_rows, 1)


def _record(row: dict, group, keep_per_prompt: int, extraction: str) -> dict:
    """One prompt's outcome: the first `keep_per_prompt` verified samples that ended on EOS, and the tokens spent."""
    correct = [s.text for s in group if s.finish_reason == "eos" and grade(extract_answer(s.text, extraction),
                                                                           str(row["answer"]))]
    return {"id": row["id"], "row_hash": row_hash(row), "kept": correct[:keep_per_prompt],
            "tokens_generated": sum(len(s.token_ids) for s in group)}
