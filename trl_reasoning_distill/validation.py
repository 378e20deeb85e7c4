"""Checks of inputs before any compute, shared by every trainer, sampler and harness.

Each check raises a `ValueError` naming the problem (the field, the row index, the path) and what to do, so that bad
input never turns into a silent wrong result or an error deep inside TRL or torch:

- [`check_finite_fields`]: NaN or infinity in any float field of a config (its inherited fields included).
- [`check_vocab_size`]: a `vocab_size` that would cut the tokenizer's last tokens out of the loss.
- [`check_dataset_rows`] / [`check_prompt_answer_rows`]: an empty dataset, a `None` row, a missing, `None` or empty
  prompt, and (where answers are graded) a missing, `None` or empty gold answer, named by row index.
- Iterable (streaming) datasets cannot be scanned whole before training: [`check_dataset_rows`] checks their first
  row at once, and [`lazily_checked`] / [`check_row`] check every row as it is read (named by its index in the
  stream), so a bad row stops the run when it is reached instead of being trained on.
- [`check_prompt_lengths`] / [`check_chat_lengths`]: a row over `max_length`. TRL's collator keeps the *last*
  `max_length` tokens, so the prompt would lose its start (`19-14-28=?` read as `9-14-28=?`) while the row is still
  graded against its own answer; every trainer refuses such a row instead.
- [`check_output_dir`]: an output folder that cannot be created or written, at construction rather than at the first
  checkpoint.
- [`check_not_meta`]: a model whose weights were never loaded (meta device).
- [`has_tokenizer_files`]: whether a model folder can be compared by its tokenizer at all (else by its config).
"""

import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import IterableDataset

# --- configs -----------------------------------------------------------------------------------------------------


def _non_finite(value: Any) -> bool:
    """Whether `value` is a float (or holds one, in a list or tuple) that is NaN or infinite."""
    if isinstance(value, (list, tuple)):
        return any(_non_finite(item) for item in value)
    return isinstance(value, float) and not math.isfinite(value)


def check_finite_fields(config: Any) -> None:
    """Raise `ValueError` naming the first float field of the dataclass `config` that is NaN or infinite.

    Every field is checked, the inherited ones included (`TrainingArguments`, `GKDConfig`, `DPOConfig`), so the
    comparisons of the range checks that follow, which NaN always passes, only ever see finite numbers.
    """
    for config_field in dataclasses.fields(config):
        value = getattr(config, config_field.name, None)
        if _non_finite(value):
            raise ValueError(f"`{config_field.name}` must be a finite number, got {value!r}: NaN and infinity are "
                             f"refused.")


def check_vocab_size(vocab_size: int | None, tokenizer_length: int) -> None:
    """Refuse a `vocab_size` below the tokenizer's length: the logits of the last tokens would be cut off, so the
    student would never be trained on them (and sampling could never emit them)."""
    if vocab_size is not None and vocab_size < tokenizer_length:
        raise ValueError(f"`vocab_size={vocab_size}` is smaller than the tokenizer's {tokenizer_length} tokens: the "
                         f"loss would compare only the first {vocab_size} vocabulary rows. Leave `vocab_size` unset "
                         f"(the tokenizer's length) or set it to at least {tokenizer_length}.")


# --- datasets -----------------------------------------------------------------------------------------------------


def _length(dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an iterable dataset: its rows are not known before training
        return None


def _column_names(dataset) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def _text(content: Any) -> str:
    """The text of a prompt or of one message's content (a string, or a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(_text(part.get("text") if isinstance(part, Mapping) else part) for part in content)
    return str(content)


def _prompt_problem(prompt: Any, key: str) -> str | None:
    """What is wrong with the `prompt` (or `messages`) value of a row, or `None` when it is usable."""
    if prompt is None:
        return f"has no {key} (None)"
    if isinstance(prompt, str):
        return None if prompt.strip() else f"has an empty {key}"
    if not isinstance(prompt, Sequence) or isinstance(prompt, Mapping):
        return f"has a {key} of type {type(prompt).__name__}; expected a string or a list of chat messages"
    for j, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            return f"has a {key} whose message {j} is {message!r:.60}, not a chat message (a dict)"
    if key == "messages":  # the last message is the target; the prompt is what precedes it
        return None if prompt else "has an empty messages list"
    return None if any(_text(m.get("content")).strip() for m in prompt) else f"has an empty {key}"


def _completion_problem(completion: Any, key: str) -> str | None:
    return f"has no {key} (None)" if completion is None else None


def _answer_problem(answer: Any, column: str) -> str | None:
    """What is wrong with a gold answer, or `None`: it is graded as `str(answer)`, so `None`, NaN (a missing value
    of a table) and blank strings would be graded against "None", "nan" or ""."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return f"has no gold answer ({answer}) in column {column!r}"
    if not str(answer).strip():
        return f"has an empty gold answer in column {column!r}"
    return None


def check_dataset_rows(dataset, what: str = "the dataset", *, answer_column: str | None = None) -> None:
    """Raise `ValueError` unless `dataset` has rows, and each is a row with a usable prompt and, with
    `answer_column`, a gold answer; the first bad row is named by its index.

    Args:
        dataset (`datasets.Dataset`, `datasets.IterableDataset`, `list[dict]`, `dict[str, Dataset]` or `None`):
            The rows (a dict of evaluation datasets, `DatasetDict` and `IterableDatasetDict` included: each of them).
            The prompt is the `prompt` column, else the `messages` column (GKD's format); a dataset with neither is
            left to the caller's column check. An `IterableDataset` cannot be scanned whole before training: only its
            first row is checked here (an empty one is refused); [`lazily_checked`] checks the others as they are
            read. `None` and other iterables of unknown length are not checked.
        what (`str`, *optional*, defaults to `"the dataset"`):
            How the error names the dataset, e.g. `"the training dataset"`.
        answer_column (`str` or `None`, *optional*, defaults to `None`):
            Column of the gold answers, for callers that grade against them; every row needs one, not `None` and not
            blank.
    """
    if dataset is None:
        return
    if isinstance(dataset, Mapping):
        for name, part in dataset.items():
            check_dataset_rows(part, f"{what} {name!r}", answer_column=answer_column)
        return
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(f"{what} is empty: it has no rows. Pass a dataset with at least one row.")
        check_row(first, 0, what, answer_column=answer_column)
        return
    size = _length(dataset)
    if size is None:
        return
    if size == 0:
        raise ValueError(f"{what} is empty: it has no rows. Pass a dataset with at least one row.")
    names = _column_names(dataset)
    if names is not None:  # a `datasets.Dataset`: whole columns at once, no row is `None`
        _check_columns(dataset, names, what, answer_column)
        return
    for i, row in enumerate(dataset):
        check_row(row, i, what, answer_column=answer_column)


def check_row(row, index: int, what: str = "the dataset", *, answer_column: str | None = None) -> None:
    """[`check_dataset_rows`] on one row, `index` naming it: a row that is not a mapping, a `None` or empty prompt
    (or `messages`), a `None` completion and, with `answer_column`, a missing, `None` or blank gold answer."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{what}: row {index} is {row!r:.60}, not a row (a dict of columns).")
    key = "prompt" if "prompt" in row else "messages" if "messages" in row else None
    problem = None if key is None else _prompt_problem(row[key], key)
    if problem is None and "completion" in row:
        problem = _completion_problem(row["completion"], "completion")
    if problem is None and answer_column is not None:
        if answer_column not in row:
            raise ValueError(f"{what} needs a gold-answer column {answer_column!r}; row {index} lacks it.")
        problem = _answer_problem(row[answer_column], answer_column)
    if problem is not None:
        raise ValueError(f"{what}: row {index} {problem}. Fix or drop that row.")


def checked_rows(dataset, what: str = "the dataset", *, answer_column: str | None = None):
    """[`check_dataset_rows`], returning `dataset`; an `IterableDataset` is returned [`lazily_checked`] with
    [`check_row`], so every row after the first is checked as it is read."""
    check_dataset_rows(dataset, what, answer_column=answer_column)
    if not isinstance(dataset, IterableDataset):
        return dataset
    return lazily_checked(dataset, lambda row, index: check_row(row, index, what, answer_column=answer_column))


def lazily_checked(dataset: IterableDataset, check) -> IterableDataset:
    """`dataset` with `check(row, index)` run on every row as it is read (an iterable dataset cannot be scanned
    before training): a bad row raises the check's `ValueError` when training or evaluation reaches it, before that
    row is used. Rows and columns are unchanged."""

    def checked(row, index):
        check(row, index)
        return {}

    return dataset.map(checked, with_indices=True, features=dataset.features)


def _check_columns(dataset, names: list[str], what: str, answer_column: str | None) -> None:
    checks = [(key, _prompt_problem) for key in ("prompt", "messages") if key in names][:1]
    if "completion" in names:
        checks.append(("completion", _completion_problem))
    if answer_column is not None:
        if answer_column not in names:
            raise ValueError(f"{what} needs a gold-answer column {answer_column!r}; it has {names}.")
        checks.append((answer_column, _answer_problem))
    for key, problem_of in checks:
        for i, value in enumerate(dataset[key]):
            problem = problem_of(value, key)
            if problem is not None:
                raise ValueError(f"{what}: row {i} {problem}. Fix or drop that row.")


def dataset_rows(dataset, what: str = "the dataset") -> list[dict]:
    """The rows of `dataset` (a `Dataset` or any iterable of mappings) as dicts; a row that is not a mapping (a
    `None` in a list, say) is a `ValueError` naming its index instead of a `TypeError` from `dict()`."""
    rows = []
    for i, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise ValueError(f"{what}: row {i} is {row!r:.60}, not a row of named columns.")
        rows.append(dict(row))
    return rows


def check_prompt_answer_rows(rows: list[dict], what: str = "the dataset") -> None:
    """Raise `ValueError` naming the problem unless there are rows and each is a dict with a non-empty `prompt` and a
    non-empty gold `answer` (`None`, NaN and blank answers are refused: grading would compare against "None")."""
    if not rows:
        raise ValueError(f"{what} is empty.")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{what}: row {i} is {row!r:.60}, not a row with 'prompt' and 'answer'.")
        missing = {"prompt", "answer"} - set(row)
        if missing:
            raise ValueError(f"{what} needs columns 'prompt' and 'answer'; row {i} lacks {sorted(missing)}.")
        problem = _prompt_problem(row["prompt"], "prompt") or _answer_problem(row["answer"], "answer")
        if problem is not None:
            raise ValueError(f"{what}: row {i} {problem}. Fix or drop that row.")


# --- lengths ------------------------------------------------------------------------------------------------------


def check_prompt_lengths(lengths: Iterable[int], max_length: int | None, what: str = "the dataset",
                         part: str = "prompt", limit_name: str = "max_length") -> None:
    """Refuse the first row whose `part` is longer than `max_length` tokens, instead of cutting it.

    The one rule of every trainer: a prompt is never truncated, because a cut prompt is another problem (TRL's
    collator keeps the last tokens, so `19-14-28=?` becomes `9-14-28=?`) that is still graded against the original
    answer.

    Args:
        lengths (`Iterable[int]`):
            Token count of each row's `part`, in row order.
        max_length (`int` or `None`):
            The limit; `None` checks nothing.
        what (`str`, *optional*, defaults to `"the dataset"`):
            How the error names the dataset.
        part (`str`, *optional*, defaults to `"prompt"`):
            What was counted, e.g. `"prompt + completion"`.
        limit_name (`str`, *optional*, defaults to `"max_length"`):
            The config field of the limit, e.g. `"max_prompt_length"`.
    """
    if max_length is None:
        return
    for i, length in enumerate(lengths):
        check_row_length(length, max_length, i, what, part, limit_name)


def check_row_length(length: int, max_length: int | None, index: int, what: str = "the dataset",
                     part: str = "prompt", limit_name: str = "max_length") -> None:
    """[`check_prompt_lengths`] on one row, `index` naming it (rows of an iterable dataset, checked as read)."""
    if max_length is not None and length > max_length:
        raise ValueError(f"{what}: row {index}'s {part} has {length} tokens, over {limit_name}={max_length}. It "
                         f"would be cut and the model would see another problem than the one graded. Raise "
                         f"`{limit_name}`, or shorten or drop that row.")


def _token_counts(tokenizer, texts: list[str], batch_size: int = 1024) -> list[int]:
    counts = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        counts += [len(row) for row in ids]
    return counts


def check_chat_lengths(dataset, tokenizer, what: str = "the dataset", *, max_length: int | None = None,
                       max_prompt_length: int | None = None, prompt_limit_name: str = "max_prompt_length") -> None:
    """Refuse rows of a `messages` dataset that a collator would cut from the left, with [`check_prompt_lengths`].

    The prompt is `messages[:-1]` chat-templated with the generation prompt; the whole row is `messages`
    chat-templated, as TRL's `DataCollatorForChatML` renders them.

    Args:
        dataset (`datasets.Dataset` or `None`):
            Rows with a `messages` column (GKD's format); other datasets are not checked.
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer with the chat template the collator uses.
        what (`str`, *optional*, defaults to `"the dataset"`):
            How the error names the dataset.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Limit of the whole templated row (prompt and completion): the collator keeps its last tokens.
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Limit of the templated prompt alone.
        prompt_limit_name (`str`, *optional*, defaults to `"max_prompt_length"`):
            The config field of `max_prompt_length`, for the error.
    """
    if dataset is None or _length(dataset) is None or "messages" not in (_column_names(dataset) or []):
        return
    if max_length is None and max_prompt_length is None:
        return
    messages = list(dataset["messages"])
    if max_prompt_length is not None:
        prompts = [tokenizer.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True) for m in messages]
        check_prompt_lengths(_token_counts(tokenizer, prompts), max_prompt_length, what, limit_name=prompt_limit_name)
    if max_length is not None:
        rows = [tokenizer.apply_chat_template(m, tokenize=False) for m in messages]
        prompt_only = all(not _text(m[-1].get("content")) for m in messages)  # the target is sampled in training
        check_prompt_lengths(_token_counts(tokenizer, rows), max_length, what,
                             part="prompt" if prompt_only else "prompt + completion")


def check_chat_row_lengths(messages: list, index: int, tokenizer, what: str = "the dataset", *,
                           max_length: int | None = None, max_prompt_length: int | None = None,
                           prompt_limit_name: str = "max_prompt_length") -> None:
    """[`check_chat_lengths`] on one row's `messages`, `index` naming it: for iterable datasets, whose rows are
    checked as they are read ([`lazily_checked`])."""
    if max_prompt_length is not None:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        check_row_length(length, max_prompt_length, index, what, limit_name=prompt_limit_name)
    if max_length is not None:
        length = len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False),
                               add_special_tokens=False)["input_ids"])
        part = "prompt" if not _text(messages[-1].get("content")) else "prompt + completion"
        check_row_length(length, max_length, index, what, part)


# --- files and models ---------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def has_tokenizer_files(path: str | os.PathLike) -> bool | None:
    """Whether the model folder `path` holds tokenizer files; `None` when `path` is not a local folder (a Hub id).

    Loading a tokenizer from a folder without them does not fail: transformers builds an empty tokenizer of the
    config's model type (one token), which compares unequal to any real one.
    """
    if not os.path.isdir(path):
        return None
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def check_output_dir(path: str | os.PathLike, name: str = "output_dir") -> None:
    """Create the folder `path` if missing and write (then delete) a probe file in it; a `ValueError` naming it if
    either fails, so an unwritable output stops a run at construction, not at its first checkpoint."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"`{name}` {os.fspath(path)!r} cannot be created or written to ({error.strerror or error}). "
                         f"Choose a writable folder.") from None


def check_not_meta(model, who: str) -> None:
    """Refuse a model with weights on the meta device (built under `init_empty_weights` or `device="meta"`, never
    loaded): every forward would fail inside torch."""
    if not hasattr(model, "named_parameters"):
        return
    meta = next((name for name, p in model.named_parameters() if p.device.type == "meta"), None)
    if meta is not None:
        raise ValueError(f"the {who} has weights on the meta device (e.g. {meta!r}): they were never loaded. Load "
                         f"the {who} with real weights (`from_pretrained` without a meta device map), or pass its "
                         f"path.")
