"""BRTS L_S, the student-context loss on the student's own rollout (Eq. (3), spec §2.3, §8 item 8).

Pure: torch only. `student_topk_rkl` is the per-token estimator over the student's top-K (also a mode of L_T, in
`teacher_context.py`) and `student_context_loss` its token mean, or the exact reverse KL with `"full_rkl"`.
"""

import torch

from .._checks import check_choice as _check_choice
from ..divergence import _log_softmax, global_token_mean, reverse_kl
from ._loss_common import DEFAULT_TOP_K, _check_ids, _check_logits, _check_top_k

STUDENT_CONTEXT_ESTIMATORS = ("topk_rkl", "full_rkl")  # spec §2.3; §8 item 8 (exact reverse KL, a sanity baseline)
WEIGHT_MODES = ("student_p", "teacher_p", "none")  # spec §2.3 and §10.2: weights over the student's top-K

__all__ = ["STUDENT_CONTEXT_ESTIMATORS", "WEIGHT_MODES", "student_topk_rkl", "student_context_loss"]


def _topk_weights(student_logp_K: torch.Tensor, teacher_logp_K: torch.Tensor, weight_mode: str) -> torch.Tensor:
    """Spec §2.3 step 3: detached weights, a softmax over the K candidates of the chosen log-probabilities."""
    if weight_mode == "student_p":
        log_weights_K = student_logp_K
    elif weight_mode == "teacher_p":
        log_weights_K = teacher_logp_K
    else:
        log_weights_K = torch.zeros_like(student_logp_K)
    return log_weights_K.detach().softmax(dim=-1)


def student_topk_rkl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    top_k: int = DEFAULT_TOP_K,
    topk_ids: torch.Tensor | None = None,
    weight_mode: str = "student_p",
    temperature: float = 1.0,
    teacher_available: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Per-token sampled top-K reverse KL of the student-context branch, spec §2.3 (Eq. (3) as the code computes it).

    With `q = softmax(student_logits / T)`, `p = softmax(teacher_logits / T)` (full-vocabulary log-probs, **not**
    renormalised over K) and `w = softmax over S_t` of the detached `log q` (`weight_mode="student_p"`), the value
    is `sum_{v in S_t} w_v (log q_v - log p_v)` and the gradient `sum_v w_v (log q_v - log p_v) ∇ log q_v`: the
    code's `-A · ratio` at ratio 1, with `A = -w (log q - log p)` fixed before the update. Neither the weights nor the
    candidate set carry a gradient, and the teacher never receives one. With `top_k = V` and `"student_p"`, value and
    gradient equal the full reverse KL (`sum_v q_v ∇ log q_v = 0`).

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)`, on the student's rollout.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape, on the same tokens.
        top_k (`int`, *optional*, defaults to `16`):
            K, the student's candidates per position (spec §2.1: the code's `LOG_PROB_TOP_K`).
        topk_ids (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Integer tensor `(..., K)` of distinct candidate ids stored by the pre-update no-grad forward (spec §2.3
            step 1); given, `top_k` is ignored. `None` takes the top-K of the detached `student_logits`, the same
            set with one on-policy update.
        weight_mode (`str`, *optional*, defaults to `"student_p"`):
            Which log-probabilities the weights renormalise: `"student_p"` (the code's setting, spec §2.3),
            `"teacher_p"` or `"none"` (uniform).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides both logits (spec §2.3: rollout and teacher temperature 1.0 in the code).
        teacher_available (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor `(...)`, for `teacher_logits` taken on another context (the released launchers' main branch,
            spec §2.11): where `False`, the teacher's log-probabilities are 0, as the released code reads them from
            padding. `None`: all available.

    Returns:
        `torch.Tensor`: Per-token values of shape `(...)` (float32, or float64 for float64 logits).
    """
    _check_logits(student_logits, teacher_logits, teacher_available)
    _check_choice("weight_mode", weight_mode, WEIGHT_MODES)
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    vocab_size, dtype = student_logits.shape[-1], torch.promote_types(student_logits.dtype, teacher_logits.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    student_logp_V = _log_softmax(student_logits, temperature, dtype)
    teacher_logp_V = _log_softmax(teacher_logits.detach(), temperature, dtype)
    if topk_ids is None:
        _check_top_k(top_k, vocab_size)
        topk_ids = student_logp_V.detach().topk(top_k, dim=-1).indices  # spec §2.3 step 1: S_t
    else:
        _check_ids("topk_ids", topk_ids, student_logits.shape[:-1], vocab_size)
    student_logp_K = student_logp_V.gather(-1, topk_ids.long())
    teacher_logp_K = teacher_logp_V.gather(-1, topk_ids.long())  # step 2: log p at the student's ids
    if teacher_available is not None:  # spec §2.11: no teacher token there, log-prob 0 from padding
        teacher_logp_K = teacher_logp_K.masked_fill(~teacher_available.bool()[..., None], 0.0)
    weights_K = _topk_weights(student_logp_K, teacher_logp_K, weight_mode)  # step 3
    minus_advantage_K = weights_K * (student_logp_K.detach() - teacher_logp_K)  # step 4: -A
    ratio_K = torch.exp(student_logp_K - student_logp_K.detach())  # step 5: exactly 1, gradient ∇ log q
    return (minus_advantage_K * ratio_K).sum(dim=-1)


def student_context_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "topk_rkl",
    top_k: int = DEFAULT_TOP_K,
    topk_ids: torch.Tensor | None = None,
    weight_mode: str = "student_p",
    temperature: float = 1.0,
    teacher_available: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_processes: int = 1,
) -> torch.Tensor:
    """
    L_S, the student-context OPD loss (Eq. (3), spec §2.3): the token mean of the per-token divergence over `mask`.

    The full-vocabulary option is what [`chunked_distill_loss`] computes from hidden states with
    `divergence="reverse_kl"`; the top-K estimator is a logits-level surrogate (its weights are detached and it has
    no "+1" term), not one of the chunked divergences.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)` on the student's rollout, e.g. `(B, T, V)`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(...)`: valid response tokens (the student's EOS included, spec §2.3).
        estimator (`str`, *optional*, defaults to `"topk_rkl"`):
            `"topk_rkl"`: [`student_topk_rkl`] (the code, spec §2.3); `"full_rkl"`: the exact reverse KL over the
            vocabulary (spec §8 item 8, TRL GKD with β = 1).
        top_k, topk_ids, weight_mode, teacher_available:
            As in [`student_topk_rkl`]; ignored by `"full_rkl"` (which refuses `teacher_available`).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides both logits (spec §2.3).
        num_items_in_batch (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Loss-token count of the global batch; `None` takes the mean over this micro-batch (the code's
            "token-mean").
        num_processes (`int`, *optional*, defaults to `1`):
            Data-parallel processes, used with `num_items_in_batch`.

    Returns:
        `torch.Tensor`: 0-dim loss.
    """
    _check_choice("estimator", estimator, STUDENT_CONTEXT_ESTIMATORS)
    _check_logits(student_logits, teacher_logits, mask)
    if estimator == "full_rkl":
        if teacher_available is not None:
            raise ValueError("`teacher_available` (a teacher on another context, spec §2.11) needs `topk_rkl`.")
        per_token = reverse_kl(student_logits, teacher_logits.detach(), temperature=temperature)
    else:
        per_token = student_topk_rkl(
            student_logits,
            teacher_logits,
            top_k=top_k,
            topk_ids=topk_ids,
            weight_mode=weight_mode,
            temperature=temperature,
            teacher_available=teacher_available,
        )
    return global_token_mean(per_token, mask, num_items_in_batch, num_processes)  # Eq. (3), spec §8 item 9
