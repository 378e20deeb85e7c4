"""BRTS, on-policy distillation with best-of-N teacher rollout selection (https://huggingface.co/papers/2605.09725).

The pure pieces need torch only: the selection waterfall, alignment scores and recovery prompt (`selection.py`), the
two loss branches (`loss.py`) and the released launchers' overlap test of L_S's teacher context (`main_context.py`).
`BRTSConfig` and `BRTSTrainer` (which import trl) load on first access, so importing this package stays light.
"""

import importlib

from .loss import (
    BRTSLossOutput,
    brts_loss,
    student_context_loss,
    student_topk_rkl,
    teacher_context_loss,
    teacher_topk,
    teacher_topk_fkl,
    teacher_topk_fkl_chunked,
)
from .main_context import MAIN_TEACHER_CONTEXTS, topk_overlap
from .selection import (
    ALIGNMENT_METRICS,
    ASSISTANT_MARKERS,
    RECOVERY_HINT_TEMPLATE,
    TIER_NAMES,
    RecoveryPrompts,
    build_recovery_prompt,
    contains_recovery_hint,
    mean_log_likelihood,
    mentions_validation_key,
    positional_topk_overlap,
    recovery_hint,
    recovery_prompts,
    recovery_rows,
    select_rollout,
    selection_metrics,
    student_alignment,
    take_selected,
    teacher_context_mask,
    teacher_context_topk_overlap,
)

_LAZY = {"BRTSConfig": "config", "BRTSTrainer": "trainer"}

__all__ = [
    "ALIGNMENT_METRICS",
    "ASSISTANT_MARKERS",
    "BRTSConfig",
    "BRTSLossOutput",
    "BRTSTrainer",
    "MAIN_TEACHER_CONTEXTS",
    "RECOVERY_HINT_TEMPLATE",
    "RecoveryPrompts",
    "TIER_NAMES",
    "brts_loss",
    "build_recovery_prompt",
    "contains_recovery_hint",
    "mean_log_likelihood",
    "mentions_validation_key",
    "positional_topk_overlap",
    "recovery_hint",
    "recovery_prompts",
    "recovery_rows",
    "select_rollout",
    "selection_metrics",
    "student_alignment",
    "student_context_loss",
    "student_topk_rkl",
    "take_selected",
    "teacher_context_loss",
    "teacher_context_mask",
    "teacher_context_topk_overlap",
    "teacher_topk",
    "teacher_topk_fkl",
    "teacher_topk_fkl_chunked",
    "topk_overlap",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
