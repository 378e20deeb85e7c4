"""Shared pieces of the two BRTS loss branches (`student_context.py`, `teacher_context.py`): the default K and the
checks of logits, masks, K and top-K ids."""

import torch

DEFAULT_TOP_K = 16  # spec §2.1 and §3: the code's LOG_PROB_TOP_K, for both branches and the alignment score

__all__ = ["DEFAULT_TOP_K"]


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise a `ValueError` unless both logits have one shape `(..., V)` and `mask` has their leading shape."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
        raise ValueError(
            f"Expected student and teacher logits of one shape (..., V) (one vocabulary), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"`mask` must have the logits' leading shape {tuple(student_logits.shape[:-1])}, got {tuple(mask.shape)}."
        )


def _check_top_k(top_k: int, vocab_size: int) -> None:
    """Raise a `ValueError` unless `1 <= top_k <= vocab_size`."""
    if not 1 <= top_k <= vocab_size:
        raise ValueError(f"`top_k` must be in [1, {vocab_size}] (the vocabulary), got {top_k}.")


def _check_ids(name: str, ids: torch.Tensor, leading: torch.Size, vocab_size: int) -> None:
    """Raise a `ValueError` unless `ids` are integer ids of shape `(*leading, K)` inside the vocabulary."""
    if ids.is_floating_point() or ids.shape[:-1] != leading or ids.dim() != len(leading) + 1 or ids.shape[-1] < 1:
        raise ValueError(
            f"`{name}` must be integer ids of shape {(*leading, 'K')}, got {ids.dtype} {tuple(ids.shape)}."
        )
    if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
        raise ValueError(f"`{name}` must lie in [0, {vocab_size}), the vocabulary of the logits.")
