"""BRTS selection waterfall: which teacher rollout each prompt trains on (spec §2.7, §8 item 15).

Pure: torch only. Tier 1 the most aligned correct rollout, Tier 2 a correct ground-truth-hinted recovery rollout,
Tier 3 the most aligned of the whole unhinted pool (`select_rollout`, with `recovery_rows` naming the prompts to
retry), the gather of the pick (`take_selected`), the teacher-context mask of the picked rows (`teacher_context_mask`)
and the logged counts (`selection_metrics`). Alignment scores come from `alignment.py`, the hinted prompt from
`recovery.py`.
"""

import torch

TIER_NAMES = {1: "correct", 2: "hinted_recovery", 3: "most_aligned"}  # spec §2.7: tags 1, 2, 3
FALLBACKS = ("most_similar", "skip")  # spec §8 item 15

__all__ = [
    "TIER_NAMES", "FALLBACKS", "recovery_rows", "select_rollout", "take_selected", "teacher_context_mask",
    "selection_metrics",
]


# --- the selection waterfall (spec §2.7) -----------------------------------------------------------------------------


def _check_scores(name: str, correct: torch.Tensor, alignment: torch.Tensor, rows: int | None) -> None:
    """Raise a `ValueError` unless `correct` is bool `(B, M)`, `alignment` has its shape and no score is NaN."""
    shape_ok = correct.dim() == 2 and correct.shape[1] >= 1 and (rows is None or correct.shape[0] == rows)
    if correct.dtype != torch.bool or not shape_ok:
        expected = "(B, M), M >= 1" if rows is None else f"(B={rows}, M) or (B={rows},)"
        raise ValueError(
            f"`{name}correct` must be a bool tensor of shape {expected}, got {correct.dtype} {tuple(correct.shape)}."
        )
    if alignment.shape != correct.shape:
        raise ValueError(
            f"`{name}alignment` must have the shape of `{name}correct` {tuple(correct.shape)}, got "
            f"{tuple(alignment.shape)}."
        )
    if torch.isnan(alignment).any():
        raise ValueError(f"`{name}alignment` contains NaN; every candidate needs a comparable score.")


def _first_best(score_BM: torch.Tensor, allowed_BM: torch.Tensor) -> torch.Tensor:
    """Per row, the lowest index among the allowed candidates of highest score (0 if none is allowed)."""
    best_B1 = score_BM.masked_fill(~allowed_BM, -torch.inf).amax(dim=-1, keepdim=True)
    return (allowed_BM & (score_BM == best_B1)).to(torch.uint8).argmax(dim=-1)  # argmax: first maximal index


def recovery_rows(correct: torch.Tensor) -> torch.Tensor:
    """
    Rows that need ground-truth-hinted recovery rollouts (Tier 2, spec §2.7): those with no correct Tier-1 rollout.

    Args:
        correct (`torch.Tensor`):
            Bool tensor of shape `(B, N)`: correctness of each unhinted teacher rollout.

    Returns:
        `torch.Tensor`: Bool tensor of shape `(B,)`. Generate the hinted rollouts for these rows only.
    """
    if correct.dtype != torch.bool or correct.dim() != 2:
        raise ValueError(
            f"`correct` must be a bool tensor of shape (B, N), got {correct.dtype} {tuple(correct.shape)}."
        )
    return ~correct.any(dim=-1)


def select_rollout(
    correct: torch.Tensor,
    alignment: torch.Tensor,
    recovery_correct: torch.Tensor | None = None,
    recovery_alignment: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The selection waterfall of spec §2.7, vectorised over rows.

    - Tier 1: some unhinted rollout is correct: the correct one with the highest alignment.
    - Tier 2: none is, and a hinted recovery rollout is correct: the correct hinted one with the highest alignment.
    - Tier 3: otherwise the unhinted rollout with the highest alignment, correctness ignored (never a hinted one).

    Ties go to the lowest index (as `torch.argmax` in the code). A row with a correct Tier-1 rollout ignores its
    recovery inputs, so rows that were not retried may hold anything there.

    Args:
        correct (`torch.Tensor`):
            Bool tensor of shape `(B, N)`: correctness of the N unhinted rollouts.
        alignment (`torch.Tensor`):
            Tensor of shape `(B, N)`: their alignment scores (see [`student_alignment`]); no NaN.
        recovery_correct (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor of shape `(B, M)` or `(B,)` (M = 1): correctness of the hinted rollouts. `None` disables
            Tier 2 (the code's `tier1_only=True`).
        recovery_alignment (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Alignment of the hinted rollouts, shape of `recovery_correct`; `None` scores them equal, so the first
            correct one is taken.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `index` (long, `(B,)`) into the concatenated pool `[unhinted N ;
        hinted M]`, so Tier-2 picks are `N + m`; and `tier` (int8, `(B,)`) in {1, 2, 3}, named in [`TIER_NAMES`].
    """
    _check_scores("", correct, alignment, None)
    if recovery_correct is None and recovery_alignment is not None:
        raise ValueError("`recovery_alignment` was given without `recovery_correct`; pass both to enable Tier 2.")
    any_correct_B = correct.any(dim=-1)
    index_B = torch.where(
        any_correct_B, _first_best(alignment, correct), _first_best(alignment, torch.ones_like(correct))
    )
    tier_B = torch.where(any_correct_B, 1, 3)
    if recovery_correct is not None:
        rescued_B, recovery_index_B = _recover(any_correct_B, recovery_correct, recovery_alignment, alignment.dtype)
        index_B = torch.where(rescued_B, correct.shape[1] + recovery_index_B, index_B)
        tier_B = torch.where(rescued_B, 2, tier_B)
    return index_B, tier_B.to(torch.int8)


def _recover(any_correct_B, recovery_correct, recovery_alignment, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Tier 2: the rows rescued by a correct hinted rollout, and the index of the best one among the hinted."""
    correct_BM = recovery_correct[:, None] if recovery_correct.dim() == 1 else recovery_correct
    if recovery_alignment is None:
        recovery_alignment = torch.zeros(correct_BM.shape, dtype=dtype, device=correct_BM.device)
    alignment_BM = recovery_alignment[:, None] if recovery_alignment.dim() == 1 else recovery_alignment
    _check_scores("recovery_", correct_BM, alignment_BM, any_correct_B.shape[0])
    return ~any_correct_B & correct_BM.any(dim=-1), _first_best(alignment_BM, correct_BM)


def take_selected(pool: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """
    The selected candidate of each row: `pool[b, index[b]]`.

    Args:
        pool (`torch.Tensor`):
            Tensor of shape `(B, N, ...)`: candidate ids, masks or scores (concatenate the hinted rollouts after the
            unhinted ones to match the indices of [`select_rollout`]).
        index (`torch.Tensor`):
            Long tensor of shape `(B,)`.

    Returns:
        `torch.Tensor`: Tensor of shape `(B, ...)`.
    """
    if index.shape != pool.shape[:1] or index.dtype != torch.long:
        raise ValueError(
            f"`index` must be a long tensor of shape ({pool.shape[0]},), got {index.dtype} {tuple(index.shape)}."
        )
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < pool.shape[1]:
        raise ValueError(f"`index` must lie in [0, {pool.shape[1]}), the candidates of `pool`.")
    return pool[torch.arange(pool.shape[0], device=pool.device), index]


def teacher_context_mask(
    selected_mask: torch.Tensor,
    student_mask: torch.Tensor | None = None,
    tier: torch.Tensor | None = None,
    fallback: str = "most_similar",
) -> torch.Tensor:
    """
    Loss mask of the teacher-context branch on the selected rollouts (spec §2.9, §8 items 7 and 15).

    Args:
        selected_mask (`torch.Tensor`):
            Bool tensor of shape `(B, L)`: valid tokens of the selected rollout laid in the response slot (the
            code's `ids != pad`, so the teacher's EOS is not supervised when pad is EOS).
        student_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor of shape `(B, L)`: the student's response mask. Given, the selected rollout is truncated to
            the student's length, as the code does (spec §8 item 7); `None` keeps the whole rollout.
        tier (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Tier of each row from [`select_rollout`], `(B,)`; needed with `fallback="skip"`.
        fallback (`str`, *optional*, defaults to `"most_similar"`):
            `"most_similar"` supervises Tier-3 rows like the others (the code); `"skip"` masks them out (spec §8
            item 15).

    Returns:
        `torch.Tensor`: Bool tensor of shape `(B, L)`.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"`fallback` must be one of {', '.join(map(repr, FALLBACKS))}, got {fallback!r}.")
    if selected_mask.dtype != torch.bool or selected_mask.dim() != 2:
        raise ValueError(
            f"`selected_mask` must be a bool tensor of shape (B, L), got {selected_mask.dtype} "
            f"{tuple(selected_mask.shape)}."
        )
    mask_BL = selected_mask
    if student_mask is not None:
        if student_mask.shape != selected_mask.shape or student_mask.dtype != torch.bool:
            raise ValueError(
                f"`student_mask` must be a bool tensor of shape {tuple(selected_mask.shape)}, got "
                f"{student_mask.dtype} {tuple(student_mask.shape)}."
            )
        mask_BL = mask_BL & student_mask
    if fallback == "skip":
        if tier is None or tier.shape != selected_mask.shape[:1]:
            raise ValueError(f"fallback='skip' needs `tier` of shape ({selected_mask.shape[0]},) from select_rollout.")
        mask_BL = mask_BL & (tier != 3)[:, None]
    return mask_BL


def selection_metrics(
    correct: torch.Tensor,
    tier: torch.Tensor,
    selected_alignment: torch.Tensor,
    recovery_correct: torch.Tensor | None = None,
) -> dict[str, float]:
    """
    Logging statistics of one selection (spec §2.7; log them as `brts/<name>`).

    Args:
        correct (`torch.Tensor`):
            Bool tensor of shape `(B, N)`: correctness of the unhinted rollouts.
        tier (`torch.Tensor`):
            Tier of each row, `(B,)`, from [`select_rollout`].
        selected_alignment (`torch.Tensor`):
            Alignment of the selected rollout of each row, `(B,)` (see [`take_selected`]).
        recovery_correct (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor `(B, M)` or `(B,)`, as in [`select_rollout`]; `None` when Tier 2 is off.

    Returns:
        `dict[str, float]`: `tier1_any_correct_frac`, `tier1_retry_frac`, `frac_tier{1,2,3}` (summing to 1),
        `avg_sim_tier{1,2,3}` (0 for an empty tier, as in the code) and, with Tier 2 on, `tier2_rescue_frac`: the
        fraction of retried rows whose hinted rollouts include a correct one (the code's
        `tier2_any_correct_frac_of_retries`; 0 without retries).
    """
    if tier.shape != correct.shape[:1] or selected_alignment.shape != tier.shape:
        raise ValueError(
            f"`tier` and `selected_alignment` must have shape ({correct.shape[0]},), got "
            f"{tuple(tier.shape)} and {tuple(selected_alignment.shape)}."
        )
    rows = max(correct.shape[0], 1)
    retry_B = recovery_rows(correct)
    metrics = {
        "tier1_any_correct_frac": (~retry_B).sum().item() / rows,
        "tier1_retry_frac": retry_B.sum().item() / rows,
    }
    for level in (1, 2, 3):
        in_tier_B = tier == level
        metrics[f"frac_tier{level}"] = in_tier_B.sum().item() / rows
        total = torch.where(in_tier_B, selected_alignment.double(), 0.0).sum().item()
        metrics[f"avg_sim_tier{level}"] = total / max(in_tier_B.sum().item(), 1)
    if recovery_correct is not None:
        rescued_B = (recovery_correct[:, None] if recovery_correct.dim() == 1 else recovery_correct).any(dim=-1)
        metrics["tier2_rescue_frac"] = (rescued_B & retry_B).sum().item() / max(retry_B.sum().item(), 1)
    return metrics
