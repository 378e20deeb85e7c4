"""CoTD-PO trainer: `DPOTrainer` on groups of K student answers per prompt, with the listwise loss of `loss.py`.

Paper: CoTD-PO: Chain-of-Thought Distillation with Preference Optimization (Niu et al.); authors' code
github.com/little-mushroom0/COTD_PO.

    L = w_rat · L_rat(teacher CoT) + α · L_apa,   L_apa = -Σ_i softmax(r̂)_i log softmax(λ s)_i      (Eq. 8-9)

A row of the dataset is one group: `prompt`, the teacher's `rationale`, K `completions` sampled by the student and
their K teacher `rewards` (spec §9.2); `cotd_po/rounds.py` produces such rows round after round. Every candidate is
the sequence chat(prompt) ⊕ thought_prefix ⊕ rationale ⊕ answer_prefix ⊕ answer, one forward over the B·K rows.
Reference-free: DPOTrainer is told the reference log-probs are precomputed, and nothing is precomputed, so it never
builds a reference model. Unlike the released code: right padding (no position shift), float32 log-probs from TRL's
fused LM head, missing candidates masked out of both softmaxes, rewards kept aligned with their candidates.
"""

import logging
import textwrap
from dataclasses import dataclass

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from .._trl import DPOTrainer
from ..checkpointing import ResumableTrainerMixin
from ..validation import (
    check_dataset_rows,
    check_not_meta,
    check_output_dir,
    check_prompt_lengths,
    check_row,
    check_row_length,
)
from .config import CoTDPOConfig
from .loss import cotd_po_loss

logger = logging.getLogger(__name__)

COLUMNS = ("prefix_ids", "rationale_ids", "completion_ids", "rewards")  # what `_prepare_dataset` adds


def wrap_prompt(prompt: str | list[dict], template: str) -> list[dict]:
    """Chat messages of `prompt` with the instruction template applied to its last user turn (spec §4)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users or not str(messages[users[-1]].get("content", "")).strip():
        raise ValueError(f"a CoTD-PO prompt needs a non-empty user turn, got {prompt!r:.200}.")
    last = messages[users[-1]]
    last["content"] = template.replace("{prompt}", last["content"])
    return messages


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt, args: CoTDPOConfig) -> str:
    """The instruction's text up to the answer: `args.prompt_template` around the user message (the released code's
    raw markup, a single user turn), or else the chat template with the generation prompt."""
    messages = wrap_prompt(prompt, args.instruction_template)
    if args.prompt_template is not None:
        if len(messages) != 1:
            raise ValueError(f"a raw `prompt_template` takes a single user turn; this prompt has {len(messages)} "
                             f"messages: {prompt!r:.200}. Use the chat template (prompt_template=None) instead.")
        return args.prompt_template.replace("{prompt}", messages[0]["content"])
    if tokenizer.chat_template is None:
        raise ValueError("CoTD-PO needs a tokenizer with a chat template (or a raw `prompt_template`); set "
                         "`tokenizer.chat_template`.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_context(tokenizer: PreTrainedTokenizerBase, prompt, rationale: str | None,
                   args: CoTDPOConfig) -> tuple[list[int], list[int]]:
    """`(prefix_ids, rationale_ids)`: the templated instruction ([`prompt_text`], tokenized adding no special
    token), and `thought_prefix + rationale + answer_prefix` ([] when `rationale` is None: no teacher rationale). The
    student samples its answers after exactly these ids, and the trainer scores the answers after them."""
    text = prompt_text(tokenizer, prompt, args)
    prefix_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if rationale is None:
        return prefix_ids, []
    body = args.thought_prefix + rationale + args.answer_prefix
    return prefix_ids, tokenizer(body, add_special_tokens=False)["input_ids"] if body else []


def check_groups(dataset: Dataset, args: CoTDPOConfig) -> None:
    """Raise `ValueError` naming the row and the problem unless every row is a valid group (spec §9.2)."""
    check_group_columns(dataset.column_names, args)
    has_ids = "completion_token_ids" in dataset.column_names
    for i, row in enumerate(dataset):
        check_group(row, i, args, has_ids)


def check_group_columns(columns: list[str], args: CoTDPOConfig) -> None:
    """Raise `ValueError` naming what is missing unless `columns` hold a group's columns."""
    needed = {"prompt", "completions", "rewards"} | ({"rationale"} if args.use_teacher_rationale else set())
    missing = needed - set(columns)
    if missing:
        hint = " (the teacher's CoT; or set use_teacher_rationale=False)" if "rationale" in missing else ""
        raise ValueError(f"a CoTD-PO dataset needs columns {sorted(needed)}; it lacks {sorted(missing)}{hint}.")


def check_group(row: dict, i: int, args: CoTDPOConfig, has_ids: bool) -> None:
    """Raise `ValueError` naming row `i` unless it is a valid group: K answers, K rewards (and K id lists)."""
    completions, rewards = row["completions"], row["rewards"]
    if isinstance(completions, str) or not completions:
        raise ValueError(f"row {i}: `completions` must be a non-empty list of answers, got {completions!r:.100}.")
    if len(rewards) != len(completions):
        raise ValueError(f"row {i}: {len(completions)} completions but {len(rewards)} rewards; pass one each.")
    if has_ids and len(row["completion_token_ids"]) != len(completions):
        raise ValueError(f"row {i}: `completion_token_ids` must hold one id list per completion.")
    if args.use_teacher_rationale and not isinstance(row["rationale"], str):
        raise ValueError(f"row {i}: `rationale` must be a string, got {row['rationale']!r:.100}.")


@dataclass
class DataCollatorForCoTDPO:
    """
    Pads B groups of G candidates into `[B, G, T]` tensors, right-padded (spec §9.3). Returns `input_ids`,
    `attention_mask`, `rationale_mask` and `answer_mask` (bool target positions, unshifted), `candidate_mask`
    (`[B, G]`, False for the slots of a group with fewer than G candidates), `rewards` (`[B, G]` float32, NaN for
    unscored answers) and `group_max_len` (`[B]`, longest real sequence of the group). A missing slot holds the
    group's context without an answer, so no row is all padding.

    Args:
        pad_token_id (`int`): padding id.
        pad_to_multiple_of (`int` or `None`, *optional*): round T up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        B, G = len(examples), max(len(e["completion_ids"]) for e in examples)
        lengths = [len(e["prefix_ids"]) + len(e["rationale_ids"]) + max(len(c) for c in e["completion_ids"])
                   for e in examples]
        T = max(lengths)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((B, G, T), self.pad_token_id, dtype=torch.long)
        attention, rationale, answer = (torch.zeros((B, G, T), dtype=torch.bool) for _ in range(3))
        rewards = torch.zeros((B, G), dtype=torch.float32)
        candidate_mask = torch.zeros((B, G), dtype=torch.bool)
        for b, example in enumerate(examples):
            context = list(example["prefix_ids"]) + list(example["rationale_ids"])
            start = len(example["prefix_ids"])
            completions = example["completion_ids"]
            for g in range(G):
                ids = context + (list(completions[g]) if g < len(completions) else [])
                input_ids[b, g, : len(ids)] = torch.tensor(ids)
                attention[b, g, : len(ids)] = True
                rationale[b, g, start : len(context)] = True
                answer[b, g, len(context) : len(ids)] = True
            rewards[b, : len(completions)] = torch.tensor([float("nan") if r is None else r
                                                           for r in example["rewards"]])
            candidate_mask[b, : len(completions)] = True
        return {"input_ids": input_ids, "attention_mask": attention.long(), "rationale_mask": rationale,
                "answer_mask": answer, "candidate_mask": candidate_mask, "rewards": rewards,
                "group_max_len": torch.tensor(lengths)}


class CoTDPOTrainer(ResumableTrainerMixin, DPOTrainer):
    """[`DPOTrainer`] with CoTD-PO's reference-free listwise (or pairwise SimPO) loss over groups of K candidates plus
    the teacher-rationale NLL. Metrics are logged as `cotd_po/<term>`; no reference model is built. Checkpoints are
    complete or absent, and resume picks the newest complete one (`checkpointing.py`)."""

    _tag_names = ["trl", "dpo", "trl-reasoning-distill", "cotd-po"]
    _name = "CoTD-PO"
    _paper = {
        "title": "CoTD-PO: Chain-of-Thought Distillation with Preference Optimization",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @misc{niu_cotd_po,
                title  = {{CoTD-PO: Chain-of-Thought Distillation with Preference Optimization}},
                author = {Lujie Niu and Haochen Sun and Fangkun Zhao and Sheng Chen and Zimeng Bai and Jiawei Zhang
                          and Caixia Yuan and Xiaojie Wang},
                note   = {Beijing University of Posts and Telecommunications. Code:
                          \\url{https://github.com/little-mushroom0/COTD_PO}},
            }"""),
    }

    def __init__(self, model, args: CoTDPOConfig | None = None, train_dataset: Dataset | None = None,
                 processing_class: PreTrainedTokenizerBase | None = None, data_collator=None, **kwargs):
        if not isinstance(args, CoTDPOConfig):
            raise ValueError(f"CoTDPOTrainer needs `args` to be a CoTDPOConfig, got {type(args).__name__}.")
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise ValueError("CoTDPOTrainer needs `processing_class`: the student's tokenizer, with a chat template.")
        if "ref_model" in kwargs:
            raise ValueError("CoTD-PO is reference-free: do not pass `ref_model`.")
        if kwargs.get("compute_metrics") is not None:
            raise ValueError("CoTDPOTrainer evaluates its loss and `cotd_po/*` terms only; drop `compute_metrics`.")
        check_output_dir(args.output_dir)
        check_dataset_rows(train_dataset, "the training dataset")  # before DPOTrainer reads its first row
        check_dataset_rows(kwargs.get("eval_dataset"), "the evaluation dataset")
        if not isinstance(model, str):
            check_not_meta(model, "student")
        if data_collator is None:
            pad = processing_class.pad_token_id
            data_collator = DataCollatorForCoTDPO(processing_class.eos_token_id if pad is None else pad,
                                                  args.pad_to_multiple_of)
        self._resolving_reference = True
        try:
            super().__init__(model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                             data_collator=data_collator, **kwargs)
        finally:
            self._resolving_reference = False
        # Nothing was precomputed (`_precompute_ref_logps` is a no-op). Clearing the flag stops `evaluate(dataset)`
        # from precomputing, or from refusing a dataset passed after training has started.
        self.precompute_ref_logps = False

    @property
    def is_fsdp_enabled(self) -> bool:
        """Trainer's flag, hidden while `DPOTrainer.__init__` resolves its reference model (after `Trainer.__init__`,
        which sets `maybe_activation_offload_context` next): under FSDP DPOTrainer loads a second student from
        `model.config._name_or_path` even when log-probs are "precomputed", and CoTD-PO is reference-free."""
        hidden = self.__dict__.get("_resolving_reference") and "maybe_activation_offload_context" in self.__dict__
        return self.__dict__.get("_is_fsdp_enabled", False) and not hidden

    @is_fsdp_enabled.setter
    def is_fsdp_enabled(self, value: bool) -> None:
        self.__dict__["_is_fsdp_enabled"] = value

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Tokenize each group once (idempotent: a tokenized dataset is returned as is). A prompt longer than
        `max_length` is refused, as in every trainer; answers longer than `max_length` allows lose their tail; groups
        whose prompt + rationale reaches `max_length` are dropped.

        An `IterableDataset` (streaming; its columns known or not) cannot be scanned up front: its first row is
        checked here and every row as it is read (rows, groups and prompt lengths, named by their index in the
        stream); groups without room for an answer are dropped as they are read, without a count."""
        if not isinstance(dataset, (Dataset, IterableDataset)):
            raise ValueError(f"CoTDPOTrainer needs a `datasets.Dataset` or `IterableDataset`, got "
                             f"{type(dataset).__name__}.")
        what = f"the {dataset_name} dataset"
        check_dataset_rows(dataset, what)  # an IterableDataset: its first row
        columns = dataset.column_names
        if columns is None:  # streaming, columns unknown: those of the first row
            columns = list(next(iter(dataset)))
        if set(COLUMNS) <= set(columns):
            return dataset
        check_group_columns(columns, args)
        if isinstance(dataset, Dataset):
            check_groups(dataset, args)
        tokenizer = processing_class
        has_ids = "completion_token_ids" in columns

        def tokenize(row):
            rationale = row["rationale"] if args.use_teacher_rationale else None
            prefix_ids, rationale_ids = encode_context(tokenizer, row["prompt"], rationale, args)
            room = None if args.max_length is None else max(args.max_length - len(prefix_ids) - len(rationale_ids), 0)
            if has_ids:
                answers = [list(ids) for ids in row["completion_token_ids"]]
            else:
                answers = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                           for c in row["completions"]]
            return {"prefix_ids": prefix_ids, "rationale_ids": rationale_ids,
                    "completion_ids": [a[:room] for a in answers],
                    "rewards": [float("nan") if r is None else float(r) for r in row["rewards"]]}

        if isinstance(dataset, IterableDataset):
            def checked_tokenize(row, index):
                check_row(row, index, what)
                check_group(row, index, args, has_ids)
                out = tokenize(row)
                check_row_length(len(out["prefix_ids"]), args.max_length, index, what)
                return out

            dataset = dataset.map(checked_tokenize, with_indices=True)
            if args.max_length is None:
                return dataset
            return dataset.filter(lambda row: len(row["prefix_ids"]) + len(row["rationale_ids"]) < args.max_length)
        dataset = dataset.map(tokenize, num_proc=args.dataset_num_proc, desc=f"Tokenizing {dataset_name} groups")
        check_prompt_lengths((len(ids) for ids in dataset["prefix_ids"]), args.max_length,
                             f"the {dataset_name} dataset")
        if args.max_length is not None:
            total = len(dataset)
            dataset = dataset.filter(lambda row: len(row["prefix_ids"]) + len(row["rationale_ids"]) < args.max_length,
                                     desc=f"Dropping {dataset_name} groups without room for an answer")
            if len(dataset) == 0:
                raise ValueError(f"every {dataset_name} group's prompt + rationale reaches max_length="
                                 f"{args.max_length}; raise max_length.")
            if len(dataset) < total:
                logger.warning("%d of %d %s groups dropped: their prompt + rationale reaches max_length=%d.",
                               total - len(dataset), total, dataset_name, args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(COLUMNS)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return dataset  # reference-free: `precompute_ref_log_probs=True` only stops DPOTrainer building a ref copy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        B, G, T = inputs["input_ids"].shape
        targets_BGT = inputs["rationale_mask"] | inputs["answer_mask"]
        input_ids = inputs["input_ids"].view(B * G, T)
        labels = input_ids.masked_fill(~targets_BGT.view(B * G, T), -100)
        router = {"output_router_logits": True} if self.aux_loss_enabled else {}  # MoE: as DPOTrainer asks for them
        outputs = model(input_ids=input_ids, attention_mask=inputs["attention_mask"].view(B * G, T), labels=labels,
                        fused_lm_head=True, use_cache=False, **router)
        token_logps_BGT = outputs.log_probs[:, -(T - 1) :].view(B, G, T - 1)  # 0 off-target; float32
        args = self.args
        out = cotd_po_loss(
            token_logps_BGT, inputs["answer_mask"][..., 1:], inputs["rewards"],
            rationale_mask=inputs["rationale_mask"][..., 1:] if args.use_teacher_rationale else None,
            candidate_mask=inputs["candidate_mask"], group_max_len=inputs["group_max_len"], lam=args.apa_lambda,
            alpha=args.alpha, rationale_weight=args.rationale_weight, logp_aggregation=args.logp_aggregation,
            reward_normalization=args.reward_normalization, reward_scale=args.reward_scale,
            reward_norm_eps=args.reward_norm_eps, rationale_reduction=args.rationale_reduction,
            best_answer_nll_weight=args.best_answer_nll_weight, loss_mode=args.loss_mode,
            simpo_beta=args.simpo_beta, simpo_gamma=args.simpo_gamma, chosen_nll_weight=args.chosen_nll_weight,
        )  # Eq. (9)
        loss = out.loss
        if self.aux_loss_enabled:  # MoE load balancing, added as DPOTrainer adds it
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_metrics(out.metrics)
        return (loss, None) if return_outputs else loss

    def _log_metrics(self, metrics: dict[str, float]) -> None:
        """This micro-batch's terms, averaged over processes, under `cotd_po/<name>`; TRL averages them per log."""
        values = torch.tensor(list(metrics.values()), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.gather(values[None]).mean(dim=0)
        mode = "train" if self.model.training else "eval"
        for name, value in zip(metrics, values.tolist()):
            self._metrics[mode][f"cotd_po/{name}"].append(value)
