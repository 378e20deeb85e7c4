"""Per-token divergences between a student and a teacher next-token distribution, and the reductions that average them.

Papers:
    GKD, On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes,
    https://huggingface.co/papers/2306.13649 (generalized JSD, Eq. (1)).
    DistiLLM-2, A Contrastive Approach Boosts the Distillation of LLMs,
    https://huggingface.co/papers/2503.07067 (skew KL and skew reverse KL).

Notation: `p` is the teacher distribution `softmax(teacher_logits / T)`, `q` the student distribution
`softmax(student_logits / T)`. Every divergence takes logits of shape `[..., V]` and returns one value per position,
shape `[...]`. The suffix `_V` marks a tensor of shape `[..., V]` (any leading dimensions, vocabulary last).

Conventions shared by every function:
    - Computed in log space in float32 or wider: bf16/fp16 inputs are upcast and give float32, float64 gives float64.
    - Masked vocabulary entries (`-inf` logits) have probability 0 and contribute `0 · log 0 = 0`, with finite
      gradients. Their log-probabilities are floored at the dtype's most negative finite value, so no `inf - inf`
      reaches the forward or the backward pass.
    - `temperature` divides the logits before the softmax. The result is NOT rescaled by `T²` (Hinton et al.); a
      caller that wants the usual gradient scale multiplies by `temperature**2` itself.
"""

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl", "tvd")


def _check_unit_interval(name: str, value: float) -> None:
    """Raise a `ValueError` naming `name` unless `0 <= value <= 1`."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value}.")


def _log_softmax(logits_V: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """`log softmax(logits / T)` in `dtype`, with `-inf` entries floored at the most negative finite value."""
    logp_V = F.log_softmax(logits_V.to(dtype) / temperature, dim=-1)
    return logp_V.clamp_min(torch.finfo(dtype).min)


def _student_teacher_log_probs(
    student_logits_V: torch.Tensor, teacher_logits_V: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the pair of logits and return `(log q, log p)`, both of shape `[..., V]`."""
    if student_logits_V.shape[-1] != teacher_logits_V.shape[-1]:
        raise ValueError(
            f"Student and teacher vocabulary sizes differ: student has {student_logits_V.shape[-1]}, teacher has "
            f"{teacher_logits_V.shape[-1]}. Slice the logits to a shared vocabulary first."
        )
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    dtype = torch.promote_types(torch.promote_types(student_logits_V.dtype, teacher_logits_V.dtype), torch.float32)
    student_logp_V = _log_softmax(student_logits_V, temperature, dtype)
    teacher_logp_V = _log_softmax(teacher_logits_V, temperature, dtype)
    return student_logp_V, teacher_logp_V


def _kl(logp_V: torch.Tensor, logq_V: torch.Tensor) -> torch.Tensor:
    """`KL(p || q) = sum_v p_v (log p_v - log q_v)` from log-probabilities; returns shape `[...]`."""
    return (logp_V.exp() * (logp_V - logq_V)).sum(dim=-1)


def _log_mixture(logp_V: torch.Tensor, logq_V: torch.Tensor, weight: float) -> torch.Tensor:
    """`log(weight · p + (1 - weight) · q)` from log-probabilities; exact and differentiable at weight 0 and 1."""
    log_weight = math.log(weight) if weight > 0.0 else -math.inf
    log_complement = math.log1p(-weight) if weight < 1.0 else -math.inf
    return torch.logaddexp(logp_V + log_weight, logq_V + log_complement)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    Forward KL `KL(p || q) = sum_v p_v log(p_v / q_v)` (teacher-weighted, mode-covering).

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]` (float32, or float64 for float64 inputs).
    """
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    return _kl(teacher_logp_V, student_logp_V)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    Reverse KL `KL(q || p) = sum_v q_v log(q_v / p_v)` (student-weighted, mode-seeking).

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]` (float32, or float64 for float64 inputs).
    """
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    return _kl(student_logp_V, teacher_logp_V)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """
    Generalized Jensen-Shannon divergence, Eq. (1) of https://huggingface.co/papers/2306.13649, in TRL's convention.

    `beta · KL(p || m) + (1 - beta) · KL(q || m)` with `m = beta · p + (1 - beta) · q`. As in TRL's
    `GKDTrainer.generalized_jsd_loss`, the endpoints are the KL divergences themselves (not the vanishing limit of the
    formula): `beta = 0` gives exactly [`forward_kl`], `beta = 1` exactly [`reverse_kl`].

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        beta (`float`, *optional*, defaults to `0.5`):
            Interpolation coefficient β in `[0, 1]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]` (float32, or float64 for float64 inputs).
    """
    _check_unit_interval("beta", beta)
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    if beta == 0.0:
        return _kl(teacher_logp_V, student_logp_V)
    if beta == 1.0:
        return _kl(student_logp_V, teacher_logp_V)
    mixture_logp_V = _log_mixture(teacher_logp_V, student_logp_V, beta)
    return beta * _kl(teacher_logp_V, mixture_logp_V) + (1.0 - beta) * _kl(student_logp_V, mixture_logp_V)


def skew_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """
    Skew KL of DistiLLM-2 (https://huggingface.co/papers/2503.07067): `KL(p || alpha · p + (1 - alpha) · q)`.

    The gradient flows through `q` inside the mixture. `alpha = 0` gives exactly [`forward_kl`].

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        alpha (`float`, *optional*, defaults to `0.1`):
            Skew coefficient α in `[0, 1]` (DistiLLM-2 code default).
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]` (float32, or float64 for float64 inputs).
    """
    _check_unit_interval("alpha", alpha)
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    return _kl(teacher_logp_V, _log_mixture(teacher_logp_V, student_logp_V, alpha))


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """
    Skew reverse KL of DistiLLM-2 (https://huggingface.co/papers/2503.07067): `KL(q || (1 - alpha) · p + alpha · q)`.

    As in the DistiLLM-2 code, the student is detached inside the mixture: the gradient flows only through the
    leading `q` of `sum_v q_v (log q_v - log m_v)`. `alpha = 0` gives exactly [`reverse_kl`].

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        alpha (`float`, *optional*, defaults to `0.1`):
            Skew coefficient α in `[0, 1]` (DistiLLM-2 code default).
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]` (float32, or float64 for float64 inputs).
    """
    _check_unit_interval("alpha", alpha)
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    mixture_logp_V = _log_mixture(teacher_logp_V, student_logp_V.detach(), 1.0 - alpha)
    return _kl(student_logp_V, mixture_logp_V)


def tvd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    Total variation distance `0.5 · sum_v |p_v - q_v|`, in `[0, 1]`.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits.

    Returns:
        `torch.Tensor`: Per-position distance of shape `[...]` (float32, or float64 for float64 inputs).
    """
    student_logp_V, teacher_logp_V = _student_teacher_log_probs(student_logits, teacher_logits, temperature)
    return 0.5 * (teacher_logp_V.exp() - student_logp_V.exp()).abs().sum(dim=-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    Shannon entropy `-sum_v q_v log q_v` of `q = softmax(logits / temperature)`, in nats.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `[..., V]`; `-inf` entries are masked and contribute 0.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature.

    Returns:
        `torch.Tensor`: Per-position entropy of shape `[...]` (float32, or float64 for float64 inputs).
    """
    if not temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    logp_V = _log_softmax(logits, temperature, torch.promote_types(logits.dtype, torch.float32))
    return -(logp_V.exp() * logp_V).sum(dim=-1)


def per_token_divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Per-position divergence selected by name; `beta` reaches only `generalized_jsd`, `alpha` only the skew ones.

    Args:
        name (`str`):
            One of [`DIVERGENCES`].
        student_logits (`torch.Tensor`):
            Student logits of shape `[..., V]`.
        teacher_logits (`torch.Tensor`):
            Teacher logits of shape `[..., V]`.
        beta (`float`, *optional*, defaults to `0.5`):
            β of [`generalized_jsd`].
        alpha (`float`, *optional*, defaults to `0.1`):
            α of [`skew_kl`] and [`skew_reverse_kl`].
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature applied to both logits; no `T²` rescaling.

    Returns:
        `torch.Tensor`: Per-position divergence of shape `[...]`.
    """
    if name == "generalized_jsd":
        return generalized_jsd(student_logits, teacher_logits, beta=beta, temperature=temperature)
    if name == "skew_kl":
        return skew_kl(student_logits, teacher_logits, alpha=alpha, temperature=temperature)
    if name == "skew_reverse_kl":
        return skew_reverse_kl(student_logits, teacher_logits, alpha=alpha, temperature=temperature)
    if name == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature=temperature)
    if name == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature=temperature)
    if name == "tvd":
        return tvd(student_logits, teacher_logits, temperature=temperature)
    raise ValueError(f"Unknown divergence {name!r}; expected one of {', '.join(DIVERGENCES)}.")


def _divide_by_count(total: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """`total / count`, with a count of 0 read as 1 so that an empty batch gives 0, not NaN (no device sync)."""
    if isinstance(count, torch.Tensor):
        return total / count.to(total.device).clamp_min(1)
    return total / max(count, 1)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Sum of `values * mask`. Positions where `mask` is 0 are skipped, so a non-finite value there cannot leak in.

    Args:
        values (`torch.Tensor`):
            Per-token values, e.g. of shape `(B, T)`.
        mask (`torch.Tensor`):
            Bool or float tensor broadcastable to `values`: a 0/1 mask or per-token weights.

    Returns:
        `torch.Tensor`: 0-dim tensor.
    """
    weights = mask.to(values.dtype)
    return torch.where(weights != 0, values * weights, 0.0).sum()


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """
    Token mean `sum(values * mask) / N`, with `N = num_items_in_batch` if given, else `mask.sum()`.

    An all-masked batch gives 0, not NaN. With per-token weights, multiply them into `values` and pass the 0/1 loss
    mask as `mask`, so that the denominator counts tokens instead of summing weights.

    Args:
        values (`torch.Tensor`):
            Per-token values, e.g. of shape `(B, T)`.
        mask (`torch.Tensor`):
            Bool or 0/1 float tensor broadcastable to `values`.
        num_items_in_batch (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Denominator to use instead of `mask.sum()`, e.g. the token count of the whole accumulated batch.

    Returns:
        `torch.Tensor`: 0-dim tensor.
    """
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return _divide_by_count(masked_sum(values, mask), count)


def global_token_mean(
    values: torch.Tensor, mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None, num_processes: int = 1
) -> torch.Tensor:
    """
    This process's share of the mean over all loss tokens of the global batch, correct under gradient accumulation
    and DDP.

    Let `N = num_items_in_batch` be the number of loss tokens over the whole global batch (every accumulation
    micro-batch on every process) and `S_pk` the masked sum of micro-batch `k` on process `p`. The target is
    `L = (1 / N) · sum_pk S_pk`. The trainer sums gradients over micro-batches (no division by the number of
    accumulation steps) and DDP averages them over the `P = num_processes` processes, so returning
    `S_pk · P / N` gives `(1 / P) · sum_p sum_k P · grad(S_pk) / N = grad(L)`. A count of 0 gives 0, not NaN.

    Args:
        values (`torch.Tensor`):
            Per-token values of this micro-batch, e.g. of shape `(B, T)`.
        mask (`torch.Tensor`):
            Bool or float tensor broadcastable to `values` (0/1 mask or per-token weights).
        num_items_in_batch (`int` or `torch.Tensor`):
            Loss-token count of the whole global batch (all micro-batches, all processes); `None` (evaluation, a
            direct call) gives the mean over this micro-batch's mask, `masked_mean(values, mask)`.
        num_processes (`int`, *optional*, defaults to `1`):
            Number of data-parallel processes whose gradients are averaged.

    Returns:
        `torch.Tensor`: 0-dim tensor.
    """
    if num_items_in_batch is None:
        return masked_mean(values, mask)
    return _divide_by_count(masked_sum(values, mask) * num_processes, num_items_in_batch)
