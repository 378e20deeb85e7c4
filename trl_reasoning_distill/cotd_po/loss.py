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
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .._checks import check_choice as _check_choice

LOGP_AGGREGATIONS = ("padded_mean", "sum", "mean")
REWARD_NORMALIZATIONS = ("minmax", "none", "zscore")
RATIONALE_REDUCTIONS = ("token_mean", "sum")
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


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}.")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _valid_mask(reference_BG: torch.Tensor, mask_BG: torch.Tensor | None) -> torch.Tensor:
    """Bool `(B, G)` candidate mask, all True when `mask_BG` is None; checks the shape."""
    if reference_BG.dim() != 2:
        raise ValueError(f"Expected a (B, G) tensor, got shape {tuple(reference_BG.shape)}.")
    if mask_BG is None:
        return torch.ones(reference_BG.shape, dtype=torch.bool, device=reference_BG.device)
    if mask_BG.shape != reference_BG.shape:
        raise ValueError(f"`mask` must have shape {tuple(reference_BG.shape)}, got {tuple(mask_BG.shape)}.")
    return mask_BG.to(device=reference_BG.device).bool()


# --- per-sequence log-likelihoods ------------------------------------------------------------------------------------


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """
    Per-token log-probabilities of the next-token labels, `log p(labels[:, t + 1] | ...)` from `logits[:, t]`.

    The causal shift is done here (the Hugging Face causal-LM convention: `labels` is aligned with `input_ids`), the
    log-softmax runs in float32 (or float64) whatever the logits' dtype, and positions whose label is `ignore_index`
    give exactly 0, so extra right padding (labels `ignore_index`) changes no sum.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(N, L, V)`.
        labels (`torch.Tensor`):
            Long tensor of shape `(N, L)`: token ids on the positions to score, `ignore_index` elsewhere.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of unscored positions.

    Returns:
        `torch.Tensor`: Log-probabilities of shape `(N, L - 1)` (float32, or float64 for float64 logits), aligned
        with `labels[:, 1:]`.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected logits (N, L, V) and labels (N, L); got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    logits_NTV = logits[:, :-1].to(_float_dtype(logits))
    targets_NT = labels[:, 1:]
    scored_NT = targets_NT != ignore_index
    ids_NT = targets_NT.masked_fill(~scored_NT, 0)
    logp_NT = logits_NTV.gather(-1, ids_NT.unsqueeze(-1)).squeeze(-1) - logits_NTV.logsumexp(dim=-1)
    return torch.where(scored_NT, logp_NT, 0.0)


@dataclass
class SequenceLogLikelihood:
    """Per-sequence log-likelihood: `sum` and `mean` (sum / tokens; NaN without tokens) of shape `(N,)`, and
    `num_tokens` (long, `(N,)`)."""

    sum: torch.Tensor
    mean: torch.Tensor
    num_tokens: torch.Tensor


def sequence_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> SequenceLogLikelihood:
    """
    Sequence log-likelihood `Σ_t log p(y_t | y_<t)` of the labelled tokens, and its length-normalised mean.

    Equal for any amount of right padding (labels `ignore_index` there). This is `log p_s(y_i | CoT_t, x)` of Eq. (8)
    when `labels` covers the answer tokens (end-of-turn included, spec §2.12).

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(N, L, V)`.
        labels (`torch.Tensor`):
            Long tensor of shape `(N, L)`, aligned with the input ids; `ignore_index` on unscored positions.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of unscored positions.

    Returns:
        [`SequenceLogLikelihood`]: `sum`, `mean` (NaN for a sequence without scored tokens) and `num_tokens`.
    """
    logp_NT = token_log_probs(logits, labels, ignore_index)
    num_tokens_N = (labels[:, 1:] != ignore_index).sum(dim=-1)
    total_N = logp_NT.sum(dim=-1)
    return SequenceLogLikelihood(sum=total_N, mean=total_N / num_tokens_N, num_tokens=num_tokens_N)


def aggregate_logps(
    logp_sum: torch.Tensor,
    num_tokens: torch.Tensor,
    aggregation: str = "padded_mean",
    group_max_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Student score `log p_s(y_i)` of each candidate before the λ of Eq. (8), by aggregation (spec §7 item 1).

    Args:
        logp_sum (`torch.Tensor`):
            Summed answer-token log-probs of shape `(B, G)`.
        num_tokens (`torch.Tensor`):
            Answer tokens per candidate, shape `(B, G)`.
        aggregation (`str`, *optional*, defaults to `"padded_mean"`):
            `"padded_mean"`: the sum divided by `group_max_len - 1`, one constant per prompt (released code, spec
            §2.12); `"sum"`: the sum (Eq. 8 literally); `"mean"`: the sum divided by the candidate's own length.
        group_max_len (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Shape `(B,)`: longest real sequence (prompt + rationale + answer) over each group's valid candidates;
            needed by `"padded_mean"` (the group's own length, not the batch tensor width, spec §8 item 9).

    Returns:
        `torch.Tensor`: Scores of shape `(B, G)`.
    """
    _check_choice("aggregation", aggregation, LOGP_AGGREGATIONS)
    if num_tokens.shape != logp_sum.shape:
        raise ValueError(f"`num_tokens` must have shape {tuple(logp_sum.shape)}, got {tuple(num_tokens.shape)}.")
    if aggregation == "sum":
        return logp_sum
    if aggregation == "mean":
        return logp_sum / num_tokens.to(logp_sum.dtype).clamp_min(1)
    if group_max_len is None or group_max_len.shape != logp_sum.shape[:1]:
        raise ValueError(
            f'`aggregation="padded_mean"` needs `group_max_len` of shape ({logp_sum.shape[0]},), got '
            f"{None if group_max_len is None else tuple(group_max_len.shape)}."
        )
    positions_B = (group_max_len.to(device=logp_sum.device, dtype=logp_sum.dtype) - 1).clamp_min(1)
    return logp_sum / positions_B[:, None]  # `-CE(reduction="none").mean()` over the L_pad - 1 shifted positions


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


# --- rationale NLL (Eq. 9) -------------------------------------------------------------------------------------------


def _rationale_terms(token_logps_BGT, rationale_mask_BGT, valid_BG, reduction):
    """(NLL `(B,)`, rationale tokens `(B,)`) from the first valid candidate row of each group (row 0 if none)."""
    _check_choice("reduction", reduction, RATIONALE_REDUCTIONS)
    if rationale_mask_BGT.shape != token_logps_BGT.shape:
        raise ValueError(
            f"`rationale_mask` must have the shape of `token_logps` {tuple(token_logps_BGT.shape)}, got "
            f"{tuple(rationale_mask_BGT.shape)}."
        )
    row_B = valid_BG.int().argmax(dim=-1)  # first valid candidate; every row holds the same rationale
    batch_B = torch.arange(token_logps_BGT.shape[0], device=token_logps_BGT.device)
    logp_BT, mask_BT = token_logps_BGT[batch_B, row_B], rationale_mask_BGT[batch_B, row_B].bool()
    count_B = mask_BT.sum(dim=-1)
    nll_B = -torch.where(mask_BT, logp_BT.to(_float_dtype(token_logps_BGT)), 0.0).sum(dim=-1)
    if reduction == "token_mean":
        nll_B = nll_B / count_B.clamp_min(1)
    return nll_B, count_B


def rationale_nll(
    token_logps: torch.Tensor,
    rationale_mask: torch.Tensor,
    candidate_mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
) -> torch.Tensor:
    """
    Teacher-forced NLL of the teacher's rationale, `-Σ_i log p_s(CoT_t^i | CoT_t^<i, x)` (Eq. 9), once per prompt.

    It is read from the first valid candidate row: every row of a group holds the same prompt and rationale, so with
    right padding the value does not depend on the row (spec §7 item 4, §8 item 8).

    Args:
        token_logps (`torch.Tensor`):
            Per-token log-probs of shape `(B, G, T)`, aligned with the masks (e.g. [`token_log_probs`] and
            `mask[..., 1:]`).
        rationale_mask (`torch.Tensor`):
            Bool `(B, G, T)`: rationale target positions.
        candidate_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool `(B, G)`: valid candidates.
        reduction (`str`, *optional*, defaults to `"token_mean"`):
            `"token_mean"` (released code, spec §7 item 4) or `"sum"` (Eq. 9 literally).

    Returns:
        `torch.Tensor`: NLL of shape `(B,)`; 0 for a prompt without rationale tokens.
    """
    if token_logps.dim() != 3:
        raise ValueError(f"Expected `token_logps` of shape (B, G, T), got {tuple(token_logps.shape)}.")
    valid_BG = _valid_mask(token_logps[..., 0], candidate_mask)
    return _rationale_terms(token_logps, rationale_mask, valid_BG, reduction)[0]


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
