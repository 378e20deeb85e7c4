"""Naive float64 references, written from the equations with explicit probabilities and loops over positions.

They never import `trl_reasoning_distill` and never share code with it: each one restates the definition as plainly as
possible, so a test that compares the package against them checks the maths, not a copy of it. Speed does not
matter here. One section per package module; add new references under the section of the module they check.
"""

import torch

# ---------------------------------------------------------------------------------------------------------------------
# divergence.py: per-token divergences between a student q = softmax(s / T) and a teacher p = softmax(t / T).
# Inputs are logits of shape (B, T, V) without -inf entries; outputs have shape (B, T); gradients flow by autograd.
# ---------------------------------------------------------------------------------------------------------------------


def _probs(logits_V: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of one row of logits, written out: exp(z_v) / sum_u exp(z_u)."""
    z_V = logits_V.double() / temperature
    e_V = torch.exp(z_V - z_V.max().detach())  # shifting by a constant leaves the ratio unchanged
    return e_V / e_V.sum()


def _kl(p_V: torch.Tensor, q_V: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v log(p_v / q_v)."""
    return (p_V * torch.log(p_V / q_V)).sum()


def _per_position(student_logits, teacher_logits, temperature, fn):
    """Apply `fn(q, p)` to every position (b, t) of a pair of (B, T, V) logits; returns (B, T) float64."""
    B, T, _ = student_logits.shape
    rows = []
    for b in range(B):
        for t in range(T):
            q_V = _probs(student_logits[b, t], temperature)
            p_V = _probs(teacher_logits[b, t], temperature)
            rows.append(fn(q_V, p_V))
    return torch.stack(rows).reshape(B, T)


def forward_kl_ref(student_logits, teacher_logits, temperature=1.0):
    """KL(p || q)."""
    return _per_position(student_logits, teacher_logits, temperature, lambda q, p: _kl(p, q))


def reverse_kl_ref(student_logits, teacher_logits, temperature=1.0):
    """KL(q || p)."""
    return _per_position(student_logits, teacher_logits, temperature, lambda q, p: _kl(q, p))


def generalized_jsd_ref(student_logits, teacher_logits, beta, temperature=1.0):
    """GKD Eq. (1), TRL convention: KL(p||q) at beta=0, KL(q||p) at beta=1, else beta KL(p||m) + (1-beta) KL(q||m)."""

    def jsd(q, p):
        if beta == 0:
            return _kl(p, q)
        if beta == 1:
            return _kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)

    return _per_position(student_logits, teacher_logits, temperature, jsd)


def skew_kl_ref(student_logits, teacher_logits, alpha, temperature=1.0):
    """DistiLLM-2 SKL: KL(p || alpha p + (1 - alpha) q), gradient through q inside the mixture."""
    return _per_position(student_logits, teacher_logits, temperature, lambda q, p: _kl(p, alpha * p + (1 - alpha) * q))


def skew_reverse_kl_ref(student_logits, teacher_logits, alpha, temperature=1.0):
    """DistiLLM-2 SRKL: KL(q || (1 - alpha) p + alpha q), with q detached inside the mixture (DistiLLM-2 code)."""
    return _per_position(
        student_logits, teacher_logits, temperature, lambda q, p: _kl(q, (1 - alpha) * p + alpha * q.detach())
    )


def tvd_ref(student_logits, teacher_logits, temperature=1.0):
    """Total variation: 0.5 sum_v |p_v - q_v|."""
    return _per_position(student_logits, teacher_logits, temperature, lambda q, p: 0.5 * (p - q).abs().sum())


def entropy_ref(logits, temperature=1.0):
    """Shannon entropy -sum_v q_v log q_v of q = softmax(logits / T), per position."""
    return _per_position(logits, logits, temperature, lambda q, _: -(q * torch.log(q)).sum())


def masked_mean_ref(values, mask, num_items_in_batch=None):
    """sum_i values_i mask_i / N, N = num_items_in_batch or sum_i mask_i; 0 when N = 0."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0.0
    for value, weight in zip(values.double().flatten(), mask.double().flatten(), strict=True):
        total = total + value * weight
        count += float(weight)
    count = count if num_items_in_batch is None else float(num_items_in_batch)
    return total / count if count > 0 else total * 0.0
