"""BRTS trainer: `KDTrainer` (on-policy GKD) with best-of-N teacher rollout selection and the two-branch loss.

Paper: On-Policy Distillation with Best-of-N Teacher Rollout Selection, https://huggingface.co/papers/2605.09725

    L = L_S + λ · L_T        (Eq. (5): L_S on the student's rollout, L_T on the selected teacher rollout)

Each step (spec §2.12): the student samples one rollout per prompt (`KDTrainer`); the teacher samples N rollouts per
prompt, graded against the dataset's answer column; with `recovery`, prompts without a correct rollout get rollouts of
the teacher prompted with the ground truth (Tier 2); `select_rollout` keeps one per prompt, laid after the *original*
prompt, so the hint never reaches the student. Differences from the authors' verl code: any `Generator` (e.g. vLLM)
may sample the teacher; hinted rollouts are sampled for the unsolved prompts only; each branch is a token mean over
the global batch (spec §8 item 9); L_S takes its top-K set from the loss's own forward, the same set as the pre-update
forward with one on-policy update and no dropout (spec §8 item 8). The released launchers' settings (G student
rollouts per prompt, L_S's teacher on the selected rollout's context, spec §2.11) are `num_generations` and
`main_teacher_context`.
"""

import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._trl import unwrap_model_for_generation
from ..chunked import chunked_distill_loss, chunked_topk, default_chunk_size
from ..divergence import global_token_mean
from ..generation import Generator, HFGenerator, Sample
from ..generation.vllm import teacher_generator_from_config
from ..kd_trainer import AnswerCollator, KDTrainer, last_hidden_state
from ..validation import checked_rows
from ..verify import extract_answer, grade
from .config import BRTSConfig
from .loss import BRTSLossOutput, brts_loss, student_topk_rkl, teacher_topk, teacher_topk_fkl_chunked
from .main_context import topk_overlap
from .selection import (
    mentions_validation_key,
    recovery_prompts,
    recovery_rows,
    select_rollout,
    selection_metrics,
    student_alignment,
    take_selected,
    teacher_context_mask,
)


@dataclass
class RepeatedRows:
    """The wrapped collator on every example repeated `repeats` times in a row: G student rollouts per prompt."""

    collator: Callable
    repeats: int

    def __call__(self, examples: list[dict]) -> dict:
        return self.collator([example for example in examples for _ in range(self.repeats)])


def samples_teacher_rollouts(args: BRTSConfig) -> bool:
    """Whether a step samples the teacher's pool: for L_T, or for L_S's teacher context (spec §2.11)."""
    return args.teacher_context_coef > 0 or args.main_teacher_context != "student"


def fit_width(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` `(B, L, ...)` cut or zero-padded to `(B, width, ...)`: response positions of another sequence."""
    tensor = tensor[:, :width]
    return F.pad(tensor, [0, 0] * (tensor.dim() - 2) + [0, width - tensor.shape[1]])


class BRTSTrainer(KDTrainer):
    """[`KDTrainer`] that samples N teacher rollouts per prompt, grades them, selects one (Tiers 1-3) and trains on
    `L_S + λ · L_T`. Metrics are logged as `brts/<name>`.

    Args:
        teacher_generator (`Generator`, *optional*):
            Samples the teacher's rollouts, e.g. a [`VLLMGenerator`] on a `trl vllm-serve` of the frozen teacher.
            Defaults to Hugging Face `generate` on `teacher_model`, as the authors' code does.
        model, teacher_model, args, train_dataset, **kwargs:
            As in [`KDTrainer`]; `args` is a [`BRTSConfig`], and `train_dataset` needs `args.answer_column` unless
            `teacher_context_coef` is 0 and `main_teacher_context` is `"student"` (no teacher rollouts).
    """

    _tag_names = ["trl", "gkd", "trl-reasoning-distill", "brts"]
    _name = "BRTS"
    _paper = {
        "title": "On-Policy Distillation with Best-of-N Teacher Rollout Selection",
        "id": "2605.09725",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhang2026brts,
                title   = {{On-Policy Distillation with Best-of-N Teacher Rollout Selection}},
                author  = {Zhang and Tian and Zhao and Li and Liu and Patel and Fu},
                year    = 2026,
                journal = {arXiv preprint arXiv:2605.09725},
            }"""),
    }
    metric_prefix = "brts"

    def __init__(self, model=None, teacher_model=None, args: BRTSConfig | None = None, train_dataset=None,
                 teacher_generator: Generator | None = None, **kwargs):
        if not isinstance(args, BRTSConfig):
            raise ValueError(f"BRTSTrainer needs `args` to be a BRTSConfig, got {type(args).__name__}.")
        columns = None if train_dataset is None else train_dataset.column_names
        if samples_teacher_rollouts(args) and columns is not None and args.answer_column not in columns:
            raise ValueError(f"BRTS grades the teacher's rollouts against the ground truth: the training dataset "
                             f"needs an {args.answer_column!r} column (see `answer_column`); it has {columns}.")
        if samples_teacher_rollouts(args):  # a None or blank answer would be graded as "None" or ""
            train_dataset = checked_rows(train_dataset, "the training dataset", answer_column=args.answer_column)
        super().__init__(model, teacher_model, args, train_dataset=train_dataset, **kwargs)
        self.teacher_generator = teacher_generator or teacher_generator_from_config(
            args, self.accelerator.unwrap_model(self.teacher_model), self.processing_class,
            self.accelerator.num_processes)  # `teacher_generation_backend`: None samples with HF generate
        self.data_collator = AnswerCollator(self.data_collator, args.answer_column)
        if args.num_generations > 1:  # G rows per prompt, side by side in the batch
            self.data_collator = RepeatedRows(self.data_collator, args.num_generations)

    # --- sampling: the student's rollouts (KDTrainer), then the teacher's pool and the selection -------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and "selected_labels" in batches[0]:  # L_T is a token mean over its own global count (§2.10)
            count = self._count_loss_tokens([{"labels": batch["selected_labels"]} for batch in batches], device)
            for batch in batches:
                batch["selected_num_items"] = count
        return batches, num_items_in_batch

    def _sample_completions(self, inputs: dict) -> dict:
        inputs = super()._sample_completions(inputs)
        if not samples_teacher_rollouts(self.args):  # plain OPD: no teacher rollouts (spec §9 item 1)
            return inputs
        if "answers" not in inputs:
            raise ValueError(f"BRTS needs the ground-truth column {self.args.answer_column!r} in every training row.")
        return {**inputs, **self._select_teacher_rollouts(inputs)}

    def generate_teacher_rollouts(self, prompt_ids: list[list[int]], n: int) -> list[list[Sample]]:
        """`n` teacher rollouts of each prompt, at the teacher's sampling settings (spec §2.4)."""
        args = self.args
        sampling = {"n": n, "max_new_tokens": args.teacher_max_new_tokens or args.max_new_tokens,
                    "temperature": args.teacher_temperature, "top_p": args.teacher_top_p}
        if self.teacher_generator is not None:
            return self.teacher_generator.generate(prompt_ids, **sampling)
        with unwrap_model_for_generation(self.teacher_model, self.accelerator) as teacher:
            return HFGenerator(teacher, self.processing_class).generate(prompt_ids, **sampling)

    def _select_teacher_rollouts(self, inputs: dict) -> dict:
        """Pool, grade, align and select (spec §2.4-2.8); returns the selected rollouts as `selected_*` tensors."""
        args, answers, N = self.args, inputs["answers"], self.args.num_teacher_rollouts
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["prompts"], inputs["prompt_attention_mask"])]
        start = time.perf_counter()
        pool = self.generate_teacher_rollouts(prompts, N)  # Tier 1
        seconds = time.perf_counter() - start
        correct_BN = self._grade(pool, answers, hinted=False)
        retry_B = recovery_rows(correct_BN)
        if args.recovery:  # Tier 2, hinted rollouts in columns N.. of the pool
            start = time.perf_counter()
            hinted = self._recovery_rollouts(prompts, answers, retry_B)
            seconds += time.perf_counter() - start
            pool = [row + extra for row, extra in zip(pool, hinted, strict=True)]
            correct_BN = torch.cat([correct_BN, self._grade(hinted, answers, hinted=True)], dim=1)
        ids_BML, real_BML = self._pool_tensors(pool)
        valid_BML = real_BML & (ids_BML != self.processing_class.eos_token_id)  # the code's `!= pad` (pad is EOS)
        alignment_BM = self._alignment(inputs, ids_BML, real_BML, valid_BML)
        recovery = (correct_BN[:, N:], alignment_BM[:, N:]) if args.recovery else (None, None)
        index_B, tier_B = select_rollout(correct_BN[:, :N], alignment_BM[:, :N], *recovery)
        selected = self._selected_batch(inputs, *(take_selected(t, index_B) for t in (ids_BML, real_BML, valid_BML)),
                                        tier_B)
        selected_alignment_B = take_selected(alignment_BM, index_B)
        metrics = selection_metrics(correct_BN[:, :N], tier_B, selected_alignment_B, recovery[0])
        metrics.update({f"count_tier{level}": (tier_B == level).sum().item() for level in (1, 2, 3)})
        metrics.update(
            pool_accuracy=correct_BN[:, :N].float().mean().item(),
            selected_alignment=selected_alignment_B.mean().item(),
            selected_length=(selected["selected_labels"] != -100).sum(1).float().mean().item(),
            teacher_rollouts=len(prompts) * N + args.recovery * retry_B.sum().item() * args.num_recovery_rollouts,
            teacher_generation_seconds=seconds,
        )
        for name, value in metrics.items():
            self.log_metric(name, value, mode="train")
        return selected

    def _recovery_rollouts(self, prompts: list[list[int]], answers: list[str], retry_B) -> list[list[Sample]]:
        """Tier 2 (spec §2.7): M2 rollouts of the hinted teacher for the rows of `retry_B`, empty ones elsewhere."""
        rows, M2 = retry_B.nonzero().squeeze(1).tolist(), self.args.num_recovery_rollouts
        hinted = [[Sample([], "", "length")] * M2 for _ in prompts]
        if rows:
            samples = self.generate_teacher_rollouts([self._hinted_prompt(prompts[b], answers[b]) for b in rows], M2)
            for b, row in zip(rows, samples, strict=True):
                hinted[b] = row
        return hinted

    def _hinted_prompt(self, prompt_ids: list[int], answer: str) -> list[int]:
        """The teacher's Tier-2 prompt (spec §2.8): decoded with special tokens, hinted, tokenized adding none."""
        text = self.processing_class.decode(prompt_ids, skip_special_tokens=False)
        return self.processing_class(recovery_prompts(text, answer).teacher, add_special_tokens=False)["input_ids"]

    def _grade(self, pool: list[list[Sample]], answers: list[str], hinted: bool) -> torch.Tensor:
        """Correctness `(B, M)` of every rollout (spec §2.5); a hinted one mentioning the key fails the leak filter."""
        mode, leak_filter = self.args.answer_extraction, hinted and self.args.recovery_leak_filter
        verdicts = [[bool(sample.token_ids) and grade(extract_answer(sample.text, mode), answer)
                     and not (leak_filter and mentions_validation_key(sample.text)) for sample in row]
                    for row, answer in zip(pool, answers, strict=True)]
        return torch.tensor(verdicts, dtype=torch.bool, device=self.accelerator.device)

    def _pool_tensors(self, pool: list[list[Sample]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rollout ids `(B, M, L)` padded with the pad id, and the mask of their real tokens (EOS included)."""
        width = max(1, *(len(sample.token_ids) for row in pool for sample in row))
        ids_BML = torch.full((len(pool), len(pool[0]), width), self.processing_class.pad_token_id, dtype=torch.long)
        for b, row in enumerate(pool):
            for j, sample in enumerate(row):
                ids_BML[b, j, : len(sample.token_ids)] = torch.tensor(sample.token_ids, dtype=torch.long)
        lengths_BM = torch.tensor([[len(sample.token_ids) for sample in row] for row in pool])
        real_BML = torch.arange(width) < lengths_BM[..., None]
        return ids_BML.to(self.accelerator.device), real_BML.to(self.accelerator.device)

    def _alignment(self, inputs: dict, ids_BML, real_BML, valid_BML) -> torch.Tensor:
        """Alignment `(B, M)` of every rollout with the student (spec §2.6; §8 item 5 for `"teacher_ctx"`)."""
        P = inputs["prompts"].shape[1]
        if self.args.alignment == "positional":  # the student's top-K on its own rollout, position by position
            student_mask_BC = inputs["attention_mask"][:, P:].bool()
            topk_BCK = self._student_topk(inputs["input_ids"], inputs["attention_mask"], P, student_mask_BC)
            return student_alignment("positional", ids_BML, valid_BML, student_topk_ids=topk_BCK,
                                     student_mask=student_mask_BC)
        B, M, _ = ids_BML.shape  # the student's top-K on each rollout's own prefix, after the original prompt
        input_ids = torch.cat([inputs["prompts"].repeat_interleave(M, 0), ids_BML.flatten(0, 1)], dim=1)
        prompt_mask = inputs["prompt_attention_mask"].repeat_interleave(M, 0)
        attention = torch.cat([prompt_mask, real_BML.flatten(0, 1).long()], dim=1)
        topk_BMLK = self._student_topk(input_ids, attention, P, valid_BML.flatten(0, 1)).unflatten(0, (B, M))
        return student_alignment("teacher_ctx", ids_BML, valid_BML, student_topk_ids=topk_BMLK)

    @torch.no_grad()
    def _student_topk(self, input_ids, attention_mask, start: int, mask_BL: torch.Tensor) -> torch.Tensor:
        """The student's top-K ids `(B, L, K)` predicting tokens `start .. start + L - 1` (zeros off `mask_BL`)."""
        hidden_BLH = last_hidden_state(self.model_wrapped, {"input_ids": input_ids, "attention_mask": attention_mask})
        hidden_MH = hidden_BLH[:, start - 1 : start - 1 + mask_BL.shape[1]][mask_BL]
        topk_BLK = input_ids.new_zeros((*mask_BL.shape, self.args.top_k))
        topk_BLK[mask_BL] = chunked_topk(hidden_MH, self.output_weight(self.model), self.args.top_k,
                                         chunk_size=self._chunk_size(), vocab_size=self.vocab_size)
        return topk_BLK

    def _selected_batch(self, inputs: dict, ids_BL, real_BL, valid_BL, tier_B) -> dict:
        """The selected rollouts after the original prompt, the loss mask of L_T as labels (spec §2.9), and the
        tokens a teacher on that context reaches for L_S (`selected_context_mask`, spec §2.11: not pad or EOS)."""
        student_mask_BC = inputs["attention_mask"][:, inputs["prompts"].shape[1] :].bool()
        if self.args.truncate_to_student_length:  # later tokens are never supervised: do not compute them
            ids_BL, real_BL, valid_BL = (t[:, : student_mask_BC.shape[1]] for t in (ids_BL, real_BL, valid_BL))
        width = max(ids_BL.shape[1], student_mask_BC.shape[1])
        student_mask_BW, valid_BW = (F.pad(m, (0, width - m.shape[1])) for m in (student_mask_BC, valid_BL))
        mask_BL = teacher_context_mask(valid_BW, student_mask_BW if self.args.truncate_to_student_length else None,
                                       tier_B, self.args.tier3_fallback)[:, : ids_BL.shape[1]]
        prompts = inputs["prompts"]
        return {
            "selected_input_ids": torch.cat([prompts, ids_BL], dim=1),
            "selected_attention_mask": torch.cat([inputs["prompt_attention_mask"], real_BL.long()], dim=1),
            "selected_labels": torch.cat([torch.full_like(prompts, -100), ids_BL.masked_fill(~mask_BL, -100)], 1),
            "selected_context_mask": torch.cat([torch.zeros_like(prompts, dtype=torch.bool), valid_BL], dim=1),
        }

    # --- loss --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.teacher_model.eval()
        selected_num_items = None if num_items_in_batch is None else inputs.get("selected_num_items")
        loss_path = self._logits_loss if self.args.loss_chunk_size == 0 else self._chunked_loss
        out, masks = loss_path(model, inputs, num_items_in_batch, selected_num_items)
        self._log_terms(out, masks, (num_items_in_batch, selected_num_items))
        return (out.loss, {}) if return_outputs else out.loss

    def _logits_loss(self, model, inputs, num_items_in_batch, selected_num_items):
        """`brts_loss` on both models' full `(B, T, V)` logits (`loss_chunk_size=0`)."""
        args = self.args
        student_BTV, teacher_BTV, mask_BT = self._logits(model, inputs, "")
        teacher_BTV, available_BT = self._main_teacher_logits(inputs, student_BTV, teacher_BTV, mask_BT)
        with_selected = "selected_input_ids" in inputs and args.teacher_context_coef > 0  # L_T off: not computed
        selected = self._logits(model, inputs, "selected_") if with_selected else (None,) * 3
        out = brts_loss(student_BTV, teacher_BTV, mask_BT, *selected, teacher_context_coef=args.teacher_context_coef,
                        top_k=args.top_k, student_context_estimator=args.student_context_estimator,
                        weight_mode=args.weight_mode, teacher_context_mode=args.teacher_context_mode,
                        temperature=self.temperature, teacher_available=available_BT,
                        num_items_in_batch=num_items_in_batch, selected_num_items=selected_num_items,
                        num_processes=self.accelerator.num_processes)
        return out, (mask_BT, selected[2])

    def _main_teacher_logits(self, inputs: dict, student_BTV, teacher_BTV, mask_BT):
        """L_S's teacher logits and where they hold (spec §2.11): `teacher_BTV` on the student's rollout, or the
        teacher's on the selected rollout at the same response positions (`main_teacher_context`)."""
        if self.args.main_teacher_context == "student" or "selected_input_ids" not in inputs:
            return teacher_BTV, None
        width = mask_BT.shape[1]
        with torch.no_grad():
            selected_BTV = self.teacher_model(input_ids=inputs["selected_input_ids"],
                                              attention_mask=inputs["selected_attention_mask"]).logits
        selected_BTV = fit_width(selected_BTV[:, :-1, : self.vocab_size], width)
        available_BT = fit_width(inputs["selected_context_mask"][:, 1:], width)
        if self.args.main_teacher_context == "auto_overlap":
            student_ids, teacher_ids, selected_ids = (logits.detach().topk(self.args.top_k, dim=-1).indices
                                                      for logits in (student_BTV, teacher_BTV, selected_BTV))
            if not self._selected_context_wins(topk_overlap(student_ids, teacher_ids, mask_BT),
                                               topk_overlap(student_ids, selected_ids, mask_BT, available_BT)):
                return teacher_BTV, None
        return selected_BTV, available_BT

    def _main_teacher_hidden(self, model, inputs: dict, student_MH, teacher_MH, mask_BT):
        """`_main_teacher_logits` from the last hidden states at the loss tokens, `(M, H)`, and `(M,)`."""
        if self.args.main_teacher_context == "student" or "selected_input_ids" not in inputs:
            return teacher_MH, None
        width = mask_BT.shape[1]
        selected_inputs = {"input_ids": inputs["selected_input_ids"],
                           "attention_mask": inputs["selected_attention_mask"]}
        with torch.no_grad():
            selected_MH = fit_width(last_hidden_state(self.teacher_model, selected_inputs), width)[mask_BT]
        available_M = fit_width(inputs["selected_context_mask"][:, 1:], width)[mask_BT]
        if self.args.main_teacher_context == "auto_overlap":
            student_ids, teacher_ids, selected_ids = (
                chunked_topk(hidden_MH, self.output_weight(head), self.args.top_k, chunk_size=self._chunk_size(),
                             vocab_size=self.vocab_size)
                for hidden_MH, head in ((student_MH, model), (teacher_MH, self.teacher_model),
                                        (selected_MH, self.teacher_model)))
            everywhere_M = torch.ones_like(available_M)
            if not self._selected_context_wins(topk_overlap(student_ids, teacher_ids, everywhere_M),
                                               topk_overlap(student_ids, selected_ids, everywhere_M, available_M)):
                return teacher_MH, None
        return selected_MH, available_M

    def _selected_context_wins(self, student_context: tuple, selected_context: tuple) -> bool:
        """`multi_forward_select_by_overlap` (spec §2.11): the selected rollout's context serves L_S for the whole
        batch (every process's rows) only when its overlap is strictly greater; a tie keeps the student's."""
        (student_hits, slots), (selected_hits, _) = student_context, selected_context
        student_hits, slots, selected_hits = self.accelerator.reduce(
            torch.stack([student_hits, slots, selected_hits]), reduction="sum").tolist()
        wins = selected_hits > student_hits
        self.log_metric("main_context_selected", float(wins))
        self.log_metric("main_context_overlap_student", student_hits / max(slots, 1.0))
        self.log_metric("main_context_overlap_selected", selected_hits / max(slots, 1.0))
        return wins

    def _logits(self, model, inputs: dict, prefix: str):
        """Both models' logits `(B, T-1, V)` on the `prefix` sequences, and the loss mask `(B, T-1)`."""
        model_inputs = {"input_ids": inputs[f"{prefix}input_ids"], "attention_mask": inputs[f"{prefix}attention_mask"]}
        student_BTV = model(**model_inputs).logits[:, :-1, : self.vocab_size]
        with torch.no_grad():
            teacher_BTV = self.teacher_model(**model_inputs).logits[:, :-1, : self.vocab_size]
        return student_BTV, teacher_BTV, inputs[f"{prefix}labels"][:, 1:] != -100

    def _chunked_loss(self, model, inputs, num_items_in_batch, selected_num_items):
        """The same loss from the last hidden states, `C` tokens at a time: neither model's logits are built."""
        P, coef = self.accelerator.num_processes, self.args.teacher_context_coef
        student_MH, teacher_MH, mask_BT = self._hidden(model, inputs, "")
        teacher_MH, available_M = self._main_teacher_hidden(model, inputs, student_MH, teacher_MH, mask_BT)
        values_M = self._student_context_values(model, student_MH, teacher_MH, self.args.student_context_estimator,
                                                available_M=available_M)
        student_context = global_token_mean(values_M, torch.ones_like(values_M), num_items_in_batch, P)  # Eq. (3)
        if "selected_input_ids" not in inputs or coef == 0:  # L_T off: not computed
            return BRTSLossOutput(student_context, student_context, torch.zeros_like(student_context.detach())), (
                mask_BT, None)
        student_MH, teacher_MH, selected_mask_BT = self._hidden(model, inputs, "selected_")
        values_M = self._teacher_context_values(model, student_MH, teacher_MH)
        teacher_context = global_token_mean(values_M, torch.ones_like(values_M), selected_num_items, P)  # Eq. (4)
        loss = student_context + coef * teacher_context  # Eq. (5)
        return BRTSLossOutput(loss, student_context, teacher_context), (mask_BT, selected_mask_BT)

    def _hidden(self, model, inputs: dict, prefix: str):
        """Both models' last hidden states at the loss tokens of the `prefix` sequences, `(M, H)`, and the mask."""
        model_inputs = {"input_ids": inputs[f"{prefix}input_ids"], "attention_mask": inputs[f"{prefix}attention_mask"]}
        mask_BT = inputs[f"{prefix}labels"][:, 1:] != -100
        student_MH = last_hidden_state(model, model_inputs)[mask_BT]
        with torch.no_grad():
            teacher_MH = last_hidden_state(self.teacher_model, model_inputs)[mask_BT]
        return student_MH, teacher_MH, mask_BT

    def _student_context_values(self, model, student_MH, teacher_MH, estimator: str, weight_mode=None,
                                available_M=None):
        """Per-token L_S (spec §2.3) from hidden states: the top-K reverse KL, or the exact one (`"full_rkl"`);
        `available_M` marks where a teacher on another context holds (spec §2.11)."""
        chunk_size, temperature = self._chunk_size(), self.temperature
        if estimator == "full_rkl":
            return chunked_distill_loss(student_MH, self.output_weight(model), teacher_MH,
                                        self.output_weight(self.teacher_model), divergence="reverse_kl",
                                        temperature=temperature, reduction="none", chunk_size=chunk_size,
                                        vocab_size=self.vocab_size)
        student_head_VH = self.output_weight(model)[: self.vocab_size]
        teacher_head_VH = self.output_weight(self.teacher_model)[: self.vocab_size].detach()

        def chunk(student_CH, teacher_CH, available_C):
            return student_topk_rkl(F.linear(student_CH, student_head_VH), F.linear(teacher_CH, teacher_head_VH),
                                    top_k=self.args.top_k, weight_mode=weight_mode or self.args.weight_mode,
                                    temperature=temperature, teacher_available=available_C)

        # Activation checkpointing: each chunk's [C, V] logits are recomputed in the backward pass, never all kept.
        return torch.cat([checkpoint(chunk, student_MH[i : i + chunk_size], teacher_MH[i : i + chunk_size],
                                     None if available_M is None else available_M[i : i + chunk_size],
                                     use_reentrant=False) for i in range(0, max(len(student_MH), 1), chunk_size)])

    def _teacher_context_values(self, model, student_MH, teacher_MH):
        """Per-token L_T (spec §2.9) from hidden states: the teacher's top-K, then the chunked truncated forward KL."""
        if self.args.teacher_context_mode == "student_topk_rkl":
            return self._student_context_values(model, student_MH, teacher_MH, "topk_rkl", weight_mode="student_p")
        chunk_size, temperature = self._chunk_size(), self.temperature
        teacher_head_VH = self.output_weight(self.teacher_model)[: self.vocab_size]
        with torch.no_grad():
            ids_MK, logprobs_MK = (torch.cat(parts) for parts in zip(*(
                teacher_topk(F.linear(teacher_CH, teacher_head_VH), self.args.top_k, temperature)
                for teacher_CH in teacher_MH.split(chunk_size))))
        return teacher_topk_fkl_chunked(student_MH, self.output_weight(model), ids_MK, logprobs_MK,
                                        temperature=temperature, chunk_size=chunk_size, vocab_size=self.vocab_size)

    def _chunk_size(self) -> int:
        """Tokens per chunk: `loss_chunk_size`, or (for -1 and 0) the chunked loss's default for this vocabulary."""
        return self.args.loss_chunk_size if self.args.loss_chunk_size > 0 else default_chunk_size(self.vocab_size)

    def _log_terms(self, out: BRTSLossOutput, masks: tuple, counts: tuple) -> None:
        """Log each branch as this micro-batch's token mean: undo the global-batch share the loss terms carry."""
        for name, value, mask, count in zip(("student_context", "teacher_context"),
                                            (out.student_context, out.teacher_context), masks, counts):
            if mask is None:
                continue
            local = mask.sum().item() * self.accelerator.num_processes
            scale = 1.0 if count is None or local == 0 else float(count) / local
            self.log_metric(name, value.item() * scale)
