"""Naive float64 references for Gen-SSD selection (`gen_ssd/selection.py`), restated from shared/specs/gen_ssd.md.

Same rules as `reference.py`: they never import `trl_reasoning_distill` and share no code with it. Perplexities are
written from the definition of spec §2.1 with explicit softmax probabilities and loops, and `gen_ssd_sample_ref` is
Algorithm A of spec §2.3 for one problem, line by line, with Python objects instead of tensors.
"""

import math
from dataclasses import dataclass, field

import torch

# ---------------------------------------------------------------------------------------------------------------------
# Perplexity (spec §2.1, §2.4, §8 A4, A6).
# ---------------------------------------------------------------------------------------------------------------------


def token_logprob_ref(logits_V: torch.Tensor, token: int) -> float:
    """log P(token) = log(exp(z_token) / sum_v exp(z_v)), in float64 with the max subtracted."""
    z = [float(x) for x in logits_V.double()]
    top = max(z)
    total = sum(math.exp(v - top) for v in z)
    return math.log(math.exp(z[token] - top) / total)


def token_logprobs_ref(logits_MLV: torch.Tensor, ids_ML: torch.Tensor, mask_ML: torch.Tensor) -> torch.Tensor:
    """(M, L) float64: the log-probability of every candidate token on the mask, 0 elsewhere."""
    M, L, _ = logits_MLV.shape
    out = torch.zeros(M, L, dtype=torch.float64)
    for m in range(M):
        for t in range(L):
            if bool(mask_ML[m, t]):
                out[m, t] = token_logprob_ref(logits_MLV[m, t], int(ids_ML[m, t]))
    return out


def chunk_nll_ref(logprobs_ML: torch.Tensor, mask_ML: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row: -sum of the log-probabilities of its own tokens, and their count."""
    sums, counts = [], []
    for m in range(logprobs_ML.shape[0]):
        values = [float(logprobs_ML[m, t]) for t in range(logprobs_ML.shape[1]) if bool(mask_ML[m, t])]
        sums.append(-sum(values))
        counts.append(len(values))
    return sums, counts


def chunk_ppl_ref(logprobs_ML: torch.Tensor, mask_ML: torch.Tensor) -> torch.Tensor:
    """PPL = exp(-(1/|y|) sum_t log P(y_t | ...)); NaN for a row without tokens."""
    sums, counts = chunk_nll_ref(logprobs_ML, mask_ML)
    return torch.tensor([math.exp(s / n) if n else math.nan for s, n in zip(sums, counts)], dtype=torch.float64)


def sequence_ppl_ref(logprobs: list[float]) -> float:
    """PPL of one whole token sequence from its per-token log-probabilities."""
    return math.exp(-sum(logprobs) / len(logprobs))


# ---------------------------------------------------------------------------------------------------------------------
# Schedule and ranking (spec §2.1 progressive reduction, §2.3 Algorithm A lines 4, 8, 14-15, 24).
# ---------------------------------------------------------------------------------------------------------------------


def schedule_ref(chunk_round: int, schedule) -> int:
    """K(1) = schedule[0], K(2) = schedule[1], ...; the last entry repeats."""
    return schedule[chunk_round - 1] if chunk_round <= len(schedule) else schedule[-1]


def rank_ref(scores: list[float], valid: list[bool], rule: str) -> list[int]:
    """Valid slots in keep order: ascending ("low") or descending ("high") score, ties to the smaller slot."""
    slots = [n for n in range(len(scores)) if valid[n]]
    sign = 1.0 if rule == "low" else -1.0
    return sorted(slots, key=lambda n: (sign * scores[n], n))


# ---------------------------------------------------------------------------------------------------------------------
# Algorithm A (spec §2.3) for one problem, with a scripted teacher and scorer.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Beam:
    path: tuple = ()  # sample indices of the accepted chunks, one per round
    nll: float = 0.0
    ntok: int = 0
    eos: bool = False
    chunk_ppls: list = field(default_factory=list)


def gen_ssd_sample_ref(script, *, schedule, beam_width, candidates_per, beam_score, rule, chunk_size, max_new_tokens,
                       prefer_eos):
    """
    Algorithm A with `script(path, k, budget) -> (nll_sum, ntok, eos)` standing in for the teacher sample `k` from the
    prefix `path` and the student's score of it. Returns `(best beam or None, calls)`, `calls` being the teacher calls
    in order as `(round, path, n, budget)`.
    """
    live, done, calls = [Beam()], [], []
    rounds = math.ceil(max_new_tokens / chunk_size)
    for c in range(1, rounds + 1):
        K = schedule_ref(c, schedule)
        pool = []
        for b in live:
            n = K if candidates_per == "beam" else math.ceil(K / len(live))
            budget = min(chunk_size, max_new_tokens - b.ntok)
            calls.append((c, b.path, n, budget))
            for k in range(n):
                s, ntok, eos = script(b.path, k, budget)
                pool.append((b, k, s, ntok, eos or b.ntok + ntok >= max_new_tokens, eos))
        if beam_score == "chunk":
            scores = [s / ntok for (_, _, s, ntok, _, _) in pool]
        else:
            scores = [(b.nll + s) / (b.ntok + ntok) for (b, _, s, ntok, _, _) in pool]
        keep = rank_ref(scores, [True] * len(pool), rule)[:beam_width]
        live = []
        for n in keep:
            b, k, s, ntok, finished, eos = pool[n]
            nb = Beam(b.path + (k,), b.nll + s, b.ntok + ntok, eos, b.chunk_ppls + [math.exp(s / ntok)])
            (done if finished else live).append(nb)
        if not live:
            break
    final = [b for b in done if b.eos] if prefer_eos and any(b.eos for b in done) else done
    if not final:
        return None, calls
    overall = [b.nll / b.ntok for b in final]
    order = rank_ref(overall, [True] * len(final), rule)
    return final[order[0]], calls
