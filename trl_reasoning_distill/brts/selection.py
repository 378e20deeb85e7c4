"""BRTS: best-of-N teacher rollout selection, as pure selection pieces (tensors and strings in and out).

Paper: On-Policy Distillation with Best-of-N Teacher Rollout Selection, https://huggingface.co/papers/2605.09725

    Tier 1: argmax_j sim_j over the correct rollouts; Tier 2: a correct ground-truth-hinted rollout;
    Tier 3: argmax_j sim_j over the whole unhinted pool. Ties go to the lowest index.       (spec §2.7)

`sim` is the authors' positional top-k overlap (spec §2.6), the overlap on the teacher's own prefix (spec §8 item 5)
or the student's mean log-likelihood of the rollout (ours). Differences from the authors' verl code: selection is
vectorised over (B, N); in the positional overlap, teacher tokens past the student's response are misses, where the
code compares them with stored zero ids (a hit for token id 0); the hinted prompt is a string function (tokenize it
with `add_special_tokens=False`) that also returns the hint-free student side, so the student never sees the hint.
"""

import re
from dataclasses import dataclass

import torch

ALIGNMENT_METRICS = ("positional", "teacher_ctx", "log_likelihood")
TIER_NAMES = {1: "correct", 2: "hinted_recovery", 3: "most_aligned"}  # spec §2.7: tags 1, 2, 3
FALLBACKS = ("most_similar", "skip")  # spec §8 item 15

# Spec §2.8, verbatim; `{gt}` is the ground-truth answer.
RECOVERY_HINT_TEMPLATE = (
    "[SILENT_VALIDATION_KEY — DO NOT MENTION IN THINKING OR RESPONSE: {gt}]\n"
    "\n"
    "STRICT RULES about the validation key:\n"
    "  1. NEVER mention, quote, paraphrase, or allude to it anywhere — not in <think>, not in your answer.\n"
    "  2. NEVER say things like 'the key says', 'based on the hint', 'the answer is given', 'I can see the correct "
    "answer is', or any equivalent phrasing.\n"
    "  3. Your entire chain of thought must be derived from what you observe in the problem.\n"
    "  4. Only use the validation key silently as a final sanity-check after you have already reasoned to a "
    "conclusion — never as a starting point or shortcut."
)
# Spec §2.8: tried in this order; the first one present is used, at its last occurrence.
ASSISTANT_MARKERS = ("<｜Assistant｜>", "<|Assistant|>", "<|im_start|>assistant", "Assistant:")
_HINT_KEY = "SILENT_VALIDATION_KEY"
_KEY_MENTION = re.compile(r"validation[\s_-]*key", re.IGNORECASE)


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


# --- the ground-truth-hinted recovery prompt (spec §2.8) -------------------------------------------------------------


def recovery_hint(ground_truth: str, template: str = RECOVERY_HINT_TEMPLATE) -> str:
    """The hint of spec §2.8 for `ground_truth`: `template` with `{gt}` replaced (other braces are left as is)."""
    if "{gt}" not in template:
        raise ValueError("`template` must contain the placeholder `{gt}` for the ground truth.")
    return template.replace("{gt}", ground_truth)


def build_recovery_prompt(
    prompt: str,
    ground_truth: str,
    *,
    template: str = RECOVERY_HINT_TEMPLATE,
    markers: tuple[str, ...] = ASSISTANT_MARKERS,
) -> str:
    """
    The teacher's ground-truth-hinted prompt of spec §2.8, for Tier-2 generation only.

    The first of `markers` found in `prompt` is located at its **last** occurrence, and the prompt becomes
    `pre.rstrip() + "\\n\\n" + hint + "\\n\\n" + marker + post`; without any marker the hint is appended:
    `prompt.rstrip() + "\\n\\n" + hint`. Tokenize the result with `add_special_tokens=False`.

    Args:
        prompt (`str`):
            The templated prompt, decoded **with** its special tokens.
        ground_truth (`str`):
            The ground-truth answer.
        template (`str`, *optional*, defaults to [`RECOVERY_HINT_TEMPLATE`]):
            The hint, with a `{gt}` placeholder.
        markers (`tuple[str, ...]`, *optional*, defaults to [`ASSISTANT_MARKERS`]):
            Assistant-turn markers, in order of preference.

    Returns:
        `str`: The hinted prompt.
    """
    hint = recovery_hint(ground_truth, template)
    for marker in markers:
        if marker in prompt:
            pre, _, post = prompt.rpartition(marker)
            return pre.rstrip() + "\n\n" + hint + "\n\n" + marker + post
    return prompt.rstrip() + "\n\n" + hint


@dataclass(frozen=True)
class RecoveryPrompts:
    """The two sides of a Tier-2 row: `teacher` is the hinted prompt to sample from; `student` is the original prompt,
    the context of both models in the teacher-context loss (spec §2.8: the student never sees the hint)."""

    teacher: str
    student: str


def recovery_prompts(
    prompt: str,
    ground_truth: str,
    *,
    template: str = RECOVERY_HINT_TEMPLATE,
    markers: tuple[str, ...] = ASSISTANT_MARKERS,
) -> RecoveryPrompts:
    """
    The hinted teacher prompt of [`build_recovery_prompt`] and, separately, the hint-free student prompt.

    Args:
        prompt (`str`):
            The original templated prompt; it must not already hold a hint (a `ValueError` says so).
        ground_truth, template, markers:
            As in [`build_recovery_prompt`].

    Returns:
        [`RecoveryPrompts`]: `teacher` (hinted) and `student` (`prompt` unchanged).
    """
    if contains_recovery_hint(prompt, ground_truth, template):
        raise ValueError(
            "`prompt` already holds a recovery hint; pass the original (un-hinted) prompt, the student's context."
        )
    return RecoveryPrompts(
        teacher=build_recovery_prompt(prompt, ground_truth, template=template, markers=markers), student=prompt
    )


def contains_recovery_hint(text: str, ground_truth: str, template: str = RECOVERY_HINT_TEMPLATE) -> bool:
    """Whether `text` holds the hint of `ground_truth` or the hint's key marker; check the student's inputs with it."""
    return _HINT_KEY in text or recovery_hint(ground_truth, template).split("\n", 1)[0] in text


def mentions_validation_key(response: str) -> bool:
    """Whether a hinted rollout mentions the validation key (spec §8 item 14: optional leak filter, off by default)."""
    return _KEY_MENTION.search(response) is not None
