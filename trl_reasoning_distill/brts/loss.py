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
"""

from dataclasses import dataclass

import torch

from .._checks import check_choice as _check_choice
from ..chunked import chunked_distill_loss_topk
from ..divergence import _log_softmax, global_token_mean, reverse_kl

DEFAULT_TOP_K = 16  # spec §2.1 and §3: the code's LOG_PROB_TOP_K, for both branches and the alignment score
DEFAULT_TEACHER_CONTEXT_COEF = 0.05  # spec §2.10 and §8 item 1: the code's AUX_TEACHER_CTX_KD_COEF (paper value lost)
STUDENT_CONTEXT_ESTIMATORS = ("topk_rkl", "full_rkl")  # spec §2.3; §8 item 8 (exact reverse KL, a sanity baseline)
TEACHER_CONTEXT_MODES = ("teacher_topk_fkl", "student_topk_rkl")  # spec §2.9; §8 item 2
WEIGHT_MODES = ("student_p", "teacher_p", "none")  # spec §2.3 and §10.2: weights over the student's top-K


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise a `ValueError` unless both logits have one shape `(..., V)` and `mask` has their leading shape."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
        raise ValueError(
            f"Expected student and teacher logits of one shape (..., V) (one vocabulary), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"`mask` must have the logits' leading shape {tuple(student_logits.shape[:-1])}, got {tuple(mask.shape)}."
        )


def _check_top_k(top_k: int, vocab_size: int) -> None:
    """Raise a `ValueError` unless `1 <= top_k <= vocab_size`."""
    if not 1 <= top_k <= vocab_size:
        raise ValueError(f"`top_k` must be in [1, {vocab_size}] (the vocabulary), got {top_k}.")


def _check_ids(name: str, ids: torch.Tensor, leading: torch.Size, vocab_size: int) -> None:
    """Raise a `ValueError` unless `ids` are integer ids of shape `(*leading, K)` inside the vocabulary."""
    if ids.is_floating_point() or ids.shape[:-1] != leading or ids.dim() != len(leading) + 1 or ids.shape[-1] < 1:
        raise ValueError(
            f"`{name}` must be integer ids of shape {(*leading, 'K')}, got {ids.dtype} {tuple(ids.shape)}."
        )
    if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}), the vocabulary of the logits.")


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

    Returns:
        `torch.Tensor`: Per-token values of shape `(...)` (float32, or float64 for float64 logits).
    """
    _check_logits(student_logits, teacher_logits, None)
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
    weights_K = _topk_weights(student_logp_K, teacher_logp_K, weight_mode)  # step 3
    minus_advantage_K = weights_K * (student_logp_K.detach() - teacher_logp_K)  # step 4: -A
    ratio_K = torch.exp(student_logp_K - student_logp_K.detach())  # step 5: exactly 1, gradient ∇ log q
    return (minus_advantage_K * ratio_K).sum(dim=-1)


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
        top_k, topk_ids, weight_mode:
            As in [`student_topk_rkl`]; ignored by `"full_rkl"`.
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
        per_token = reverse_kl(student_logits, teacher_logits.detach(), temperature=temperature)
    else:
        per_token = student_topk_rkl(
            student_logits,
            teacher_logits,
            top_k=top_k,
            topk_ids=topk_ids,
            weight_mode=weight_mode,
            temperature=temperature,
        )
    return global_token_mean(per_token, mask, num_items_in_batch, num_processes)  # Eq. (3), spec §8 item 9


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
