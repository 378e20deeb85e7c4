"""Where L_S's teacher reads its log-probabilities: the paper's student context, or the released launchers' paths.

Pure: torch only. Spec §2.11 and §8 item 4. The paper (§3.1) scores the student's rollout with the teacher on the
same context c_t = (x, y^S_<t). The released launchers (`forward.sh`, `forward_tier2.sh` of BWGZK-keke/BRTS@3885b18)
set `apply_selected_for_teacher_forward` and `multi_forward_select_by_overlap`: the teacher is also forwarded on the
selected teacher rollout, c'_t = (x, ŷ^T_<t), and L_S takes its teacher log-probabilities at the student's top-K ids
S_t from whichever context's teacher top-K holds more of the student's top-K over the batch. On c'_t, positions past
the selected rollout give log-prob 0 (`student_topk_rkl(..., teacher_available=...)`).
"""

import torch

MAIN_TEACHER_CONTEXTS = ("student", "selected", "auto_overlap")  # paper §3.1; [code] the two flags of spec §2.11

__all__ = ["MAIN_TEACHER_CONTEXTS", "topk_overlap"]


def topk_overlap(
    student_topk_ids: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    mask: torch.Tensor,
    teacher_available: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The released code's batch overlap of one teacher context (spec §2.11): student top-K ids inside the teacher's
    top-K at the same position, counted over the loss positions.

    Args:
        student_topk_ids (`torch.Tensor`):
            Integer tensor `(..., K)`: the student's top-K S_t on its own rollout.
        teacher_topk_ids (`torch.Tensor`):
            Integer tensor `(..., K')`: the teacher's top-K on the context tried, at the same response positions.
        mask (`torch.Tensor`):
            Bool or 0/1 tensor `(...)`: the loss positions (the student's response); each counts K slots.
        teacher_available (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bool tensor `(...)`: positions the tried context reaches; elsewhere every slot is a miss.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(hits, slots)`, two 0-dim float64 counts (summed over processes
        before `hits / slots` is compared).
    """
    if student_topk_ids.shape[:-1] != teacher_topk_ids.shape[:-1] or mask.shape != student_topk_ids.shape[:-1]:
        raise ValueError(f"Expected ids (..., K) at the positions of `mask` {tuple(mask.shape)}, got "
                         f"{tuple(student_topk_ids.shape)} and {tuple(teacher_topk_ids.shape)}.")
    inside_K = (student_topk_ids[..., :, None] == teacher_topk_ids[..., None, :]).any(-1)
    counted = mask.bool() if teacher_available is None else mask.bool() & teacher_available.bool()
    hits = (inside_K & counted[..., None]).sum().double()
    return hits, mask.bool().sum().double() * student_topk_ids.shape[-1]

