"""VCRD: validity-calibrated reasoning distillation, as pure loss pieces.

Paper: Validity-Calibrated Reasoning Distillation (Saadi and Wang), https://huggingface.co/papers/2605.04078

    w_t = r(c_{t-1}, a^S_t) / (r(c_{t-1}, a^T_t) + ε)                                          (Eq. 1)
    L = λ_T · Σ_t w^T_t SKL_α(p ‖ q)(c^T_{t-1})  +  λ_S · Σ_t w^S_t SRKL_α(p ‖ q)(c^S_{t-1})     (Eqs. 2-4)

SKL runs on the teacher rollouts and SRKL on the student rollouts (DistiLLM-2; `divergence.skew_kl` and
`divergence.skew_reverse_kl`, the student detached inside the SRKL mixture). The weights are stop-gradient (paper
§8.2): they scale each token's update and never change its direction. Where the paper is silent we follow the VCRD
spec (shared/specs/vcrd.md): α = 0.1 from the DistiLLM-2 code (A7); a per-sequence token mean that is never divided
by Σ w (A8); the ablation rules of §2.11, with r_s − r_t left unclamped (A13). The PRM-free weight of paper §10.4 is
[`teacher_prob_weights`]. It replaces the ratio of Eq. (1) and multiplies both terms.

Shapes: `B` sequences, `T` completion tokens (logits already shifted onto them), `V` vocabulary.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_choice as _check_choice
from ..divergence import skew_kl, skew_reverse_kl

WEIGHTING_RULES = ("ratio", "difference", "student_only", "constant")
REDUCTIONS = ("seq_mean", "seq_sum")


def _check_clip(clip: tuple[float | None, float | None] | None) -> None:
    """Raise a `ValueError` unless `clip` is None or `(low, high)` with `low <= high` (either side may be None)."""
    if clip is None:
        return
    if len(clip) != 2:
        raise ValueError(f"`clip` must be a pair (min, max), got {clip!r}.")
    low, high = clip
    if low is not None and high is not None and low > high:
        raise ValueError(f"`clip` must have min <= max, got min={low} and max={high}.")


def _clip(weights: torch.Tensor, clip: tuple[float | None, float | None] | None) -> torch.Tensor:
    """`weights` clamped to `clip` (a `None` side is open)."""
    if clip is None or clip == (None, None):
        return weights
    return weights.clamp(min=clip[0], max=clip[1])


def _check_scores(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> None:
    """Raise a `ValueError` unless both score tensors have one shape and hold validities in [0, 1]."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"`student_scores` and `teacher_scores` must have the same shape, got {tuple(student_scores.shape)} and "
            f"{tuple(teacher_scores.shape)}."
        )
    for name, scores in (("student_scores", student_scores), ("teacher_scores", teacher_scores)):
        if not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError(
                f"`{name}` must hold validities in [0, 1] (fill padding with 0 or 1), got values from "
                f"{scores.min().item()} to {scores.max().item()}."
            )


def _rule_weights(r_s: torch.Tensor, r_t: torch.Tensor, eps: float, weighting_rule: str) -> torch.Tensor:
    """The raw weight of each rule of spec §2.11 (paper §4.4, §4.5, Table 10)."""
    if weighting_rule == "ratio":
        return r_s / (r_t + eps)  # Eq. (1)
    if weighting_rule == "difference":
        return r_s - r_t  # LV-Joint-(r_s − r_t): negative where the teacher's move is better (spec A13)
    if weighting_rule == "student_only":
        return r_s.clone()  # LV-Joint-r_s
    return torch.ones_like(r_s)  # w^T = w^S = 1: the DistiLLM-2 objective


def validity_weights(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    eps: float = 1e-8,
    clip: tuple[float | None, float | None] | None = None,
    *,
    weighting_rule: str = "ratio",
    disable_amplification: bool = False,
) -> torch.Tensor:
    """
    Relative-validity weights of Eq. (1), `w = r(c, a^S) / (r(c, a^T) + ε)`, without gradient.

    The numerator is always the student's proposal and the denominator the teacher's, both under the same prefix: on
    the teacher rollouts the student proposal is the alternative, on the student rollouts it is the rollout token.
    `w ≈ 1` is parity, `w < 1` attenuation, `w > 1` amplification (paper §2.2); both validities 0 give `w = 0`
    (spec A24). Order of operations (spec §2.10 step 7): rule, then `min(w, 1)`, then `clip`, then stop-gradient.

    Args:
        student_scores (`torch.Tensor`):
            `r(c, a^S)` in [0, 1], shape `(N,)` (any shape).
        teacher_scores (`torch.Tensor`):
            `r(c, a^T)` in [0, 1], same shape.
        eps (`float`, *optional*, defaults to `1e-8`):
            Smoothing ε > 0 of Eq. (1) (paper value, spec §2.5 and §3).
        clip (`tuple` or `None`, *optional*, defaults to `None`):
            `(min, max)` bounds, either side `None` for open. The paper does not clip in PRM mode (spec §2.5, A6);
            `(0.0, None)` is the optional clamp of the difference rule (spec A13).
        weighting_rule (`str`, *optional*, defaults to `"ratio"`):
            `"ratio"` (Eq. 1), `"difference"` (`r_s − r_t`), `"student_only"` (`r_s`) or `"constant"` (`1`): the
            weight rules ablated in paper Tables 5 and 10 (spec §2.11).
        disable_amplification (`bool`, *optional*, defaults to `False`):
            `w ← min(w, 1)`, the "amplification disabled" ablation of paper Fig. 3 (spec A11).

    Returns:
        `torch.Tensor`: Weights of the scores' shape (float32, or float64 for float64 scores), `requires_grad=False`.
    """
    _check_scores(student_scores, teacher_scores)
    if not eps > 0.0:
        raise ValueError(f"`eps` must be > 0 (Algorithm 1: smoothing ε > 0), got {eps}.")
    _check_choice("weighting_rule", weighting_rule, WEIGHTING_RULES)
    _check_clip(clip)
    dtype = torch.promote_types(torch.promote_types(student_scores.dtype, teacher_scores.dtype), torch.float32)
    weights = _rule_weights(student_scores.detach().to(dtype), teacher_scores.detach().to(dtype), eps, weighting_rule)
    if disable_amplification:
        weights = weights.clamp(max=1.0)
    return _clip(weights, clip)


def _check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Raise a `ValueError` unless the two logits tensors have one shape `(..., V)`."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() == 0:
        raise ValueError(
            f"Student and teacher logits must have one shape (..., V) over a shared vocabulary, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )


def teacher_prob_ratio(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, top_k: int = 128, eps: float = 1e-8
) -> torch.Tensor:
    """
    Raw PRM-free weight of paper §10.4: `w_raw = p(a^S | c) / (Σ_{i≤k} p_(i)(c)² + ε)`, `a^S = argmax_a q(a | c)`.

    The denominator is the teacher's top-k collision mass `Σ_{i≤k} p_(i)²` over its `k` largest probabilities, without
    renormalisation (spec §2.8, A12). It is at most `p_max`, so `w_raw ≥ 1` wherever the student's greedy token is the
    teacher's mode (up to ε). Teacher probabilities are taken at temperature 1 (spec A12). Ties in the student's
    argmax go to the lowest token id. No gradient.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)`; only their argmax is used.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape.
        top_k (`int`, *optional*, defaults to `128`):
            k of the collision mass (paper §10.4); `min(top_k, V)` are used.
        eps (`float`, *optional*, defaults to `1e-8`):
            Smoothing ε > 0 (paper §10.4).

    Returns:
        `torch.Tensor`: `w_raw >= 0` of shape `(...)` (float32, or float64 for float64 teacher logits).
    """
    _check_logit_pair(student_logits, teacher_logits)
    if top_k < 1 or not eps > 0.0:
        raise ValueError(f"Need `top_k` >= 1 and `eps` > 0, got top_k={top_k} and eps={eps}.")
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    teacher_logp_V = F.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
    greedy_1 = student_logits.detach().argmax(dim=-1, keepdim=True)  # a^S = argmax q (paper §10.4)
    p_greedy = teacher_logp_V.gather(-1, greedy_1).squeeze(-1).exp()
    top_p_K = teacher_logp_V.topk(min(top_k, teacher_logp_V.shape[-1]), dim=-1).values.exp()
    return p_greedy / ((top_p_K * top_p_K).sum(dim=-1) + eps)


def teacher_prob_weights(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    top_k: int = 128,
    gamma: float = 0.5,
    clip: tuple[float, float] | None = (0.5, 2.0),
    eps: float = 1e-8,
) -> torch.Tensor:
    """
    PRM-free weight of paper §4.6 / §10.4 ("VCRD-Prob"): `w = exp(clip(γ · log w_raw, log 0.5, log 2))`.

    Equivalently `w = clip(w_raw^γ, 0.5, 2)` with `w_raw` from [`teacher_prob_ratio`]. It needs no judge and no extra
    forward: it replaces the ratio of Eq. (1) and multiplies both LV-SKL and LV-SRKL, computed at each term's own
    prefixes (spec §2.8, A12). A teacher probability of 0 for the student's greedy token gives the lower bound.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(..., V)` at the prefixes being weighted.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape.
        top_k (`int`, *optional*, defaults to `128`):
            k of the collision mass (paper §10.4).
        gamma (`float`, *optional*, defaults to `0.5`):
            Smoothing exponent γ >= 0 (paper §10.4).
        clip (`tuple[float, float]` or `None`, *optional*, defaults to `(0.5, 2.0)`):
            Bounds `0 < min <= max` of `w` (paper §10.4); `None` keeps `w_raw^γ` unbounded.
        eps (`float`, *optional*, defaults to `1e-8`):
            Smoothing ε > 0 of the ratio (paper §10.4).

    Returns:
        `torch.Tensor`: Weights of shape `(...)`, without gradient (float32, or float64 for float64 teacher logits).
    """
    if not gamma >= 0.0:
        raise ValueError(f"`gamma` must be >= 0, got {gamma}.")
    if clip is not None and not 0.0 < clip[0] <= clip[1]:
        raise ValueError(f"`clip` must be (min, max) with 0 < min <= max, got {clip!r}.")
    ratio = teacher_prob_ratio(student_logits, teacher_logits, top_k=top_k, eps=eps)
    log_weight = gamma * ratio.log().clamp_min(torch.finfo(ratio.dtype).min)  # finite at w_raw = 0, so γ = 0 gives 1
    if clip is not None:
        log_weight = log_weight.clamp(math.log(clip[0]), math.log(clip[1]))
    return log_weight.exp()


def _check_weights_and_mask(weights: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise a `ValueError` unless `weights` and `mask` share one `(B, T)` shape."""
    if weights.dim() != 2 or weights.shape != mask.shape:
        raise ValueError(
            f"`weights` and `mask` must share one (B, T) shape, got {tuple(weights.shape)} and {tuple(mask.shape)}."
        )


def vcrd_token_coefficients(
    weights: torch.Tensor, mask: torch.Tensor, *, coef: float = 1.0, reduction: str = "seq_mean"
) -> torch.Tensor:
    """
    Per-token coefficients `c` such that `Σ_bt c_bt d_bt = coef · (1/B) Σ_b ℓ_b` for any per-token divergence `d`.

    `ℓ_b = Σ_t w_bt d_bt M_bt / Σ_t M_bt` (`"seq_mean"`, default; spec A8: DistiLLM-2's per-sequence token mean,
    never divided by Σ w) or `Σ_t w_bt d_bt M_bt` (`"seq_sum"`, Algorithm 1's Σ_t); then the batch mean of Eq. (4).
    A row without valid tokens gives `ℓ_b = 0` and still counts in `B`. Pass `c` as `token_weights` of
    `chunked.chunked_distill_loss` (its `"sum"` reduction) to get the same term without full logits.

    Args:
        weights (`torch.Tensor`):
            Validity weights `w` of shape `(B, T)`; detached here (stop-gradient, paper §8.2).
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: completion tokens (`labels != -100`).
        coef (`float`, *optional*, defaults to `1.0`):
            Factor in front of the term, e.g. λ_T or λ_S.
        reduction (`str`, *optional*, defaults to `"seq_mean"`):
            `"seq_mean"` or `"seq_sum"`.

    Returns:
        `torch.Tensor`: Coefficients of shape `(B, T)`, zero on masked tokens, without gradient.
    """
    _check_weights_and_mask(weights, mask)
    _check_choice("reduction", reduction, REDUCTIONS)
    valid_BT = mask.bool()
    weights_BT = torch.where(valid_BT, weights.detach(), 0.0)  # w = 0 where M = 0 (spec §2.10 step 7)
    if reduction == "seq_mean":
        weights_BT = weights_BT / valid_BT.sum(dim=-1, keepdim=True).clamp_min(1)
    return coef * weights_BT / max(weights_BT.shape[0], 1)


def weight_stats(
    weights: torch.Tensor, mask: torch.Tensor, clip: tuple[float | None, float | None] | None = None
) -> dict[str, torch.Tensor]:
    """
    Logging statistics of the weights over valid tokens (spec §2.10 step 10); all 0 when no token is valid.

    Keys: `mean`, `std` (population), `max`, `min`, `ge1_frac` (`w >= 1`; paper Fig. 1 reports 28.8 % of
    `r_S / r_T >= 1`), `zero_frac` (`w = 0`, e.g. both validities 0, spec A24) and, with `clip`, `clipped_frac`
    (weights sitting on a bound).

    Args:
        weights (`torch.Tensor`):
            Weights of shape `(B, T)`.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`.
        clip (`tuple` or `None`, *optional*, defaults to `None`):
            The `(min, max)` bounds the weights were clipped to, either side `None`.

    Returns:
        `dict[str, torch.Tensor]`: Detached 0-dim tensors.
    """
    _check_weights_and_mask(weights, mask)
    valid_BT, weights_BT = mask.bool(), weights.detach()
    count, nonempty = valid_BT.sum().clamp_min(1), valid_BT.any()
    mean = torch.where(valid_BT, weights_BT, 0.0).sum() / count
    variance = torch.where(valid_BT, (weights_BT - mean) ** 2, 0.0).sum() / count
    stats = {
        "mean": mean,
        "std": variance.sqrt(),
        "max": torch.where(nonempty, torch.where(valid_BT, weights_BT, -math.inf).amax(), 0.0),
        "min": torch.where(nonempty, torch.where(valid_BT, weights_BT, math.inf).amin(), 0.0),
        "ge1_frac": (valid_BT & (weights_BT >= 1.0)).sum() / count,
        "zero_frac": (valid_BT & (weights_BT == 0.0)).sum() / count,
    }
    if clip is not None:
        low = weights_BT <= clip[0] if clip[0] is not None else torch.zeros_like(valid_BT)
        high = weights_BT >= clip[1] if clip[1] is not None else torch.zeros_like(valid_BT)
        stats["clipped_frac"] = (valid_BT & (low | high)).sum() / count
    return stats


@dataclass(frozen=True)
class VCRDOutput:
    """
    Output of [`vcrd_loss`].

    Attributes:
        loss (`torch.Tensor`): `λ_T · lv_skl + λ_S · lv_srkl` (Eq. 4), 0-dim, differentiable.
        lv_skl (`torch.Tensor`): L_LV-SKL of Eq. (3) on the teacher rollouts, batch mean, without λ_T.
        lv_srkl (`torch.Tensor`): L_LV-SRKL of Eq. (3) on the student rollouts, batch mean, without λ_S.
        metrics (`dict[str, torch.Tensor]`): Detached statistics: `teacher_weight_<stat>` and `student_weight_<stat>`
            for every stat of [`weight_stats`], and `skl_mean` / `srkl_mean`, the unweighted mean divergences.
    """

    loss: torch.Tensor
    lv_skl: torch.Tensor
    lv_srkl: torch.Tensor
    metrics: dict[str, torch.Tensor]


def _check_half(name: str, student_logits, teacher_logits, mask, weights) -> None:
    """Raise a `ValueError` unless one rollout family's tensors have shapes `(B, T, V)` and `(B, T)`."""
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`{name}_student_logits` and `{name}_teacher_logits` must share one (B, T, V) shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if mask.shape != student_logits.shape[:-1] or weights.shape != mask.shape:
        raise ValueError(
            f"`{name}_mask` and `{name}_weights` must have shape {tuple(student_logits.shape[:-1])}, got "
            f"{tuple(mask.shape)} and {tuple(weights.shape)}."
        )


def _weighted_term(divergence_BT, weights_BT, mask_BT, reduction) -> torch.Tensor:
    """Eq. (3) reduced as in [`vcrd_token_coefficients`]; masked tokens contribute exactly 0, even if not finite."""
    coef_BT = vcrd_token_coefficients(weights_BT, mask_BT, reduction=reduction)
    return torch.where(mask_BT.bool(), coef_BT * divergence_BT, 0.0).sum()


def _unweighted_mean(divergence_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Detached mean divergence over valid tokens, for logging."""
    valid_BT = mask_BT.bool()
    return torch.where(valid_BT, divergence_BT.detach(), 0.0).sum() / valid_BT.sum().clamp_min(1)


def vcrd_loss(
    skl_student_logits: torch.Tensor,
    skl_teacher_logits: torch.Tensor,
    skl_mask: torch.Tensor,
    skl_weights: torch.Tensor,
    srkl_student_logits: torch.Tensor,
    srkl_teacher_logits: torch.Tensor,
    srkl_mask: torch.Tensor,
    srkl_weights: torch.Tensor,
    *,
    alpha: float = 0.1,
    lambda_teacher: float = 1.0,
    lambda_student: float = 1.0,
    reduction: str = "seq_mean",
) -> VCRDOutput:
    """
    VCRD objective, Eqs. (2)-(4): `λ_T · L_LV-SKL + λ_S · L_LV-SRKL` with stop-gradient validity weights.

    `skl_*` are the tensors on the teacher rollouts (prefixes `c^T`, weights `w^T`), which feed
    `SKL_α = KL(p ‖ α p + (1 − α) q)`. `srkl_*` are those on the student rollouts (prefixes `c^S`, weights `w^S`),
    which feed `SRKL_α = KL(q ‖ (1 − α) p + α q)`, with `q` detached inside the mixture (DistiLLM-2). Weights on
    masked tokens are ignored. With `w ≡ 1`, `λ = (1, 1)` and `"seq_mean"` this is the DistiLLM-2 loss (spec A15).
    `α = 0` gives forward KL and reverse KL. The teacher receives no gradient.

    Args:
        skl_student_logits (`torch.Tensor`):
            Student logits `q(·|c^T)` on the teacher rollouts, shape `(B, T, V)`, shifted onto the completion.
        skl_teacher_logits (`torch.Tensor`):
            Teacher logits `p(·|c^T)`, same shape.
        skl_mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: teacher-completion tokens.
        skl_weights (`torch.Tensor`):
            `w^T` of shape `(B, T)`, e.g. from [`validity_weights`] or [`teacher_prob_weights`].
        srkl_student_logits (`torch.Tensor`):
            Student logits `q(·|c^S)` on the student rollouts, shape `(B', T', V)`.
        srkl_teacher_logits (`torch.Tensor`):
            Teacher logits `p(·|c^S)`, same shape.
        srkl_mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B', T')`: student-completion tokens.
        srkl_weights (`torch.Tensor`):
            `w^S` of shape `(B', T')`.
        alpha (`float`, *optional*, defaults to `0.1`):
            Skew α in [0, 1] of both terms; not in the paper, DistiLLM-2 code value (spec §2.6, A7).
        lambda_teacher (`float`, *optional*, defaults to `1.0`):
            λ_T >= 0 (paper §10.2: 1 for Qwen2.5-Math, 2 for Qwen2-Math, code and IF).
        lambda_student (`float`, *optional*, defaults to `1.0`):
            λ_S >= 0 (paper §10.2: 1 for Qwen2.5-Math, 1.5 for Qwen2-Math, 1 for code, 2 or 1 for IF).
        reduction (`str`, *optional*, defaults to `"seq_mean"`):
            Token reduction per sequence, see [`vcrd_token_coefficients`] (spec A8).

    Returns:
        [`VCRDOutput`]: The loss (float32, or float64 for float64 logits), its two terms and logging metrics.
    """
    _check_half("skl", skl_student_logits, skl_teacher_logits, skl_mask, skl_weights)
    _check_half("srkl", srkl_student_logits, srkl_teacher_logits, srkl_mask, srkl_weights)
    _check_choice("reduction", reduction, REDUCTIONS)
    if not (lambda_teacher >= 0.0 and lambda_student >= 0.0):
        raise ValueError(f"λ must be >= 0, got lambda_teacher={lambda_teacher} and lambda_student={lambda_student}.")
    skl_BT = skew_kl(skl_student_logits, skl_teacher_logits.detach(), alpha=alpha)  # Eq. (2) on c^T
    srkl_BT = skew_reverse_kl(srkl_student_logits, srkl_teacher_logits.detach(), alpha=alpha)  # Eq. (2) on c^S
    lv_skl = _weighted_term(skl_BT, skl_weights, skl_mask, reduction)  # Eq. (3)
    lv_srkl = _weighted_term(srkl_BT, srkl_weights, srkl_mask, reduction)
    metrics = {f"teacher_weight_{k}": v for k, v in weight_stats(skl_weights, skl_mask).items()}
    metrics |= {f"student_weight_{k}": v for k, v in weight_stats(srkl_weights, srkl_mask).items()}
    metrics |= {"skl_mean": _unweighted_mean(skl_BT, skl_mask), "srkl_mean": _unweighted_mean(srkl_BT, srkl_mask)}
    return VCRDOutput(lambda_teacher * lv_skl + lambda_student * lv_srkl, lv_skl, lv_srkl, metrics)  # Eq. (4)
