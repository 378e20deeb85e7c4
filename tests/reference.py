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


# ---------------------------------------------------------------------------------------------------------------------
# TSD-KD (tsd_kd/loss.py): "Explain in Your Own Words", https://huggingface.co/papers/2603.13260. Equation numbers are
# the paper's; "spec" is shared/specs/tsd_kd.md. Everything below is restated from the equations (and, for the
# released code, from the spec's section 2.9 description) with Python lists, explicit products and loops, in float64.
# ---------------------------------------------------------------------------------------------------------------------


def _student_candidates_ref(student_logits_V, top_k):
    """Ids of the student's top-k logits, highest first."""
    values = student_logits_V.tolist()
    return sorted(range(len(values)), key=lambda v: -values[v])[: min(top_k, len(values))]


def teacher_ranking_ref(student_logits_V, teacher_logits_V, top_k):
    """The student's top-k candidates ordered by the teacher's logits, best first; ties keep the student's order."""
    teacher = teacher_logits_V.tolist()
    return sorted(_student_candidates_ref(student_logits_V, top_k), key=lambda v: -teacher[v])  # sorted() is stable


def plackett_luce_prob_ref(scores_V, ranking):
    """Eq. (3): P(ranking | r) = prod_k exp(r_{ranking[k]}) / sum_{j >= k} exp(r_{ranking[j]})."""
    prob = torch.ones((), dtype=torch.float64)
    for k in range(len(ranking)):
        remaining = sum(torch.exp(scores_V[ranking[j]]) for j in range(k, len(ranking)))
        prob = prob * torch.exp(scores_V[ranking[k]]) / remaining
    return prob


def plackett_luce_loss_ref(student_logits_NV, teacher_logits_NV, top_k, reverse=False):
    """Eq. (4): -log P_PL(teacher ranking of the student's top-k | student logits), per row.

    `reverse=True` scores the worst-to-best ranking instead, which is what the released code's loss equals (spec D1).
    """
    losses = []
    for n in range(student_logits_NV.shape[0]):
        ranking = teacher_ranking_ref(student_logits_NV[n].detach(), teacher_logits_NV[n], top_k)
        ranking = ranking[::-1] if reverse else ranking
        losses.append(-torch.log(plackett_luce_prob_ref(student_logits_NV[n].double(), ranking)))
    return torch.stack(losses) if losses else torch.zeros(0, dtype=torch.float64)


def bradley_terry_ref(preferred_logit, other_logit):
    """Bradley-Terry NLL of `preferred > other`: -log(e^a / (e^a + e^b))."""
    a, b = torch.exp(preferred_logit.double()), torch.exp(other_logit.double())
    return -torch.log(a / (a + b))


def entropy_gap_gate_ref(student_entropy, teacher_entropy, tau=1.0):
    """Eq. (11)'s gate, elementwise: 1 / (1 + exp(-(H_S - H_T) / tau)), without gradient."""
    flat = [
        1.0 / (1.0 + torch.exp(-(s - t) / tau))
        for s, t in zip(student_entropy.detach().double().flatten(), teacher_entropy.double().flatten())
    ]
    return torch.stack(flat).reshape(student_entropy.shape) if flat else torch.zeros(student_entropy.shape)


def _row_ratio_ref(ratio, b):
    return float(ratio[b]) if isinstance(ratio, torch.Tensor) else ratio


def opener_mask_ref(entropy_BT, mask_BT, ratio):
    """Eq. (10) per row: valid tokens 1..t* in order, t* = min{m : sum_{t <= m} H_t >= p * sum_t H_t}."""
    B, T = mask_BT.shape
    out = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        positions = [t for t in range(T) if mask_BT[b, t]]
        partial, running = [], 0.0
        for t in positions:
            running += float(entropy_BT[b, t])
            partial.append(running)
        if not positions:
            continue
        t_star = next(m for m in range(len(positions)) if partial[m] >= _row_ratio_ref(ratio, b) * partial[-1])
        for t in positions[: t_star + 1]:
            out[b, t] = True
    return out


def top_entropy_mask_ref(entropy_BT, mask_BT, ratio, scope="sequence"):
    """Eq. (12)'s set I: the max(1, ceil(rho * L)) valid tokens of highest entropy (none at rho = 0), per row or over
    the flattened batch; ties go to the earlier position."""
    from fractions import Fraction

    B, T = mask_BT.shape
    rows = [[(b, t) for t in range(T) if mask_BT[b, t]] for b in range(B)]
    groups = rows if scope == "sequence" else [[bt for row in rows for bt in row]]
    out = torch.zeros(B, T, dtype=torch.bool)
    for group in groups:
        if not group or ratio == 0:
            continue
        keep = max(1, -(-Fraction(str(ratio)) * len(group) // 1))  # exact ceil of the decimal ratio times L
        for bt in sorted(group, key=lambda bt: -float(entropy_BT[bt]))[:keep]:  # stable: ties keep the earlier one
            out[bt] = True
    return out


def sample_entropy_gap_ref(student_entropy_BT, teacher_entropy_BT, mask_BT):
    """App. A.7 difficulty per sample: mean student entropy minus mean teacher entropy over valid tokens; 0 if none."""
    gaps = []
    for b in range(mask_BT.shape[0]):
        valid = [t for t in range(mask_BT.shape[1]) if mask_BT[b, t]]
        s = sum(float(student_entropy_BT[b, t]) for t in valid)
        h = sum(float(teacher_entropy_BT[b, t]) for t in valid)
        gaps.append((s - h) / len(valid) if valid else 0.0)
    return torch.tensor(gaps, dtype=torch.float64)


def adaptive_opener_ratio_ref(gap, history, window, quantile_edges, ratios):
    """App. A.7 as the spec (section 8, item 11) resolves it: moving average over `window` samples, mid-rank quantile
    among all smoothed values, bin (edge_{i-1}, edge_i] -> ratios[i]."""
    series = [float(v) for v in history] + [float(v) for v in gap]
    smooth = []
    for i in range(len(series)):
        recent = series[max(0, i - window + 1) : i + 1]
        smooth.append(sum(recent) / len(recent))
    out = []
    for s in smooth[len(series) - len(gap) :]:
        quantile = (sum(v < s for v in smooth) + 0.5 * sum(v == s for v in smooth)) / len(smooth)
        out.append(ratios[sum(quantile > edge for edge in quantile_edges)])
    return torch.tensor(out)


def _mean_ref(values, count=None, num_processes=1):
    """Plain mean of a list of 0-dim tensors; 0 for an empty list. Given the `count` of items in the whole global
    batch (all micro-batches, all processes), this list's part of that mean instead: sum * num_processes / count."""
    if count is not None:
        return sum(values) * num_processes / count if values and count else torch.zeros((), dtype=torch.float64)
    return sum(values) / len(values) if values else torch.zeros((), dtype=torch.float64)


def tsd_kd_loss_ref(
    student_logits, teacher_logits, mask, beta=0.9, top_k=10, opener_ratio=0.1, entropy_ratio=0.1,
    indirect_coef=0.1, entropy_coef=1.0, tau=1.0, use_gate=True, entropy_scope="sequence", temperature=1.0,
    num_items_in_batch=None, num_opener_tokens=None, num_entropy_units=None, num_processes=1,
):  # fmt: skip
    """Eq. (13) with the spec's reductions (section 2.8): direct = gated JSD mean over valid tokens, indirect = PL mean
    over opener tokens, entropy = per-row mean over I then mean over rows (one mean over I for scope "batch").
    Each mean is over this batch, or, given the global batch's count of its items (valid tokens, opener tokens, rows
    with a non-empty I or selected tokens), this batch's part of the global mean, times `num_processes` (DDP averages
    the processes' gradients). Returns a dict of 0-dim float64 tensors: loss, direct, indirect, entropy."""
    B, T, _ = student_logits.shape
    jsd = generalized_jsd_ref(student_logits, teacher_logits, beta, temperature)
    h_student = entropy_ref(student_logits, temperature)
    h_teacher = entropy_ref(teacher_logits, temperature)
    gate = entropy_gap_gate_ref(h_student, h_teacher, tau) if use_gate else torch.ones(B, T, dtype=torch.float64)
    valid = [(b, t) for b in range(B) for t in range(T) if mask[b, t]]
    direct = _mean_ref([gate[bt] * jsd[bt] for bt in valid], num_items_in_batch, num_processes)
    opener = opener_mask_ref(h_student.detach(), mask, opener_ratio)
    opener_positions = [bt for bt in valid if opener[bt]]
    losses = [
        plackett_luce_loss_ref(student_logits[bt][None] / temperature, teacher_logits[bt][None], top_k)[0]
        for bt in opener_positions
    ]
    indirect = _mean_ref(losses, num_opener_tokens, num_processes)
    selected = top_entropy_mask_ref(h_student.detach(), mask, entropy_ratio, entropy_scope)
    if entropy_scope == "batch":
        entropy_term = _mean_ref([h_student[bt] for bt in valid if selected[bt]], num_entropy_units, num_processes)
    else:
        row_means = [[h_student[b, t] for t in range(T) if selected[b, t]] for b in range(B)]
        entropy_term = _mean_ref([_mean_ref(row) for row in row_means if row], num_entropy_units, num_processes)
    loss = direct + entropy_coef * entropy_term + indirect_coef * indirect
    return {"loss": loss, "direct": direct, "indirect": indirect, "entropy": entropy_term}


def _linear_quantile_ref(values, q):
    """torch.quantile's default ("linear"): sorted v, position q (n - 1), interpolate between its neighbours."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position // 1)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def released_code_loss_ref(student_logits, teacher_logits, mask, beta=0.9, threshold=0.1, alpha=0.1, top_k=10):
    """The authors' `generalized_jsd_loss` + `indirect_kd_loss` (spec section 2.9, steps 1-9), in their tensor layout:
    column 0 is the first completion position (right padding), temperature 1. Returns loss, direct, indirect, entropy.

    JSD with no endpoint special case; gate sigmoid(H_S - H_T); one threshold for both selections; entropy set
    H >= quantile(valid H, threshold) at every position, padding included; opener = columns [:, :d] with d the first
    index where the flattened valid entropies' normalised cumulative sum reaches the threshold (0 if never); PL with
    the normaliser over the preceding items, masked mean + 1e-8 over positions.
    """
    B, T, _ = student_logits.shape
    q_probs = [[_probs(student_logits[b, t], 1.0) for t in range(T)] for b in range(B)]
    p_probs = [[_probs(teacher_logits[b, t], 1.0) for t in range(T)] for b in range(B)]
    h_student = [[-(q * torch.log(q)).sum() for q in row] for row in q_probs]
    h_teacher = [[-(p * torch.log(p)).sum() for p in row] for row in p_probs]
    valid = [(b, t) for b in range(B) for t in range(T) if mask[b, t]]
    jsd_sum = torch.zeros((), dtype=torch.float64)
    for b, t in valid:
        p, q = p_probs[b][t], q_probs[b][t]
        m = beta * p + (1 - beta) * q
        gate = 1.0 / (1.0 + torch.exp(-(h_student[b][t] - h_teacher[b][t]).detach()))
        jsd_sum = jsd_sum + gate * (beta * _kl(p, m) + (1 - beta) * _kl(q, m))
    direct = jsd_sum / len(valid)
    flat = [float(h_student[b][t].detach()) for b, t in valid]
    cut_off = _linear_quantile_ref(flat, threshold)
    picked = [h_student[b][t] for b in range(B) for t in range(T) if float(h_student[b][t].detach()) >= cut_off]
    entropy_term = sum(picked) / len(picked)
    running, d = 0.0, 0
    for i, value in enumerate(flat):
        running += value / sum(flat)
        if running >= threshold:
            d = i
            break
    losses, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(B):
        for t in range(min(d, T)):
            if not mask[b, t]:
                continue
            z = student_logits[b, t].double()
            u = [z[v] for v in teacher_ranking_ref(z.detach(), teacher_logits[b, t], top_k)]
            for k in range(len(u)):
                losses = losses - (u[k] - torch.log(sum(torch.exp(u[j]) for j in range(k + 1))))
            count += 1
    indirect = losses / (count + 1e-8)
    loss = direct + entropy_term + alpha * indirect
    return {"loss": loss, "direct": direct, "indirect": indirect, "entropy": entropy_term}
