"""BRTS L_T, the teacher-context loss on the selected teacher rollout (Eq. (4), spec §2.9, §8 item 2).

Pure: torch only. The teacher's top-K on the rollout (`teacher_topk`), the forward KL truncated to it from logits
(`teacher_topk_fkl`) or from hidden states and the lm_head, chunked (`teacher_topk_fkl_chunked`), and
`teacher_context_loss`, their token mean (or the student-context estimator on the teacher's context).
"""

import torch

from .._checks import check_choice as _check_choice
from ..chunked import chunked_distill_loss_topk
from ..divergence import _log_softmax, global_token_mean
from ._loss_common import DEFAULT_TOP_K, _check_ids, _check_logits, _check_top_k
from .student_context import student_topk_rkl

TEACHER_CONTEXT_MODES = ("teacher_topk_fkl", "student_topk_rkl")  # spec §2.9; §8 item 2

__all__ = ["TEACHER_CONTEXT_MODES", "teacher_topk", "teacher_topk_fkl", "teacher_topk_fkl_chunked",
           "teacher_context_loss"]


def teacher_topk(
    teacher_logits: torch.Tensor, top_k: int = DEFAULT_TOP_K, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The teacher's top-K ids and their full-vocabulary log-probabilities on the selected rollout (spec §2.9), detached.

    Args:
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `(..., V)`.
        top_k (`int`, *optional*, defaults to `16`):
            K (spec §2.1).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits (spec §2.9: `τ_T = 1.0`).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: Ids (long) and log-probabilities (float32 or wider), both `(..., K)`,
        highest first.
    """
    _check_top_k(top_k, teacher_logits.shape[-1])
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    teacher_logp_V = _log_softmax(
        teacher_logits.detach(), temperature, torch.promote_types(teacher_logits.dtype, torch.float32)
    )
    logprobs_K, ids_K = teacher_logp_V.topk(top_k, dim=-1)
    return ids_K, logprobs_K


def teacher_topk_fkl(
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Per-token forward KL truncated to the teacher's top-K, the teacher-context branch of spec §2.9 (Eq. (4)).

    `sum_{v in T_t} w_v (log p_v - log q_v)` with `w = softmax(teacher_topk_logprobs)` (the teacher's top-K
    probabilities renormalised over K) and `log q` the student's full-vocabulary log-probabilities. Its gradient is
    `-sum_v w_v ∇ log q_v`: a soft cross-entropy to the renormalised teacher top-K. The value is 0 when the student
    equals the teacher, whatever K.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)`, on the selected teacher rollout.
        teacher_topk_ids (`torch.Tensor`):
            Integer tensor `(..., K)`: the teacher's top-K ids T_t, distinct within a position (see [`teacher_topk`]).
        teacher_topk_logprobs (`torch.Tensor`):
            Tensor `(..., K)`: the teacher's full-vocabulary log-probabilities of those ids, at `temperature`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the student logits (spec §2.9: the student temperature 1.0).

    Returns:
        `torch.Tensor`: Per-token values of shape `(...)` (float32, or float64 for float64 inputs).
    """
    if teacher_topk_logprobs.shape != teacher_topk_ids.shape:
        raise ValueError(
            f"`teacher_topk_logprobs` {tuple(teacher_topk_logprobs.shape)} must have the shape of `teacher_topk_ids` "
            f"{tuple(teacher_topk_ids.shape)}."
        )
    _check_ids("teacher_topk_ids", teacher_topk_ids, student_logits.shape[:-1], student_logits.shape[-1])
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_topk_logprobs.dtype), torch.float32)
    student_logp_K = _log_softmax(student_logits, temperature, dtype).gather(-1, teacher_topk_ids.long())
    teacher_logp_K = teacher_topk_logprobs.detach().to(dtype).clamp_min(torch.finfo(dtype).min)
    weights_K = teacher_logp_K.softmax(dim=-1)  # w^T of spec §2.9
    return (weights_K * (teacher_logp_K - student_logp_K)).sum(dim=-1)


def teacher_topk_fkl_chunked(
    student_hidden: torch.Tensor,
    student_lm_head: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """
    [`teacher_topk_fkl`] from hidden states and the LM head, without the student's `[N, V]` logits.

    It is [`chunked_distill_loss_topk`] with `divergence="forward_kl"`, `teacher_tail="renormalize"` (the KL from the
    renormalised teacher top-K, `sum w (log w - log q)`), plus the per-token constant `log sum_{v in T_t} p_v`, which
    turns `log w` into the full-vocabulary `log p` of spec §2.9 and leaves the gradient unchanged.

    Args:
        student_hidden (`torch.Tensor`):
            Student final hidden states of shape `(N, H)`, on the selected teacher rollout.
        student_lm_head (`torch.Tensor`):
            Student output embedding of shape `(V, H)`.
        teacher_topk_ids (`torch.Tensor`):
            Integer tensor `(N, K)`: the teacher's top-K ids.
        teacher_topk_logprobs (`torch.Tensor`):
            Tensor `(N, K)`: their full-vocabulary log-probabilities at `temperature`.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor `(N,)`; `False` rows are not computed and give 0.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the student logits.
        chunk_size, vocab_size (*optional*):
            As in [`chunked_distill_loss_topk`].

    Returns:
        `torch.Tensor`: Per-token values of shape `(N,)`, differentiable w.r.t. `student_hidden` and `student_lm_head`.
    """
    teacher_logp_NK = teacher_topk_logprobs.detach()
    kl_N = chunked_distill_loss_topk(
        student_hidden,
        student_lm_head,
        teacher_topk_ids,
        teacher_logp_NK * temperature,  # chunked divides by T; renormalised over K, so only differences count
        divergence="forward_kl",
        temperature=temperature,
        mask=mask,
        reduction="none",
        chunk_size=chunk_size,
        vocab_size=vocab_size,
        teacher_tail="renormalize",
    )
    log_mass_N = torch.logsumexp(teacher_logp_NK.to(kl_N.dtype), dim=-1)
    return kl_N + (log_mass_N if mask is None else torch.where(mask.bool(), log_mass_N, 0.0))


def teacher_context_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = "teacher_topk_fkl",
    top_k: int = DEFAULT_TOP_K,
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_processes: int = 1,
) -> torch.Tensor:
    """
    L_T, the teacher-context loss on the selected teacher rollout (Eq. (4), spec §2.9): a token mean over `mask`.

    From hidden states, the per-token `"teacher_topk_fkl"` is [`teacher_topk_fkl_chunked`].

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)` on `(x, ŷ^T)`: the original prompt, then the selected rollout.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape, on the same tokens.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(...)`: the supervised tokens (see `selection.teacher_context_mask`).
        mode (`str`, *optional*, defaults to `"teacher_topk_fkl"`):
            `"teacher_topk_fkl"`: forward KL over the teacher's renormalised top-K ([`teacher_topk_fkl`]; the
            paper's runs, spec §2.9 and §8 item 2); `"student_topk_rkl"`: the §2.3 estimator ([`student_topk_rkl`])
            on the teacher's context.
        top_k (`int`, *optional*, defaults to `16`):
            K (spec §2.1).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides both logits (spec §2.9).
        num_items_in_batch, num_processes (*optional*):
            As in [`student_context_loss`], counting this branch's tokens.

    Returns:
        `torch.Tensor`: 0-dim loss.
    """
    _check_choice("mode", mode, TEACHER_CONTEXT_MODES)
    _check_logits(student_logits, teacher_logits, mask)
    if mode == "student_topk_rkl":
        per_token = student_topk_rkl(student_logits, teacher_logits, top_k=top_k, temperature=temperature)
    else:
        ids_K, logprobs_K = teacher_topk(teacher_logits, top_k, temperature)
        per_token = teacher_topk_fkl(student_logits, ids_K, logprobs_K, temperature=temperature)
    return global_token_mean(per_token, mask, num_items_in_batch, num_processes)  # Eq. (4), spec §8 item 9
