"""Gen-SSD beam search: the candidate schedule and budget, the pool of one chunk round, ranking and beam bookkeeping
(Algorithm A, spec §2.1, §2.3, §8 A1-A2, App. A, Table 4).

Pure: torch only. How many teacher samples each round draws (`num_candidates`, `candidates_per_beam`), how they are
laid out per prompt (`candidate_pool`, `group_candidates`), which survive (`select_candidates`) and how the kept ones
become the next beams (`initial_beams`, `advance_beams`). Scores come from `perplexity.py`; when a trajectory ends and
which one is the output is in `termination.py`.
"""

from collections.abc import Sequence

import torch

from .._checks import check_choice as _check_choice
from ._selection_base import (
    BeamState,
    BeamStep,
    CandidatePool,
    Selection,
    _check_ints,
    _check_mask,
    _check_positive_int,
    _float,
)

RULES = ("low", "high", "random")  # selection rule, paper Table 4 / spec §8 A16 (rule also drives the final pick)
CANDIDATES_PER = ("beam", "step")  # K_c per surviving beam (Eq. 3) or split over the survivors, spec §8 A2
CANDIDATE_SCHEDULE = (16, 8, 4)  # K_1, K_2, K_{c>=3}: paper §3.2 "progressive sampling reduction", spec §2.1
BEAM_WIDTH = 2  # survivors per chunk: paper App. A, spec §8 A1 (1 is Eq. 4 as printed)
CHUNK_SIZE = 4096  # m = "4K": paper Table 1 caption and §5.2, read as 4096 (spec §8 A8)
MAX_NEW_TOKENS = 16384  # total completion budget "16K" over all chunks: paper §4.1 (spec §8 A8)

__all__ = [  # in the order of this file
    "RULES", "CANDIDATES_PER", "CANDIDATE_SCHEDULE", "BEAM_WIDTH", "CHUNK_SIZE", "MAX_NEW_TOKENS",
    "num_candidates", "max_chunk_rounds", "chunk_budget",
    "candidates_per_beam", "candidate_pool", "group_candidates", "select_candidates",
    "initial_beams", "advance_beams",
]


# --- schedule and budget (spec §2.1, §2.3) -------------------------------------------------------------------------


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


# --- beam bookkeeping (Algorithm A, lines 2, 15-21) ----------------------------------------------------------------


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
