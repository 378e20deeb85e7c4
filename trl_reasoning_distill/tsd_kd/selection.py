"""TSD-KD token selections: which tokens each term of the loss reads, from detached entropies.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    opener O   (Eq. 10): per response, the shortest prefix holding a ratio p of the student's entropy (indirect KD)
    entropy set I (Eq. 12): the top ρ of the response's tokens by student entropy (entropy minimisation)
    adaptive p (App. A.7): p per sample from the quantile of its smoothed entropy gap

The released code's versions (spec §2.9: D2, D4) are kept here too, for `reference_code_compat=True`.
"""

import math
from collections.abc import Sequence

import torch

from .._checks import check_choice as _check_choice

ENTROPY_SCOPES = ("sequence", "batch")
_COUNT_SLACK = 1e-6  # ceil(ratio · L) - slack, so that 0.7 · 10 keeps 7 tokens, not 8


def _check_ratio(name: str, value: float) -> None:
    """Raise a `ValueError` naming `name` unless `0 <= value <= 1`."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value}.")


def _row_ratio(ratio: float | torch.Tensor, name: str, like_BT: torch.Tensor) -> float | torch.Tensor:
    """Validate a scalar or per-row ratio; a tensor of shape `(B,)` comes back as `(B, 1)`."""
    if not isinstance(ratio, torch.Tensor):
        _check_ratio(name, ratio)
        return ratio
    if ratio.shape != like_BT.shape[:1] or bool(((ratio < 0) | (ratio > 1)).any()):
        raise ValueError(
            f"`{name}` as a tensor must have shape ({like_BT.shape[0]},) and values in [0, 1], "
            f"got shape {tuple(ratio.shape)}."
        )
    return ratio.to(like_BT).unsqueeze(-1)


def opener_mask(student_entropy: torch.Tensor, mask: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """
    The opener of each response (Eq. 10): the shortest prefix of valid tokens holding `ratio` of the row's entropy.

    Per row, with `C_m` the entropy summed over the first `m` valid tokens, the opener is the valid tokens
    `1..t*`, `t* = min{m : C_m >= ratio · C_L}`, the crossing token included. It always holds the first valid
    token, so `ratio = 0` and a row of zero entropy give that token only; `ratio = 1` runs to the last token of
    positive entropy; a row without valid tokens gives none. Rows are independent and scaling a row's entropies
    leaves its opener unchanged.

    Args:
        student_entropy (`torch.Tensor`):
            Student token entropies (nats, >= 0) of shape `(B, T)`; read without gradient.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: valid completion tokens.
        ratio (`float` or `torch.Tensor`):
            Opener ratio p in [0, 1], or a per-row tensor of shape `(B,)` (e.g. from [`adaptive_opener_ratio`]).

    Returns:
        `torch.Tensor`: Bool tensor of shape `(B, T)`.
    """
    valid_BT = mask.bool()
    dtype = torch.promote_types(student_entropy.dtype, torch.float32)
    entropy_BT = torch.where(valid_BT, student_entropy.detach().to(dtype), 0.0)
    ratio = _row_ratio(ratio, "ratio", entropy_BT)
    cumulative_BT = torch.cat([entropy_BT.new_zeros(entropy_BT.shape[0], 1), entropy_BT.cumsum(dim=-1)], dim=-1)
    before_BT, total_B1 = cumulative_BT[:, :-1], cumulative_BT[:, -1:]  # entropy of the valid tokens before t
    first_BT = valid_BT & (valid_BT.cumsum(dim=-1) == 1)
    return valid_BT & ((before_BT < ratio * total_B1) | first_BT)


def _top_fraction(score_BT: torch.Tensor, valid_BT: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per row, the `max(1, ceil(ratio · L))` valid positions of highest score (ties: earlier first); none at 0."""
    count_B1 = valid_BT.sum(dim=-1, keepdim=True).double()
    keep_B1 = torch.ceil(count_B1 * ratio - _COUNT_SLACK).clamp_min(1.0 if ratio > 0 else 0.0)
    key_BT = score_BT.detach().masked_fill(~valid_BT, -math.inf)
    order_BT = key_BT.argsort(dim=-1, descending=True, stable=True)
    positions_BT = torch.arange(score_BT.shape[-1], device=score_BT.device).expand_as(order_BT)
    rank_BT = torch.empty_like(order_BT).scatter_(-1, order_BT, positions_BT)
    return valid_BT & (rank_BT < keep_B1)


def top_entropy_mask(
    student_entropy: torch.Tensor, mask: torch.Tensor, ratio: float, *, scope: str = "sequence"
) -> torch.Tensor:
    """
    The set I of Eq. (12): the top `ratio` fraction of valid tokens by student entropy.

    `scope="sequence"` (default; Eq. 12 puts I inside the per-sample expectation) keeps `max(1, ceil(ratio · L_b))`
    tokens of each row with `L_b` valid tokens; `scope="batch"` keeps `max(1, ceil(ratio · N))` of the `N` valid
    tokens of the whole micro-batch (Wang et al. 2025, TRL GRPO). `ratio = 0` keeps none. Ties go to the earlier
    position (row-major for `"batch"`); padding is never selected.

    Args:
        student_entropy (`torch.Tensor`):
            Student token entropies of shape `(B, T)`; read without gradient.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: valid completion tokens.
        ratio (`float`):
            Selection ratio ρ in [0, 1].
        scope (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"` or `"batch"`.

    Returns:
        `torch.Tensor`: Bool tensor of shape `(B, T)`.
    """
    _check_ratio("ratio", ratio)
    _check_choice("scope", scope, ENTROPY_SCOPES)
    valid_BT = mask.bool()
    if scope == "batch":
        return _top_fraction(student_entropy.reshape(1, -1), valid_BT.reshape(1, -1), ratio).reshape(valid_BT.shape)
    return _top_fraction(student_entropy, valid_BT, ratio)


def entropy_set_units(selected: torch.Tensor, scope: str = "sequence") -> torch.Tensor:
    """
    The units Eq. (12) averages over, for the normaliser of the entropy term: the responses with a non-empty set I
    (`scope="sequence"`: a mean over I per response, then over responses), or the selected tokens (`"batch"`: one
    mean over I). Summed over every micro-batch and process, it normalises the term over the global batch.

    Args:
        selected (`torch.Tensor`):
            Bool tensor of shape `(B, T)`: the set I, e.g. from [`top_entropy_mask`].
        scope (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"` or `"batch"`.

    Returns:
        `torch.Tensor`: 0-dim long tensor.
    """
    _check_choice("scope", scope, ENTROPY_SCOPES)
    selected_BT = selected.bool()
    return selected_BT.sum() if scope == "batch" else selected_BT.any(dim=-1).sum()


def sample_entropy_gap(
    student_entropy: torch.Tensor, teacher_entropy: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """
    Difficulty `d = mean H_S - mean H_T` of each sample over its valid tokens (App. A.7); 0 for an empty row.

    Args:
        student_entropy (`torch.Tensor`):
            Student token entropies of shape `(B, T)`.
        teacher_entropy (`torch.Tensor`):
            Teacher token entropies of shape `(B, T)`.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`.

    Returns:
        `torch.Tensor`: Detached tensor of shape `(B,)`.
    """
    valid_BT = mask.bool()
    gap_BT = torch.where(valid_BT, student_entropy.detach() - teacher_entropy.detach(), 0.0)
    return gap_BT.sum(dim=-1) / valid_BT.sum(dim=-1).clamp_min(1)


def _trailing_mean(values_H: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of each value and the `window - 1` before it (fewer at the start)."""
    cumulative_H = torch.cat([values_H.new_zeros(1), values_H.cumsum(dim=0)])
    index_H = torch.arange(1, values_H.shape[0] + 1, device=values_H.device)
    start_H = (index_H - window).clamp_min(0)
    return (cumulative_H[index_H] - cumulative_H[start_H]) / (index_H - start_H)


def adaptive_opener_ratio(
    gap: torch.Tensor,
    gap_history: torch.Tensor | None = None,
    *,
    window: int = 5,
    quantile_edges: Sequence[float] = (0.25, 0.5, 0.75),
    ratios: Sequence[float] = (0.05, 0.10, 0.15, 0.20),
) -> torch.Tensor:
    """
    Adaptive opener ratio p of App. A.7: a larger (smoothed) entropy gap gives a larger p.

    The gaps `d` (from [`sample_entropy_gap`]) are appended to `gap_history` in order and smoothed by a trailing
    mean over `window` samples. The mid-rank quantile of each new smoothed value among all smoothed values picks a
    bin `(edge_{i-1}, edge_i]` and the bin's ratio. With no history a single sample sits at quantile 0.5, i.e. the
    fixed p = 0.1 with the default bins. The paper's bins are lost; the default bins are ours (spec §8 item 11).
    The caller keeps the history (append `gap` after the call) and bounds its length.

    Args:
        gap (`torch.Tensor`):
            Gaps of the current samples, shape `(B,)`.
        gap_history (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Earlier gaps, oldest first, shape `(H,)`.
        window (`int`, *optional*, defaults to `5`):
            Moving-average window (paper: 5 samples).
        quantile_edges (`Sequence[float]`, *optional*, defaults to `(0.25, 0.5, 0.75)`):
            Increasing bin edges in (0, 1).
        ratios (`Sequence[float]`, *optional*, defaults to `(0.05, 0.10, 0.15, 0.20)`):
            One ratio per bin (`len(quantile_edges) + 1`), each in [0, 1].

    Returns:
        `torch.Tensor`: Per-sample opener ratio of shape `(B,)`, for [`opener_mask`] / [`tsd_kd_loss`].
    """
    if window < 1 or len(ratios) != len(quantile_edges) + 1 or list(quantile_edges) != sorted(quantile_edges):
        raise ValueError(
            f"Need window >= 1, increasing `quantile_edges` and one more ratio than edges; got "
            f"window={window}, quantile_edges={quantile_edges}, ratios={ratios}."
        )
    for value in ratios:
        _check_ratio("ratios", value)
    gap = gap.detach().double()
    history_H = gap.new_zeros(0) if gap_history is None else gap_history.detach().to(gap)
    smooth_H = _trailing_mean(torch.cat([history_H, gap]), window)
    current_B1 = smooth_H[history_H.shape[0] :].unsqueeze(-1)
    quantile_B = ((smooth_H < current_B1).sum(-1) + 0.5 * (smooth_H == current_B1).sum(-1)) / smooth_H.shape[0]
    bin_B = torch.bucketize(quantile_B, torch.tensor(quantile_edges, dtype=gap.dtype, device=gap.device))
    return torch.tensor(ratios, dtype=torch.float32, device=gap.device)[bin_B]


def _code_columns(valid_BT: torch.Tensor) -> torch.Tensor:
    """1-based column index inside the code's tensor, which starts at the batch's first valid column; 0 before it."""
    return (valid_BT.any(dim=0).cumsum(dim=0) > 0).cumsum(dim=0).expand_as(valid_BT)


def _reference_opener_mask(entropy_BT: torch.Tensor, valid_BT: torch.Tensor, ratio: float) -> torch.Tensor:
    """Released code (D2): one cut `d` over the flattened valid tokens, then the code's columns `[:, :d]`."""
    flat_N = entropy_BT.detach()[valid_BT]
    if flat_N.numel() == 0:
        return torch.zeros_like(valid_BT)
    crossed_N = (flat_N / flat_N.sum()).cumsum(dim=0) >= ratio
    cut = crossed_N.int().argmax()  # first crossing index, excluded by the slice [:, :d]; 0 if never crossed
    return valid_BT & (_code_columns(valid_BT) <= cut)


def _reference_entropy_mask(entropy_BT: torch.Tensor, valid_BT: torch.Tensor, ratio: float) -> torch.Tensor:
    """Released code (D4): entropy >= the `ratio`-quantile of valid entropies, in all code columns (padding too)."""
    flat_N = entropy_BT.detach()[valid_BT]
    if flat_N.numel() == 0:
        return torch.zeros_like(valid_BT)
    return (_code_columns(valid_BT) > 0) & (entropy_BT.detach() >= torch.quantile(flat_N, ratio))


def _selections(student_entropy_BT, valid_BT, opener_ratio, entropy_ratio, entropy_scope, reference_code_compat):
    """(opener, entropy set I) in paper mode or as the released code computes them (D2, D4)."""
    if reference_code_compat:
        return (
            _reference_opener_mask(student_entropy_BT, valid_BT, opener_ratio),
            _reference_entropy_mask(student_entropy_BT, valid_BT, entropy_ratio),
        )
    return (
        opener_mask(student_entropy_BT, valid_BT, opener_ratio),
        top_entropy_mask(student_entropy_BT, valid_BT, entropy_ratio, scope=entropy_scope),
    )
