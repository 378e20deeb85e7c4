"""Gen-SSD chunk perplexity: the student's scores of teacher chunks (Eq. 4, spec §2.1, §2.4).

Pure: torch only. Token log-probabilities of a candidate chunk, its summed NLL and PPL, the token-weighted PPL of a
whole trajectory, the ranking score of each pool slot (chunk or cumulative log-PPL) and `right_pad`, which lays
token-id lists into the `(M, L)` tensors these take. Ranking and beams are in `beam_search.py`.
"""

from collections.abc import Sequence

import torch

from .._checks import check_choice as _check_choice
from ._selection_base import BeamState, CandidatePool, _check_ints, _check_mask, _float

BEAM_SCORES = ("chunk", "cumulative")  # rank by chunk PPL (Eq. 4) or by the PPL of prefix + chunk, spec §8 A3

__all__ = [
    "BEAM_SCORES",
    "candidate_log_perplexity",
    "candidate_token_logprobs",
    "chunk_nll",
    "chunk_perplexity",
    "right_pad",
    "trajectory_perplexity",
]


# --- chunk perplexity (spec §2.1, §2.4, §8 A4, A6) -----------------------------------------------------------------


def candidate_token_logprobs(
    student_logits: torch.Tensor, candidate_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Student log-probability of each candidate token, `log softmax(logits)[id]` in fp32 (spec §2.4).

    Args:
        student_logits (`torch.Tensor`):
            Logits of shape `(..., L, V)`, causally aligned: row `t` is the student's distribution for candidate token
            `t` given the prompt, the accepted prefix and the candidate's tokens before `t`.
        candidate_ids (`torch.Tensor`):
            Integer tensor of shape `(..., L)`: the candidate tokens.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor of shape `(..., L)`: the candidate's tokens (EOS included). Ids elsewhere are ignored (they
            may be out of range) and their log-probability is 0.

    Returns:
        `torch.Tensor`: Log-probabilities of shape `(..., L)`, float32 (float64 for float64 logits).
    """
    leading_ok = student_logits.dim() >= 2 and student_logits.shape[:-1] == candidate_ids.shape
    if not leading_ok or candidate_ids.is_floating_point():
        raise ValueError(
            f"Expected logits (..., L, V) and integer `candidate_ids` (..., L) of the same leading shape, got "
            f"{tuple(student_logits.shape)} and {candidate_ids.dtype} {tuple(candidate_ids.shape)}."
        )
    if mask is not None:
        _check_mask("mask", mask, candidate_ids.shape)
        candidate_ids = candidate_ids.masked_fill(~mask, 0)
    vocab = student_logits.shape[-1]
    if candidate_ids.numel() and not 0 <= int(candidate_ids.min()) <= int(candidate_ids.max()) < vocab:
        raise ValueError(f"`candidate_ids` must lie in [0, {vocab}), the logits' vocabulary (padding: pass `mask`).")
    logits = _float(student_logits)
    logprobs = logits.gather(-1, candidate_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return logprobs if mask is None else logprobs.masked_fill(~mask, 0.0)


def chunk_nll(token_logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Summed student NLL and token count of each chunk: `-Σ_t log P_S(y_t | ...)` over the chunk's own tokens only.

    Positions outside `mask` are ignored whatever they hold (padding on either side, -inf or NaN), so the result does
    not depend on padding, batch size or batch composition (spec §9 item 12).

    Args:
        token_logprobs (`torch.Tensor`):
            Log-probabilities of shape `(..., L)`, e.g. from [`candidate_token_logprobs`]; `<= 0` on the mask.
        mask (`torch.Tensor`):
            Bool tensor of the same shape: the chunk's tokens, EOS included (spec §8 A6).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `nll` (float32 or float64, `(...)`) and `num_tokens` (long, `(...)`).
    """
    _check_mask("mask", mask, token_logprobs.shape)
    logprobs = torch.where(mask, _float(token_logprobs), 0.0)
    if (logprobs > 1e-6).any():
        raise ValueError("`token_logprobs` must be log-probabilities (<= 0) on the mask; were logits passed?")
    return -logprobs.sum(dim=-1), mask.sum(dim=-1)


def chunk_perplexity(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Student perplexity of each chunk given the prompt and the accepted prefix (spec §2.1):
    `exp(-(1/|y_c|) Σ_t log P_S(y_c,t | x, y_<c, y_c,<t))`, natural log, no length penalty beyond the mean (§8 A6).

    Args:
        token_logprobs (`torch.Tensor`):
            Log-probabilities of shape `(..., L)` of the chunk tokens.
        mask (`torch.Tensor`):
            Bool tensor of the same shape: the chunk's tokens.

    Returns:
        `torch.Tensor`: PPL `>= 1` of shape `(...)`; NaN for a row without tokens (an empty pool slot).
    """
    nll, num_tokens = chunk_nll(token_logprobs, mask)
    return torch.exp(nll / num_tokens)


def trajectory_perplexity(chunk_nll: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
    """
    Overall PPL of whole trajectories from their chunks, token-weighted (spec §2.1 identity, §8 A4):
    `exp(Σ_c NLL_c / Σ_c |y_c|)`, not the mean of the chunk PPLs.

    Args:
        chunk_nll (`torch.Tensor`):
            Summed NLL of each chunk, shape `(..., C)` (0 for absent chunks).
        chunk_tokens (`torch.Tensor`):
            Integer token count of each chunk, same shape (0 for absent chunks).

    Returns:
        `torch.Tensor`: Shape `(...)`; NaN for a trajectory without tokens.
    """
    _check_ints("chunk_tokens", chunk_tokens, chunk_nll.shape)
    return torch.exp(_float(chunk_nll).sum(dim=-1) / chunk_tokens.sum(dim=-1))


def candidate_log_perplexity(
    chunk_nll: torch.Tensor,
    chunk_tokens: torch.Tensor,
    *,
    beam_score: str = "chunk",
    pool: CandidatePool | None = None,
    beams: BeamState | None = None,
) -> torch.Tensor:
    """
    Ranking score of every pool slot: the log-PPL of the chunk (Eq. 4, spec §8 A3 default) or, with
    `beam_score="cumulative"`, of the parent beam's accepted prefix followed by the chunk.

    Args:
        chunk_nll (`torch.Tensor`):
            Summed chunk NLL per slot, `(P, N)`, from [`chunk_nll`] laid out by [`group_candidates`].
        chunk_tokens (`torch.Tensor`):
            Integer chunk lengths per slot, `(P, N)`; 0 on empty slots.
        beam_score (`str`, *optional*, defaults to `"chunk"`):
            `"chunk"` or `"cumulative"` (spec §8 A3; the two agree when B = 1 and chunks are full length).
        pool (`CandidatePool` or `None`, *optional*, defaults to `None`):
            The round's layout; needed with `"cumulative"`.
        beams (`BeamState` or `None`, *optional*, defaults to `None`):
            The beams the pool extends; needed with `"cumulative"`.

    Returns:
        `torch.Tensor`: Log-PPL of shape `(P, N)`; NaN on slots without chunk tokens (empty slots).
    """
    _check_choice("beam_score", beam_score, BEAM_SCORES)
    _check_ints("chunk_tokens", chunk_tokens, chunk_nll.shape)
    nll, tokens = _float(chunk_nll), chunk_tokens
    if beam_score == "cumulative":
        if pool is None or beams is None:
            raise ValueError('beam_score="cumulative" needs the round\'s `pool` and the `beams` it extends.')
        _check_ints("pool.parent", pool.parent, chunk_nll.shape)
        parent = pool.parent.clamp_min(0)
        nll = nll + _float(beams.nll).gather(-1, parent)
        tokens = tokens + beams.tokens.gather(-1, parent)
    return torch.where(chunk_tokens > 0, nll / tokens.clamp_min(1), torch.nan)


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `(ids, mask)`, each `(M, L)` with L the longest sequence: sequences left-aligned, `mask` built from the lengths
    (so an EOS equal to `pad_id` stays a token). Returns long ids and a bool mask.
    """
    width = max((len(s) for s in sequences), default=0)
    ids_ML = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for m, seq in enumerate(sequences):
        ids_ML[m, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    lengths_M = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return ids_ML.to(device), (torch.arange(width) < lengths_M[:, None]).to(device)
