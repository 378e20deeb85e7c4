"""BRTS alignment scores: how well each teacher rollout matches the student (spec §2.6, §8 item 5).

Pure: torch only. The authors' positional top-k overlap (`positional_topk_overlap`), the overlap on the teacher's own
prefix (`teacher_context_topk_overlap`), the student's mean log-likelihood of the rollout (`mean_log_likelihood`,
ours) and `student_alignment`, which computes the one named by `ALIGNMENT_METRICS`. The waterfall that uses them is in
`tiers.py`.
"""

import torch

ALIGNMENT_METRICS = ("positional", "teacher_ctx", "log_likelihood")

__all__ = [
    "ALIGNMENT_METRICS", "positional_topk_overlap", "teacher_context_topk_overlap", "mean_log_likelihood",
    "student_alignment",
]


# --- alignment scores (spec §2.6, §8 item 5) -------------------------------------------------------------------------


def _check_pool(teacher_ids: torch.Tensor, teacher_mask: torch.Tensor) -> None:
    """Raise a `ValueError` unless the pool is integer ids `(B, N, L)` with a bool mask of the same shape."""
    if teacher_ids.dim() != 3 or teacher_ids.is_floating_point():
        raise ValueError(
            f"`teacher_ids` must be integer ids of shape (B, N, L), got {teacher_ids.dtype} "
            f"{tuple(teacher_ids.shape)}."
        )
    if teacher_mask.shape != teacher_ids.shape or teacher_mask.dtype != torch.bool:
        raise ValueError(
            f"`teacher_mask` must be a bool tensor of the shape of `teacher_ids` {tuple(teacher_ids.shape)}, got "
            f"{teacher_mask.dtype} {tuple(teacher_mask.shape)}."
        )


def _hit_fraction(hit_BNL: torch.Tensor, teacher_mask_BNL: torch.Tensor) -> torch.Tensor:
    """Hits over valid teacher tokens, `(B, N)` float32; a rollout without valid tokens scores 0."""
    valid_BN = teacher_mask_BNL.sum(dim=-1)
    return (hit_BNL & teacher_mask_BNL[..., : hit_BNL.shape[-1]]).sum(dim=-1) / valid_BN.clamp_min(1).float()


def positional_topk_overlap(
    teacher_ids: torch.Tensor, teacher_mask: torch.Tensor, student_topk_ids: torch.Tensor, student_mask: torch.Tensor
) -> torch.Tensor:
    """
    The authors' alignment score (spec §2.6, the code's `_topk_overlap`): the fraction of valid teacher tokens that
    fall in the student's top-K **at the same position of the student's own rollout**.

    `sim_{b,j} = sum_t m_{b,j,t} 1[y_{b,j,t} in S_{b,t}] / sum_t m_{b,j,t}`. Teacher tokens at positions where the
    student's response has ended (past `student_mask` or past its length) are misses, so a teacher rollout much
    longer than the student's response scores lower. The code computes the same when the teacher pool is not longer
    than the student's padded response, except that its stored top-K ids there are zeros (a hit for token id 0).

    Args:
        teacher_ids (`torch.Tensor`):
            Integer tensor of shape `(B, N, L_T)`: the N teacher rollouts of each row, response tokens only.
        teacher_mask (`torch.Tensor`):
            Bool tensor of the same shape: valid teacher tokens (the code's `ids != pad`, which drops EOS when the
            pad token is EOS).
        student_topk_ids (`torch.Tensor`):
            Integer tensor of shape `(B, L_S, K)`: the student's top-K ids on its own rollout (spec §2.3, step 1).
        student_mask (`torch.Tensor`):
            Bool tensor of shape `(B, L_S)`: valid positions of the student's response.

    Returns:
        `torch.Tensor`: Float32 scores of shape `(B, N)` in `[0, 1]`.
    """
    _check_pool(teacher_ids, teacher_mask)
    B, _, L_T = teacher_ids.shape
    if student_topk_ids.dim() != 3 or student_topk_ids.shape[0] != B or student_topk_ids.is_floating_point():
        raise ValueError(
            f"`student_topk_ids` must be integer ids of shape (B={B}, L, K), got "
            f"{student_topk_ids.dtype} {tuple(student_topk_ids.shape)}."
        )
    if student_mask.shape != student_topk_ids.shape[:2] or student_mask.dtype != torch.bool:
        raise ValueError(
            f"`student_mask` must be a bool tensor of shape {tuple(student_topk_ids.shape[:2])}, got "
            f"{student_mask.dtype} {tuple(student_mask.shape)}."
        )
    L = min(L_T, student_topk_ids.shape[1])  # later teacher positions have no student position: misses
    in_topk_BNL = (teacher_ids[..., :L, None] == student_topk_ids[:, None, :L, :]).any(dim=-1)
    return _hit_fraction(in_topk_BNL & student_mask[:, None, :L], teacher_mask)


def teacher_context_topk_overlap(
    teacher_ids: torch.Tensor, teacher_mask: torch.Tensor, student_topk_ids: torch.Tensor
) -> torch.Tensor:
    """
    Alignment on matched contexts (spec §8 item 5, `"teacher_ctx"`): the fraction of valid teacher tokens `y_t` inside
    the student's top-K at the **teacher's** prefix `(x, y_{<t})`. Costs one no-grad student forward per candidate.

    Args:
        teacher_ids (`torch.Tensor`):
            Integer tensor of shape `(B, N, L)`: the teacher rollouts.
        teacher_mask (`torch.Tensor`):
            Bool tensor of the same shape: valid teacher tokens.
        student_topk_ids (`torch.Tensor`):
            Integer tensor of shape `(B, N, L, K)`: the student's top-K ids at each position of each teacher rollout.

    Returns:
        `torch.Tensor`: Float32 scores of shape `(B, N)` in `[0, 1]`.
    """
    _check_pool(teacher_ids, teacher_mask)
    if (
        student_topk_ids.shape[:3] != teacher_ids.shape
        or student_topk_ids.dim() != 4
        or (student_topk_ids.is_floating_point())
    ):
        raise ValueError(
            f"`student_topk_ids` must be integer ids of shape {(*teacher_ids.shape, 'K')}, got "
            f"{student_topk_ids.dtype} {tuple(student_topk_ids.shape)}."
        )
    return _hit_fraction((teacher_ids[..., None] == student_topk_ids).any(dim=-1), teacher_mask)


def mean_log_likelihood(student_logprobs: torch.Tensor, teacher_mask: torch.Tensor) -> torch.Tensor:
    """
    Alignment as the student's mean per-token log-likelihood of each teacher rollout (ours: the smooth version of
    the top-K overlap on the teacher's prefix, from the same forward pass).

    Args:
        student_logprobs (`torch.Tensor`):
            Tensor of shape `(B, N, L)`: `log π_θ(y_t | x, y_{<t})` of each teacher token.
        teacher_mask (`torch.Tensor`):
            Bool tensor of the same shape: valid teacher tokens.

    Returns:
        `torch.Tensor`: Scores of shape `(B, N)` in `(-inf, 0]` (float32 or wider); `-inf` for a rollout without
        valid tokens, so that it ranks last.
    """
    if student_logprobs.dim() != 3 or teacher_mask.shape != student_logprobs.shape or teacher_mask.dtype != torch.bool:
        raise ValueError(
            f"Expected `student_logprobs` of shape (B, N, L) and a bool `teacher_mask` of that shape, got "
            f"{tuple(student_logprobs.shape)} and {teacher_mask.dtype} {tuple(teacher_mask.shape)}."
        )
    logprobs_BNL = student_logprobs.detach().to(torch.promote_types(student_logprobs.dtype, torch.float32))
    count_BN = teacher_mask.sum(dim=-1)
    mean_BN = torch.where(teacher_mask, logprobs_BNL, 0.0).sum(dim=-1) / count_BN.clamp_min(1)
    return mean_BN.masked_fill(count_BN == 0, -torch.inf)


def student_alignment(
    metric: str,
    teacher_ids: torch.Tensor,
    teacher_mask: torch.Tensor,
    *,
    student_topk_ids: torch.Tensor | None = None,
    student_mask: torch.Tensor | None = None,
    student_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Alignment score `sim` of every teacher rollout with the student, `(B, N)`, by name.

    Args:
        metric (`str`):
            `"positional"` (the authors' code, spec §2.6: [`positional_topk_overlap`], needs `student_topk_ids`
            `(B, L, K)` from the student's rollout and `student_mask`), `"teacher_ctx"` (spec §8 item 5:
            [`teacher_context_topk_overlap`], needs `student_topk_ids` `(B, N, L, K)` on the teacher's prefixes) or
            `"log_likelihood"` ([`mean_log_likelihood`], needs `student_logprobs` `(B, N, L)`).
        teacher_ids (`torch.Tensor`):
            Integer tensor of shape `(B, N, L)`: the teacher rollouts.
        teacher_mask (`torch.Tensor`):
            Bool tensor of the same shape: valid teacher tokens.
        student_topk_ids, student_mask, student_logprobs (`torch.Tensor` or `None`, *optional*):
            The student-side inputs of the chosen metric, see above.

    Returns:
        `torch.Tensor`: Scores of shape `(B, N)`; higher is more aligned.
    """
    required = {
        "positional": ("student_topk_ids", "student_mask"),
        "teacher_ctx": ("student_topk_ids",),
        "log_likelihood": ("student_logprobs",),
    }
    if metric not in required:
        raise ValueError(f"`metric` must be one of {', '.join(map(repr, ALIGNMENT_METRICS))}, got {metric!r}.")
    given = {"student_topk_ids": student_topk_ids, "student_mask": student_mask, "student_logprobs": student_logprobs}
    missing = [name for name in required[metric] if given[name] is None]
    if missing:
        raise ValueError(f"metric={metric!r} needs {', '.join(f'`{name}`' for name in missing)}.")
    if metric == "positional":
        return positional_topk_overlap(teacher_ids, teacher_mask, student_topk_ids, student_mask)
    if metric == "teacher_ctx":
        return teacher_context_topk_overlap(teacher_ids, teacher_mask, student_topk_ids)
    if teacher_ids.shape != student_logprobs.shape:
        raise ValueError(
            f"`student_logprobs` {tuple(student_logprobs.shape)} must have the shape of `teacher_ids` "
            f"{tuple(teacher_ids.shape)}."
        )
    return mean_log_likelihood(student_logprobs, teacher_mask)
