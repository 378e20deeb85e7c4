"""Per-chunk maths of `chunked.py`, in place on `[C, V]` buffers: log-softmax, each divergence's value and its
gradient w.r.t. the log-probabilities, the logit gradient, the projections through the LM heads, and the top-k
teacher's buckets, and each loss term as a chunk function of `_chunk_driver.py` (`_dense_chunk`, `_nll_chunk`,
`_topk_chunk`). `q` is the student distribution, `p` the teacher's (both tempered).

Each `_*_terms(logq, q, logp, p, spec)` returns `(value_C, a_CV, a_scale, a_sum_C)`: the per-token divergence and
`a = a_scale · a_CV = d divergence / d log q` (with `a_sum_C = sum_v a`), from which the gradient w.r.t. the logits is
`a - q · sum_v a`. They may overwrite every buffer but `q`, and never return `a_CV` in the buffer of `logp`, which the
entropy's gradient then uses as scratch.
"""

import math

import torch

from .divergence import per_token_divergence


def _log_softmax_(logits_CV: torch.Tensor, probs_CV: torch.Tensor) -> None:
    """In place: `logits_CV` becomes `log softmax(logits_CV)`, and `probs_CV` receives `softmax(logits_CV)`."""
    logits_CV.sub_(logits_CV.amax(dim=-1, keepdim=True))
    torch.exp(logits_CV, out=probs_CV)
    total_C1 = probs_CV.sum(dim=-1, keepdim=True)
    logits_CV.sub_(total_C1.log())
    probs_CV.div_(total_C1)


def _rowdot(x_CV: torch.Tensor, y_CV: torch.Tensor) -> torch.Tensor:
    """`sum_v x[c, v] · y[c, v]`, shape `(C,)`, without a `[C, V]` temporary."""
    return torch.bmm(x_CV.unsqueeze(1), y_CV.unsqueeze(2)).view(-1)


def _log_mixture_(p_CV: torch.Tensor, q_CV: torch.Tensor, weight: float) -> torch.Tensor:
    """In place: `p_CV` becomes `log(weight · p + (1 - weight) · q)` (`0 < weight`), floored at the smallest normal
    number. The floor only bites where both `p` and `q` are below it, where every term using the mixture is < 1e-36."""
    p_CV.mul_(weight).add_(q_CV, alpha=1.0 - weight)
    return p_CV.clamp_min_(torch.finfo(p_CV.dtype).tiny).log_()


def _forward_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    value_C = _rowdot(p_CV, logp_CV.sub_(logq_CV))  # sum p (log p - log q)
    return value_C, p_CV, -1.0, -p_CV.sum(dim=-1)  # a = -p


def _reverse_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    a_CV = logq_CV.sub_(logp_CV).mul_(q_CV)  # q (log q - log p)
    a_sum_C = a_CV.sum(dim=-1)
    return a_sum_C, a_CV, 1.0, a_sum_C


def _generalized_jsd_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    beta = spec.beta
    if beta == 0.0:
        return _forward_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec)
    if beta == 1.0:
        return _reverse_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec)
    logm_CV = _log_mixture_(p_CV, q_CV, beta)  # m = beta p + (1 - beta) q, in the buffer of p
    a_CV = logq_CV.sub_(logm_CV).mul_(q_CV)  # d KL(q || m) / d log q, the p-term's share included
    log_ratio_CV = logp_CV.sub_(logm_CV)  # log(p / m)
    p_CV = logm_CV.add_(log_ratio_CV).exp_()  # p again, from log p = log(p / m) + log m
    a_sum_C = (1.0 - beta) * a_CV.sum(dim=-1)
    return beta * _rowdot(p_CV, log_ratio_CV) + a_sum_C, a_CV, 1.0 - beta, a_sum_C


def _skew_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    alpha = spec.alpha
    if alpha == 0.0:
        return _forward_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec)
    logr_CV = _log_mixture_(p_CV, q_CV, alpha)  # r = alpha p + (1 - alpha) q, in the buffer of p
    log_ratio_CV = logp_CV.sub_(logr_CV)  # log(p / r)
    ratio_CV = torch.exp(log_ratio_CV, out=logq_CV)  # log q is not needed: reuse its buffer
    p_CV = logr_CV.add_(log_ratio_CV).exp_()
    a_CV = ratio_CV.mul_(q_CV)  # a = -(1 - alpha) q p / r
    return _rowdot(p_CV, log_ratio_CV), a_CV, -(1.0 - alpha), -(1.0 - alpha) * a_CV.sum(dim=-1)


def _skew_reverse_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    alpha = spec.alpha
    if alpha == 0.0:
        return _reverse_kl_terms(logq_CV, q_CV, logp_CV, p_CV, spec)
    logr_CV = _log_mixture_(p_CV, q_CV, 1.0 - alpha)  # r = (1 - alpha) p + alpha q, held constant
    a_CV = logq_CV.sub_(logr_CV).mul_(q_CV)
    a_sum_C = a_CV.sum(dim=-1)
    return a_sum_C, a_CV, 1.0, a_sum_C


def _tvd_terms(logq_CV, q_CV, logp_CV, p_CV, spec):
    diff_CV = torch.sub(q_CV, p_CV, out=logq_CV)  # log q is not needed: reuse its buffer
    sign_CV = torch.sign(diff_CV, out=p_CV)  # sign(0) = 0, as autograd's gradient of |x| at 0
    value_C = 0.5 * _rowdot(sign_CV, diff_CV)
    a_CV = sign_CV.mul_(q_CV)  # a = 0.5 q sign(q - p)
    return value_C, a_CV, 0.5, 0.5 * a_CV.sum(dim=-1)


_TERMS = {
    "forward_kl": _forward_kl_terms,
    "reverse_kl": _reverse_kl_terms,
    "generalized_jsd": _generalized_jsd_terms,
    "skew_kl": _skew_kl_terms,
    "skew_reverse_kl": _skew_reverse_kl_terms,
    "tvd": _tvd_terms,
}


def _dense_logit_grad_(a_CV, a_scale, a_sum_C, q_CV, coef_C, entropy_coef_C, entropy_C, scratch_CV):
    """Gradient of `sum_c coef_c d_c + entropy_coef_c H_c` w.r.t. the tempered student logits, written into `a_CV`."""
    grad_CV = a_CV.mul_((coef_C * a_scale).unsqueeze(1))
    row_C = coef_C * a_sum_C
    if entropy_coef_C is not None:  # d H / d log q = -q log q, summing to H
        grad_CV.addcmul_(torch.special.xlogy(q_CV, q_CV, out=scratch_CV), entropy_coef_C.unsqueeze(1), value=-1.0)
        row_C = row_C + entropy_coef_C * entropy_C
    return grad_CV.addcmul_(q_CV, row_C.unsqueeze(1), value=-1.0)


def _low_precision_cuda(hidden_CH: torch.Tensor, head_VH: torch.Tensor) -> bool:
    """True where `torch.mm(..., out_dtype=torch.float32)` multiplies half-precision inputs without upcasting them."""
    half = (torch.bfloat16, torch.float16)
    return hidden_CH.device.type == "cuda" and hidden_CH.dtype == head_VH.dtype and hidden_CH.dtype in half


def _matmul_head(head_VH: torch.Tensor, hidden_NH: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The lm_head as the matmuls use it: upcast once to the compute dtype, except on the half-precision CUDA path."""
    return head_VH if head_VH.dtype == dtype or _low_precision_cuda(hidden_NH, head_VH) else head_VH.to(dtype)


def _project(out_CV: torch.Tensor, hidden_CH: torch.Tensor, head_VH: torch.Tensor, temperature: float) -> None:
    """`out = hidden @ head.T / temperature` into the compute-dtype buffer `out_CV`."""
    if _low_precision_cuda(hidden_CH, head_VH):
        torch.mm(hidden_CH, head_VH.t(), out_dtype=out_CV.dtype, out=out_CV)
        if temperature != 1.0:
            out_CV.div_(temperature)
        return
    torch.mm(hidden_CH.to(out_CV.dtype) / temperature, head_VH.t(), out=out_CV)


def _backproject(grad_CV, hidden_CH, head_VH, grad_hidden_CH, grad_head_VH) -> None:
    """`grad_hidden = grad @ head` and `grad_head += grad.T @ hidden`, accumulated in the compute dtype."""
    if _low_precision_cuda(hidden_CH, head_VH):
        grad_CV = grad_CV.to(head_VH.dtype)
        if grad_hidden_CH is not None:
            torch.mm(grad_CV, head_VH, out_dtype=grad_hidden_CH.dtype, out=grad_hidden_CH)
        if grad_head_VH is not None:
            torch.addmm(grad_head_VH, grad_CV.t(), hidden_CH, out_dtype=grad_head_VH.dtype, out=grad_head_VH)
        return
    if grad_hidden_CH is not None:
        torch.mm(grad_CV, head_VH, out=grad_hidden_CH)
    if grad_head_VH is not None:
        grad_head_VH.addmm_(grad_CV.t(), hidden_CH.to(grad_CV.dtype))


def _student_buckets(logq_CV: torch.Tensor, q_CV: torch.Tensor, ids_CK: torch.Tensor, floor: float):
    """Student log-probabilities of the K top-k tokens and of the rest, `[C, K + 1]`, and the mass of the rest."""
    tail_C = (1.0 - q_CV.gather(1, ids_CK).sum(dim=-1)).clamp_min(floor)
    return torch.cat([logq_CV.gather(1, ids_CK), tail_C.log().unsqueeze(1)], dim=1), tail_C


def _teacher_buckets(logprobs_CK: torch.Tensor, tail: str, temperature: float, floor: float) -> torch.Tensor:
    """Teacher log-probabilities (up to normalisation) of the K + 1 buckets; `-inf` marks an empty bucket."""
    if tail == "renormalize":
        empty_C1 = torch.full_like(logprobs_CK[:, :1], -math.inf)
        return torch.cat([logprobs_CK / temperature, empty_C1], dim=1)
    tail_C = (1.0 - logprobs_CK.exp().sum(dim=-1)).clamp_min(floor)
    return torch.cat([logprobs_CK, tail_C.log().unsqueeze(1)], dim=1)


def _topk_logit_grad_(logq_CV, q_CV, ids_CK, gamma_CB, tail_C, entropy_coef_C, entropy_C):
    """
    Gradient w.r.t. the tempered student logits from `gamma_CB`, the gradient w.r.t. the bucket log-probabilities,
    written into `logq_CV`. With `d log Q_b / d z_v = [v in b] q_v / Q_b - q_v`, token `v` of bucket `b` gets
    `gamma_b q_v / Q_b - q_v sum(gamma)`: `gamma_v` for a top-k token, a share of `gamma_tail` for the others.
    """
    tail_rate_C = torch.where(tail_C > 0, gamma_CB[:, -1] / tail_C, 0.0)
    row_C = tail_rate_C - gamma_CB.sum(dim=-1)
    if entropy_coef_C is None:
        grad_CV = torch.mul(q_CV, row_C.unsqueeze(1), out=logq_CV)
    else:  # entropy: -e q (log q + H)
        grad_CV = logq_CV.mul_(-entropy_coef_C.unsqueeze(1)).add_((row_C - entropy_coef_C * entropy_C).unsqueeze(1))
        grad_CV.mul_(q_CV)
    topk_CK = gamma_CB[:, :-1] - q_CV.gather(1, ids_CK) * tail_rate_C.unsqueeze(1)
    return grad_CV.scatter_add_(1, ids_CK, topk_CK)


# ---------------------------------------------------------------------------------------------------------------------
# Loss terms as chunk functions of `_chunk_driver._chunk_loop`: a dense teacher, the cross-entropy, and
# a teacher given as cached top-k log-probabilities: the divergence is taken between the K + 1 "buckets" (each top-k
# token, then all other tokens together), on which `divergence.py` runs directly with autograd, since K is small.
# ---------------------------------------------------------------------------------------------------------------------



def _dense_chunk(teacher_hidden_RH, teacher_head_VH, spec, rows, logits_CV, workspace, coef_C, entropy_coef_C):
    """One chunk against a teacher given by hidden states and lm_head. `coef_C is None`: values only, no gradient."""
    num = logits_CV.shape[0]
    teacher_CV, q_CV, p_CV = (workspace.take(index, num) for index in (1, 2, 3))
    _project(teacher_CV, teacher_hidden_RH[rows], teacher_head_VH, spec.temperature)
    _log_softmax_(logits_CV, q_CV)
    _log_softmax_(teacher_CV, p_CV)
    entropy_C = -_rowdot(q_CV, logits_CV) if spec.with_entropy else None
    entropies_C = entropy_C
    if spec.gate_tau is not None:  # the detached gate σ((H_s - H_t) / τ) scales the token's divergence (TSD-KD Eq. 11)
        teacher_entropy_C = -_rowdot(p_CV, teacher_CV)
        gate_C = torch.sigmoid((entropy_C - teacher_entropy_C) / spec.gate_tau)
        coef_C = None if coef_C is None else coef_C * gate_C
        entropies_C = torch.stack([entropy_C, teacher_entropy_C], dim=-1)
    value_C, a_CV, a_scale, a_sum_C = _TERMS[spec.divergence](logits_CV, q_CV, teacher_CV, p_CV, spec)
    if spec.gate_tau is not None:
        value_C = value_C * gate_C
    if coef_C is None:
        return value_C, entropies_C, None
    grad_CV = _dense_logit_grad_(a_CV, a_scale, a_sum_C, q_CV, coef_C, entropy_coef_C, entropy_C, teacher_CV)
    return value_C, entropies_C, grad_CV


def _nll_chunk(targets_R, spec, rows, logits_CV, workspace, coef_C, entropy_coef_C):
    """One chunk of the cross-entropy `-log q(target)`; its logit gradient is `coef · (q - onehot(target))`."""
    q_CV = workspace.take(1, logits_CV.shape[0])
    _log_softmax_(logits_CV, q_CV)  # logits_CV now holds log q
    targets_C1 = targets_R[rows].unsqueeze(1)
    value_C = -logits_CV.gather(1, targets_C1).squeeze(1)
    if coef_C is None:
        return value_C, None, None
    grad_CV = q_CV.mul_(coef_C.unsqueeze(1))
    return value_C, None, grad_CV.scatter_add_(1, targets_C1, -coef_C.unsqueeze(1))



def _topk_chunk(ids_RK, logprobs_RK, tail, spec, rows, logits_CV, workspace, coef_C, entropy_coef_C):
    """One chunk against a cached top-k teacher. `coef_C is None`: values only, no gradient."""
    q_CV, ids_CK = workspace.take(1, logits_CV.shape[0]), ids_RK[rows]
    _log_softmax_(logits_CV, q_CV)
    entropy_C = -_rowdot(q_CV, logits_CV) if spec.with_entropy else None
    # A leftover mass below the float resolution is rounding noise: in "bucket" mode both are floored there, so that
    # a confident teacher (or K = V) cannot turn a 0 into an unbounded log-ratio
    floor = torch.finfo(spec.dtype).eps if tail == "bucket" else 0.0
    student_CB, tail_C = _student_buckets(logits_CV, q_CV, ids_CK, floor)
    teacher_CB = _teacher_buckets(logprobs_RK[rows], tail, spec.temperature, floor)
    with torch.enable_grad():
        student_CB.requires_grad_(coef_C is not None)
        value_C = per_token_divergence(
            spec.divergence, student_CB, teacher_CB, beta=spec.beta, alpha=spec.alpha, temperature=1.0
        )
        if coef_C is None:
            return value_C, entropy_C, None
        (gamma_CB,) = torch.autograd.grad(value_C, student_CB, grad_outputs=coef_C)
    grad_CV = _topk_logit_grad_(logits_CV, q_CV, ids_CK, gamma_CB, tail_C, entropy_coef_C, entropy_C)
    return value_C.detach(), entropy_C, grad_CV
