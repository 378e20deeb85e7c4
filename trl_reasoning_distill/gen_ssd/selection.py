"""Gen-SSD: generation-time self-selection of teacher chunks by student perplexity, as pure selection pieces.

Paper: Student-in-the-Loop Chain-of-Thought Distillation via Generation-Time Selection,
https://huggingface.co/papers/2604.02819

    y*_c = argmin_k PPL_S(y_c^(k) | x, y_<c)                                                            (Eq. 4)
    PPL_S(y_c | x, y_<c) = exp(-(1/|y_c|) Σ_t log P_S(y_c,t | x, y_<c, y_c,<t))                    (spec §2.1)

The two lowest are kept per chunk (App. A) and the ended trajectory of lowest overall PPL is the output. The sampler
owns the teacher and student calls; here are tensors in and out, vectorised over P prompts: chunk scoring, the
candidate schedule, the pool layout, ranking (low / high / random, Table 4), beam bookkeeping, termination and the
final pick. Shapes: P prompts, B beams, N pool slots per prompt, laid out beam-major (beam b's samples together, in
sample order), M candidates flattened in that order, L chunk tokens, V vocabulary, F ended trajectories, C chunks.
Ranking uses log-PPL (mean NLL): it orders like PPL without overflowing; ties go to the lowest (beam, sample) slot.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .._checks import check_choice as _check_choice

RULES = ("low", "high", "random")  # selection rule, paper Table 4 / spec §8 A16 (rule also drives the final pick)
CANDIDATES_PER = ("beam", "step")  # K_c per surviving beam (Eq. 3) or split over the survivors, spec §8 A2
BEAM_SCORES = ("chunk", "cumulative")  # rank by chunk PPL (Eq. 4) or by the PPL of prefix + chunk, spec §8 A3
CANDIDATE_SCHEDULE = (16, 8, 4)  # K_1, K_2, K_{c>=3}: paper §3.2 "progressive sampling reduction", spec §2.1
BEAM_WIDTH = 2  # survivors per chunk: paper App. A, spec §8 A1 (1 is Eq. 4 as printed)
CHUNK_SIZE = 4096  # m = "4K": paper Table 1 caption and §5.2, read as 4096 (spec §8 A8)
MAX_NEW_TOKENS = 16384  # total completion budget "16K" over all chunks: paper §4.1 (spec §8 A8)


class CandidatePool(NamedTuple):
    """Layout of one chunk round's candidates, `(P, N)` each: `parent` (long, the beam a slot extends),
    `sample` (long, its sample index within that beam; both -1 on empty slots) and `valid` (bool)."""

    parent: torch.Tensor
    sample: torch.Tensor
    valid: torch.Tensor


class Selection(NamedTuple):
    """Ranked choice, `(P, K)` each, best first: `index` (long pool slot, -1 where nothing is kept), `score` (the
    kept slot's score, NaN where nothing is kept) and `kept` (bool; False when a row has fewer than K valid slots)."""

    index: torch.Tensor
    score: torch.Tensor
    kept: torch.Tensor


class BeamState(NamedTuple):
    """Beams of every prompt, `(P, B)` each: `nll` (summed student NLL of the accepted chunks), `tokens` (long, their
    token count) and `live` (bool: extended in the next round). Ended and empty entries are not live."""

    nll: torch.Tensor
    tokens: torch.Tensor
    live: torch.Tensor


class BeamStep(NamedTuple):
    """Result of [`advance_beams`]: the new `beams`; `parent` (long `(P, B)`, the previous beam each new beam extends,
    -1 for an empty entry) and `done` (bool `(P, B)`: the new beam ended in this round and is a final candidate)."""

    beams: BeamState
    parent: torch.Tensor
    done: torch.Tensor


class FinalPick(NamedTuple):
    """Result of [`final_pick`], `(P,)` each: `index` (long into F, -1 if none), `perplexity` (overall PPL of the pick,
    NaN if none) and `found` (bool: the prompt has an ended trajectory)."""

    index: torch.Tensor
    perplexity: torch.Tensor
    found: torch.Tensor


# --- checks ------------------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


def _check_mask(name: str, mask: torch.Tensor, shape: torch.Size | tuple) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must be a bool tensor of shape {tuple(shape)}, got {mask.dtype} {tuple(mask.shape)}."
        )


def _check_ints(name: str, values: torch.Tensor, shape: torch.Size | tuple) -> None:
    if values.is_floating_point() or values.dtype == torch.bool or tuple(values.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must be an integer tensor of shape {tuple(shape)}, got {values.dtype} {tuple(values.shape)}."
        )


def _float(values: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64): log-softmax and NLL sums in fp32, spec §2.4 / §8 A6."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


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


# --- schedule, budget and termination (spec §2.1, §2.3, §2.4) ------------------------------------------------------


def num_candidates(chunk_round: int, schedule: Sequence[int] = CANDIDATE_SCHEDULE) -> int:
    """
    Teacher samples `K_c` at chunk round `c`: `schedule[c - 1]`, and the last entry for every round past the end of
    the list (spec §9 item 8).

    Args:
        chunk_round (`int`):
            The chunk round c, 1-based (Algorithm A, line 5).
        schedule (`Sequence[int]`, *optional*, defaults to `(16, 8, 4)`):
            K_1, K_2, ...: the paper's progressive reduction 16, 8, 4, 4, ... (§3.2, spec §2.1). `(16,)` is App. C's
            fixed-16 control, `(1,)` plain chunked teacher sampling (spec §2.4).

    Returns:
        `int`: K_c >= 1.
    """
    if len(schedule) == 0:
        raise ValueError("`schedule` must hold at least one candidate count, e.g. (16, 8, 4).")
    for k in schedule:
        _check_positive_int("schedule entry", k)
    _check_positive_int("chunk_round", chunk_round)
    return schedule[min(chunk_round, len(schedule)) - 1]


def max_chunk_rounds(max_new_tokens: int = MAX_NEW_TOKENS, chunk_size: int = CHUNK_SIZE) -> int:
    """Most chunk rounds a prompt can take, `ceil(max_new_tokens / chunk_size)` (spec §2.3, Algorithm A, line 4)."""
    _check_positive_int("max_new_tokens", max_new_tokens)
    _check_positive_int("chunk_size", chunk_size)
    return -(-max_new_tokens // chunk_size)


def chunk_budget(
    tokens_before: torch.Tensor, chunk_size: int = CHUNK_SIZE, max_new_tokens: int = MAX_NEW_TOKENS
) -> torch.Tensor:
    """
    Tokens the teacher may generate for a chunk, `min(chunk_size, max_new_tokens - tokens_before)` (Algorithm A,
    line 8): a chunk is `chunk_size` tokens unless the total completion budget runs out first.

    Args:
        tokens_before (`torch.Tensor`):
            Integer tensor (any shape): completion tokens already accepted on the beam, in `[0, max_new_tokens]`.
        chunk_size (`int`, *optional*, defaults to `4096`):
            m (spec §3).
        max_new_tokens (`int`, *optional*, defaults to `16384`):
            Total completion budget over all chunks (spec §3).

    Returns:
        `torch.Tensor`: Long tensor of the same shape; 0 for a beam that has used the whole budget.
    """
    _check_positive_int("chunk_size", chunk_size)
    _check_positive_int("max_new_tokens", max_new_tokens)
    _check_ints("tokens_before", tokens_before, tokens_before.shape)
    if tokens_before.numel() and not 0 <= int(tokens_before.min()) <= int(tokens_before.max()) <= max_new_tokens:
        raise ValueError(f"`tokens_before` must lie in [0, max_new_tokens={max_new_tokens}].")
    return (max_new_tokens - tokens_before.long()).clamp_max(chunk_size)


def chunk_finish(
    candidate_ids: torch.Tensor,
    mask: torch.Tensor,
    tokens_before: torch.Tensor,
    *,
    eos_token_ids: Sequence[int],
    chunk_size: int = CHUNK_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Termination of each candidate chunk (spec §2.4): it ends its trajectory if it contains an EOS token or if the
    completion reaches `max_new_tokens` (Algorithm A, line 13). There is no other stop rule in the paper: no PPL
    threshold and no answer detection (the EOS after the answer is part of the trained trajectory, §8 A6).

    Also checks the chunk contract of spec §9 item 9: every candidate has 1 to `budget` tokens, nothing after its
    first EOS, and is shorter than its budget only when it holds an EOS.

    Args:
        candidate_ids (`torch.Tensor`):
            Integer tensor of shape `(M, L)`: the candidates' teacher token ids (any padding id, EOS allowed).
        mask (`torch.Tensor`):
            Bool tensor of shape `(M, L)`: the candidates' tokens (build it from lengths, not from `ids != pad`, which
            drops the EOS when pad is EOS).
        tokens_before (`torch.Tensor`):
            Integer tensor of shape `(M,)`: completion tokens of the beam each candidate extends.
        eos_token_ids (`Sequence[int]`):
            Token ids that end a completion (e.g. `<|im_end|>` and `<|endoftext|>`).
        chunk_size, max_new_tokens (`int`, *optional*):
            As in [`chunk_budget`].

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `eos` (bool `(M,)`: ended by EOS) and `finished` (bool `(M,)`: ended by
        EOS or by the total budget).
    """
    if candidate_ids.dim() != 2:
        raise ValueError(f"`candidate_ids` must have shape (M, L), got {tuple(candidate_ids.shape)}.")
    _check_ints("candidate_ids", candidate_ids, candidate_ids.shape)
    _check_mask("mask", mask, candidate_ids.shape)
    _check_ints("tokens_before", tokens_before, candidate_ids.shape[:1])
    if len(eos_token_ids) == 0:
        raise ValueError("`eos_token_ids` must name at least one end-of-sequence token id.")
    budget_M = chunk_budget(tokens_before, chunk_size, max_new_tokens)
    num_tokens_M = mask.sum(dim=-1)
    if ((num_tokens_M < 1) | (num_tokens_M > budget_M)).any():
        raise ValueError("every candidate must hold 1 to min(chunk_size, max_new_tokens - tokens_before) tokens.")
    eos_ML = torch.isin(candidate_ids, torch.as_tensor(list(eos_token_ids), device=candidate_ids.device)) & mask
    if (mask & (eos_ML.cumsum(dim=-1) - eos_ML.long() > 0)).any():
        raise ValueError("a candidate holds tokens after an EOS; cut each chunk right after its first EOS.")
    eos_M = eos_ML.any(dim=-1)
    if (~eos_M & (num_tokens_M < budget_M)).any():
        raise ValueError(
            "a candidate without EOS is shorter than its budget; only EOS or the total budget may end a chunk early "
            "(spec §2.4): generate without stop strings."
        )
    return eos_M, eos_M | (tokens_before + num_tokens_M >= max_new_tokens)


# --- the pool of one chunk round (spec §2.3, Algorithm A, lines 6-13; §8 A2) ---------------------------------------


def candidates_per_beam(live: torch.Tensor, num_candidates: int, candidates_per: str = "beam") -> torch.Tensor:
    """
    Teacher samples to draw from each beam this round (`n` of the teacher call on that beam's prefix).

    Args:
        live (`torch.Tensor`):
            Bool tensor of shape `(P, B)`: beams still being extended. Ended and pruned beams get 0 (never extended).
        num_candidates (`int`):
            `K_c` of this round, from [`num_candidates`].
        candidates_per (`str`, *optional*, defaults to `"beam"`):
            `"beam"`: `K_c` from every live beam (Eq. 3 samples K_c per prefix; spec §8 A2 default). `"step"`: `K_c`
            per prompt in total, split over its live beams by ceil division.

    Returns:
        `torch.Tensor`: Long tensor of shape `(P, B)`.
    """
    _check_choice("candidates_per", candidates_per, CANDIDATES_PER)
    _check_positive_int("num_candidates", num_candidates)
    if live.dtype != torch.bool or live.dim() != 2:
        raise ValueError(f"`live` must be a bool tensor of shape (P, B), got {live.dtype} {tuple(live.shape)}.")
    per_beam_P1 = torch.full((live.shape[0], 1), num_candidates, dtype=torch.long, device=live.device)
    if candidates_per == "step":
        live_P1 = live.sum(dim=-1, keepdim=True).clamp_min(1)
        per_beam_P1 = (per_beam_P1 + live_P1 - 1) // live_P1
    return torch.where(live, per_beam_P1, 0)


def candidate_pool(counts: torch.Tensor) -> CandidatePool:
    """
    Pool layout from the samples drawn per beam: slot `n` of prompt `p` holds the candidates of beam 0 first, then
    beam 1, ..., each in sample order, so slot order is the (beam, sample) tie order. N is the largest pool.

    Args:
        counts (`torch.Tensor`):
            Integer tensor of shape `(P, B)`, `>= 0`, from [`candidates_per_beam`].

    Returns:
        [`CandidatePool`]: `parent`, `sample` and `valid`, each `(P, N)`.
    """
    if counts.dim() != 2 or counts.shape[1] < 1:
        raise ValueError(f"`counts` must have shape (P, B) with B >= 1, got {tuple(counts.shape)}.")
    _check_ints("counts", counts, counts.shape)
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("`counts` must be >= 0.")
    ends_PB = counts.long().cumsum(dim=-1)
    total_P1 = ends_PB[:, -1:]
    width = int(total_P1.max()) if counts.shape[0] else 0
    slot_PN = torch.arange(width, device=counts.device).expand(counts.shape[0], width).contiguous()
    parent_PN = torch.searchsorted(ends_PB.contiguous(), slot_PN, right=True).clamp_max(counts.shape[1] - 1)
    sample_PN = slot_PN - (ends_PB - counts.long()).gather(-1, parent_PN)
    valid_PN = slot_PN < total_P1
    return CandidatePool(parent_PN.masked_fill(~valid_PN, -1), sample_PN.masked_fill(~valid_PN, -1), valid_PN)


def group_candidates(values: torch.Tensor, valid: torch.Tensor, fill: float | int | bool = 0) -> torch.Tensor:
    """
    Lay flat per-candidate values into the pool: the m-th candidate in (prompt, beam, sample) order goes to the m-th
    valid slot in row-major order (the order of [`candidate_pool`]).

    Args:
        values (`torch.Tensor`):
            Tensor of shape `(M, ...)`, e.g. chunk NLLs `(M,)` or token ids `(M, L)`.
        valid (`torch.Tensor`):
            Bool tensor of shape `(P, N)` with exactly M True entries.
        fill (`float`, `int` or `bool`, *optional*, defaults to `0`):
            Value of the empty slots.

    Returns:
        `torch.Tensor`: Shape `(P, N, ...)`.
    """
    if valid.dtype != torch.bool or valid.dim() != 2:
        raise ValueError(f"`valid` must be a bool tensor of shape (P, N), got {valid.dtype} {tuple(valid.shape)}.")
    if values.dim() < 1 or values.shape[0] != int(valid.sum()):
        raise ValueError(
            f"`values` must hold one row per valid slot ({int(valid.sum())}), got shape {tuple(values.shape)}."
        )
    grouped = values.new_full((*valid.shape, *values.shape[1:]), fill)
    grouped[valid] = values
    return grouped


# --- ranking (Eq. 4, App. A, Table 4) ------------------------------------------------------------------------------


def select_candidates(
    scores: torch.Tensor,
    valid: torch.Tensor,
    num_keep: int = BEAM_WIDTH,
    rule: str = "low",
    generator: torch.Generator | None = None,
) -> Selection:
    """
    The `num_keep` candidates to keep per prompt; every other slot is pruned (never extended, spec §2.4).

    `"low"` keeps the lowest scores (Eq. 4; with `num_keep=2` the beam of App. A), `"high"` the highest and
    `"random"` a uniform draw without replacement among the valid slots (Table 4). Ties keep the lower slot, i.e.
    the lower (beam, sample) pair (a stable sort). A prompt with fewer valid slots keeps them all.

    Args:
        scores (`torch.Tensor`):
            Float tensor of shape `(P, N)`: log-PPL from [`candidate_log_perplexity`] (or PPL: only the order is
            used); any value on empty slots, no NaN on valid ones.
        valid (`torch.Tensor`):
            Bool tensor of shape `(P, N)`: slots that hold a candidate.
        num_keep (`int`, *optional*, defaults to `2`):
            Survivors per prompt, the beam width B (paper App. A; 1 is Eq. 4 as printed).
        rule (`str`, *optional*, defaults to `"low"`):
            One of `"low"`, `"high"`, `"random"`.
        generator (`torch.Generator` or `None`, *optional*, defaults to `None`):
            Required by `"random"` (seed-deterministic draws); ignored otherwise.

    Returns:
        [`Selection`]: `index`, `score`, `kept`, each `(P, num_keep)`, best first.
    """
    _check_choice("rule", rule, RULES)
    _check_positive_int("num_keep", num_keep)
    if not scores.is_floating_point() or scores.dim() != 2:
        raise ValueError(f"`scores` must be a float tensor of shape (P, N), got {scores.dtype} {tuple(scores.shape)}.")
    _check_mask("valid", valid, scores.shape)
    if rule == "random" and generator is None:
        raise ValueError('rule="random" needs a `generator` (a seeded torch.Generator), so that draws are repeatable.')
    if torch.isnan(scores[valid]).any():
        raise ValueError("`scores` is NaN on a valid slot: every candidate needs at least one scored token.")
    if scores.shape[1] < num_keep:  # pad with empty slots, so that a row can always fill num_keep places
        pad = num_keep - scores.shape[1]
        scores = torch.cat([scores, scores.new_zeros(scores.shape[0], pad)], dim=-1)
        valid = torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], dim=-1)
    order_PN = _rank_keys(scores, rule, generator).sort(dim=-1, stable=True).indices
    invalid_PN = (~valid).gather(-1, order_PN).to(torch.int8)
    order_PN = order_PN.gather(-1, invalid_PN.sort(dim=-1, stable=True).indices)  # valid slots first, order kept
    kept_PK = torch.arange(num_keep, device=valid.device) < valid.sum(dim=-1, keepdim=True)
    index_PK = order_PN[:, :num_keep].masked_fill(~kept_PK, -1)
    score_PK = scores.gather(-1, index_PK.clamp_min(0)).masked_fill(~kept_PK, torch.nan)
    return Selection(index_PK, score_PK, kept_PK)


def _rank_keys(scores_PN: torch.Tensor, rule: str, generator: torch.Generator | None) -> torch.Tensor:
    """Ascending sort keys: the scores, their negation, or uniform noise drawn on the generator's device."""
    if rule == "low":
        return scores_PN
    if rule == "high":
        return -scores_PN
    noise_PN = torch.rand(scores_PN.shape, generator=generator, device=generator.device, dtype=torch.float64)
    return noise_PN.to(scores_PN.device)


# --- beam bookkeeping and the final pick (Algorithm A, lines 2, 15-24; spec §8 A5) --------------------------------


def initial_beams(
    num_prompts: int, beam_width: int = BEAM_WIDTH, device: torch.device | str | None = None
) -> BeamState:
    """Round-1 beams: one live, empty prefix per prompt (Algorithm A, line 2), in entry 0 of `beam_width`."""
    _check_positive_int("beam_width", beam_width)
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 0:
        raise ValueError(f"`num_prompts` must be an integer >= 0, got {num_prompts!r}.")
    live_PB = torch.zeros(num_prompts, beam_width, dtype=torch.bool, device=device)
    live_PB[:, 0] = True
    return BeamState(torch.zeros(num_prompts, beam_width, device=device), torch.zeros_like(live_PB, dtype=torch.long),
                     live_PB)


def advance_beams(
    beams: BeamState,
    pool: CandidatePool,
    selection: Selection,
    chunk_nll: torch.Tensor,
    chunk_tokens: torch.Tensor,
    finished: torch.Tensor,
) -> BeamStep:
    """
    New beams from the kept candidates (Algorithm A, lines 16-21): each extends its parent beam by its chunk, adding
    the chunk's NLL and tokens; a kept candidate that ended its trajectory is `done`, the others stay live. New beam
    `k` is the k-th best kept candidate. Pruned candidates and ended beams are never extended.

    Args:
        beams (`BeamState`):
            The beams the round's pool extends, `(P, B)`.
        pool (`CandidatePool`):
            The round's layout, `(P, N)`, from [`candidate_pool`].
        selection (`Selection`):
            From [`select_candidates`] with `num_keep = B`.
        chunk_nll (`torch.Tensor`):
            Summed chunk NLL per slot, `(P, N)`.
        chunk_tokens (`torch.Tensor`):
            Integer chunk lengths per slot, `(P, N)`.
        finished (`torch.Tensor`):
            Bool tensor `(P, N)`: the slot's chunk ended its trajectory (from [`chunk_finish`], grouped).

    Returns:
        [`BeamStep`]: the new beams, the parent beam of each, and which ended this round.
    """
    P, B = beams.live.shape
    if selection.index.shape != (P, B):
        raise ValueError(
            f"`selection` must keep num_keep = beam width = {B} per prompt, got {tuple(selection.index.shape)}."
        )
    _check_mask("pool.valid", pool.valid, pool.valid.shape)
    if pool.valid.shape[0] != P or chunk_nll.shape != pool.valid.shape:
        raise ValueError(f"`pool` and `chunk_nll` must have shape (P={P}, N), got {tuple(pool.valid.shape)} and "
                         f"{tuple(chunk_nll.shape)}.")
    _check_ints("chunk_tokens", chunk_tokens, pool.valid.shape)
    _check_mask("finished", finished, pool.valid.shape)
    kept_PB, slot_PB = selection.kept, selection.index.clamp_min(0)
    if pool.valid.shape[1] == 0:  # no candidate anywhere (every beam had ended): nothing is kept
        empty_PB = torch.zeros_like(beams.live)
        return BeamStep(BeamState(torch.zeros_like(_float(beams.nll)), torch.zeros_like(beams.tokens), empty_PB),
                        torch.full_like(beams.tokens, -1), empty_PB)
    if (kept_PB & ~pool.valid.gather(-1, slot_PB)).any():
        raise ValueError("`selection` keeps an empty pool slot; select with the pool's `valid` mask.")
    parent_PB = pool.parent.gather(-1, slot_PB).clamp_min(0)
    if (kept_PB & ~beams.live.gather(-1, parent_PB)).any():
        raise ValueError("a kept candidate extends a beam that is not live: pruned or ended beams are never extended.")
    nll_PB = _float(beams.nll).gather(-1, parent_PB) + _float(chunk_nll).gather(-1, slot_PB)
    tokens_PB = beams.tokens.gather(-1, parent_PB) + chunk_tokens.long().gather(-1, slot_PB)
    done_PB = kept_PB & finished.gather(-1, slot_PB)
    new = BeamState(nll_PB.masked_fill(~kept_PB, 0.0), tokens_PB.masked_fill(~kept_PB, 0), kept_PB & ~done_PB)
    return BeamStep(new, parent_PB.masked_fill(~kept_PB, -1), done_PB)


def final_pick(
    nll: torch.Tensor,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    eos: torch.Tensor,
    *,
    rule: str = "low",
    prefer_eos: bool = True,
    generator: torch.Generator | None = None,
) -> FinalPick:
    """
    The one trajectory kept per prompt among those that ended (App. A: lowest overall PPL; Algorithm A, lines 23-24).

    With `prefer_eos`, trajectories ended by EOS are chosen over those cut by the budget whenever a prompt has one
    (spec §8 A5). `"high"` takes the highest overall PPL and `"random"` a uniform draw (Table 4 ablation, §8 A16).
    Ties keep the lowest index in F. The answer check comes afterwards, on this trajectory only (Eq. 5).

    Args:
        nll (`torch.Tensor`):
            Summed NLL of each ended trajectory, `(P, F)` (e.g. `BeamStep.beams.nll` of the `done` entries).
        tokens (`torch.Tensor`):
            Integer completion lengths, `(P, F)`; `>= 1` on valid entries.
        valid (`torch.Tensor`):
            Bool tensor `(P, F)`: the entry holds an ended trajectory.
        eos (`torch.Tensor`):
            Bool tensor `(P, F)`: it ended with EOS (otherwise with the budget).
        rule (`str`, *optional*, defaults to `"low"`):
            One of `"low"`, `"high"`, `"random"`.
        prefer_eos (`bool`, *optional*, defaults to `True`):
            Spec §8 A5.
        generator (`torch.Generator` or `None`, *optional*, defaults to `None`):
            Required by `"random"`.

    Returns:
        [`FinalPick`]: `index`, `perplexity`, `found`, each `(P,)`.
    """
    if not nll.is_floating_point() or nll.dim() != 2:
        raise ValueError(f"`nll` must be a float tensor of shape (P, F), got {nll.dtype} {tuple(nll.shape)}.")
    _check_ints("tokens", tokens, nll.shape)
    _check_mask("valid", valid, nll.shape)
    _check_mask("eos", eos, nll.shape)
    if (valid & (tokens < 1)).any():
        raise ValueError("every ended trajectory must hold at least one token.")
    any_eos_P1 = (valid & eos).any(dim=-1, keepdim=True)
    allowed_PF = valid & (eos | ~any_eos_P1) if prefer_eos else valid
    log_ppl_PF = _float(nll) / tokens.clamp_min(1)  # overall PPL = exp(Σ NLL / Σ |y_c|), spec §8 A4
    pick = select_candidates(log_ppl_PF, allowed_PF, 1, rule, generator)
    return FinalPick(pick.index[:, 0], pick.score[:, 0].exp(), pick.kept[:, 0])


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
