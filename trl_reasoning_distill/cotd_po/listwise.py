"""CoTD-PO listwise answer preference alignment: the teacher target (Eq. 4) and L_apa (Eq. 8), reference-free.

Pure: torch only. `normalize_rewards` and `target_distribution` build p̃ from the teacher's rewards,
`listwise_preference_loss` is `-Σ_i p̃_i log q_i` with `q = softmax(λ · log p_s)`, and `listwise_score_gradient` its
closed-form gradient in the scores. The pairwise ablation is in `pairwise.py`, the composite objective in `loss.py`.
"""

import torch

from .._checks import check_choice as _check_choice
from ._loss_common import _check_non_negative, _check_positive, _float_dtype, _valid_mask

REWARD_NORMALIZATIONS = ("minmax", "none", "zscore")

__all__ = [
    "REWARD_NORMALIZATIONS",
    "listwise_preference_loss",
    "listwise_score_gradient",
    "normalize_rewards",
    "target_distribution",
]


# --- teacher target (Eq. 4) ------------------------------------------------------------------------------------------


def normalize_rewards(
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    method: str = "minmax",
    scale: float = 5.0,
    eps: float = 1e-3,
) -> torch.Tensor:
    """
    Per-prompt rescaling of the teacher's rewards before the softmax of Eq. (4) (spec §2.4, §7 item 3).

    `"minmax"`: `scale · (r - min) / (max - min + eps)` over the prompt's valid candidates, so the best gets just
    under `scale`, the worst exactly 0, and the target is invariant to `r -> a r + c` (`a > 0`); `"zscore"`:
    `scale · (r - mean) / (std + eps)` (population std); `"none"`: `scale · r` (Eq. 4 literally with `scale = 1`; the
    choice for log-likelihood teachers). A prompt whose valid rewards are all equal gets zeros (a uniform target).

    Args:
        rewards (`torch.Tensor`):
            Raw rewards `r_t(y_i | x)` of shape `(B, G)`.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: valid candidates. Non-finite rewards (failed scoring) are invalid as well.
        method (`str`, *optional*, defaults to `"minmax"`):
            One of `"minmax"` (released code), `"none"`, `"zscore"`.
        scale (`float`, *optional*, defaults to `5.0`):
            Multiplier after normalisation, the teacher's inverse temperature (released code: 5).
        eps (`float`, *optional*, defaults to `1e-3`):
            Added to the range (or std) in the denominator (released code: 1e-3).

    Returns:
        `torch.Tensor`: Normalised rewards of shape `(B, G)` (float32 or float64, no gradient), 0 on invalid entries.
    """
    _check_choice("method", method, REWARD_NORMALIZATIONS)
    _check_positive("scale", scale)
    _check_non_negative("eps", eps)
    r_BG = rewards.detach().to(_float_dtype(rewards))
    valid_BG = _valid_mask(r_BG, mask) & torch.isfinite(r_BG)
    if method == "none":
        out_BG = r_BG
    elif method == "minmax":
        low_B1 = torch.where(valid_BG, r_BG, torch.inf).amin(dim=-1, keepdim=True)
        high_B1 = torch.where(valid_BG, r_BG, -torch.inf).amax(dim=-1, keepdim=True)
        spread_B1 = high_B1 - low_B1
        out_BG = torch.where(spread_B1 > 0, (r_BG - low_B1) / (spread_B1 + eps), 0.0)
    else:
        count_B1 = valid_BG.sum(dim=-1, keepdim=True).clamp_min(1)
        mean_B1 = torch.where(valid_BG, r_BG, 0.0).sum(dim=-1, keepdim=True) / count_B1
        std_B1 = (torch.where(valid_BG, (r_BG - mean_B1) ** 2, 0.0).sum(dim=-1, keepdim=True) / count_B1).sqrt()
        out_BG = torch.where(std_B1 > 0, (r_BG - mean_B1) / (std_B1 + eps), 0.0)
    return torch.where(valid_BG, scale * out_BG, 0.0)


def _masked_log_softmax(x_BG: torch.Tensor, valid_BG: torch.Tensor) -> torch.Tensor:
    """log-softmax over the valid entries of each row; 0 (not -inf) on invalid entries and on rows without any, so
    that `0 · log q` never meets `-inf` and no NaN reaches the gradient (spec §8 item 10)."""
    x_BG = torch.where(valid_BG, x_BG, -torch.inf)
    x_BG = torch.where(valid_BG.any(dim=-1, keepdim=True), x_BG, 0.0)
    return torch.where(valid_BG, x_BG.log_softmax(dim=-1), 0.0)


def target_distribution(
    teacher_scores: torch.Tensor, mask: torch.Tensor | None = None, target_temp: float = 1.0
) -> torch.Tensor:
    """
    Teacher distribution over the candidates, `p̃_i = exp(r_i / T) / Σ_j exp(r_j / T)` over valid `j` (Eq. 4).

    Args:
        teacher_scores (`torch.Tensor`):
            Scores of shape `(B, G)` (e.g. from [`normalize_rewards`]); `-inf` gives a valid candidate zero target
            mass (a hard target), each row with a valid candidate needs one finite valid score.
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: valid candidates.
        target_temp (`float`, *optional*, defaults to `1.0`):
            Temperature T dividing the scores (Eq. 4 has none: 1).

    Returns:
        `torch.Tensor`: Probabilities of shape `(B, G)`, summing to 1 over each row with a valid candidate, 0 on
        invalid entries and on rows without any; no gradient.
    """
    _check_positive("target_temp", target_temp)
    scores_BG = teacher_scores.detach().to(_float_dtype(teacher_scores))
    valid_BG = _valid_mask(scores_BG, mask)
    return torch.where(valid_BG, _masked_log_softmax(scores_BG / target_temp, valid_BG).exp(), 0.0)


# --- listwise answer preference alignment (Eq. 8) --------------------------------------------------------------------


def _listwise_terms(policy_logps_BG, teacher_scores_BG, lam, target_temp, mask_BG):
    """(loss `(B,)`, p̃ `(B, G)`, log q `(B, G)` (0 where invalid), valid `(B, G)`)."""
    _check_positive("lam", lam)
    if teacher_scores_BG.shape != policy_logps_BG.shape:
        raise ValueError(
            f"`teacher_scores` must have the shape of `policy_logps` {tuple(policy_logps_BG.shape)}, got "
            f"{tuple(teacher_scores_BG.shape)}."
        )
    valid_BG = _valid_mask(policy_logps_BG, mask_BG)
    target_BG = target_distribution(teacher_scores_BG, valid_BG, target_temp)
    dtype = _float_dtype(policy_logps_BG, teacher_scores_BG)
    log_q_BG = _masked_log_softmax(lam * policy_logps_BG.to(dtype), valid_BG)  # Eq. (7)-(8): q ∝ exp(λ log p_s)
    loss_B = -(target_BG.to(dtype) * log_q_BG).sum(dim=-1)  # Eq. (8)
    return loss_B, target_BG.to(dtype), log_q_BG, valid_BG


def listwise_preference_loss(
    policy_logps: torch.Tensor,
    teacher_scores: torch.Tensor,
    lam: float = 0.5,
    target_temp: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Answer Preference Alignment loss, Eq. (8): `L_apa = -Σ_i p̃_i log q_i` per prompt, without reference model.

    `p̃ = softmax(teacher_scores / target_temp)` (Eq. 4, no gradient) and `q = softmax(lam · policy_logps)` over the
    prompt's valid candidates. The gradient is `∂L/∂s_i = lam · (q_i - p̃_i)` with `s = policy_logps` (spec §2.7; the
    paper's Eq. 10 drops the `q_i` weights). With two candidates and a one-hot target on `w` it is reference-free DPO,
    `-log σ(lam · (s_w - s_l))` (spec §0 item 1). A prompt with no valid candidate gives 0, with one gives 0.

    Args:
        policy_logps (`torch.Tensor`):
            Student answer log-likelihoods `log p_s(y_i | CoT_t, x)` of shape `(B, G)` (see [`aggregate_logps`]).
        teacher_scores (`torch.Tensor`):
            Teacher scores of shape `(B, G)`; receive no gradient.
        lam (`float`, *optional*, defaults to `0.5`):
            λ, the student's inverse temperature (Eq. 6-7; paper: not reported; released code: 0.5 with the
            `"padded_mean"` aggregation, spec §3 and §7 item 1).
        target_temp (`float`, *optional*, defaults to `1.0`):
            Temperature of the teacher softmax (Eq. 4: 1).
        mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: valid candidates; invalid ones are left out of both softmaxes (spec §7 item 19).

    Returns:
        `torch.Tensor`: Loss of shape `(B,)` (float32, or float64 for float64 inputs).
    """
    return _listwise_terms(policy_logps, teacher_scores, lam, target_temp, mask)[0]


def listwise_score_gradient(
    policy_logps: torch.Tensor,
    teacher_scores: torch.Tensor,
    lam: float = 0.5,
    target_temp: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    `∂L_apa/∂s_i = λ (q_i - p̃_i)` in closed form (spec §2.7), detached.

    `Σ_i sg[λ (q_i - p̃_i)] · log p_θ(y_i)` then has the parameter gradient of [`listwise_preference_loss`] (spec §8
    item 15), so candidates can be forwarded and back-propagated in chunks once all scores are known.

    Args:
        policy_logps, teacher_scores, lam, target_temp, mask: as in [`listwise_preference_loss`].

    Returns:
        `torch.Tensor`: Weights of shape `(B, G)`, 0 on invalid candidates; they sum to 0 over each prompt.
    """
    _, target_BG, log_q_BG, valid_BG = _listwise_terms(policy_logps.detach(), teacher_scores, lam, target_temp, mask)
    return torch.where(valid_BG, lam * (log_q_BG.exp() - target_BG), 0.0)
