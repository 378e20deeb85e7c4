"""BRTS: on-policy distillation with best-of-N teacher rollout selection, as pure loss pieces.

Paper: On-Policy Distillation with Best-of-N Teacher Rollout Selection, https://huggingface.co/papers/2605.09725

    L = L_S + λ · L_T        (Eq. (5); λ = `teacher_context_coef`, 0.05 in the authors' code)

L_S (Eq. (3), spec §2.3), on the student's rollout: over the student's top-K tokens S_t, the value
Σ_v w_v (log q_v − log p_v) with full-vocabulary log-probs and w the detached student probabilities renormalised over
S_t; its gradient is Σ_v w_v (log q_v − log p_v) ∇ log q_v (the code's PPO loss at ratio 1, without the "+1" term).
L_T (Eq. (4), spec §2.9), on the selected teacher rollout: the forward KL truncated to the teacher's top-K T_t,
Σ_v w^T_v (log p_v − log q_v), w^T the teacher's probabilities renormalised over T_t. Each is a token mean over its
own mask (spec §2.10). Differences from the authors' code: the means may run over the global batch (spec §8 item 9);
its teacher-context modes `student_p`/`teacher_p`/`none`, whose gradient ignores the teacher, are replaced by the
§2.3 estimator on the teacher's context (spec §8 item 2).

Where the pieces live (all pure; every public name is importable from here):
- `student_context.py`: L_S (`student_context_loss`, its estimator `student_topk_rkl`, `STUDENT_CONTEXT_ESTIMATORS`,
  `WEIGHT_MODES`);
- `teacher_context.py`: L_T (`teacher_context_loss`, `teacher_topk`, `teacher_topk_fkl`, `teacher_topk_fkl_chunked`,
  `TEACHER_CONTEXT_MODES`);
- `_loss_common.py`: `DEFAULT_TOP_K` and the argument checks both branches share;
- here: the objective `brts_loss` (Eq. (5)), its output `BRTSLossOutput` and `DEFAULT_TEACHER_CONTEXT_COEF`.
"""

from dataclasses import dataclass

import torch

from ._loss_common import DEFAULT_TOP_K
from .student_context import STUDENT_CONTEXT_ESTIMATORS, WEIGHT_MODES, student_context_loss, student_topk_rkl
from .teacher_context import (
    TEACHER_CONTEXT_MODES,
    teacher_context_loss,
    teacher_topk,
    teacher_topk_fkl,
    teacher_topk_fkl_chunked,
)

DEFAULT_TEACHER_CONTEXT_COEF = 0.05  # spec §2.10 and §8 item 1: the code's AUX_TEACHER_CTX_KD_COEF (paper value lost)

__all__ = [
    "DEFAULT_TOP_K", "DEFAULT_TEACHER_CONTEXT_COEF", "STUDENT_CONTEXT_ESTIMATORS", "TEACHER_CONTEXT_MODES",
    "WEIGHT_MODES", "student_topk_rkl", "student_context_loss", "teacher_topk", "teacher_topk_fkl",
    "teacher_topk_fkl_chunked", "teacher_context_loss", "BRTSLossOutput", "brts_loss",
]


@dataclass
class BRTSLossOutput:
    """
    Result of [`brts_loss`]: `loss = student_context + teacher_context_coef · teacher_context`, all 0-dim tensors.
    `teacher_context` is detached when the coefficient is 0 and is 0 without a selected rollout.
    """

    loss: torch.Tensor
    student_context: torch.Tensor
    teacher_context: torch.Tensor

    @property
    def metrics(self) -> dict[str, float]:
        """The two terms as Python floats, for logging under `brts/<name>`."""
        return {"student_context": self.student_context.item(), "teacher_context": self.teacher_context.item()}


def brts_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    selected_student_logits: torch.Tensor | None = None,
    selected_teacher_logits: torch.Tensor | None = None,
    selected_mask: torch.Tensor | None = None,
    *,
    teacher_context_coef: float = DEFAULT_TEACHER_CONTEXT_COEF,
    top_k: int = DEFAULT_TOP_K,
    student_context_estimator: str = "topk_rkl",
    weight_mode: str = "student_p",
    teacher_context_mode: str = "teacher_topk_fkl",
    temperature: float = 1.0,
    teacher_available: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    selected_num_items: int | torch.Tensor | None = None,
    num_processes: int = 1,
) -> BRTSLossOutput:
    """
    The BRTS objective `L = L_S + λ · L_T` (Eq. (5), spec §2.10), each term a token mean over its own mask.

    Without a selected rollout (the three `selected_*` left `None`) or with `teacher_context_coef = 0`, the loss is
    exactly [`student_context_loss`], the OPD baseline (spec §9 item 1).

    Args:
        student_logits, teacher_logits, mask:
            Both models on the student's rollout and its response mask, as in [`student_context_loss`].
        selected_student_logits, selected_teacher_logits, selected_mask (`torch.Tensor` or `None`, *optional*):
            Both models on the selected teacher rollout and its mask, as in [`teacher_context_loss`]; all or none.
        teacher_context_coef (`float`, *optional*, defaults to `0.05`):
            λ (spec §2.10 and §8 item 1: the authors' code and README, the paper's value is lost from our copy).
        top_k (`int`, *optional*, defaults to `16`):
            K of both branches (spec §2.1 and §3: the code's `LOG_PROB_TOP_K`).
        student_context_estimator (`str`, *optional*, defaults to `"topk_rkl"`):
            See [`student_context_loss`] (spec §2.3; `"full_rkl"` per §8 item 8).
        weight_mode (`str`, *optional*, defaults to `"student_p"`):
            Weights of the student-context top-K estimator (spec §2.3: the code's `reward_weight_mode`).
        teacher_context_mode (`str`, *optional*, defaults to `"teacher_topk_fkl"`):
            See [`teacher_context_loss`] (spec §2.9 and §8 item 2).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides all logits (spec §3: student and teacher logit temperature 1.0).
        teacher_available (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            With `teacher_logits` from the selected rollout's context (the released launchers, spec §2.11): the
            positions it reaches, see [`student_topk_rkl`].
        num_items_in_batch (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Loss-token count of the student-context branch over the global batch; `None`: this micro-batch.
        selected_num_items (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            The same for the teacher-context branch (the branches are not pooled, spec §2.10).
        num_processes (`int`, *optional*, defaults to `1`):
            Data-parallel processes, used with the two counts.

    Returns:
        [`BRTSLossOutput`]: The loss (float32, or float64 for float64 logits) and its two terms.
    """
    selected = (selected_student_logits, selected_teacher_logits, selected_mask)
    if any(tensor is None for tensor in selected) and any(tensor is not None for tensor in selected):
        raise ValueError(
            "Pass all of `selected_student_logits`, `selected_teacher_logits` and `selected_mask`, or none of them."
        )
    if not teacher_context_coef >= 0.0:
        raise ValueError(f"`teacher_context_coef` (λ) must be >= 0, got {teacher_context_coef}.")
    student_context = student_context_loss(
        student_logits,
        teacher_logits,
        mask,
        estimator=student_context_estimator,
        top_k=top_k,
        weight_mode=weight_mode,
        temperature=temperature,
        teacher_available=teacher_available,
        num_items_in_batch=num_items_in_batch,
        num_processes=num_processes,
    )
    if selected_mask is None:
        return BRTSLossOutput(student_context, student_context, torch.zeros_like(student_context.detach()))
    with torch.set_grad_enabled(torch.is_grad_enabled() and teacher_context_coef > 0.0):
        teacher_context = teacher_context_loss(
            selected_student_logits,
            selected_teacher_logits,
            selected_mask,
            mode=teacher_context_mode,
            top_k=top_k,
            temperature=temperature,
            num_items_in_batch=selected_num_items,
            num_processes=num_processes,
        )
    if teacher_context_coef == 0.0:
        return BRTSLossOutput(student_context, student_context, teacher_context)
    loss = student_context + teacher_context_coef * teacher_context  # Eq. (5)
    return BRTSLossOutput(loss, student_context, teacher_context)
