"""Naive float64 references for BRTS (`brts/selection.py` and `brts/loss.py`), restated from shared/specs/brts.md.

Same rules as `reference.py`: they never import `trl_reasoning_distill` and share no code with it. They loop in Python
over rows, candidates, positions and tokens, write probabilities out, and give gradients in closed form from the
equations (not by autograd of a vectorised formula), so that a test against them checks the maths.
"""

import math

import torch

# ---------------------------------------------------------------------------------------------------------------------
# selection.py: alignment scores (spec §2.6, §8 item 5) and the waterfall (spec §2.7).
# ---------------------------------------------------------------------------------------------------------------------


def positional_overlap_ref(teacher_ids, teacher_mask, student_topk_ids, student_mask):
    """Spec §2.6: hits / valid teacher tokens, a hit being a teacher token inside the student's top-K at the same
    position of the student's rollout; positions where the student's response has ended are misses."""
    B, N, L_T = teacher_ids.shape
    L_S = student_topk_ids.shape[1]
    out = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        for j in range(N):
            valid = hits = 0
            for t in range(L_T):
                if not bool(teacher_mask[b, j, t]):
                    continue
                valid += 1
                student_alive = t < L_S and bool(student_mask[b, t])
                if student_alive and int(teacher_ids[b, j, t]) in student_topk_ids[b, t].tolist():
                    hits += 1
            out[b, j] = hits / valid if valid else 0.0
    return out


def teacher_context_overlap_ref(teacher_ids, teacher_mask, student_topk_ids):
    """Spec §8 item 5: hits / valid teacher tokens, against the student's top-K on the teacher's own prefix."""
    B, N, L = teacher_ids.shape
    out = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        for j in range(N):
            flags = [
                int(teacher_ids[b, j, t]) in student_topk_ids[b, j, t].tolist()
                for t in range(L)
                if bool(teacher_mask[b, j, t])
            ]
            out[b, j] = sum(flags) / len(flags) if flags else 0.0
    return out


def mean_log_likelihood_ref(student_logprobs, teacher_mask):
    """Mean of log π_θ(y_t | ...) over the valid teacher tokens; -inf for a rollout without any."""
    B, N, L = student_logprobs.shape
    out = torch.zeros(B, N, dtype=torch.float64)
    for b in range(B):
        for j in range(N):
            values = [float(student_logprobs[b, j, t]) for t in range(L) if bool(teacher_mask[b, j, t])]
            out[b, j] = sum(values) / len(values) if values else -math.inf
    return out


def _best_first(scores, allowed):
    """Lowest index among the allowed candidates of highest score."""
    best = max(scores[j] for j in allowed)
    return min(j for j in allowed if scores[j] == best)


def select_rollout_ref(correct, alignment, recovery_correct=None, recovery_alignment=None):
    """Spec §2.7, row by row. Returns (index list, tier list); Tier-2 indices count after the N unhinted rollouts."""
    B, N = correct.shape
    indices, tiers = [], []
    for b in range(B):
        scores = alignment[b].tolist()
        correct_ids = [j for j in range(N) if bool(correct[b, j])]
        rescue_ids, hinted = [], []
        if recovery_correct is not None:
            row = recovery_correct[b].reshape(-1).tolist()
            rescue_ids = [m for m in range(len(row)) if row[m]]
            hinted = [0.0] * len(row) if recovery_alignment is None else recovery_alignment[b].reshape(-1).tolist()
        if correct_ids:
            indices.append(_best_first(scores, correct_ids))
            tiers.append(1)
        elif rescue_ids:
            indices.append(N + _best_first(hinted, rescue_ids))
            tiers.append(2)
        else:
            indices.append(_best_first(scores, list(range(N))))
            tiers.append(3)
    return indices, tiers


# ---------------------------------------------------------------------------------------------------------------------
# loss.py: the student-context top-K reverse KL (spec §2.3) and the teacher-context top-K forward KL (spec §2.9).
# Each returns (value, grad): per-position values (...) and, per position, the gradient (..., V) of that position's
# loss w.r.t. its own student logits (positions do not interact).
# ---------------------------------------------------------------------------------------------------------------------


def _probs(logits_V, temperature):
    """softmax(z / T) written out."""
    z = [float(x) / temperature for x in logits_V]
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def _top_ids(probs, k):
    """Ids of the k largest probabilities, largest first."""
    return sorted(range(len(probs)), key=lambda v: -probs[v])[:k]


def _rows(student_logits, other):
    """Flatten the leading dimensions of a pair of (..., V) tensors."""
    V = student_logits.shape[-1]
    return student_logits.detach().reshape(-1, V), other.detach().reshape(-1, other.shape[-1])


def student_topk_rkl_ref(student_logits, teacher_logits, top_k, weight_mode="student_p", temperature=1.0,
                         available=None):
    """Spec §2.3: S = the student's top-K; w_v = base_v / sum_S base (base = q, p or 1); c_v = w_v (log q_v - log p_v).
    Value sum_S c_v; gradient of sum_S c_v log q_v with c held fixed: d/dz_j = (c_j [j in S] - q_j sum_S c) / T.
    Spec §2.11: at a position where `available` is False the teacher's log p is 0 (p = 1) for every token."""
    student_NV, teacher_NV = _rows(student_logits, teacher_logits)
    V = student_NV.shape[-1]
    flags = [True] * student_NV.shape[0] if available is None else [bool(a) for a in available.reshape(-1).tolist()]
    values, grads = [], []
    for n in range(student_NV.shape[0]):
        q, p = _probs(student_NV[n].tolist(), temperature), _probs(teacher_NV[n].tolist(), temperature)
        p = p if flags[n] else [1.0] * V
        ids = _top_ids(q, top_k)
        base = {v: {"student_p": q[v], "teacher_p": p[v], "none": 1.0}[weight_mode] for v in ids}
        c = {v: base[v] / sum(base.values()) * (math.log(q[v]) - math.log(p[v])) for v in ids}
        total = sum(c.values())
        values.append(total)
        grads.append([(c.get(j, 0.0) - q[j] * total) / temperature for j in range(V)])
    shape = student_logits.shape
    return torch.tensor(values, dtype=torch.float64).reshape(shape[:-1]), torch.tensor(grads).reshape(shape).double()


def teacher_topk_fkl_ref(student_logits, teacher_logits, top_k, temperature=1.0):
    """Spec §2.9: T = the teacher's top-K; w_v = p_v / sum_T p; value sum_T w_v (log p_v - log q_v);
    d/dz_j = (q_j sum_T w - w_j [j in T]) / T = (q_j - w_j [j in T]) / T."""
    student_NV, teacher_NV = _rows(student_logits, teacher_logits)
    V = student_NV.shape[-1]
    values, grads = [], []
    for n in range(student_NV.shape[0]):
        q, p = _probs(student_NV[n].tolist(), temperature), _probs(teacher_NV[n].tolist(), temperature)
        ids = _top_ids(p, top_k)
        mass = sum(p[v] for v in ids)
        w = {v: p[v] / mass for v in ids}
        values.append(sum(w[v] * (math.log(p[v]) - math.log(q[v])) for v in ids))
        grads.append([(q[j] - w.get(j, 0.0)) / temperature for j in range(V)])
    shape = student_logits.shape
    return torch.tensor(values, dtype=torch.float64).reshape(shape[:-1]), torch.tensor(grads).reshape(shape).double()


def token_mean_ref(values, grads, mask, count=None):
    """Masked token mean of per-position values, and its gradient: mask_i / count times each position's gradient.
    `count` defaults to the number of valid positions; an empty mask gives 0."""
    flags = [bool(x) for x in mask.reshape(-1).tolist()]
    denominator = float(sum(flags) if count is None else count)
    scale = [f / denominator if denominator > 0 else 0.0 for f in flags]
    value = sum(s * float(v) for s, v in zip(scale, values.reshape(-1).tolist()))
    grad = torch.stack([s * g for s, g in zip(scale, grads.reshape(len(flags), -1))]).reshape(grads.shape)
    return torch.tensor(value, dtype=torch.float64), grad


def topk_overlap_ref(student_topk_ids, teacher_topk_ids, mask, available=None):
    """Spec §2.11: over the positions of `mask`, K slots each; a hit is a student top-K id found among the teacher's
    top-K ids at the same position, counted only where the teacher's context reaches (`available`)."""
    student, teacher = student_topk_ids.reshape(-1, student_topk_ids.shape[-1]), teacher_topk_ids.reshape(
        -1, teacher_topk_ids.shape[-1])
    flags = [bool(m) for m in mask.reshape(-1).tolist()]
    reach = flags if available is None else [bool(a) for a in available.reshape(-1).tolist()]
    hits = slots = 0
    for n, counted in enumerate(flags):
        if not counted:
            continue
        slots += student.shape[-1]
        if reach[n]:
            hits += sum(int(v) in teacher[n].tolist() for v in student[n].tolist())
    return float(hits), float(slots)
