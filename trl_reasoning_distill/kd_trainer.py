"""`KDTrainer`: TRL's `GKDTrainer` with the fixes and extensions every method here builds on.

- Loss normalised by the loss tokens of the whole global batch *after* generation: on-policy / `seq_kd` samples are
  drawn for every accumulation micro-batch in `get_batch_samples`, then counted (GKD counts the dataset labels that
  the samples replace, and under DDP its loss is 1/N too small).
- `temperature` applies to the loss as well as to sampling; any divergence of `divergence.py` (`divergence`).
- Vocabulary alignment: student and teacher embeddings padded past the tokenizer (Qwen2.5: 152064 vs 151936 rows)
  are compared on the tokenizer's rows only, and padded rows are never sampled; a real mismatch is a `ValueError`.
- `teacher_model_init_kwargs` without `dtype` works (GKD raises `KeyError`); no `copy.deepcopy` of patched models.
- Prompt/completion and prompt-only datasets are accepted besides GKD's `messages`.
- The loss is `chunked.py`'s memory-lean divergence from the last hidden states (`loss_chunk_size`), never both
  models' full `[tokens, vocab]` logits; `weighted_loss_sum` is the one override point, so methods weight or mask
  the same primitive.
- Exact resume, on-policy included, and checkpoints that are complete or absent (`checkpointing.py`): each
  micro-batch is sampled under RNGs seeded from (seed, step, micro-batch, process), GKD's `lmbda` coin is a draw
  every process shares, and a subclass's own state travels in the checkpoint (`resume_state`).
"""

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ._trl import GKDTrainer, SFTTrainer, unwrap_model_for_generation
from .checkpointing import ResumableTrainerMixin
from .chunked import chunked_distill_loss
from .distributed import model_config, output_head_weight, shard_for_evaluation
from .divergence import per_token_divergence
from .kd_config import KDConfig
from .validation import (
    check_chat_lengths,
    check_chat_row_lengths,
    check_dataset_rows,
    check_not_meta,
    check_output_dir,
    check_row,
    check_vocab_size,
    has_tokenizer_files,
    lazily_checked,
)


def to_messages_dataset(dataset, prompt_only_ok: bool, what: str = "the dataset"):
    """GKD's `messages` format from `messages`, `prompt`+`completion` or (when sampling supplies the target)
    `prompt`-only rows; prompts and completions may be strings or chat messages. An empty dataset, and a `None` or
    empty prompt, messages or completion, is a `ValueError` naming `what` and the row.

    Every form `GKDTrainer` accepts is accepted: a `Dataset`; an `IterableDataset` (streaming), its columns known or
    not (`column_names is None`), whose first row is checked and converted here and every other row as it is read
    (it cannot be scanned whole up front); and a `DatasetDict`, `IterableDatasetDict` or dict of named evaluation
    sets, each converted and named in errors, the container's type kept."""
    if dataset is None:
        return None
    if isinstance(dataset, Mapping):
        return type(dataset)({name: to_messages_dataset(part, prompt_only_ok, f"{what} {name!r}")
                              for name, part in dataset.items()})
    check_dataset_rows(dataset, what)  # an IterableDataset: its first row
    columns = getattr(dataset, "column_names", None)
    if isinstance(dataset, IterableDataset) and columns is None:  # streaming, columns unknown: row by row
        _messages_row(next(iter(dataset)), 0, prompt_only_ok, what)  # the format of the first row, at once
        return dataset.map(lambda row, index: _messages_row(row, index, prompt_only_ok, what), with_indices=True,
                           remove_columns=["prompt", "completion"])
    if "messages" not in columns and "prompt" not in columns:
        raise ValueError(f"{what} needs a 'messages' or a 'prompt' column; it has {columns}.")
    if "messages" not in columns and "completion" not in columns and not prompt_only_ok:
        raise ValueError("a prompt-only dataset needs on-policy or teacher sampling: set lmbda=1.0 or seq_kd=True.")
    if isinstance(dataset, IterableDataset):  # every row checked and converted as it is read
        drop = [] if "messages" in columns else [c for c in ("prompt", "completion") if c in columns]
        return dataset.map(lambda row, index: _messages_row(row, index, prompt_only_ok, what), with_indices=True,
                           remove_columns=drop)
    if "messages" in columns:
        return dataset
    drop = [c for c in ("prompt", "completion") if c in columns]  # GKD takes `prompt` as rendered text
    return dataset.map(lambda row: _messages_row(row, None, prompt_only_ok, what), remove_columns=drop)


def _messages_row(row, index: int | None, prompt_only_ok: bool, what: str) -> dict:
    """`{"messages": ...}` of one row (`messages` kept; `prompt` [+ `completion`] converted); with `index` (a row of
    an iterable dataset, read lazily) the row is checked first and a bad one named by its index in the stream."""
    if index is not None:
        check_row(row, index, what)
    if "messages" in row:
        return {"messages": row["messages"]}
    if "prompt" not in row:
        raise ValueError(f"{what} needs a 'messages' or a 'prompt' column; row {index} has {sorted(row)}.")
    if "completion" not in row and not prompt_only_ok:
        raise ValueError(f"{what}: row {index} has no completion, and a prompt-only row needs on-policy or teacher "
                         "sampling: set lmbda=1.0 or seq_kd=True.")
    prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
    completion = row.get("completion", "")
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return {"messages": list(prompt) + list(completion)}


def cut_after_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """`ids` up to and including the first stop id (the completion GKD's mask keeps)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[: position + 1]
    return ids


def last_hidden_state(model, model_inputs: dict) -> torch.Tensor:
    """Final (normed) hidden states `(B, T-1, H)` of the positions that predict tokens 1..T-1. Called through the
    wrapper, so DDP/FSDP hooks fire, with a single logit computed instead of `(B, T, V)`."""
    return model(**model_inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][:, :-1]


def text_vocab_size(model: PreTrainedModel) -> int:
    """Embedding rows of `model`'s text config; `model` may be wrapped (a DeepSpeed engine's `.config` is its dict)."""
    return model_config(model).get_text_config().vocab_size


@dataclass
class AnswerCollator:
    """The wrapped collator's batch plus `answers`: every row's gold answer as a string (when all rows have one), for
    trainers that grade samples during training (BRTS, Gen-SSD)."""

    collator: Callable
    column: str

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        if all(self.column in example for example in examples):
            batch["answers"] = [str(example[self.column]) for example in examples]
        return batch


@contextlib.contextmanager
def reported_vocab_size(model: PreTrainedModel, size: int):
    """Let `model` report `size` embedding rows while GKD's constructor checks student == teacher rows; the rows
    we compare are aligned by `KDTrainer` instead."""
    config = model.config.get_text_config()
    original = config.vocab_size
    config.vocab_size = size
    try:
        yield
    finally:
        config.vocab_size = original


@contextlib.contextmanager
def without_distillation_notice():
    """Drop GKD's "fully covered by `DistillationTrainer`, consider migrating" warning (`lmbda=1.0`,
    `temperature=1.0`) while a `KDTrainer` is built: it already has what the notice offers (vLLM sampling, a chunked
    loss that never holds full logits). Only that message, only from GKD's logger, only inside our constructor: a
    plain `GKDTrainer` still warns."""
    gkd_logger = logging.getLogger(GKDTrainer.__module__)

    def not_the_notice(record: logging.LogRecord) -> bool:
        return "fully covered by `DistillationTrainer`" not in record.getMessage()

    gkd_logger.addFilter(not_the_notice)
    try:
        yield
    finally:
        gkd_logger.removeFilter(not_the_notice)


class KDTrainer(ResumableTrainerMixin, GKDTrainer):
    """[`GKDTrainer`] with global-batch loss normalisation, any divergence, vocabulary alignment and flexible data.

    Subclasses change the loss through `token_weights` (per-token weights of the shared divergence) or
    `weighted_loss_sum` (the whole summed loss of a micro-batch); they log through `self.log_metric`.
    """

    _tag_names = ["trl", "gkd", "trl-reasoning-distill"]
    _name = "KD"
    metric_prefix = "kd"
    loss_is_scaled_for_ga = True  # compute_loss divides by the global-batch token count itself

    def __init__(
        self,
        model: PreTrainedModel | str | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: KDConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        **kwargs,
    ):
        if args is None or processing_class is None:
            raise ValueError("KDTrainer needs `args` (a KDConfig) and `processing_class` (the student's tokenizer).")
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path
        if teacher_model is None:
            raise ValueError("KDTrainer needs a teacher: pass `teacher_model` or set `teacher_model_name_or_path`.")
        check_vocab_size(args.vocab_size, len(processing_class))
        self.vocab_size = args.vocab_size or len(processing_class)
        check_output_dir(args.output_dir)
        # GKD's collator keeps a row's last `max_length` tokens, cutting its prompt: such rows are refused instead.
        # A trainer with its own collator and a `max_prompt_length` (VCRD) has its prompts checked against that.
        gkd_collator = kwargs.get("data_collator") is None
        self._row_limits = {"max_length": (args.max_length or min(processing_class.model_max_length, 1024))
                            if gkd_collator else None, "max_prompt_length": getattr(args, "max_prompt_length", None)}
        prompt_only_ok = args.lmbda == 1.0 or args.seq_kd
        train_dataset = self._checked_dataset(train_dataset, processing_class, prompt_only_ok, "the training dataset")
        eval_dataset = self._checked_dataset(eval_dataset, processing_class, True, "the evaluation dataset")
        if not isinstance(model, str):
            check_not_meta(model, "student")
        if isinstance(model, str):  # SFTTrainer loads it with these kwargs
            args.model_init_kwargs = {"attn_implementation": args.attn_implementation,
                                      **(args.model_init_kwargs or {})}
        if isinstance(teacher_model, str):
            teacher_model = self._load_teacher(teacher_model, args, processing_class)
        check_not_meta(teacher_model, "teacher")
        teacher_model.requires_grad_(False)  # never trained: no gradients, and ZeRO-3/FSDP2 need not reduce any
        self._check_rows("teacher", text_vocab_size(teacher_model))
        student_rows = None if isinstance(model, str) else text_vocab_size(model)
        with reported_vocab_size(teacher_model, student_rows or text_vocab_size(teacher_model)), \
                without_distillation_notice():
            super().__init__(model, teacher_model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                             processing_class=processing_class, **kwargs)
        self._check_rows("student", text_vocab_size(self.model))
        if self.is_fsdp_enabled:  # GKD's `prepare_model(evaluation_mode=True)` leaves the teacher whole on each rank
            self.teacher_model = shard_for_evaluation(self.teacher_model, self.accelerator)
        self._student_generation_config = self._generation_config_without_padding(self.model)
        self._teacher_generation_config = self._generation_config_without_padding(self.teacher_model)
        self._setup_generation()

    def _checked_dataset(self, dataset, tokenizer, prompt_only_ok: bool, what: str):
        """`dataset` in GKD's `messages` format, every row checked (`to_messages_dataset`) and none over the limits
        of `self._row_limits`: at once for a `Dataset`; for an `IterableDataset`, as each row is read (lazily)."""
        dataset = to_messages_dataset(dataset, prompt_only_ok, what)
        if isinstance(dataset, Mapping):
            return type(dataset)({name: self._checked_dataset(part, tokenizer, prompt_only_ok, f"{what} {name!r}")
                                  for name, part in dataset.items()})
        if isinstance(dataset, IterableDataset) and any(v is not None for v in self._row_limits.values()):
            limits = {"max_length": self._row_limits["max_length"],
                      "max_prompt_length": self._row_limits["max_prompt_length"]}
            return lazily_checked(dataset, lambda row, index: check_chat_row_lengths(
                row["messages"], index, tokenizer, what, **limits))
        check_chat_lengths(dataset, tokenizer, what, **self._row_limits)
        return dataset

    def get_eval_dataloader(self, eval_dataset=None):
        # `evaluate(dataset)` (each set of a dict, one by one) accepts the same formats and checks as training
        if isinstance(eval_dataset, (Dataset, IterableDataset)):
            eval_dataset = self._checked_dataset(eval_dataset, self.processing_class, True, "the evaluation dataset")
        return super().get_eval_dataloader(eval_dataset)

    def _check_rows(self, who: str, rows: int) -> None:
        if rows < self.vocab_size:
            raise ValueError(f"the {who} has {rows} vocabulary rows but {self.vocab_size} are compared (the "
                             "tokenizer's length, or `vocab_size`): the models and the tokenizer do not match.")

    @staticmethod
    def _load_teacher(path: str, args: KDConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        """Load the teacher with `dtype="auto"` unless told otherwise; refuse a teacher with another tokenizer. A
        folder saved without tokenizer files is compared by what it has: its config's vocabulary rows must cover the
        compared vocabulary (checked before the weights are loaded)."""
        if has_tokenizer_files(path) is False:
            config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code)
            rows, needed = config.get_text_config().vocab_size, args.vocab_size or len(tokenizer)
            if rows < needed:
                raise ValueError(f"the teacher at {path} has no tokenizer files and its config has {rows} vocabulary "
                                 f"rows, fewer than the {needed} compared (the student's tokenizer, or "
                                 "`vocab_size`): it cannot share the student's tokenizer.")
        else:
            teacher_vocab = None
            with contextlib.suppress(OSError, ValueError):  # no tokenizer to load: nothing to compare
                teacher_vocab = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
                teacher_vocab = teacher_vocab.get_vocab()
            if teacher_vocab is not None and teacher_vocab != tokenizer.get_vocab():
                raise ValueError(f"the teacher's tokenizer ({path}, {len(teacher_vocab)} tokens) differs from the "
                                 f"student's ({len(tokenizer)} tokens); KDTrainer needs a shared tokenizer.")
        kwargs = {"dtype": "auto", "attn_implementation": args.attn_implementation,
                  "trust_remote_code": args.trust_remote_code, **(args.teacher_model_init_kwargs or {})}
        args.teacher_model_init_kwargs = None  # loaded here; GKD refuses init kwargs for a loaded teacher
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)

    def _generation_config_without_padding(self, model: PreTrainedModel):
        """GKD's sampling config, never emitting `model`'s embedding rows past the tokenizer, stopping on every stop
        id (`stop_token_ids`), and always with the KV cache: GKD turns the cache off under gradient checkpointing,
        which `unwrap_model_for_generation` already switches off while generating."""
        config = self.generation_config.__class__(**self.generation_config.to_dict())
        rows = text_vocab_size(model)
        config.suppress_tokens = list(range(self.vocab_size, rows)) or None
        config.eos_token_id = self.stop_token_ids()
        config.use_cache = True
        return config

    def stop_token_ids(self) -> list[int]:
        """The ids sampling stops on, on every backend: the student's `generation_config` EOS ids (GKD's) and the
        tokenizer's EOS (which vLLM always stops on)."""
        eos = self.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return [i for i in dict.fromkeys([*eos, self.processing_class.eos_token_id]) if i is not None]

    # --- vLLM: TRL's VLLMGeneration for the student, as TRL's DistillationTrainer builds it --------------------------

    def _setup_generation(self) -> None:
        """Called at the end of `__init__`: the KV cache on for generation whatever gradient checkpointing says, and
        TRL's `VLLMGeneration` for the student's samples when `use_vllm`."""
        self.generation_kwargs["use_cache"] = True
        self.generation_config.use_cache = True
        self._step_batches, self._step_samples = None, {}
        self.vllm_generation = self._build_vllm_generation() if self.args.use_vllm else None
        self._last_loaded_step = -1  # TRL's tag: weights are synced once per optimizer step, not per micro-batch

    def _build_vllm_generation(self):
        """`VLLMGeneration` with `DistillationTrainer`'s arguments; GKD's sampling (`temperature`, `top_k=0`,
        `top_p=1`, `max_new_tokens`); the padded vocabulary rows excluded (`allowed_token_ids`: exact, where vLLM's
        `logit_bias` is clamped to -100) and the HF path's stop ids (`stop_token_ids`)."""
        from ._trl import VLLMGeneration
        from .generation.vllm import _require_vllm

        _require_vllm()
        args = self.args
        name = getattr(self.accelerator.unwrap_model(self.model), "name_or_path", None)
        if args.vllm_mode == "colocate" and not name:
            raise ValueError("use_vllm with vllm_mode='colocate' starts vLLM from the student's `name_or_path`, and "
                             "this student has none: pass the student as a Hub id or folder, or save it first.")
        extra = {"stop_token_ids": self.stop_token_ids()}
        if text_vocab_size(self.model) > self.vocab_size:
            extra["allowed_token_ids"] = list(range(self.vocab_size))
        return VLLMGeneration(
            model=self.model, accelerator=self.accelerator, processing_class=self.processing_class,
            mode=args.vllm_mode, server_base_url=args.vllm_server_base_url, server_host=args.vllm_server_host,
            server_port=args.vllm_server_port, group_port=args.vllm_group_port,
            server_timeout=args.vllm_server_timeout, tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization, max_model_length=args.vllm_max_model_length,
            max_num_seqs=args.per_device_train_batch_size * args.vllm_tensor_parallel_size
            * args.gradient_accumulation_steps,  # the whole global batch in one call
            enable_sleep_mode=args.vllm_enable_sleep_mode, model_impl=args.vllm_model_impl,
            trust_remote_code=args.trust_remote_code, repetition_penalty=1.0, temperature=self.temperature,
            top_p=1.0, top_k=0, min_p=0.0, max_completion_length=args.max_new_tokens, logprobs=None,
            generation_kwargs=extra,
        )

    def _vllm_completions(self, prompts: list[list[int]], temperature: float, top_p: float) -> list[list[int]]:
        """The student's completions from vLLM, after syncing its weights when an optimizer step has passed since the
        last sync (TRL's `_last_loaded_step`; PEFT adapters merged for the sync by `VLLMGeneration`)."""
        if self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        self.vllm_generation.temperature, self.vllm_generation.top_p = temperature, top_p  # read at each call
        _, completions, _, _ = self.vllm_generation.generate(prompts=prompts, images=None, num_generations=1)
        return [list(ids) for ids in completions]

    # --- generation for the whole accumulated batch, then one token count -------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches with their samples, then the token count. Each micro-batch is prepared under RNGs
        seeded from (seed, step, micro-batch, process) (`sampling_rng`), so a resumed run draws what an uninterrupted
        one does; the generation of all micro-batches happens in one call per model, under micro-batch 0's RNG
        (`global_batch_samples`)."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_batches = [self._prepare_inputs(batch) for batch in batches]
        sampled = []
        try:
            for index, batch in enumerate(self._step_batches):
                with self.sampling_rng(index):
                    sampled.append(self._sample_completions(batch))
        finally:
            self._step_batches, self._step_samples = None, {}
        return sampled, self._count_loss_tokens(sampled, device)

    def global_batch_samples(self, key: str, inputs: dict, needs: Callable[[int], bool],
                             sample: Callable[[list[dict]], list[tuple]]) -> tuple:
        """The samples of micro-batch `inputs`, from one `sample(micro_batches)` call per optimizer step over every
        micro-batch `i` of the global batch with `needs(i)` (`key` names that call). A batch met outside
        `get_batch_samples` (evaluation, a direct call) is sampled alone."""
        batches, index = self._step_batches, self._micro_batch
        if batches is None or index >= len(batches) or batches[index] is not inputs:
            return sample([inputs])[0]
        if key not in self._step_samples:
            rows = [i for i in range(len(batches)) if needs(i)]
            self._step_samples[key] = dict(zip(rows, sample([batches[i] for i in rows]), strict=True))
        return self._step_samples[key][index]

    def lmbda_coin(self, micro_batch: int | None = None) -> bool:
        """GKD's on-policy coin of `micro_batch` (default: the one being prepared), seeded from (seed, step,
        micro-batch) so every rank draws alike."""
        current = self._micro_batch
        self._micro_batch = current if micro_batch is None else micro_batch
        try:
            return self.shared_uniform("lmbda") <= self.lmbda
        finally:
            self._micro_batch = current

    def _sample_completions(self, inputs: dict) -> dict:
        """GKD's draw: with probability `lmbda` the student's samples replace the targets, else (if `seq_kd`) the
        teacher's. The student samples of all on-policy micro-batches come from one call, as do the teacher's."""
        on_policy = self.lmbda_coin()
        if not on_policy and not self.seq_kd:
            self.log_metric("on_policy", 0.0, mode="train")
            return inputs
        who = "student" if on_policy else "teacher"
        ids, mask, labels = self.global_batch_samples(who, inputs, lambda i: self.lmbda_coin(i) == on_policy,
                                                      lambda batches: self.generate_batches(batches, who))
        self.log_metric("on_policy", float(on_policy), mode="train")
        self.log_metric("completion_length", (labels[:, 1:] != -100).sum(1).float().mean().item(), mode="train")
        return {**inputs, "input_ids": ids, "attention_mask": mask, "labels": labels}

    def generate_batches(self, batches: list[dict], who: str = "student", temperature: float | None = None,
                         top_p: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Completions of every prompt of `batches` in one generation call of `who` (`"student"`: vLLM when
        `use_vllm`, else HF `generate`; `"teacher"`: HF `generate`), at `temperature` (default GKD's; 0 is greedy)
        and `top_p` (default 1). Returns `(input_ids, attention_mask, labels)` per batch, laid out as GKD's
        `generate_on_policy_outputs` does: the batch's own prompts, then the completion up to its first stop id."""
        if who not in ("student", "teacher"):
            raise ValueError(f"who must be 'student' or 'teacher', got {who!r}.")
        temperature = self.temperature if temperature is None else temperature
        top_p = 1.0 if top_p is None else top_p
        prompts = [row[mask.bool()].tolist() for batch in batches
                   for row, mask in zip(batch["prompts"], batch["prompt_attention_mask"], strict=True)]
        if not prompts:
            return [self._completion_tensors(batch, []) for batch in batches]
        if who == "student" and self.vllm_generation is not None:
            completions = self._vllm_completions(prompts, temperature, top_p)
        else:
            completions = self._hf_completions(prompts, who, temperature, top_p)
        completions = [cut_after_stop(ids, self.stop_token_ids()) for ids in completions]
        out, start = [], 0
        for batch in batches:
            rows = batch["prompts"].shape[0]
            out.append(self._completion_tensors(batch, completions[start : start + rows]))
            start += rows
        return out

    def _hf_completions(self, prompts: list[list[int]], who: str, temperature: float, top_p: float):
        """HF `generate` on all `prompts`, left-padded together, with the KV cache."""
        model = self.model_wrapped if who == "student" else self.teacher_model
        config = self._student_generation_config if who == "student" else self._teacher_generation_config
        sampling = {"do_sample": temperature > 0, "temperature": temperature if temperature > 0 else 1.0,
                    "top_p": top_p}
        config = config.__class__(**{**config.to_dict(), **sampling})
        device = self.accelerator.device
        width = max(len(ids) for ids in prompts)
        pad = self.processing_class.pad_token_id
        ids_BP = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=device)
        mask_BP = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        kwargs = {**self.generation_kwargs, **sampling, "use_cache": True}
        with unwrap_model_for_generation(model, self.accelerator, generation_kwargs=kwargs) as unwrapped:
            ids_BT, mask_BT, _ = self.generate_on_policy_outputs(
                unwrapped, {"prompts": ids_BP, "prompt_attention_mask": mask_BP}, config)
        return [row[width:][mask[width:].bool()].tolist() for row, mask in zip(ids_BT, mask_BT, strict=True)]

    def _completion_tensors(self, inputs: dict, completions: list[list[int]]):
        """`inputs`' prompts (left-padded, as collated) then `completions` (right-padded with the pad id)."""
        prompts_BP, prompt_mask_BP = inputs["prompts"], inputs["prompt_attention_mask"]
        width = max([1, *(len(ids) for ids in completions)])
        ids_BC = prompts_BP.new_full((prompts_BP.shape[0], width), self.processing_class.pad_token_id)
        mask_BC = torch.zeros_like(ids_BC)
        for b, ids in enumerate(completions):
            ids_BC[b, : len(ids)] = torch.tensor(ids, dtype=ids_BC.dtype)
            mask_BC[b, : len(ids)] = 1
        ids = torch.cat([prompts_BP, ids_BC], dim=1)
        mask = torch.cat([prompt_mask_BP.to(mask_BC.dtype), mask_BC], dim=1)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, : prompts_BP.shape[1]] = -100
        return ids, mask, labels

    def _count_loss_tokens(self, batches: list[dict], device) -> torch.Tensor:
        count = sum((batch["labels"][:, 1:] != -100).sum() for batch in batches).to(device)
        return self.accelerator.gather(count).sum() if self.accelerator.num_processes > 1 else count

    # Generation already happened in get_batch_samples: skip GKD's per-micro-batch draw.
    training_step = SFTTrainer.training_step

    # --- loss ------------------------------------------------------------------------------------------------------

    def token_weights(self, inputs: dict, mask_BT: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights `(B, T-1)` aligned with the shifted labels; 1 on loss tokens by default."""
        return mask_BT.float()

    def weighted_loss_sum(self, model, inputs: dict, weights_BT: torch.Tensor) -> torch.Tensor:
        """`sum_t w_t · D(p_teacher,t || q_student,t)` over this micro-batch, on the tokenizer's vocabulary rows:
        chunked from the last hidden states by default, from full logits when `loss_chunk_size == 0`."""
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        self.teacher_model.eval()
        if self.args.loss_chunk_size == 0:
            return self._full_logits_loss_sum(model, model_inputs, weights_BT)
        student_BTH = last_hidden_state(model, model_inputs)
        with torch.no_grad():
            teacher_BTH = last_hidden_state(self.teacher_model, model_inputs)
        return chunked_distill_loss(
            student_BTH.flatten(0, 1), self.output_weight(model), teacher_BTH.flatten(0, 1),
            self.output_weight(self.teacher_model), weights_BT.flatten(), divergence=self.args.divergence,
            beta=self.beta, alpha=self.args.skew_alpha, temperature=self.temperature,
            chunk_size=self.args.loss_chunk_size if self.args.loss_chunk_size > 0 else None,
            vocab_size=self.vocab_size,
        )

    def _full_logits_loss_sum(self, model, model_inputs: dict, weights_BT: torch.Tensor) -> torch.Tensor:
        student_logits_BTV = model(**model_inputs).logits[:, :-1, : self.vocab_size]
        with torch.no_grad():
            teacher_logits_BTV = self.teacher_model(**model_inputs).logits[:, :-1, : self.vocab_size]
        values_BT = per_token_divergence(self.args.divergence, student_logits_BTV, teacher_logits_BTV,
                                         beta=self.beta, alpha=self.args.skew_alpha, temperature=self.temperature)
        return (values_BT * weights_BT).sum()

    def output_weight(self, model) -> torch.Tensor:
        """The full `[V, H]` output projection of `model` (wrapped in DDP, FSDP2, DeepSpeed or PEFT, or not), its
        gradient reaching the sharded parameter (`distributed.output_head_weight`); biases are not supported."""
        return output_head_weight(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask_BT = inputs["labels"][:, 1:] != -100
        loss_sum = self.weighted_loss_sum(model, inputs, self.token_weights(inputs, mask_BT))
        if num_items_in_batch is None:  # evaluation or a direct call: mean over this micro-batch's loss tokens
            loss = loss_sum / mask_BT.sum().clamp_min(1)
        else:  # DDP averages gradients over processes, so each returns its share times num_processes
            loss = loss_sum * self.accelerator.num_processes / torch.as_tensor(num_items_in_batch).clamp_min(1)
        return (loss, {}) if return_outputs else loss

    def log_metric(self, name: str, value: float, mode: str | None = None) -> None:
        """Record `value` under `<metric_prefix>/<name>` (in `mode`, else the model's current mode); TRL averages
        each list at the next log step. Sampling in `get_batch_samples` runs before the model is put in train mode,
        so it passes `mode="train"`."""
        mode = mode or ("train" if self.model.training else "eval")
        self._metrics[mode][f"{self.metric_prefix}/{name}"].append(value)
