"""VCRD, validity-calibrated reasoning distillation (https://huggingface.co/papers/2605.04078).

The pure loss pieces (`loss`) and the validity judges (`validity`) need torch only; a PRM is passed in as a model.
`VCRDConfig`, `VCRDTrainer` (which import trl) and the data helpers of `data` load on first access, so importing this
package stays light.
"""

import importlib

from .loss import (
    REDUCTIONS,
    WEIGHTING_RULES,
    VCRDOutput,
    teacher_prob_ratio,
    teacher_prob_weights,
    validity_weights,
    vcrd_loss,
    vcrd_token_coefficients,
    weight_stats,
)
from .validity import (
    PROPOSAL_SOURCES,
    PROPOSAL_STRATEGIES,
    SCORING_IMPLS,
    PackedRollout,
    ProcessRewardModelScorer,
    ProposalPairs,
    ProposalScores,
    StepCheckerScorer,
    ValidityScorer,
    build_proposal_pairs,
    pack_rollout,
    packed_attention_mask,
    positive_probability,
    propose_tokens,
    toy_steps,
)

_LAZY = {
    "VCRDConfig": "config",
    "VCRDTrainer": "trainer",
    "VCRDDataCollator": "data",
    "sample_vcrd_rollouts": "data",
    "to_vcrd_dataset": "data",
    "toy_vcrd_dataset": "data",
}

__all__ = [
    "PackedRollout",
    "PROPOSAL_SOURCES",
    "PROPOSAL_STRATEGIES",
    "REDUCTIONS",
    "SCORING_IMPLS",
    "WEIGHTING_RULES",
    "ProcessRewardModelScorer",
    "ProposalPairs",
    "ProposalScores",
    "StepCheckerScorer",
    "VCRDConfig",
    "VCRDDataCollator",
    "VCRDOutput",
    "VCRDTrainer",
    "ValidityScorer",
    "build_proposal_pairs",
    "pack_rollout",
    "packed_attention_mask",
    "positive_probability",
    "propose_tokens",
    "sample_vcrd_rollouts",
    "teacher_prob_ratio",
    "teacher_prob_weights",
    "to_vcrd_dataset",
    "toy_steps",
    "toy_vcrd_dataset",
    "validity_weights",
    "vcrd_loss",
    "vcrd_token_coefficients",
    "weight_stats",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
