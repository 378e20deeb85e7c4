"""BRTS: best-of-N teacher rollout selection, as pure selection pieces (tensors and strings in and out).

Paper: On-Policy Distillation with Best-of-N Teacher Rollout Selection, https://huggingface.co/papers/2605.09725

    Tier 1: argmax_j sim_j over the correct rollouts; Tier 2: a correct ground-truth-hinted rollout;
    Tier 3: argmax_j sim_j over the whole unhinted pool. Ties go to the lowest index.       (spec §2.7)

`sim` is the authors' positional top-k overlap (spec §2.6), the overlap on the teacher's own prefix (spec §8 item 5)
or the student's mean log-likelihood of the rollout (ours). Differences from the authors' verl code: selection is
vectorised over (B, N); in the positional overlap, teacher tokens past the student's response are misses, where the
code compares them with stored zero ids (a hit for token id 0); the hinted prompt is a string function (tokenize it
with `add_special_tokens=False`) that also returns the hint-free student side, so the student never sees the hint.

Where the pieces live (all pure; every public name is importable from here):
- `alignment.py`: the alignment scores (`positional_topk_overlap`, `teacher_context_topk_overlap`,
  `mean_log_likelihood`, `student_alignment`, `ALIGNMENT_METRICS`);
- `tiers.py`: the waterfall (`select_rollout`, `recovery_rows`, `take_selected`, `teacher_context_mask`,
  `selection_metrics`, `TIER_NAMES`, `FALLBACKS`);
- `recovery.py`: the hinted recovery prompt and the hint checks (`recovery_hint`, `build_recovery_prompt`,
  `recovery_prompts`, `RecoveryPrompts`, `contains_recovery_hint`, `mentions_validation_key`,
  `RECOVERY_HINT_TEMPLATE`, `ASSISTANT_MARKERS`).
"""

from . import alignment, recovery, tiers
from .alignment import *  # noqa: F403  (each part's `__all__`)
from .recovery import *  # noqa: F403
from .tiers import *  # noqa: F403

__all__ = [*alignment.__all__, *tiers.__all__, *recovery.__all__]
