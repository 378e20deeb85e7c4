"""Gen-SSD termination and the final pick: when a candidate chunk ends its trajectory, and which ended trajectory is
kept per prompt (spec §2.4, §8 A4-A5, App. A, Algorithm A, lines 13 and 23-24).

Pure: torch only. `chunk_finish` (EOS or total budget, with the chunk contract of spec §9 item 9) and `final_pick`
(lowest overall PPL, EOS-ended first); the answer check comes after the pick, in the sampler.
"""

from collections.abc import Sequence

import torch

from ._selection_base import FinalPick, _check_ints, _check_mask, _float
from .beam_search import CHUNK_SIZE, MAX_NEW_TOKENS, chunk_budget, select_candidates

__all__ = ["chunk_finish", "final_pick"]


# --- termination (spec §2.4) ---------------------------------------------------------------------------------------


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


# --- the final pick (Algorithm A, lines 23-24; spec §8 A5) ----------------------------------------------------------


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
