"""VCRD data: one teacher response and one student response per prompt, checked, collated and (offline) sampled.

VCRD trains on two rollouts of each prompt (paper §2.1): skew KL on the teacher's, skew reverse KL on the student's.
As in the paper's experiments (§12) both are generated once before training by default; DistiLLM-2 stores them as
`chosen` (teacher) and `rejected` (student), and those columns are accepted as they are.

- [`to_vcrd_dataset`]: any accepted format to the trainer's (`messages` ending in the teacher reply, GKD's format, plus
  `student_completion`), with every row checked up front.
- [`VCRDDataCollator`]: left-padded `teacher_*` and `student_*` sequences, the prompt ids and the raw prompt text.
- [`sample_vcrd_rollouts`] / [`toy_vcrd_dataset`]: the offline rollouts, sampled with [`HFGenerator`] (optionally
  into a resumable, fingerprinted record file).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation import as_messages, encode_prompts
from ..fingerprint import (
    check_records_rows,
    check_unique_ids,
    claim_output,
    model_identity,
    row_hash,
    tokenizer_identity,
)
from ..gen_ssd.sampler import batch_seed
from ..generation import Generator, HFGenerator
from ..generation.base import validate_sampling
from ..jsonl import append_records, read_records
from ..progress import ThroughputBar, generated_tokens
from ..toy.task import parse_problem
from ..validation import dataset_rows

TEACHER_COLUMNS = ("teacher_completion", "chosen")  # our name, then DistiLLM-2's
STUDENT_COLUMNS = ("student_completion", "rejected")
HALVES = ("teacher", "student")
ROLLOUT_FORMAT = "vcrd_rollouts/1"


def _column(columns: list[str], candidates: tuple[str, str], who: str) -> str | None:
    """The one column of `candidates` present in `columns`, if any; both present is ambiguous."""
    present = [c for c in candidates if c in columns]
    if len(present) > 1:
        raise ValueError(f"the dataset has both {present[0]!r} and {present[1]!r}; keep one {who} response column.")
    return present[0] if present else None


def _reply_text(value: Any, column: str, index: int) -> str:
    """A response given as a string, or as chat messages whose last one is the assistant's reply."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        return value[-1]["content"]
    raise ValueError(f"row {index}: {column!r} must be a string or chat messages ending with an assistant reply, got "
                     f"{str(value)[:80]!r}.")


def _prompt_messages(row: dict, index: int) -> list[dict]:
    messages = as_messages(row["prompt"]) if "prompt" in row else list(row["messages"])[:-1]
    if not messages or not "".join(str(m.get("content", "")) for m in messages).strip():
        raise ValueError(f"row {index} has an empty prompt.")
    return messages


def to_vcrd_dataset(dataset: Dataset | None, student_rollout: str = "offline") -> Dataset | None:
    """
    The trainer's format of a VCRD dataset: `messages` (the prompt, then the teacher's reply) and, for offline student
    rollouts, `student_completion` (a string). Other columns are kept.

    Accepted: `prompt` (string or chat messages) with `teacher_completion` or DistiLLM-2's `chosen`; or `messages`
    ending with the teacher's reply. Student responses: `student_completion` or DistiLLM-2's `rejected`. Responses are
    strings or chat messages ending with the assistant reply. Raises a `ValueError` naming the problem (missing
    column, empty prompt or teacher response, a malformed response) before any training.

    Args:
        dataset (`Dataset` or `None`):
            The rows; `None` is returned as is.
        student_rollout (`str`, *optional*, defaults to `"offline"`):
            `"offline"`: student responses are required; `"online"`: any are dropped (the trainer samples them).
    """
    if dataset is None:
        return None
    if isinstance(dataset, dict):  # DatasetDict, IterableDatasetDict or named evaluation sets: each converted
        return type(dataset)({name: to_vcrd_dataset(part, student_rollout) for name, part in dataset.items()})
    columns = dataset.column_names
    if columns is None:  # a streaming dataset whose columns are unknown: those of its first row
        columns = list(next(iter(dataset), {}))
    teacher = _column(columns, TEACHER_COLUMNS, "teacher")
    student = _column(columns, STUDENT_COLUMNS, "student")
    if teacher is None and not ("messages" in columns and "prompt" not in columns):
        raise ValueError(f"a VCRD dataset needs 'prompt' and a teacher response ('teacher_completion' or 'chosen'), "
                         f"or 'messages' ending with it; it has {columns}.")
    if student_rollout == "online":
        dataset = dataset.remove_columns(student) if student else dataset
        columns, student = [c for c in columns if c != student], None
    elif student is None:
        raise ValueError(f"student_rollout='offline' needs student responses ('student_completion' or 'rejected'); "
                         f"the dataset has {columns}. Sample them with `sample_vcrd_rollouts`, or set "
                         "student_rollout='online'.")

    def convert(row, index):
        prompt = _prompt_messages(row, index)
        reply = _reply_text(row[teacher] if teacher else list(row["messages"]), teacher or "messages", index)
        if not reply.strip():
            raise ValueError(f"row {index} has an empty teacher response.")
        out = {"messages": [*prompt, {"role": "assistant", "content": reply}]}
        if student is not None:
            out["student_completion"] = _reply_text(row[student], student, index)
        return out

    drop = [c for c in ("prompt", teacher, student) if c is not None and c in columns and c != "student_completion"]
    return dataset.map(convert, with_indices=True, remove_columns=drop)


def _left_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, out.shape[1] - len(row) :] = torch.tensor(row)
    return out


@dataclass
class VCRDDataCollator:
    """
    Collates rows of [`to_vcrd_dataset`] into left-padded tensors for [`VCRDTrainer`].

    Prompts are chat-templated (generation prompt included) and cut to their last `max_prompt_length` tokens; each
    response is tokenised, followed by EOS (DistiLLM-2), and cut to `max_length` minus its prompt's length.

    Returns a dict with `prompts`, `prompt_attention_mask` (`(B, P)`), `teacher_input_ids`, `teacher_attention_mask`,
    `teacher_labels` (`(B, L)`, labels -100 on prompt and padding), the same `student_*` keys when every row has a
    student response, and `prompt_text` (the last prompt message of each row, for the judge).
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 1024
    max_prompt_length: int = 512

    def __post_init__(self):
        if self.tokenizer.pad_token_id is None or self.tokenizer.eos_token_id is None:
            raise ValueError("VCRDDataCollator needs a tokenizer with a pad token and an EOS token.")
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 <= max_prompt_length < max_length, got {self.max_prompt_length} and "
                             f"{self.max_length}.")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _sequences(self, prompts: list[list[int]], replies: list[str], who: str) -> dict[str, torch.Tensor]:
        ids, labels = [], []
        for prompt, reply in zip(prompts, replies):
            completion = [*self._encode(reply), self.tokenizer.eos_token_id][: self.max_length - len(prompt)]
            ids.append(prompt + completion)
            labels.append([-100] * len(prompt) + completion)
        return {f"{who}_input_ids": _left_pad(ids, self.tokenizer.pad_token_id),
                f"{who}_attention_mask": _left_pad([[1] * len(row) for row in ids], 0),
                f"{who}_labels": _left_pad(labels, -100)}

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        prompts, texts = [], []
        for example in examples:
            messages = example["messages"][:-1]
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompts.append(self._encode(rendered)[-self.max_prompt_length :])
            texts.append(messages[-1]["content"])
        batch = {"prompts": _left_pad(prompts, self.tokenizer.pad_token_id),
                 "prompt_attention_mask": _left_pad([[1] * len(p) for p in prompts], 0), "prompt_text": texts}
        batch |= self._sequences(prompts, [e["messages"][-1]["content"] for e in examples], "teacher")
        students = [e.get("student_completion") for e in examples]
        if any(s is not None for s in students):
            if None in students:
                raise ValueError("some rows of the batch have a student response and some do not.")
            batch |= self._sequences(prompts, students, "student")
        return batch


def stack_halves(inputs: dict, pad_id: int) -> dict[str, torch.Tensor]:
    """Teacher rollouts then student rollouts as one left-padded `(2B, L)` batch."""
    width = max(inputs[f"{who}_input_ids"].shape[1] for who in HALVES)
    out = {}
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
        parts = [inputs[f"{who}_{key}"] for who in HALVES]
        out[key] = torch.cat([F.pad(part, (width - part.shape[1], 0), value=value) for part in parts])
    return out


def check_toy_prompts(dataset: Dataset | None) -> None:
    """The toy step checker grades toy problems: every prompt must be one (`47+38-19=?`)."""
    for index, messages in enumerate([] if dataset is None else dataset["messages"]):
        try:
            parse_problem(messages[-2]["content"])
        except ValueError as error:
            raise ValueError(f"validity_judge='step_checker' checks toy-world steps, but row {index}'s prompt is not "
                             f"a toy problem ({error}); pass a `validity_scorer` for other data.") from None


def sample_vcrd_rollouts(
    teacher: PreTrainedModel | Generator,
    student: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 256,
    seed: int | None = None,
    output_jsonl: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Dataset:
    """
    The offline rollouts of VCRD (paper §12): one teacher response and (with `student`) one student response per
    prompt, sampled with [`HFGenerator`] at DistiLLM-2's settings (temperature 0.8, top-p 0.95; spec A10).

    Args:
        teacher (`PreTrainedModel` or `Generator`): The teacher, or its sampler (e.g. the [`VLLMGenerator`] that
            `generation.vllm.teacher_generator_from_config(args, teacher, tokenizer)` builds from a `VCRDConfig`).
        student (`PreTrainedModel` or `None`): The student before distillation; `None` samples teacher responses only
            (for `student_rollout="online"`).
        tokenizer (`PreTrainedTokenizerBase`): Their shared tokenizer (pad and EOS tokens set).
        dataset: A `Dataset` or list of rows with a `prompt` column (a string or chat messages).
        max_new_tokens (`int`, *optional*, defaults to `512`): Response budget (spec A10: 1024 - 512).
        batch_size (`int`, *optional*, defaults to `256`): Prompts per `generate` call (and, with `seed`, per seeded
            batch of records).
        seed (`int` or `None`, *optional*, defaults to `None`): Seeds each batch of `batch_size` prompts (teacher,
            then student) with `gen_ssd.sampler.batch_seed(seed, k)`, so a resumed run redraws exactly the batches it
            redoes. `None`: the teacher over every prompt, then the student, under the global random state.
        output_jsonl (`str` or `Path`, *optional*): Resumable record file (needs a `seed`): one record per prompt
            (`id`, `row_hash` and the responses), appended and fsynced as each batch ends; recorded prompts are not
            sampled again, so the result is the same whether the run was interrupted or not. Needs unique `id`s (the
            row index where there is no `id` column). A fingerprint of both models, the tokenizer and the settings
            is kept beside it: a run under others raises `StaleOutputError` naming the fields, and so does a record
            of another row.
        overwrite (`bool`, *optional*, defaults to `False`): Delete `output_jsonl` and its fingerprint first.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar over the responses (responses/s,
            generated tok/s), updated after each `generate` call of `batch_size` prompts.

    Returns:
        `Dataset`: The rows with `teacher_completion` and (with `student`) `student_completion` added.
    """
    rows = dataset_rows(dataset, "the VCRD rollout dataset")
    if not rows or any("prompt" not in row for row in rows):
        raise ValueError("sample_vcrd_rollouts needs a non-empty dataset with a 'prompt' column.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if output_jsonl is not None and seed is None:
        raise ValueError("output_jsonl needs a `seed`: a resumed run must redraw the batches it redoes exactly.")
    validate_sampling(1, max_new_tokens, temperature, top_p, 0)
    keyed = [dict(row) for row in rows]  # ids filled in without adding an `id` column to the result
    if output_jsonl is not None:
        check_unique_ids(keyed, "the VCRD rollout dataset")
    else:
        for i, row in enumerate(keyed):
            row["id"] = i
    models = {"teacher_completion": teacher} | ({"student_completion": student} if student is not None else {})
    done: dict[str, dict] = {}
    if output_jsonl is not None:
        fields = {"record_format": ROLLOUT_FORMAT, "teacher": model_identity(teacher),
                  "student": None if student is None else model_identity(student),
                  "tokenizer": tokenizer_identity(tokenizer), "max_new_tokens": max_new_tokens,
                  "temperature": temperature, "top_p": top_p, "batch_size": batch_size, "seed": seed}
        claim_output(output_jsonl, fields, overwrite=overwrite)
        done = read_records(output_jsonl)
        check_records_rows(done, keyed, output_jsonl)
    step = len(rows) if seed is None else batch_size
    bar = ThroughputBar(len(rows) * len(models), "VCRD rollouts", unit="response", enabled=progress,
                        initial=len(models) * sum(str(row["id"]) in done for row in keyed))
    for k, start in enumerate(range(0, len(rows), step)):
        batch = keyed[start : start + step]
        if all(str(row["id"]) in done for row in batch):
            continue
        if seed is not None:
            torch.manual_seed(batch_seed(seed, k))
        records = _rollout_batch(batch, models, tokenizer, max_new_tokens, temperature, top_p, batch_size, bar)
        append_records(output_jsonl, [r for r in records if str(r["id"]) not in done])
        done.update({str(r["id"]): r for r in records if str(r["id"]) not in done})
    bar.close()
    records = [done[str(key["id"])] for key in keyed]
    return Dataset.from_list([{**row, **{c: record[c] for c in models}} for row, record in zip(rows, records)])


def _rollout_batch(batch: list[dict], models: dict, tokenizer, max_new_tokens: int, temperature: float, top_p: float,
                   batch_size: int, bar: ThroughputBar) -> list[dict]:
    """One record per row of `batch`: each model's one response (all of the teacher's, then all of the student's),
    `batch_size` prompts per call (the batches one call over every prompt would make: the same draws)."""
    prompt_ids = encode_prompts(tokenizer, [row["prompt"] for row in batch])
    records = [{"id": row["id"], "row_hash": row_hash(row)} for row in batch]
    for column, model in models.items():
        generator = model if isinstance(model, Generator) else HFGenerator(model, tokenizer, batch_size=batch_size)
        step = batch_size if isinstance(generator, HFGenerator) else len(batch)  # other backends: one call
        for start in range(0, len(batch), step):
            samples = generator.generate(prompt_ids[start : start + step], n=1, max_new_tokens=max_new_tokens,
                                         temperature=temperature, top_p=top_p)
            for record, (sample,) in zip(records[start : start + step], samples, strict=True):
                record[column] = sample.text
            bar.update(len(samples), tokens=generated_tokens(samples))
    return records


def toy_vcrd_dataset(
    n: int = 1024, split: str = "train", seed: int = 0, *, max_new_tokens: int = 192, teacher=None, student=None,
    tokenizer=None, with_student: bool = True,
) -> Dataset:
    """
    VCRD training data from the toy world alone: `n` toy problems (`prompt`, `answer`, `id`, `num_ops`) with a response
    of the toy teacher and one of the cold-started toy student (the committed models unless given), sampled under
    `torch.manual_seed(seed)`. 192 new tokens cover every toy solution style.
    """
    from ..toy import load_toy_student, load_toy_teacher, load_toy_tokenizer, toy_dataset

    teacher = teacher if teacher is not None else load_toy_teacher()
    student = (student if student is not None else load_toy_student()) if with_student else None
    tokenizer = tokenizer if tokenizer is not None else load_toy_tokenizer()
    torch.manual_seed(seed)
    return sample_vcrd_rollouts(teacher, student, tokenizer, toy_dataset(split, n, seed=seed),
                                max_new_tokens=max_new_tokens)
