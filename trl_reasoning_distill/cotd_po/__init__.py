"""CoTD-PO, chain-of-thought distillation with preference optimization (code: github.com/little-mushroom0/COTD_PO).

The pure loss pieces (`loss.py`) need torch only; the teacher scorers (`scoring.py`, and `api_judge.py` for a closed
teacher) take a model and tokenizer as arguments and import transformers only inside
`RewardModelScorer.from_pretrained`, so importing this package imports
neither trl nor transformers. `CoTDPOConfig`, `CoTDPOTrainer` and the rounds driver (which import trl) load on first
access.
"""

import importlib

from .api_judge import JUDGE_PROMPT_TEMPLATE, APIJudgeScorer, JudgeAPIError, parse_judge_rating
from .loss import (
    LOGP_AGGREGATIONS,
    LOSS_MODES,
    RATIONALE_REDUCTIONS,
    REWARD_NORMALIZATIONS,
    CoTDPOOutput,
    SequenceLogLikelihood,
    aggregate_logps,
    cotd_po_loss,
    listwise_preference_loss,
    listwise_score_gradient,
    normalize_rewards,
    pairwise_preference_loss,
    rationale_nll,
    sequence_log_likelihood,
    target_distribution,
    token_log_probs,
)
from .scoring import (
    LogProbTeacherScorer,
    RewardModelScorer,
    TeacherScorer,
    ToyCorrectnessScorer,
    rescale_rewards,
)

_LAZY = {
    "CoTDPOConfig": "config",
    "LLAMA3_RELEASED_PROMPT_TEMPLATE": "config",
    "CoTDPOTrainer": "trainer",
    "DataCollatorForCoTDPO": "trainer",
    "CoTDPORoundsConfig": "rounds",
    "TeacherRationales": "rounds",
    "run_rounds": "rounds",
}

__all__ = [
    "JUDGE_PROMPT_TEMPLATE",
    "LLAMA3_RELEASED_PROMPT_TEMPLATE",
    "LOGP_AGGREGATIONS",
    "LOSS_MODES",
    "RATIONALE_REDUCTIONS",
    "REWARD_NORMALIZATIONS",
    "APIJudgeScorer",
    "CoTDPOConfig",
    "CoTDPOOutput",
    "CoTDPORoundsConfig",
    "CoTDPOTrainer",
    "DataCollatorForCoTDPO",
    "JudgeAPIError",
    "LogProbTeacherScorer",
    "RewardModelScorer",
    "SequenceLogLikelihood",
    "TeacherRationales",
    "TeacherScorer",
    "ToyCorrectnessScorer",
    "aggregate_logps",
    "cotd_po_loss",
    "listwise_preference_loss",
    "listwise_score_gradient",
    "normalize_rewards",
    "pairwise_preference_loss",
    "parse_judge_rating",
    "rationale_nll",
    "rescale_rewards",
    "run_rounds",
    "sequence_log_likelihood",
    "target_distribution",
    "token_log_probs",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
