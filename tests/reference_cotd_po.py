"""Naive float64 references for CoTD-PO (`cotd_po/loss.py`, `cotd_po/scoring.py`), from shared/specs/cotd_po.md.

Same rules as `reference.py`: they never import `trl_reasoning_distill` and share no code with it. They loop in Python
over prompts, candidates and positions, write every probability out as `exp(a) / Σ exp(b)`, and give the gradient of
the listwise loss in closed form (spec §2.7), so a test against them checks the equations, not a copy of the code.
"""

import math

import torch

F64 = torch.float64


def _softmax_list(values):
    """exp(v_i) / Σ_j exp(v_j) of a list of float64 scalars (shifted by the detached max; -inf entries give 0)."""
    finite = [float(v.detach()) for v in values if math.isfinite(float(v.detach()))]
    shift = max(finite) if finite else 0.0
    exps = [torch.exp(v - shift) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


# ---------------------------------------------------------------------------------------------------------------------
# Per-prompt reward normalisation (spec §2.4: the released code's min-max × 5, plus "none" and "zscore").
# ---------------------------------------------------------------------------------------------------------------------


def normalize_rewards_ref(rewards, valid, method="minmax", scale=5.0, eps=1e-3):
    """Loop over prompts; invalid entries are 0."""
    B, G = rewards.shape
    out = torch.zeros(B, G, dtype=F64)
    for b in range(B):
        idx = [g for g in range(G) if bool(valid[b, g]) and math.isfinite(float(rewards[b, g]))]
        vals = [float(rewards[b, g]) for g in idx]
        for g, r in zip(idx, vals):
            if method == "none":
                z = r
            elif method == "minmax":
                lo, hi = min(vals), max(vals)
                z = (r - lo) / (hi - lo + eps) if hi > lo else 0.0
            else:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                z = (r - mean) / (std + eps) if std > 0 else 0.0
            out[b, g] = scale * z
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Listwise answer preference alignment, Eq. (4)-(8), and its exact gradient (spec §2.7).
# ---------------------------------------------------------------------------------------------------------------------


def listwise_ref(policy_logps, teacher_scores, lam, target_temp=1.0, valid=None):
    """L_b = -Σ_i p̃_i log q_i over the valid candidates of prompt b, p̃ = softmax(t / T), q = softmax(λ s).

    Returns (loss (B,) with autograd through `policy_logps`, p̃ (B, G), q (B, G)); 0 for a prompt with no valid
    candidate."""
    B, G = policy_logps.shape
    valid = torch.ones(B, G, dtype=torch.bool) if valid is None else valid
    losses = []
    target = torch.zeros(B, G, dtype=F64)
    student = torch.zeros(B, G, dtype=F64)
    for b in range(B):
        idx = [g for g in range(G) if bool(valid[b, g])]
        if not idx:
            losses.append(torch.zeros((), dtype=F64))
            continue
        p = _softmax_list([teacher_scores[b, g].double().detach() / target_temp for g in idx])
        q = _softmax_list([lam * policy_logps[b, g].double() for g in idx])
        loss = torch.zeros((), dtype=F64)
        for k, g in enumerate(idx):
            if float(p[k]) > 0:
                loss = loss - p[k] * torch.log(q[k])
            target[b, g], student[b, g] = float(p[k].detach()), float(q[k].detach())
        losses.append(loss)
    return torch.stack(losses), target, student


def listwise_grad_ref(policy_logps, teacher_scores, lam, target_temp=1.0, valid=None):
    """∂L_b/∂s_i = λ (q_i - p̃_i) on valid entries, 0 elsewhere (spec §2.7, derived; not by autograd)."""
    _, target, student = listwise_ref(policy_logps.detach(), teacher_scores, lam, target_temp, valid)
    B, G = policy_logps.shape
    valid = torch.ones(B, G, dtype=torch.bool) if valid is None else valid
    grad = torch.zeros(B, G, dtype=F64)
    for b in range(B):
        for g in range(G):
            if bool(valid[b, g]):
                grad[b, g] = lam * (student[b, g] - target[b, g])
    return grad


def reference_free_dpo_ref(chosen_logps, rejected_logps, beta):
    """DPO's sigmoid loss -log σ(β[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]) with the
    reference log-probs set to 0 (spec §8 item 4), one scalar per pair, σ(z) = 1 / (1 + e^-z)."""
    out = []
    for c, r in zip(chosen_logps, rejected_logps):
        z = beta * ((c - 0.0) - (r - 0.0))
        out.append(-torch.log(1.0 / (1.0 + torch.exp(-z))))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------------
# Pairwise ablation, Eq. (11) (SimPO) + NLL of the chosen answer (spec §2.10, §8 item 16).
# ---------------------------------------------------------------------------------------------------------------------


def pairwise_ref(logp_sum, num_tokens, rewards, valid, beta, gamma, nll_weight):
    """Chosen = first highest reward, rejected = first lowest; 0 without two valid, unequal rewards."""
    B, G = logp_sum.shape
    out = []
    for b in range(B):
        idx = [g for g in range(G) if bool(valid[b, g]) and math.isfinite(float(rewards[b, g]))]
        if len(idx) < 2:
            out.append(0.0 * logp_sum[b].sum())  # no pair: 0, with a zero gradient
            continue
        best = worst = idx[0]
        for g in idx:
            if float(rewards[b, g]) > float(rewards[b, best]):
                best = g
            if float(rewards[b, g]) < float(rewards[b, worst]):
                worst = g
        if not float(rewards[b, best]) > float(rewards[b, worst]):
            out.append(0.0 * logp_sum[b].sum())
            continue
        s_c = logp_sum[b, best] / int(num_tokens[b, best])
        s_r = logp_sum[b, worst] / int(num_tokens[b, worst])
        delta = beta * s_c - beta * s_r - gamma
        out.append(-torch.log(1.0 / (1.0 + torch.exp(-delta))) + nll_weight * (-s_c))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------------
# Token and sequence log-likelihoods, rationale NLL (Eq. 8's log p_s(y), Eq. 9's first term).
# ---------------------------------------------------------------------------------------------------------------------


def token_logprob_ref(logits, labels, ignore_index=-100):
    """(N, L - 1): log(exp(z_y) / Σ_v exp(z_v)) of label t + 1 from the logits at t; 0 where the label is ignored."""
    N, L, V = logits.shape
    out = torch.zeros(N, L - 1, dtype=F64)
    for n in range(N):
        for t in range(L - 1):
            y = int(labels[n, t + 1])
            if y == ignore_index:
                continue
            z = logits[n, t].double()
            shift = z.max().detach()
            out[n, t] = (z[y] - shift) - torch.log(sum(torch.exp(z[v] - shift) for v in range(V)))
    return out


def masked_sum_ref(token_logps, mask):
    """Σ_t token_logps[..., t] over the positions where the mask is true, by a loop; shape token_logps[..., 0]."""
    flat_values, flat_mask = token_logps.reshape(-1, token_logps.shape[-1]), mask.reshape(-1, mask.shape[-1])
    out = []
    for row, row_mask in zip(flat_values, flat_mask):
        total = torch.zeros((), dtype=F64)
        for value, keep in zip(row, row_mask):
            if bool(keep):
                total = total + value.double()
        out.append(total)
    return torch.stack(out).reshape(token_logps.shape[:-1])


def cotd_po_ref(token_logps, answer_mask, rationale_mask, rewards, valid, group_max_len, lam, alpha, rationale_weight,
                aggregation, reward_method, reward_scale, eps, rationale_reduction):
    """Eq. (9) with the spec's resolutions: per prompt s_i = aggregate(Σ_answer log p), p̃ = softmax(normalised r),
    L_apa = -Σ p̃ log softmax(λ s); L_rat = NLL of the first valid row's rationale (token mean or sum); each term
    averaged over the prompts that contribute to it."""
    B, G, T = token_logps.shape
    sums = masked_sum_ref(token_logps, answer_mask)
    counts = answer_mask.sum(-1)
    valid = valid & torch.isfinite(rewards) & (counts > 0)
    scores = torch.zeros(B, G, dtype=F64)
    score_rows = []
    for b in range(B):
        row = []
        for g in range(G):
            if aggregation == "sum":
                row.append(sums[b, g])
            elif aggregation == "mean":
                row.append(sums[b, g] / max(int(counts[b, g]), 1))
            else:
                row.append(sums[b, g] / max(int(group_max_len[b]) - 1, 1))
        score_rows.append(torch.stack(row))
    scores = torch.stack(score_rows)
    targets = normalize_rewards_ref(rewards, valid, reward_method, reward_scale, eps)
    apa, _, _ = listwise_ref(scores, targets, lam, 1.0, valid)
    apa_rows = [b for b in range(B) if bool(valid[b].any())]
    apa_mean = sum(apa[b] for b in apa_rows) / max(len(apa_rows), 1) if apa_rows else torch.zeros((), dtype=F64)
    rat_terms = []
    for b in range(B):
        first = next((g for g in range(G) if bool(valid[b, g])), 0)
        n_tok = int(rationale_mask[b, first].sum())
        if n_tok == 0:
            continue
        nll = -masked_sum_ref(token_logps[b, first], rationale_mask[b, first])
        rat_terms.append(nll / n_tok if rationale_reduction == "token_mean" else nll)
    rat = sum(rat_terms) / len(rat_terms) if rat_terms else torch.zeros((), dtype=F64)
    return rationale_weight * rat + alpha * apa_mean, rat, apa_mean


# ---------------------------------------------------------------------------------------------------------------------
# The released code's loss (spec §2.12, `PromptLevelTrainer.compute_loss`), for parity (spec §8 item 18).
# ---------------------------------------------------------------------------------------------------------------------


def released_code_loss_ref(model, sequences, rationale_spans, answer_spans, rewards, pad_id):
    """One prompt, K candidates. Each row is padded (right padding, spec §8 item 18) to L_pad, the longest of the
    K; one forward per candidate; s_i = -0.5 · mean over the L_pad - 1 shifted positions of the cross-entropy with
    labels on the answer span only (0 elsewhere); p_t = softmax(5 · (r - min) / (max - min + 1e-3));
    answer_loss = -Σ p_t log_softmax(s); thought loss = token-mean CE on the rationale span of the argmax-reward row.
    Returns answer_loss + thought_loss (float64 from float32 logits)."""
    L_pad = max(len(s) for s in sequences)
    lo, hi = min(rewards), max(rewards)
    normalised = [5.0 * (r - lo) / (hi - lo + 1e-3) for r in rewards]
    p_t = _softmax_list([torch.tensor(v, dtype=F64) for v in normalised])
    logps, thought = [], None
    best = max(range(len(rewards)), key=lambda k: (rewards[k], -k))
    for k, seq in enumerate(sequences):
        ids = torch.full((1, L_pad), pad_id, dtype=torch.long)
        ids[0, : len(seq)] = torch.tensor(seq)
        attention = torch.zeros(1, L_pad, dtype=torch.long)
        attention[0, : len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=attention).logits[0].double()
        ce = []
        for t in range(L_pad - 1):
            target = t + 1
            a0, a1 = answer_spans[k]
            if a0 <= target < a1:
                z = logits[t]
                ce.append(-(z[int(ids[0, target])] - torch.logsumexp(z, dim=-1)))
            else:
                ce.append(torch.zeros((), dtype=F64))
        logps.append(-0.5 * sum(ce) / (L_pad - 1))
        if k == best:
            r0, r1 = rationale_spans[k]
            nll = [-(logits[t - 1][int(ids[0, t])] - torch.logsumexp(logits[t - 1], dim=-1)) for t in range(r0, r1)]
            thought = sum(nll) / len(nll)
    q = _softmax_list(logps)
    answer_loss = -sum(p * torch.log(qq) for p, qq in zip(p_t, q))
    return answer_loss + thought


# ---------------------------------------------------------------------------------------------------------------------
# Scorers (spec §9.6): one unpadded sequence at a time.
# ---------------------------------------------------------------------------------------------------------------------


def teacher_log_likelihood_ref(model, context_ids, answer_ids):
    """(Σ, mean) over the answer tokens of log p(answer_t | context, answer_<t), one unpadded forward, float64."""
    ids = torch.tensor([list(context_ids) + list(answer_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for k in range(len(answer_ids)):
        position = len(context_ids) + k
        z = logits[position - 1]
        total += float(z[int(ids[0, position])] - torch.logsumexp(z, dim=-1))
    return total, total / len(answer_ids)


def reward_model_ref(model, ids):
    """Scalar score of one unpadded sequence: the score head on the last position's final hidden state."""
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([list(ids)])).last_hidden_state
        return float(model.score(hidden[0, -1]).squeeze())
