"""CoTD-PO: chain-of-thought distillation with a listwise, reference-free preference loss, as pure loss pieces.

Paper: CoTD-PO: Chain-of-Thought Distillation with Preference Optimization (Niu et al., BUPT); no paper id is given
in the paper, the authors' code is https://github.com/little-mushroom0/COTD_PO (`cotdpo_o.py`).

    L = w_rat · L_rat + α · L_apa,   L_apa = -Σ_i p̃_i log q_i        (Eq. 9 as L_rat + α L_apa; Eq. 8)

with p̃ = softmax(teacher scores) over the K student answers of one prompt (Eq. 4) and q = softmax(λ · log p_s(y_i))
(Eq. 7-8); no reference model. The defaults compute the released code's loss (spec §2.12): rewards min-max scaled to
[0, 5) per prompt, λ = 0.5 on the answer log-likelihood divided by the group's padded length minus 1, α = 1, rationale
NLL a token mean. Eq. 4 and 8 literally: `reward_normalization="none"`, `reward_scale=1`, `logp_aggregation="sum"`.
Departures from the code: missing candidates leave both softmaxes (the code would score them 0, spec §7 item 19);
the rationale NLL is read from the first valid row, not the best one (equal under right padding), mean per prompt.

Where the pieces live (all pure, torch only; every public name is importable from here):
- `likelihood.py`: per-sequence log-likelihoods (`token_log_probs`, `sequence_log_likelihood`, `aggregate_logps`)
  and the rationale NLL (`rationale_nll`);
- `listwise.py`: the teacher target (`normalize_rewards`, `target_distribution`, Eq. 4) and L_apa
  (`listwise_preference_loss`, `listwise_score_gradient`, Eq. 8);
- `pairwise.py`: the SimPO ablation (`pairwise_preference_loss`, Eq. 11);
- `_loss_common.py`: argument checks, the compute dtype and the candidate mask they share;
- here: the composite objective `cotd_po_loss` (Eq. 9) and its output `CoTDPOOutput`.
"""

from dataclasses import dataclass, fields

import torch

from .._checks import check_choice as _check_choice
from ._loss_common import _check_non_negative, _float_dtype, _valid_mask
from .likelihood import (
    LOGP_AGGREGATIONS,
    RATIONALE_REDUCTIONS,
    SequenceLogLikelihood,
    _rationale_terms,
    aggregate_logps,
    rationale_nll,
    sequence_log_likelihood,
    token_log_probs,
)
from .listwise import (
    REWARD_NORMALIZATIONS,
    _listwise_terms,
    listwise_preference_loss,
    listwise_score_gradient,
    normalize_rewards,
    target_distribution,
)
from .pairwise import _best_worst, _pairwise_terms, _pick, pairwise_preference_loss

LOSS_MODES = ("apa", "pairwise_simpo")

__all__ = [
    "LOGP_AGGREGATIONS",
    "LOSS_MODES",
    "RATIONALE_REDUCTIONS",
    "REWARD_NORMALIZATIONS",
    "CoTDPOOutput",
    "SequenceLogLikelihood",
    "aggregate_logps",
    "cotd_po_loss",
    "listwise_preference_loss",
    "listwise_score_gradient",
    "normalize_rewards",
    "pairwise_preference_loss",
    "rationale_nll",
    "sequence_log_likelihood",
    "target_distribution",
    "token_log_probs",
]


# --- the composite objective (Eq. 9) ---------------------------------------------------------------------------------


@dataclass
class CoTDPOOutput:
    """
    Result of [`cotd_po_loss`]. `loss`, `preference`, `rationale` and `best_answer_nll` are 0-dim tensors on the
    autograd graph, `loss = rationale_weight · rationale + alpha · preference + best_answer_nll_weight ·
    best_answer_nll`; `preference` is L_apa (or the pairwise loss). The rest are detached means over prompts with a
    valid candidate: `kl` = KL(p̃ || q), `target_entropy` = H(p̃), `student_entropy` = H(q), `score_best` /
    `score_worst` (aggregated log-likelihood of the highest / lowest-reward candidate), `answer_len` (mean answer
    tokens of valid candidates), `valid_frac` (valid / all candidates), `pair_frac` (prompts with a strict best/worst
    pair).
    """

    loss: torch.Tensor
    preference: torch.Tensor
    rationale: torch.Tensor
    best_answer_nll: torch.Tensor
    kl: torch.Tensor
    target_entropy: torch.Tensor
    student_entropy: torch.Tensor
    score_best: torch.Tensor
    score_worst: torch.Tensor
    answer_len: torch.Tensor
    valid_frac: torch.Tensor
    pair_frac: torch.Tensor

    @property
    def metrics(self) -> dict[str, float]:
        """Every field but `loss` as a Python float, for logging under `cotd_po/<name>`."""
        return {f.name: getattr(self, f.name).detach().item() for f in fields(self) if f.name != "loss"}


def _mean_over(values_B: torch.Tensor, rows_B: torch.Tensor) -> torch.Tensor:
    """Mean of `values_B` over the rows in `rows_B`; 0 (with zero gradient) when there are none."""
    return torch.where(rows_B, values_B, 0.0).sum() / rows_B.sum().clamp_min(1)


def _check_token_inputs(token_logps, answer_mask, rewards, rationale_mask, candidate_mask):
    if token_logps.dim() != 3 or answer_mask.shape != token_logps.shape:
        raise ValueError(
            f"Expected `token_logps` and `answer_mask` of one shape (B, G, T); got {tuple(token_logps.shape)} and "
            f"{tuple(answer_mask.shape)}."
        )
    if rewards.shape != token_logps.shape[:2]:
        raise ValueError(f"`rewards` must have shape {tuple(token_logps.shape[:2])}, got {tuple(rewards.shape)}.")
    if rationale_mask is not None and rationale_mask.shape != token_logps.shape:
        raise ValueError(
            f"`rationale_mask` must have shape {tuple(token_logps.shape)}, got {tuple(rationale_mask.shape)}."
        )
    if candidate_mask is not None and candidate_mask.shape != rewards.shape:
        raise ValueError(
            f"`candidate_mask` must have shape {tuple(rewards.shape)}, got {tuple(candidate_mask.shape)}."
        )


def cotd_po_loss(
    token_logps: torch.Tensor,
    answer_mask: torch.Tensor,
    rewards: torch.Tensor,
    *,
    rationale_mask: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    group_max_len: torch.Tensor | None = None,
    lam: float = 0.5,
    alpha: float = 1.0,
    rationale_weight: float = 1.0,
    logp_aggregation: str = "padded_mean",
    reward_normalization: str = "minmax",
    reward_scale: float = 5.0,
    reward_norm_eps: float = 1e-3,
    rationale_reduction: str = "token_mean",
    best_answer_nll_weight: float = 0.0,
    loss_mode: str = "apa",
    simpo_beta: float = 2.5,
    simpo_gamma: float = 1.375,
    chosen_nll_weight: float = 1.0,
) -> CoTDPOOutput:
    """
    CoTD-PO objective, Eq. (9): `L = rationale_weight · L_rat + alpha · mean_b L_apa,b (+ best_answer_nll_weight ·
    NLL of the best answer)`.

    Per prompt b: `s_b,i` = [`aggregate_logps`] of the answer tokens of candidate i, `p̃ = softmax(normalize(r_b))`
    ([`normalize_rewards`], Eq. 4), `L_apa,b = -Σ_i p̃_i log softmax(λ s_b)_i` (Eq. 8); `L_rat` is [`rationale_nll`].
    A candidate is valid if `candidate_mask` allows it, its reward is finite (a failed judge parse is NaN, spec §9.6)
    and it has answer tokens; invalid ones leave both softmaxes, so padded dummy slots change nothing (spec §8 item
    10). Terms are means over the prompts that have something to contribute (a valid candidate, rationale tokens,
    a pair). With `alpha = 0` this is the rationale SFT loss; with `rationale_weight = 0` a pure L_apa (spec §8
    item 13).

    Args:
        token_logps (`torch.Tensor`):
            Per-token log-probs of shape `(B, G, T)`: `token_logps[b, g]` scores the sequence prompt ⊕ rationale ⊕
            answer g of prompt b (e.g. [`token_log_probs`] of the `B·G` rows, viewed as `(B, G, L - 1)`).
        answer_mask (`torch.Tensor`):
            Bool `(B, G, T)` aligned with `token_logps`: answer positions, end-of-turn token included (spec §2.12).
        rewards (`torch.Tensor`):
            Raw teacher rewards `r_t(y_i | x)` of shape `(B, G)`.
        rationale_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G, T)`: rationale positions; `None` means no rationale (the No-Teacher-CoT ablation).
        candidate_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: real candidates (False for padded slots).
        group_max_len (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Shape `(B,)`: see [`aggregate_logps`]; needed by `"padded_mean"`.
        lam (`float`, *optional*, defaults to `0.5`):
            λ (paper: not reported; released code 0.5 with `"padded_mean"`, spec §7 item 1). With `"sum"` use a much
            smaller λ.
        alpha (`float`, *optional*, defaults to `1.0`):
            α, weight of the preference term (released code, spec §7 item 2).
        rationale_weight (`float`, *optional*, defaults to `1.0`):
            Weight of L_rat (Eq. 9: 1; 0 for the No-Teacher-CoT ablation, spec §9.8).
        logp_aggregation (`str`, *optional*, defaults to `"padded_mean"`):
            See [`aggregate_logps`] (released code; spec §7 item 1).
        reward_normalization (`str`, *optional*, defaults to `"minmax"`):
            See [`normalize_rewards`] (released code; spec §7 item 3).
        reward_scale (`float`, *optional*, defaults to `5.0`):
            Multiplier after normalisation (released code, spec §2.4).
        reward_norm_eps (`float`, *optional*, defaults to `1e-3`):
            Denominator epsilon of the normalisation (released code, spec §2.4).
        rationale_reduction (`str`, *optional*, defaults to `"token_mean"`):
            See [`rationale_nll`] (released code; spec §7 item 4).
        best_answer_nll_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the token-mean NLL of the highest-reward answer (the code logs it with weight 0, spec §2.12).
        loss_mode (`str`, *optional*, defaults to `"apa"`):
            `"apa"` (Eq. 8) or `"pairwise_simpo"` ([`pairwise_preference_loss`], Table 3 ablation).
        simpo_beta, simpo_gamma, chosen_nll_weight:
            Parameters of [`pairwise_preference_loss`] (`beta`, `gamma`, `chosen_nll_weight`).

    Returns:
        [`CoTDPOOutput`]: The loss (float32, or float64 for float64 log-probs) and its terms.
    """
    _check_choice("loss_mode", loss_mode, LOSS_MODES)
    for name, value in (("alpha", alpha), ("rationale_weight", rationale_weight),
                        ("best_answer_nll_weight", best_answer_nll_weight)):
        _check_non_negative(name, value)
    _check_token_inputs(token_logps, answer_mask, rewards, rationale_mask, candidate_mask)
    dtype = _float_dtype(token_logps)
    answer_BGT = answer_mask.bool()
    logp_sum_BG = torch.where(answer_BGT, token_logps.to(dtype), 0.0).sum(dim=-1)
    num_tokens_BG = answer_BGT.sum(dim=-1)
    rewards_BG = rewards.detach().to(device=token_logps.device)
    valid_BG = _valid_mask(rewards_BG, candidate_mask) & torch.isfinite(rewards_BG) & (num_tokens_BG > 0)
    has_valid_B = valid_BG.any(dim=-1)

    scores_BG = aggregate_logps(logp_sum_BG, num_tokens_BG, logp_aggregation, group_max_len)
    targets_BG = normalize_rewards(
        rewards_BG, valid_BG, method=reward_normalization, scale=reward_scale, eps=reward_norm_eps
    )
    apa_B, target_BG, log_q_BG, _ = _listwise_terms(scores_BG, targets_BG, lam, 1.0, valid_BG)  # Eq. (4), (8)
    pair_B, has_pair_B = _pairwise_terms(
        logp_sum_BG, num_tokens_BG, rewards_BG, valid_BG, simpo_beta, simpo_gamma, chosen_nll_weight
    )  # Eq. (11)
    if loss_mode == "apa":
        preference = _mean_over(apa_B, has_valid_B)
    else:
        preference = _mean_over(pair_B, has_pair_B)

    if rationale_mask is None:
        rationale = torch.zeros((), dtype=dtype, device=token_logps.device)
    else:
        rationale_B, rationale_count_B = _rationale_terms(token_logps, rationale_mask, valid_BG, rationale_reduction)
        rationale = _mean_over(rationale_B, rationale_count_B > 0)
    best_B, worst_B = _best_worst(rewards_BG.to(dtype), valid_BG)
    mean_logp_BG = logp_sum_BG / num_tokens_BG.clamp_min(1)
    best_answer_nll = _mean_over(-_pick(mean_logp_BG, best_B), has_valid_B)
    loss = rationale_weight * rationale + alpha * preference + best_answer_nll_weight * best_answer_nll  # Eq. (9)

    with torch.no_grad():
        target_entropy_B = -torch.special.xlogy(target_BG, target_BG).sum(dim=-1)
        q_BG = torch.where(valid_BG, log_q_BG.exp(), 0.0)
        student_entropy_B = -(q_BG * log_q_BG).sum(dim=-1)
        answer_len = (num_tokens_BG * valid_BG).sum().to(dtype) / valid_BG.sum().clamp_min(1).to(dtype)
        return CoTDPOOutput(
            loss=loss,
            preference=preference,
            rationale=rationale,
            best_answer_nll=best_answer_nll,
            kl=_mean_over(apa_B.detach() - target_entropy_B, has_valid_B),
            target_entropy=_mean_over(target_entropy_B, has_valid_B),
            student_entropy=_mean_over(student_entropy_B, has_valid_B),
            score_best=_mean_over(_pick(scores_BG.detach(), best_B), has_valid_B),
            score_worst=_mean_over(_pick(scores_BG.detach(), worst_B), has_valid_B),
            answer_len=answer_len,
            valid_frac=valid_BG.sum().to(dtype) / max(valid_BG.numel(), 1),
            pair_frac=has_pair_B.sum().to(dtype) / max(has_pair_B.numel(), 1),
        )
