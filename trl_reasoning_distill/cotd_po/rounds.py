"""The offline iterative procedure of CoTD-PO (paper §2, Algorithm 1): sample, score, train, save; round after round.

Round r (1-based) takes `prompts_per_round` prompts of the pool (a seeded permutation, disjoint across rounds until
the pool is used up; ours: the paper draws 8,000 prompts at random each round, §3.1), gets the teacher's rationale of
each (a `rationale` column, or a [`RationaleSource`] such as [`TeacherRationales`]), lets the current student sample
K answers after prompt ⊕ rationale (temperatures `linspace(min, max, K)`, top-p, paper §3.1), scores them with a
[`TeacherScorer`], trains a fresh [`CoTDPOTrainer`] (new optimizer and schedule; ours: the paper does not say whether
they carry over) and saves the model.

Everything is resumable. Under `output_dir/round_{r:02d}/`: `samples.jsonl` gets one record per prompt, appended
(flushed, fsynced) as each chunk of `sampling_batch_size` prompts is scored; `model/` is the round's checkpoint and
`round.json`, written last, marks the round finished. A restart skips finished rounds (loading the last checkpoint),
samples only the prompts a crashed round has no record of, and resumes a round's training from its last Trainer
checkpoint. Each chunk's sampling is seeded from (seed, round, chunk), so a resumed round writes the same records as
an uninterrupted one. `output_dir/fingerprint.json` holds what made the rounds ([`rounds_fingerprint`]); a run under
other prompts, scorer or settings refuses to resume them (`overwrite=True` starts afresh).
"""

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..checkpointing import last_complete_checkpoint
from ..fingerprint import check_unique_ids, claim_output, model_identity, rows_identity, tokenizer_identity
from ..generation import Generator, HFGenerator, Sample
from ..generation.vllm import teacher_generator_from_config
from ..jsonl import append_records, read_records
from ..progress import ThroughputBar, show_training_progress
from .config import CoTDPOConfig
from .scoring import TeacherScorer
from .trainer import CoTDPOTrainer, encode_context

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
ROUNDS_FORMAT = "cotd_po_rounds/1"
# Training arguments that do not change what a round learns: where and how often it logs and saves, evaluation, hub.
_NOT_TRAINING = {"output_dir", "report_to", "run_name", "project", "disable_tqdm", "resume_from_checkpoint",
                 "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                 "dataloader_prefetch_factor", "do_eval", "do_predict", "do_train", "per_device_eval_batch_size",
                 "prediction_loss_only", "include_for_metrics", "include_num_input_tokens_seen",
                 "metric_for_best_model", "greater_is_better", "load_best_model_at_end", "batch_eval_metrics",
                 "local_rank", "ddp_timeout", "skip_memory_metrics", "restore_callback_states_from_checkpoint",
                 "torch_empty_cache_steps", "debug", "push_to_hub"}
_NOT_TRAINING_PREFIXES = ("logging_", "log_", "save_", "hub_", "eval_", "trackio_")


@dataclass
class CoTDPORoundsConfig:
    r"""
    The offline rounds of [`run_rounds`] (paper §2, Algorithm 1; settings of §3.1); the training of each round is set
    by [`CoTDPOConfig`] (its `output_dir` holds the rounds, its `seed` seeds prompt choice and sampling).

    Parameters:
        num_rounds (`int`, *optional*, defaults to `6`):
            Rounds N of sample → score → train.
        prompts_per_round (`int`, *optional*, defaults to `8000`):
            P, fresh prompts per round (the whole pool when it is smaller).
        num_candidates (`int`, *optional*, defaults to `8`):
            K, answers the student samples per prompt.
        min_temperature (`float`, *optional*, defaults to `0.6`):
            Temperature of the first candidate; candidate k uses `linspace(min, max, K)[k]`.
        max_temperature (`float`, *optional*, defaults to `1.2`):
            Temperature of the last candidate.
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus of the student's sampling.
        max_new_tokens (`int`, *optional*, defaults to `2048`):
            Longest sampled answer.
        sampling_batch_size (`int`, *optional*, defaults to `64`):
            Prompts sampled and scored together: the unit written to `samples.jsonl`, and so of resumption.
    """

    num_rounds: int = field(default=6, metadata={"help": "Rounds N: 6, 'more than five iterations' (paper §3.1)."})
    prompts_per_round: int = field(
        default=8000, metadata={"help": "Prompts P per round: 8,000 UltraFeedback prompts (paper §3.1)."}
    )
    num_candidates: int = field(default=8, metadata={"help": "Answers K per prompt: 8 (paper §3.1)."})
    min_temperature: float = field(
        default=0.6, metadata={"help": "Lowest sampling temperature: 0.6 ('in [0.6, 1.2]', paper §3.1)."}
    )
    max_temperature: float = field(
        default=1.2, metadata={"help": "Highest sampling temperature: 1.2 (paper §3.1; ours: linspace over the K)."}
    )
    top_p: float = field(default=0.95, metadata={"help": "Top-p of the student's sampling: 0.95 (paper §3.1)."})
    max_new_tokens: int = field(
        default=2048, metadata={"help": "Longest sampled answer: 2048 (ours; the paper does not report it)."}
    )
    sampling_batch_size: int = field(
        default=64, metadata={"help": "Prompts per sampling chunk, the unit of resumption (ours)."}
    )

    def __post_init__(self):
        for name in ("num_rounds", "prompts_per_round", "num_candidates", "max_new_tokens", "sampling_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.min_temperature <= self.max_temperature:
            raise ValueError(f"need 0 <= min_temperature <= max_temperature, got {self.min_temperature} and "
                             f"{self.max_temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    def temperatures(self) -> list[float]:
        """The K candidates' temperatures, `linspace(min_temperature, max_temperature, K)`."""
        K = self.num_candidates
        step = (self.max_temperature - self.min_temperature) / (K - 1) if K > 1 else 0.0
        return [round(self.min_temperature + k * step, 6) for k in range(K)]


@runtime_checkable
class RationaleSource(Protocol):
    """The teacher's rationale CoT_t of each prompt, or None where the teacher gave none (the prompt is skipped)."""

    def rationales(self, prompts: Sequence[Prompt]) -> list[str | None]: ...


class TeacherRationales:
    """
    [`RationaleSource`] from an open-weights teacher (ours: the paper's teacher is GPT-4o, §3.1): the teacher
    continues the instruction (wrapped in `instruction_template`) after `thought_prefix`, and its text up to
    `answer_prefix` is the rationale. A continuation that never reaches `answer_prefix` gives None.

    Args:
        model (`PreTrainedModel`): the teacher.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer, with a chat template unless `args.prompt_template`.
        args (`CoTDPOConfig`): gives `instruction_template`, `prompt_template`, `thought_prefix` and `answer_prefix`.
        temperature (`float`, *optional*, defaults to `0.0`): sampling temperature (0: greedy).
        top_p (`float`, *optional*, defaults to `1.0`): nucleus.
        max_new_tokens (`int`, *optional*, defaults to `1024`): longest rationale.
        generator (`Generator`, *optional*): sampling backend (default: the one `args.teacher_generation_backend`
            names: [`HFGenerator`] on `model`, or a [`VLLMGenerator`]).
    """

    def __init__(self, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, args: CoTDPOConfig, *,
                 temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 1024,
                 generator: Generator | None = None):
        if not args.answer_prefix.strip():
            raise ValueError("TeacherRationales needs a non-empty `answer_prefix`: it marks where the rationale ends.")
        generator = generator or teacher_generator_from_config(args, model, tokenizer)  # teacher_generation_backend
        if generator is None and model is None:
            raise ValueError("TeacherRationales needs a teacher `model` or a `generator`.")
        self.generator = generator or HFGenerator(model, tokenizer)
        self.tokenizer, self.args = tokenizer, args
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens

    def identity(self) -> dict:
        """The teacher (its generator's identity), the prompt format and the decoding of the rationales."""
        return {"generator": model_identity(self.generator), "tokenizer": tokenizer_identity(self.tokenizer),
                "format": [self.args.instruction_template, self.args.thought_prefix, self.args.answer_prefix,
                           *([] if self.args.prompt_template is None else [self.args.prompt_template])],
                "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def rationales(self, prompts: Sequence[Prompt]) -> list[str | None]:
        thought_ids = self.tokenizer(self.args.thought_prefix, add_special_tokens=False)["input_ids"]
        contexts = [encode_context(self.tokenizer, p, None, self.args)[0] + thought_ids for p in prompts]
        samples = self.generator.generate(contexts, n=1, max_new_tokens=self.max_new_tokens,
                                          temperature=self.temperature, top_p=self.top_p,
                                          stop=[self.args.answer_prefix.strip()])
        return [group[0].text.strip() if group[0].finish_reason == "stop" else None for group in samples]


# --- which prompts, which seeds --------------------------------------------------------------------------------------


def round_prompt_indices(pool_size: int, per_round: int, round_index: int, seed: int) -> list[int]:
    """Pool indices of round `round_index` (1-based): consecutive slices of a seeded permutation of the pool, so
    rounds are disjoint until the pool is used up; then a new permutation starts (ours; the paper samples 8,000
    prompts at random each round, §3.1)."""
    if pool_size < 1 or round_index < 1:
        raise ValueError(f"need pool_size >= 1 and round_index >= 1, got {pool_size} and {round_index}.")
    per_round = min(per_round, pool_size)
    rounds_per_pass = pool_size // per_round
    pass_index, slot = divmod(round_index - 1, rounds_per_pass)
    order = list(range(pool_size))
    random.Random(f"cotd_po:{seed}:{pass_index}").shuffle(order)
    return order[slot * per_round : (slot + 1) * per_round]


def chunk_seed(seed: int, round_index: int, chunk_index: int) -> int:
    return int(hashlib.sha256(f"cotd_po:{seed}:{round_index}:{chunk_index}".encode()).hexdigest()[:15], 16)


def round_dir(output_dir: str | Path, round_index: int) -> Path:
    return Path(output_dir) / f"round_{round_index:02d}"


def finished_rounds(output_dir: str | Path) -> int:
    """How many rounds in a row, from the first, have written their `round.json`."""
    count = 0
    while (round_dir(output_dir, count + 1) / "round.json").exists():
        count += 1
    return count


# --- one chunk: rationales, K samples, scores --------------------------------------------------------------------


def sample_candidates(generator: Generator, context_ids: list[list[int]],
                      rounds: CoTDPORoundsConfig) -> list[list[Sample]]:
    """K samples per context, candidate k at temperature `rounds.temperatures()[k]`; equal temperatures share one
    `generate` call."""
    temperatures = rounds.temperatures()
    out: list[list[Sample | None]] = [[None] * len(temperatures) for _ in context_ids]
    for temperature in dict.fromkeys(temperatures):
        slots = [k for k, t in enumerate(temperatures) if t == temperature]
        groups = generator.generate(context_ids, n=len(slots), max_new_tokens=rounds.max_new_tokens,
                                    temperature=temperature, top_p=rounds.top_p)
        for row, group in zip(out, groups):
            for k, sample in zip(slots, group):
                row[k] = sample
    return out


def _chunk_records(rows: list[dict], round_index: int, tokenizer, scorer: TeacherScorer, generator: Generator,
                   rationale_source: RationaleSource | None, args: CoTDPOConfig,
                   rounds: CoTDPORoundsConfig) -> list[dict]:
    """One record per row: the rationale, the K samples (text and token ids) and their scores."""
    prompts = [row["prompt"] for row in rows]
    if not args.use_teacher_rationale:
        cots = [""] * len(rows)  # recorded as ""; encoded as no rationale at all
    elif "rationale" in rows[0]:
        cots = [row["rationale"] for row in rows]
    else:
        cots = rationale_source.rationales(prompts)
    kept = [i for i, cot in enumerate(cots) if cot is not None]
    records = {i: {"id": rows[i]["id"], "round": round_index, "prompt": prompts[i], "rationale": None,
                   "skipped": "the teacher gave no rationale"} for i in range(len(rows)) if cots[i] is None}
    if kept:
        shown_cots = [cots[i] if args.use_teacher_rationale else None for i in kept]
        contexts = [sum(encode_context(tokenizer, prompts[i], cot, args), []) for i, cot in zip(kept, shown_cots)]
        samples = sample_candidates(generator, contexts, rounds)
        texts = [[s.text for s in group] for group in samples]
        shown = None  # what a scorer may condition on: the rationale as the student saw it
        if args.use_teacher_rationale:
            shown = [args.thought_prefix + cots[i] + args.answer_prefix for i in kept]
        rewards = scorer.score([prompts[i] for i in kept], texts, shown)
        for i, group, group_texts, group_rewards in zip(kept, samples, texts, rewards, strict=True):
            records[i] = {"id": rows[i]["id"], "round": round_index, "prompt": prompts[i], "rationale": cots[i],
                          "completions": group_texts, "completion_token_ids": [s.token_ids for s in group],
                          "finish_reasons": [s.finish_reason for s in group], "temperatures": rounds.temperatures(),
                          "rewards": [float(r) for r in group_rewards]}
    return [records[i] for i in range(len(rows))]


def collect_round(pool: list[dict], round_index: int, tokenizer, scorer: TeacherScorer, generator: Generator,
                  rationale_source: RationaleSource | None, args: CoTDPOConfig, rounds: CoTDPORoundsConfig,
                  path: Path, progress: bool = False) -> list[dict]:
    """The round's records, in prompt order: read from `path`, with the missing ones sampled, scored and appended
    chunk by chunk. A chunk is always sampled whole under its own seed, so a resumed chunk repeats its samples.
    `progress` shows a bar over the round's prompts (prompts/s, the student's sampled tok/s, mean reward)."""
    rows = [pool[i] for i in round_prompt_indices(len(pool), rounds.prompts_per_round, round_index, args.seed)]
    done = read_records(path)
    size = rounds.sampling_batch_size
    bar = ThroughputBar(len(rows), f"round {round_index}/{rounds.num_rounds}: sample+score", unit="prompt",
                        initial=sum(str(row["id"]) in done for row in rows), enabled=progress)
    for c, start in enumerate(range(0, len(rows), size)):
        chunk = rows[start : start + size]
        missing = [row for row in chunk if str(row["id"]) not in done]
        if not missing:
            continue
        torch.manual_seed(chunk_seed(args.seed, round_index, c))
        records = _chunk_records(chunk, round_index, tokenizer, scorer, generator, rationale_source, args, rounds)
        new = [r for r in records if str(r["id"]) not in done]
        append_records(path, new)
        done.update({str(r["id"]): r for r in new})
        bar.update(len(new), tokens=sum(len(ids) for r in new for ids in r.get("completion_token_ids", [])),
                   reward=f"{_summary(list(done.values()))['mean_reward']:.3f}")
        logger.info("round %d: %d/%d prompts sampled and scored", round_index, len(done), len(rows))
    bar.close()
    return [done[str(row["id"])] for row in rows]


def rounds_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pool: list[dict],
                       scorer: TeacherScorer, args: CoTDPOConfig, rounds: CoTDPORoundsConfig,
                       rationales: RationaleSource | None, make_generator: Callable | None) -> dict:
    """What decides the rounds, stored in `output_dir/fingerprint.json`: the initial student, its tokenizer, the
    prompt pool (every row), the scorer, the rationale source, the sampling backend, every rounds setting but
    `num_rounds` (round r does not depend on how many follow it: more rounds extend the folder) and every training
    setting but those of logging, saving, evaluation and the hub (`training.<name>`)."""
    training = {name: value for name, value in args.to_dict().items() if name not in _NOT_TRAINING
                and not name.startswith(_NOT_TRAINING_PREFIXES) and not name.endswith("_token")}
    return {"record_format": ROUNDS_FORMAT, "student": model_identity(model),
            "tokenizer": tokenizer_identity(tokenizer), "prompts": rows_identity(pool),
            "scorer": model_identity(scorer),
            "rationales": None if rationales is None else model_identity(rationales),
            "generator": "HFGenerator" if make_generator is None else getattr(make_generator, "__qualname__",
                                                                              type(make_generator).__name__),
            **{name: value for name, value in dataclasses.asdict(rounds).items() if name != "num_rounds"},
            **{f"training.{name}": value for name, value in training.items()}}


def records_to_dataset(records: list[dict]) -> Dataset:
    """The trainer's groups from a round's records; skipped prompts are left out."""
    kept = [r for r in records if "skipped" not in r]
    if not kept:
        raise ValueError("no prompt of the round has a rationale and candidates; check the teacher's rationales.")
    columns = ("prompt", "rationale", "completions", "completion_token_ids", "rewards")
    return Dataset.from_list([{c: r[c] for c in columns} for r in kept])


def _summary(records: list[dict]) -> dict:
    kept = [r for r in records if "skipped" not in r]
    rewards = [x for r in kept for x in r["rewards"] if x == x]  # NaN (failed scoring) left out
    reasons = [x for r in kept for x in r["finish_reasons"]]
    return {"prompts": len(records), "skipped": len(records) - len(kept),
            "mean_reward": sum(rewards) / len(rewards) if rewards else float("nan"),
            "finished_frac": sum(x == "eos" for x in reasons) / max(len(reasons), 1)}


# --- the driver ------------------------------------------------------------------------------------------------------


def _load_round_model(model: PreTrainedModel, path: Path) -> PreTrainedModel:
    return type(model).from_pretrained(path, dtype=model.dtype)


def run_rounds(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Dataset,
    scorer: TeacherScorer,
    args: CoTDPOConfig,
    rounds: CoTDPORoundsConfig,
    rationales: RationaleSource | None = None,
    make_generator: Callable[[PreTrainedModel], Generator] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PreTrainedModel:
    """
    Run (or resume) the rounds under `args.output_dir` and return the student after the last one.

    Args:
        model (`PreTrainedModel`): the initial student θ_0 (full fine-tuning).
        tokenizer (`PreTrainedTokenizerBase`): the student's tokenizer, with a chat template.
        prompts (`Dataset`): the prompt pool: `prompt` (string or chat messages), optionally `id` (unique; the row
            index otherwise) and `rationale` (the teacher's CoT, precomputed).
        scorer (`TeacherScorer`): scores each prompt's K answers.
        args (`CoTDPOConfig`): training of each round; `output_dir` holds the rounds.
        rounds (`CoTDPORoundsConfig`): the rounds.
        rationales (`RationaleSource`, *optional*): the teacher's rationales when `prompts` has no `rationale` column.
        make_generator (`Callable`, *optional*): the sampling backend for the current student (default:
            [`HFGenerator`]); called at the start of each round with the current model.
        overwrite (`bool`, *optional*, defaults to `False`): delete the rounds under `args.output_dir` and start
            afresh. Without it, rounds made under another fingerprint ([`rounds_fingerprint`]: other prompts, scorer,
            K, training settings, ...) raise `StaleOutputError` naming the differing fields.
        progress (`bool`, *optional*, defaults to `True`): show two bars per round, counted `round r/N`: one over its
            prompts' sampling and scoring (prompts/s, tok/s, mean reward) and one over its training steps (loss), the
            latter in place of the Trainer's printed logs. Each round's `round.json` keeps its training logs
            (`log_history`).
    """
    pool = _check_pool(prompts, args, rationales)
    state = PartialState()
    if state.is_main_process:  # before any sampling: resume only rounds made exactly so
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)  # a folder, whatever its name (fingerprint inside)
        claim_output(args.output_dir, rounds_fingerprint(model, tokenizer, pool, scorer, args, rounds, rationales,
                                                         make_generator), overwrite=overwrite)
    state.wait_for_everyone()
    start = min(finished_rounds(args.output_dir), rounds.num_rounds)  # fewer rounds than there are: the last asked
    if start:
        logger.info("rounds 1-%d are finished; resuming from %s", start, round_dir(args.output_dir, start) / "model")
        model = _load_round_model(model, round_dir(args.output_dir, start) / "model")
    if getattr(model, "hf_device_map", None) is None:  # the first round samples before any Trainer placed it
        model = model.to(args.device)
    for r in range(start + 1, rounds.num_rounds + 1):
        directory = round_dir(args.output_dir, r)
        directory.mkdir(parents=True, exist_ok=True)
        began = time.time()
        if state.is_main_process:  # sampling and scoring on one process; every process trains on the records
            generator = make_generator(model) if make_generator else HFGenerator(model, tokenizer)
            collect_round(pool, r, tokenizer, scorer, generator, rationales, args, rounds, directory / "samples.jsonl",
                          progress=progress)
        state.wait_for_everyone()
        done = read_records(directory / "samples.jsonl")
        indices = round_prompt_indices(len(pool), rounds.prompts_per_round, r, args.seed)
        records = [done[pool[i]["id"]] for i in indices]
        sampled = time.time()
        log_history: list[dict] = []
        model = _train_round(model, tokenizer, records_to_dataset(records), args, directory,
                             f"round {r}/{rounds.num_rounds}: train" if progress else None, log_history)
        if state.is_main_process:
            summary = {"round": r, **_summary(records), "sampling_seconds": sampled - began,
                       "training_seconds": time.time() - sampled, "log_history": log_history}
            _write_json(directory / "round.json", summary)
            logger.info("round %d finished: %s", r, summary)
        state.wait_for_everyone()
    return model


def _train_round(model, tokenizer, dataset: Dataset, args: CoTDPOConfig, directory: Path, bar: str | None = None,
                 log_history: list | None = None) -> PreTrainedModel:
    """A fresh trainer (optimizer, schedule) on the round's groups; resumes from its newest complete checkpoint if any
    (a checkpoint whose save was cut short is skipped with a warning). With `bar`, a progress bar so labelled replaces
    the Trainer's printed logs; the logs are appended to `log_history` when given."""
    trainer_dir = directory / "trainer"
    round_args = dataclasses.replace(args, output_dir=str(trainer_dir))
    trainer = CoTDPOTrainer(model=model, args=round_args, train_dataset=dataset, processing_class=tokenizer)
    if bar is not None:
        show_training_progress(trainer, "cotd_po/rationale", desc=bar)
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(trainer_dir))
    trainer.save_model(str(directory / "model"))
    if log_history is not None:
        log_history.extend(trainer.state.log_history)
    return trainer.model


def _check_pool(prompts: Dataset, args: CoTDPOConfig, rationales: RationaleSource | None) -> list[dict]:
    """The pool as rows with a string `id`; clear errors for what would fail later."""
    if "prompt" not in prompts.column_names:
        raise ValueError(f"the prompt pool needs a 'prompt' column; it has {prompts.column_names}.")
    if len(prompts) == 0:
        raise ValueError("the prompt pool is empty.")
    if args.use_teacher_rationale and "rationale" not in prompts.column_names and rationales is None:
        raise ValueError("use_teacher_rationale=True needs the teacher's rationales: a 'rationale' column in the "
                         "prompts, or `rationales=` (e.g. TeacherRationales).")
    columns = [c for c in ("id", "prompt", "rationale") if c in prompts.column_names]
    pool = [{**row, "id": str(row.get("id", i))} for i, row in enumerate(prompts.select_columns(columns))]
    return check_unique_ids(pool, "the prompt pool")


def _write_json(path: Path, data: dict) -> None:
    """Write `path` atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
