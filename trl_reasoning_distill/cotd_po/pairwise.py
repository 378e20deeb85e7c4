"""CoTD-PO pairwise ablation of Table 3: SimPO on the best and worst candidate of each prompt plus NLL (Eq. 11).

Pure: torch only. Also the best/worst candidate indices (`_best_worst`, `_pick`) that the composite objective in
`loss.py` logs for either loss mode.
"""

import torch
import torch.nn.functional as F

from ._loss_common import _check_non_negative, _check_positive, _float_dtype, _valid_mask

__all__ = ["pairwise_preference_loss"]


# --- pairwise ablation (Eq. 11, SimPO) -------------------------------------------------------------------------------


def _best_worst(rewards_BG: torch.Tensor, valid_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the highest and lowest reward among valid candidates (ties: first index, spec §7 item 20)."""
    best_B = torch.where(valid_BG, rewards_BG, -torch.inf).argmax(dim=-1)
    worst_B = torch.where(valid_BG, rewards_BG, torch.inf).argmin(dim=-1)
    return best_B, worst_B


def _pick(values_BG: torch.Tensor, index_B: torch.Tensor) -> torch.Tensor:
    return values_BG.gather(-1, index_B.unsqueeze(-1)).squeeze(-1)


def _pairwise_terms(logp_sum_BG, num_tokens_BG, rewards_BG, mask_BG, beta, gamma, chosen_nll_weight):
    """(loss `(B,)`, has-pair `(B,)`)."""
    _check_positive("beta", beta)
    _check_non_negative("chosen_nll_weight", chosen_nll_weight)
    if num_tokens_BG.shape != logp_sum_BG.shape or rewards_BG.shape != logp_sum_BG.shape:
        raise ValueError(
            f"Expected `logp_sum`, `num_tokens` and `rewards` of one shape (B, G); got {tuple(logp_sum_BG.shape)}, "
            f"{tuple(num_tokens_BG.shape)} and {tuple(rewards_BG.shape)}."
        )
    rewards_BG = rewards_BG.detach()
    valid_BG = _valid_mask(logp_sum_BG, mask_BG) & torch.isfinite(rewards_BG)
    best_B, worst_B = _best_worst(rewards_BG, valid_BG)
    has_pair_B = _pick(rewards_BG, best_B) > _pick(rewards_BG, worst_B)  # needs two valid, unequal rewards
    dtype = _float_dtype(logp_sum_BG)
    mean_BG = logp_sum_BG.to(dtype) / num_tokens_BG.to(dtype).clamp_min(1)  # s̄ = log π(y) / |y|
    mean_BG = torch.where(valid_BG, mean_BG, 0.0)  # a NaN in an unused slot must not reach logsigmoid's backward
    chosen_B, rejected_B = _pick(mean_BG, best_B), _pick(mean_BG, worst_B)
    pair_B = -F.logsigmoid(beta * (chosen_B - rejected_B) - gamma) + chosen_nll_weight * -chosen_B  # Eq. (11) + NLL
    return torch.where(has_pair_B, pair_B, 0.0), has_pair_B


def pairwise_preference_loss(
    logp_sum: torch.Tensor,
    num_tokens: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 2.5,
    gamma: float = 1.375,
    chosen_nll_weight: float = 1.0,
) -> torch.Tensor:
    """
    Pairwise ablation of Table 3: SimPO on the best and worst candidate of each prompt, plus NLL on the best (Eq. 11).

    `-log σ(β (s̄_c - s̄_r) - γ) + w · (-s̄_c)` with `s̄ = log π(y) / |y|`, `c` the highest and `r` the lowest reward
    among the valid candidates (ties: first index). A prompt without two valid candidates of different rewards has
    no pair and gives 0 (ours: no preference to learn from).

    Args:
        logp_sum (`torch.Tensor`):
            Summed answer-token log-probs of shape `(B, G)`.
        num_tokens (`torch.Tensor`):
            Answer tokens per candidate, shape `(B, G)`.
        rewards (`torch.Tensor`):
            Teacher rewards of shape `(B, G)` (only their order matters); non-finite ones are invalid.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: valid candidates.
        beta (`float`, *optional*, defaults to `2.5`):
            SimPO β (not reported by the paper; SimPO's Llama-3-8B-Instruct v1 recipe, spec §7 item 24).
        gamma (`float`, *optional*, defaults to `1.375`):
            SimPO margin γ (not reported; the same recipe's γ/β = 0.55, spec §7 item 24).
        chosen_nll_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the chosen answer's token-mean NLL (the paper adds it without a value, spec §2.10; ours: 1).

    Returns:
        `torch.Tensor`: Loss of shape `(B,)`.
    """
    return _pairwise_terms(logp_sum, num_tokens, rewards, mask, beta, gamma, chosen_nll_weight)[0]
