"""TSD-KD: token-selective dual knowledge distillation, as pure loss pieces.

Paper: Explain in Your Own Words: Improving Reasoning via Token-Selective Dual Knowledge Distillation,
https://huggingface.co/papers/2603.13260

    L = L_direct + γ · L_ent + α · L_indirect        (Eq. 13; γ = `entropy_coef`, α = `indirect_coef`)

L_direct is the generalized JSD weighted per token by the detached gate σ((H_S − H_T) / τ) (Eq. 11), L_indirect the
Plackett-Luce NLL of the teacher's ranking of the student's top-K candidates on the opener (Eqs. 4-5, 10), L_ent the
mean student entropy of the top-ρ highest-entropy tokens (Eq. 12). Differences from the authors' code, reproduced
by `reference_code_compat=True`: the code's PL denominator runs over the preceding items, so it trains towards the
reversed teacher ranking (D1); its opener is one cut-off over the flattened micro-batch, exclusive of the crossing
token (D2); one ratio drives both selections (D3); its entropy set keeps the tokens above the ρ-quantile, about
90 %, padding included (D4); β ∈ {0, 1} gives a zero JSD (D6). Labels D1-D6 follow the TSD-KD spec, section 2.9.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ..divergence import entropy, generalized_jsd, global_token_mean, masked_mean

PL_DENOMINATORS = ("remaining", "preceding")
ENTROPY_SCOPES = ("sequence", "batch")
_COUNT_SLACK = 1e-6  # ceil(ratio · L) - slack, so that 0.7 · 10 keeps 7 tokens, not 8


def _check_ratio(name: str, value: float) -> None:
    """Raise a `ValueError` naming `name` unless `0 <= value <= 1`."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value}.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def plackett_luce_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int, *, denominator: str = "remaining"
) -> torch.Tensor:
    """
    Plackett-Luce NLL of the teacher's ranking of the student's top-k candidates, Eq. (4) of the TSD-KD paper.

    At each position the student's `top_k` highest logits are the candidates; the teacher orders them by its own
    logits (stable sort: teacher ties keep the student's order) and the student's raw logits are the PL scores:
    `-sum_k [u_k - log sum_{j>=k} exp u_j]` with `u` the candidate logits in teacher order, best first. The
    gradient reaches only the `top_k` candidate logits (it sums to 0 over them and is negative on the teacher's
    favourite); the top-k choice and the teacher's order carry no gradient, and the teacher never receives one.
    `top_k = 2` is the Bradley-Terry loss `softplus(z_other - z_preferred)`; `top_k = 1` gives 0.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(N, V)` (any leading dimensions); finite on the top-k.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape.
        top_k (`int`):
            Number of candidates K >= 1; `min(top_k, V)` are used.
        denominator (`str`, *optional*, defaults to `"remaining"`):
            `"remaining"`: Eq. (4), normaliser over the items not yet ranked. `"preceding"`: the released code
            (`logcumsumexp` from the best item), i.e. the PL NLL of the reversed teacher ranking (spec D1).

    Returns:
        `torch.Tensor`: Per-position loss of shape `(N,)` (float32, or float64 for float64 inputs).
    """
    _check_choice("denominator", denominator, PL_DENOMINATORS)
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape."
        )
    candidate_logits_NK, candidate_ids_NK = student_logits.topk(min(top_k, student_logits.shape[-1]), dim=-1)
    teacher_scores_NK = teacher_logits.detach().gather(-1, candidate_ids_NK)
    teacher_order_NK = teacher_scores_NK.argsort(dim=-1, descending=True, stable=True)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    ranked_NK = candidate_logits_NK.gather(-1, teacher_order_NK).to(dtype)  # student logits, teacher's best first
    if denominator == "remaining":  # Eq. (4): sum over j >= k
        log_norm_NK = ranked_NK.flip(-1).logcumsumexp(dim=-1).flip(-1)
    else:  # released code: sum over j <= k
        log_norm_NK = ranked_NK.logcumsumexp(dim=-1)
    return -(ranked_NK - log_norm_NK).sum(dim=-1)


def entropy_gap_gate(student_entropy: torch.Tensor, teacher_entropy: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """
    Uncertainty-gap gate `σ((H_S - H_T) / τ)` of Eq. (11), detached (stop-gradient, paper App. A.2).

    Args:
        student_entropy (`torch.Tensor`):
            Student token entropies in nats, shape `(N,)` (any shape).
        teacher_entropy (`torch.Tensor`):
            Teacher token entropies, same shape.
        tau (`float`, *optional*, defaults to `1.0`):
            Sharpness τ > 0; `1.0` is the released code's plain `σ(H_S - H_T)`, `inf` gives 0.5 everywhere.

    Returns:
        `torch.Tensor`: Gate in (0, 1) of the same shape, without gradient; exactly 0.5 where the entropies are equal.
    """
    if not tau > 0.0:
        raise ValueError(f"`tau` must be > 0, got {tau}.")
    return torch.sigmoid((student_entropy.detach() - teacher_entropy.detach()) / tau)


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
    fixed p = 0.1 with the default bins. The paper's bins are lost; the defaults are placeholders (spec §8 item 11).
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


def _selective_entropy(entropy_BT: torch.Tensor, selected_BT: torch.Tensor, scope: str) -> torch.Tensor:
    """Eq. (12): mean entropy over I per row, then over rows with a selection (`"batch"`: one mean over I)."""
    if scope == "batch":
        return masked_mean(entropy_BT, selected_BT)
    row_sum_B = torch.where(selected_BT, entropy_BT, 0.0).sum(dim=-1)
    row_mean_B = row_sum_B / selected_BT.sum(dim=-1).clamp_min(1)
    return masked_mean(row_mean_B, selected_BT.any(dim=-1))


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


@dataclass
class TSDKDOutput:
    """
    Result of [`tsd_kd_loss`]. `loss`, `direct`, `indirect` and `entropy` are 0-dim tensors on the autograd graph,
    with `loss = direct + entropy_coef · entropy + indirect_coef · indirect`; the rest are detached statistics:
    `gate_mean` (mean gate over valid tokens, 1 without gate), `opener_len` (mean opener tokens per non-empty row),
    `opener_frac` (opener / valid tokens) and `entropy_frac` (|I| / valid tokens).
    """

    loss: torch.Tensor
    direct: torch.Tensor
    indirect: torch.Tensor
    entropy: torch.Tensor
    gate_mean: torch.Tensor
    opener_len: torch.Tensor
    opener_frac: torch.Tensor
    entropy_frac: torch.Tensor

    @property
    def metrics(self) -> dict[str, float]:
        """Every field but `loss` as a Python float, for logging under `tsd_kd/<name>`."""
        return {f.name: getattr(self, f.name).detach().item() for f in fields(self) if f.name != "loss"}


def _check_loss_args(student_logits, teacher_logits, mask, opener_ratio, entropy_ratio, reference_code_compat):
    """Shape checks and the compat-mode constraints of [`tsd_kd_loss`]."""
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"Expected student and teacher logits of one shape (B, T, V) (one vocabulary) and a (B, T) mask; got "
            f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)} and {tuple(mask.shape)}."
        )
    if reference_code_compat and (isinstance(opener_ratio, torch.Tensor) or opener_ratio != entropy_ratio):
        raise ValueError(
            f"`reference_code_compat=True` ties both selections to one float ratio (spec D3): set "
            f"`entropy_ratio` equal to `opener_ratio`; got {opener_ratio} and {entropy_ratio}."
        )


def _direct_per_token(student_logits, teacher_logits, beta, temperature, reference_code_compat):
    """Per-token generalized JSD; the released code's β ∈ {0, 1} gives 0 (its mixture collapses, D6)."""
    jsd_BT = generalized_jsd(student_logits, teacher_logits.detach(), beta=beta, temperature=temperature)
    return jsd_BT * 0.0 if reference_code_compat and beta in (0.0, 1.0) else jsd_BT


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


def tsd_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.9,
    top_k: int = 10,
    opener_ratio: float | torch.Tensor = 0.1,
    entropy_ratio: float = 0.1,
    indirect_coef: float = 0.1,
    entropy_coef: float = 1.0,
    tau: float = 1.0,
    use_gate: bool = True,
    entropy_scope: str = "sequence",
    temperature: float = 1.0,
    reference_code_compat: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_processes: int = 1,
) -> TSDKDOutput:
    """
    TSD-KD objective, Eq. (13): `L = L_direct + entropy_coef · L_ent + indirect_coef · L_indirect`.

    L_direct is the gated JSD mean over valid tokens (Eq. 11), L_indirect the mean PL loss over opener tokens
    (Eq. 5 as a mean, spec §8 item 6), L_ent the selective entropy (Eq. 12). Defaults are the paper's (spec §3).
    With `use_gate=False, indirect_coef=0, entropy_coef=0` the loss is exactly GKD's masked-mean generalized JSD.
    With `num_items_in_batch`, the direct term is `sum · num_processes / num_items_in_batch` and the two mean terms
    are scaled by the same token share `mask.sum() · num_processes / num_items_in_batch`.

    Args:
        student_logits (`torch.Tensor`):
            Student logits of shape `(B, T, V)`, causally shifted onto the completion tokens.
        teacher_logits (`torch.Tensor`):
            Teacher logits of the same shape (same vocabulary); receives no gradient.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor of shape `(B, T)`: valid completion tokens (`labels != -100`).
        beta (`float`, *optional*, defaults to `0.9`):
            JSD interpolation β (spec §3: paper and code, "as suggested by GKD"; App. A.5 ablates it); 0 is
            forward KL, 1 reverse KL (TRL's convention).
        top_k (`int`, *optional*, defaults to `10`):
            Student candidates K re-ranked by the teacher (spec §3; paper App. A.3, hard-coded in the code).
        opener_ratio (`float` or `torch.Tensor`, *optional*, defaults to `0.1`):
            Opener entropy ratio p (spec §3; paper Fig. 3), or per-row ratios `(B,)` from
            [`adaptive_opener_ratio`] (App. A.7).
        entropy_ratio (`float`, *optional*, defaults to `0.1`):
            Fraction ρ of highest-entropy tokens whose entropy is minimised (spec §3; paper App. A.4).
        indirect_coef (`float`, *optional*, defaults to `0.1`):
            Weight α of L_indirect (spec §3; paper App. A.9, the code's `indirect_kd_alpha`).
        entropy_coef (`float`, *optional*, defaults to `1.0`):
            Weight γ of L_ent (spec §3 and §2.7: Eq. 13 weighs it equal to the direct term).
        tau (`float`, *optional*, defaults to `1.0`):
            Gate sharpness τ (spec §3, §8 item 5: the paper gives no value; 1 is the released code's gate).
        use_gate (`bool`, *optional*, defaults to `True`):
            `False` weights every token 1 (Table 3, row 1).
        entropy_scope (`str`, *optional*, defaults to `"sequence"`):
            Scope of the entropy selection, see [`top_entropy_mask`].
        temperature (`float`, *optional*, defaults to `1.0`):
            KD temperature T dividing both logits in every term (spec §3); no `T²` rescaling.
        reference_code_compat (`bool`, *optional*, defaults to `False`):
            Compute what the authors' code computes (D1-D4, D6 of the module docstring); needs a float
            `opener_ratio` equal to `entropy_ratio`, and ignores `entropy_scope`. The code's tensors start at the
            completion, so columns before the batch's first valid column count as prompt, the rest as the code's
            columns (padding included); its all-masked batch (NaN there) gives 0 here.
        num_items_in_batch (`int` or `torch.Tensor` or `None`, *optional*, defaults to `None`):
            Loss-token count of the global batch; `None` normalises by this micro-batch.
        num_processes (`int`, *optional*, defaults to `1`):
            Data-parallel processes, used with `num_items_in_batch`.

    Returns:
        [`TSDKDOutput`]: The loss (float32, or float64 for float64 logits) and its terms.
    """
    _check_loss_args(student_logits, teacher_logits, mask, opener_ratio, entropy_ratio, reference_code_compat)
    valid_BT = mask.bool()
    student_entropy_BT = entropy(student_logits, temperature)  # with gradient: L_ent differentiates it
    teacher_entropy_BT = entropy(teacher_logits.detach(), temperature)
    gate_BT = entropy_gap_gate(student_entropy_BT, teacher_entropy_BT, tau) if use_gate else None
    jsd_BT = _direct_per_token(student_logits, teacher_logits, beta, temperature, reference_code_compat)
    weighted_BT = jsd_BT if gate_BT is None else gate_BT * jsd_BT  # Eq. (11)
    opener_BT, selected_BT = _selections(
        student_entropy_BT, valid_BT, opener_ratio, entropy_ratio, entropy_scope, reference_code_compat
    )
    pl_N = plackett_luce_loss(
        student_logits[opener_BT] / temperature,
        teacher_logits.detach()[opener_BT],
        top_k,
        denominator="preceding" if reference_code_compat else "remaining",
    )  # Eqs. (4)-(5)
    indirect = masked_mean(pl_N, torch.ones_like(pl_N))
    scope = "batch" if reference_code_compat else entropy_scope  # the code: one mean over I, padding included
    entropy_term = _selective_entropy(student_entropy_BT, selected_BT, scope)  # Eq. (12)
    if num_items_in_batch is None:
        direct, share = masked_mean(weighted_BT, valid_BT), 1.0
    else:
        direct = global_token_mean(weighted_BT, valid_BT, num_items_in_batch, num_processes)
        share = global_token_mean(torch.ones_like(jsd_BT.detach()), valid_BT, num_items_in_batch, num_processes)
    indirect, entropy_term = indirect * share, entropy_term * share
    loss = direct + entropy_coef * entropy_term + indirect_coef * indirect  # Eq. (13)
    return _output(loss, direct, indirect, entropy_term, gate_BT, opener_BT, selected_BT, valid_BT)


def _output(loss, direct, indirect, entropy_term, gate_BT, opener_BT, selected_BT, valid_BT) -> TSDKDOutput:
    """Pack the terms and the detached logging statistics."""
    count = valid_BT.sum().clamp_min(1)
    nonempty_rows = valid_BT.any(dim=-1).sum().clamp_min(1)
    gate_mean = masked_mean(gate_BT, valid_BT) if gate_BT is not None else torch.ones_like(direct.detach())
    return TSDKDOutput(
        loss=loss,
        direct=direct,
        indirect=indirect,
        entropy=entropy_term,
        gate_mean=gate_mean,
        opener_len=opener_BT.sum() / nonempty_rows,
        opener_frac=opener_BT.sum() / count,
        entropy_frac=selected_BT.sum() / count,
    )
