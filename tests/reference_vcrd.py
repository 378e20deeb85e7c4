"""Naive references for VCRD (`vcrd/loss.py`, `vcrd/validity.py`), restated from the paper's equations.

Paper: Validity-Calibrated Reasoning Distillation, https://huggingface.co/papers/2605.04078; "spec" is
shared/specs/vcrd.md. Python floats, explicit loops over positions and float64 throughout; nothing is imported from
`trl_reasoning_distill`. The per-position skew divergences come from `reference.py`, which restates them the same way.
"""

import math

import torch
from reference import skew_kl_ref, skew_reverse_kl_ref

# ---------------------------------------------------------------------------------------------------------------------
# Weights: Eq. (1), the ablation rules of spec §2.11, and the PRM-free weight of paper §10.4.
# ---------------------------------------------------------------------------------------------------------------------


def validity_weights_ref(r_s, r_t, eps=1e-8, rule="ratio", clip=None, disable_amplification=False):
    """One weight per element: the rule, then min(w, 1) if asked, then the clip."""
    out = []
    for s, t in zip(r_s.double().flatten().tolist(), r_t.double().flatten().tolist(), strict=True):
        w = {"ratio": s / (t + eps), "difference": s - t, "student_only": s, "constant": 1.0}[rule]
        if disable_amplification and w > 1.0:
            w = 1.0
        if clip is not None and clip[0] is not None and w < clip[0]:
            w = clip[0]
        if clip is not None and clip[1] is not None and w > clip[1]:
            w = clip[1]
        out.append(w)
    return torch.tensor(out, dtype=torch.float64).reshape(r_s.shape)


def _softmax_list(logits):
    """softmax of a list of floats, written out."""
    top = max(logits)
    e = [math.exp(z - top) for z in logits]
    return [x / sum(e) for x in e]


def teacher_prob_ratio_ref(student_logits, teacher_logits, top_k=128, eps=1e-8):
    """w_raw = p(argmax q) / (sum of the k largest p_i^2 + eps), per position of (..., V) logits."""
    V = student_logits.shape[-1]
    student_rows, teacher_rows = student_logits.reshape(-1, V).tolist(), teacher_logits.reshape(-1, V).tolist()
    out = []
    for s_row, t_row in zip(student_rows, teacher_rows, strict=True):
        greedy = max(range(V), key=lambda v: (s_row[v], -v))  # first index among ties
        p = _softmax_list(t_row)
        collision = sum(x * x for x in sorted(p, reverse=True)[:top_k])
        out.append(p[greedy] / (collision + eps))
    return torch.tensor(out, dtype=torch.float64).reshape(student_logits.shape[:-1])


def teacher_prob_weights_ref(student_logits, teacher_logits, top_k=128, gamma=0.5, clip=(0.5, 2.0), eps=1e-8):
    """w = clip(w_raw ** gamma, low, high)."""
    raw = teacher_prob_ratio_ref(student_logits, teacher_logits, top_k, eps)
    clipped = [min(max(r**gamma, clip[0]), clip[1]) for r in raw.flatten().tolist()]
    return torch.tensor(clipped, dtype=torch.float64).reshape(raw.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Loss: Eqs. (2)-(4), with DistiLLM-2's per-sequence token mean (spec A8) or Algorithm 1's sum over t.
# ---------------------------------------------------------------------------------------------------------------------


def _lv_term_ref(divergence_BT, weights_BT, mask_BT, reduction):
    """(1/B) sum_b l_b with l_b = sum_t w d M (/ sum_t M for seq_mean); an empty row gives l_b = 0."""
    B, T = divergence_BT.shape
    total = divergence_BT.new_zeros(())
    for b in range(B):
        row, count = divergence_BT.new_zeros(()), 0
        for t in range(T):
            if bool(mask_BT[b, t]):
                row = row + float(weights_BT[b, t]) * divergence_BT[b, t]  # float(): stop-gradient on w
                count += 1
        if reduction == "seq_mean" and count > 0:
            row = row / count
        total = total + row
    return total / B


def vcrd_loss_ref(skl_inputs, srkl_inputs, alpha=0.1, lambda_teacher=1.0, lambda_student=1.0, reduction="seq_mean"):
    """lambda_T LV-SKL + lambda_S LV-SRKL. Each `*_inputs` is (student_logits, teacher_logits, mask, weights)."""
    s_T, t_T, mask_T, w_T = skl_inputs
    s_S, t_S, mask_S, w_S = srkl_inputs
    lv_skl = _lv_term_ref(skew_kl_ref(s_T, t_T.detach(), alpha), w_T, mask_T, reduction)
    lv_srkl = _lv_term_ref(skew_reverse_kl_ref(s_S, t_S.detach(), alpha), w_S, mask_S, reduction)
    return lambda_teacher * lv_skl + lambda_student * lv_srkl


def distillm2_loss_ref(skl_inputs, srkl_inputs, alpha=0.1, beta=1.0):
    """DistiLLM-2 `distillm_v2` (spec §10.1): per-sequence token means of SKL and SRKL, (2 - beta) SKL + beta SRKL,
    batch mean. Weights, if given in the inputs, are ignored."""
    ones_T, ones_S = torch.ones(skl_inputs[2].shape), torch.ones(srkl_inputs[2].shape)
    skl = _lv_term_ref(skew_kl_ref(skl_inputs[0], skl_inputs[1], alpha), ones_T, skl_inputs[2], "seq_mean")
    srkl = _lv_term_ref(skew_reverse_kl_ref(srkl_inputs[0], srkl_inputs[1], alpha), ones_S, srkl_inputs[2], "seq_mean")
    return (2.0 - beta) * skl + beta * srkl


# ---------------------------------------------------------------------------------------------------------------------
# PRM scoring (spec §2.4): one separate causal forward per (prefix, candidate), read at the last token.
# ---------------------------------------------------------------------------------------------------------------------


def prm_score_loop_ref(model, prompt_ids, rollout, candidates, separator=None):
    """r(c_t, candidates[t]) for every t: a plain forward over [prompt; rollout[:t]; candidate (; separator)], the
    probability of the last position (sigmoid of a 1-label head, softmax[1] of a 2-label head)."""
    scores = []
    for t, candidate in enumerate(candidates):
        ids = list(prompt_ids)
        for step in rollout[:t]:
            ids += [step] if isinstance(step, int) else list(step)
        ids += [candidate] if isinstance(candidate, int) else list(candidate)
        ids += [] if separator is None else [separator]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        scores.append(torch.sigmoid(logits[0]) if logits.shape[0] == 1 else torch.softmax(logits, dim=0)[1])
    return torch.stack(scores) if scores else torch.zeros(0, dtype=torch.float64)
