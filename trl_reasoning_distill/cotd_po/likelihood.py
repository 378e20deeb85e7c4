"""CoTD-PO per-sequence log-likelihoods and the rationale NLL (Eq. 8's `log p_s(y_i | CoT_t, x)`, Eq. 9's L_rat).

Pure: torch only. The student score of each candidate answer (`token_log_probs`, `sequence_log_likelihood`,
`aggregate_logps`) and the teacher-forced NLL of the teacher's rationale (`rationale_nll`); the listwise and pairwise
preference terms are in `listwise.py` and `pairwise.py`, the composite objective in `loss.py`.
"""

from dataclasses import dataclass

import torch

from .._checks import check_choice as _check_choice
from ._loss_common import _float_dtype, _valid_mask

LOGP_AGGREGATIONS = ("padded_mean", "sum", "mean")
RATIONALE_REDUCTIONS = ("token_mean", "sum")

__all__ = [
    "LOGP_AGGREGATIONS",
    "RATIONALE_REDUCTIONS",
    "SequenceLogLikelihood",
    "aggregate_logps",
    "rationale_nll",
    "sequence_log_likelihood",
    "token_log_probs",
]


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
